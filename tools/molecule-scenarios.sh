#!/usr/bin/env bash
# Runs Molecule scenarios: the first list one after another; the second list beside the last of
# them, at the lowest CPU priority, its output kept in .cache/molecule-<scenario>.log and printed
# at the end.
#   tools/molecule-scenarios.sh "default ha" "kernel"
# Why beside the last: the ha scenario spends most of its verify waiting (load windows, failovers,
# restarts) while the kernel scenario's emulated VMs want CPU; the scenarios before it converge
# most of the time and get the machine to themselves.
set -uo pipefail
cd "$(dirname "$0")/.."
read -r -a in_turn <<< "${1:-}"
read -r -a beside <<< "${2:-}"
mkdir -p .cache

# With autogroup scheduling (most distributions' default) the kernel shares CPU between sessions
# before it looks at nice values: a session of its own, whose group is niced, yields for real.
own_group() { cut -d' ' -f1 "/proc/$1/autogroup" 2> /dev/null; }
declare -A pids=()
start_beside() {
  for scenario in "${beside[@]}"; do
    setsid nice -n 19 molecule test --scenario-name "$scenario" > ".cache/molecule-$scenario.log" 2>&1 &
    pids[$scenario]=$!
    if [ -w "/proc/$!/autogroup" ]; then
      for _ in {1..50}; do
        [ "$(own_group $!)" != "$(own_group $$)" ] && { echo 19 > "/proc/$!/autogroup"; break; }
        sleep 0.1
      done
    fi
  done
}

failed=()
last=$((${#in_turn[@]} - 1))
((last < 0)) && start_beside
for i in "${!in_turn[@]}"; do
  ((i == last)) && start_beside
  molecule test --scenario-name "${in_turn[$i]}" || { failed+=("${in_turn[$i]}"); break; }
done

for scenario in "${!pids[@]}"; do
  wait "${pids[$scenario]}" || failed+=("$scenario")
  echo "==== molecule test --scenario-name $scenario (run beside the others) ===="
  cat ".cache/molecule-$scenario.log"
done

if ((${#failed[@]})); then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
