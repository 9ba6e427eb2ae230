#!/usr/bin/env bash
# One setup step, quietly: prints one line (what it did and how long it took) and keeps the
# step's output in .run/logs/NAME.log, shown only when the step fails.
#   infra/step.sh NAME "what it does" command [args...]
set -uo pipefail
name=$1 what=$2
shift 2
mkdir -p .run/logs
log=.run/logs/$name.log
start=$EPOCHREALTIME
"$@" >"$log" 2>&1
rc=$?
secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
if [ "$rc" -eq 0 ]; then
  printf '%-52s done   %6ss\n' "$what" "$secs"
else
  printf '%-52s FAILED %6ss (exit %s); the end of %s:\n' "$what" "$secs" "$rc" "$log" >&2
  tail -n 40 "$log" | sed 's/^/  | /' >&2
  exit "$rc"
fi
