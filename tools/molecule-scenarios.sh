#!/usr/bin/env bash
# Runs Molecule scenarios: the first list one after another; the second list beside them from
# the start, at the lowest CPU priority (tools/beside.sh).
#   tools/molecule-scenarios.sh "default ha" "kernel"
# The kernel scenario's Ansible runs at the lowest priority; its emulated VMs (qemu -daemonize
# starts sessions of their own) keep a fair share of the CPU: starved, systemd in a guest times
# out (a daemon-reload over D-Bus after 25 s) and the scenario fails. From the start, they use
# what the first scenario leaves while it waits for its image and converges a single host.
set -uo pipefail
cd "$(dirname "$0")/.."
read -r -a in_turn <<< "${1:-}"
read -r -a beside <<< "${2:-}"

# "molecule test" of each scenario named, one after another, stopping at the first failure.
one_after_another() {
  local job="" scenario
  for scenario in "$@"; do
    job+="molecule test --scenario-name $scenario && "
  done
  echo "${job}true"
}

if ((${#beside[@]} == 0)); then
  exec bash -c "$(one_after_another "${in_turn[@]}")"
fi
exec tools/beside.sh "${beside[*]// /-}" 19 "$(one_after_another "${beside[@]}")" \
  bash -c "$(one_after_another "${in_turn[@]}")"
