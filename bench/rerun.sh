#!/usr/bin/env bash
# P1: a no-change re-run of site.yml on a converged lab, against a play of as many `ping` tasks
# (the floor any converge of that size pays for connections and module runs).
#   bench/rerun.sh [LAB]          LAB: inventory/lab (default) or inventory/lab-split
# Needs a converged lab (`make lab`) and farm-bench on the PATH. Prints farm-bench's table.
set -euo pipefail
cd "$(dirname "$0")/.."
lab=${1:-inventory/lab}
export ANSIBLE_CONFIG=$PWD/ansible.cfg PATH=$PWD/.venv/bin:$PATH
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One run first: it must change nothing, and tells how many tasks ran.
ansible-playbook -i "$lab" site.yml > "$work/first.log"
recap=$(grep -E '^\S+ +: ok=' "$work/first.log")
echo "$recap"
if grep -qE 'changed=[1-9]|failed=[1-9]' <<<"$recap"; then
  echo "rerun.sh: the lab is not converged (a change or a failure above); run make lab first" >&2
  exit 1
fi
tasks=$(grep -oE 'ok=[0-9]+' <<<"$recap" | head -1 | cut -d= -f2)

{
  echo "- name: As many pings as site.yml ran tasks ($tasks)"
  echo "  hosts: all"
  echo "  gather_facts: false"
  echo "  tasks:"
  for i in $(seq "$tasks"); do
    printf '    - name: Ping %s\n      ansible.builtin.ping:\n' "$i"
  done
} > "$work/pings.yml"

farm-bench -n "${RUNS:-3}" --warmup 0 --timeout 1800 \
  --vs "ansible-playbook -i $lab $work/pings.yml" \
  -- ansible-playbook -i "$lab" site.yml
