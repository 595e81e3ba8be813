#!/usr/bin/env bash
# Runs Molecule scenarios: the first list one after another; the second list beside the last of
# them, at the lowest CPU priority (tools/beside.sh).
#   tools/molecule-scenarios.sh "default ha" "kernel"
# Why beside the last: the ha scenario spends most of its verify waiting (load windows, failovers,
# restarts) while the kernel scenario's emulated VMs want CPU; the scenarios before it converge
# most of the time and get the machine to themselves.
set -uo pipefail
cd "$(dirname "$0")/.."
read -r -a in_turn <<< "${1:-}"
read -r -a beside <<< "${2:-}"

beside_job=""
for scenario in "${beside[@]}"; do
  beside_job+="molecule test --scenario-name $scenario && "
done

if ((${#in_turn[@]} == 0)); then
  [ -z "$beside_job" ] && exit 0
  exec bash -c "${beside_job}true"
fi
last=$((${#in_turn[@]} - 1))
for i in "${!in_turn[@]}"; do
  run=(molecule test --scenario-name "${in_turn[$i]}")
  if ((i == last)) && [ -n "$beside_job" ]; then
    run=(tools/beside.sh "${beside[*]// /-}" 19 "${beside_job}true" "${run[@]}")
  fi
  "${run[@]}" || { echo "failed: ${in_turn[$i]}" >&2; exit 1; }
done
