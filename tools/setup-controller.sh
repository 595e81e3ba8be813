#!/usr/bin/env bash
# Installs everything the controller needs on a fresh Debian 12 machine (run as root).
# Safe to re-run: every step checks before it acts. With --image, the lab images are built
# (tools/build-image.sh, cached: Debian 12, and Debian 13 for the default scenario) at the same
# time as the virtualenv: all mostly wait on mirrors.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(podman runc debootstrap redis-server python3-venv make curl
              qemu-system-x86 qemu-utils e2fsprogs openssh-client)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# crun fails on this hybrid cgroup host; podman's default nofile ulimit exceeds the hard limit.
conf=/etc/containers/containers.conf
if ! grep -qs 'runtime = "runc"' "$conf"; then
  mkdir -p /etc/containers
  cat > "$conf" <<'CONF'
# Written by tools/setup-controller.sh
[containers]
default_ulimits = ["nofile=1024:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
CONF
fi

image_builds=()
if [ "${1:-}" = "--image" ]; then
  for suite in bookworm trixie; do
    tools/build-image.sh "$suite" &
    image_builds+=($!)
  done
fi

# Re-install only when the requirements or the app's metadata changed (content, not mtime:
# a fresh clone has new mtimes everywhere).
wanted=$(cat requirements.txt files/stackdemo/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.installed 2>/dev/null)" != "$wanted" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  .venv/bin/pip install -q -e files/stackdemo
  echo "$wanted" > .venv/.installed
fi

for build in "${image_builds[@]}"; do
  wait "$build"
done
