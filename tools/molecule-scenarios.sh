#!/usr/bin/env bash
# Runs Molecule scenarios in two lanes side by side, each one scenario after another, from the
# start and at the same CPU priority (tools/beside.sh): the second lane's log is printed at the end.
#   tools/molecule-scenarios.sh "ha" "kernel default"
# Most of a scenario's time is spent waiting (failovers, reboots, faults held under load): two
# lanes fill each other's waits. Nothing is shared but the lab image and the controller's wheel
# cache: the first app deploy fills the cache, so the lanes are ordered to never run two at once
# (the kernel scenario deploys no app). Emulated VMs keep a fair share of the CPU: starved,
# systemd in a guest times out (a daemon-reload over D-Bus after 25 s) and the scenario fails.
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
lane=$(IFS=-; echo "${beside[*]}")
exec tools/beside.sh "$lane" 0 "$(one_after_another "${beside[@]}")" \
  bash -c "$(one_after_another "${in_turn[@]}")"
