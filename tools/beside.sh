#!/usr/bin/env bash
# Runs a job beside a main command, in a session of its own at the CPU priority given; the job's
# output is kept in .cache/beside-NAME.log and printed once both are done. Fails if either does.
#   tools/beside.sh NAME NICENESS 'JOB COMMAND LINE' MAIN COMMAND...
# With autogroup scheduling (most distributions' default) the kernel shares CPU between sessions
# before it looks at nice values: only a session of its own, whose group is niced, yields for real.
set -uo pipefail
cd "$(dirname "$0")/.."
name=$1 niceness=$2 job=$3
shift 3
mkdir -p .cache
log=".cache/beside-$name.log"

setsid nice -n "$niceness" bash -c "$job" > "$log" 2>&1 &
job_pid=$!
own_group() { cut -d' ' -f1 "/proc/$1/autogroup" 2> /dev/null; }
if [ -w "/proc/$job_pid/autogroup" ]; then
  for _ in {1..50}; do
    [ "$(own_group "$job_pid")" != "$(own_group $$)" ] && { echo "$niceness" 2> /dev/null > "/proc/$job_pid/autogroup"; break; }
    sleep 0.1
  done
fi

"$@"
main_rc=$?
wait "$job_pid"
job_rc=$?
echo "==== $name, run beside: $job ===="
cat "$log"
((main_rc == 0)) || echo "failed: $*" >&2
((job_rc == 0)) || echo "failed: $job" >&2
((main_rc == 0 && job_rc == 0))
