# Two commands do everything on a fresh Debian 12 machine (as root): `make lab` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
LAB ?= lab
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup image lab lab-destroy test lint unit molecule bench

setup:
	tools/setup-controller.sh

# The controller set-up and the lab images (Debian 12 and 13), built side by side.
image:
	tools/setup-controller.sh --image

# The whole stack on local Podman hosts, ending with a real request answered by a real worker.
lab: image
	ansible-playbook -i inventory/$(LAB) playbooks/lab/create.yml
	ansible-playbook -i inventory/$(LAB) site.yml
	ansible-playbook -i inventory/$(LAB) playbooks/lab/smoke.yml

lab-destroy: setup
	ansible-playbook -i inventory/$(LAB) playbooks/lab/destroy.yml

# Every test: linters, the app's unit tests, every Molecule scenario. The lab images (Debian 12;
# Debian 13 for the default scenario's Valkey) and the kernel scenario's VM disk build in the
# background meanwhile (all mostly wait on the mirror); whoever needs one waits for its build to
# finish (each build holds a lock of its own) or builds it itself.
# Linters and unit tests run beside the scenarios, in a session of their own (tools/beside.sh):
# they are done while the first scenario waits for its image and converges a single host.
test: setup
	mkdir -p .cache && { tools/build-image.sh > .cache/build-image.log 2>&1 & }
	{ tools/build-image.sh trixie > .cache/build-image-trixie.log 2>&1 & }
	{ tools/build-vm-image.sh > .cache/build-vm-image.log 2>&1 & }
	tools/beside.sh lint-and-unit 0 "$(MAKE) lint unit" $(MAKE) molecule

lint: setup
	yamllint --strict .
	ansible-lint
	ruff check bench files playbooks plugins roles tests tools
	ruff format --check bench files playbooks plugins roles tests tools
	python tools/role_docs.py --check
	ansible-playbook --syntax-check -i inventory/example site.yml

# The app against a real redis-server and workers; every role's input validation.
unit: setup
	cd files/stackdemo && ../../$(BIN)/python -m pytest -q
	python -m pytest -q -n 2 tests/unit tests/validation

# Every scenario this machine can run, in two lanes side by side (tools/molecule-scenarios.sh);
# one with `make molecule SCENARIO=ha`. rocky9 needs a registry to pull its image from:
# `make molecule SCENARIO=rocky9` where one is.
SCENARIOS ?= ha byo
BESIDE_SCENARIOS ?= kernel default
molecule: image
	tools/molecule-scenarios.sh "$(or $(SCENARIO),$(SCENARIOS))" "$(if $(SCENARIO),,$(BESIDE_SCENARIOS))"

# Benchmarks against a converged lab (`make lab` first): bench/results.json, then the plots
# and docs/benchmarks.md drawn from it.
bench: setup
	pip install --quiet -r bench/requirements.txt
	python bench/run.py --inventory inventory/$(LAB)
	python bench/report.py
