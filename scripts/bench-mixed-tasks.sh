#!/usr/bin/env bash
# Mixed traffic over 1, 64, 1,000 and 10,000 tasks against single-task traffic (issue 14 target:
# within 5%), the server (continuous mixed batching) driven by promptd-dev bench, 64 closed-loop
# clients, <= 16 new tokens; the task counts are interleaved over --rounds so drift on a shared
# machine hits them alike. Prints one JSON line per point, then a table with the medians.
#   scripts/bench-mixed-tasks.sh [mini|small] [seconds per point] [rounds]
# TASKS="1 10000" runs a subset. Needs release builds (make build build-dev). Writes bench-models/
# (git-ignored).
set -euo pipefail
shape="${1:-mini}"; secs="${2:-10}"; rounds="${3:-3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/bench-common.sh"
prepare "$shape" 10000
start_server --batching mixed --decode continuous --max-batch-size 64
trap 'stop_server' EXIT
results=()
for round in $(seq 1 "$rounds"); do
  for tasks in ${TASKS:-1 64 1000 10000}; do
    r=$("$dev" bench --url "$url" --tasks "$tasks" --concurrency 64 --duration-s "$secs" \
      --warmup-s 2 --max-new-tokens 16 --json 2>/dev/null)
    line="{\"round\":$round,\"tasks\":$tasks,\"result\":$r}"
    echo "$line"; results+=("$line")
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import json, statistics, sys
pts = [json.loads(l) for l in sys.stdin]
by = {}
for p in pts:
    by.setdefault(p["tasks"], []).append(p["result"]["rows_per_s"])
base = statistics.median(by[1])
print("\n| tasks | rows/s (median of rounds) | per round | vs 1 task |")
print("|---:|---:|---|---:|")
for t, v in sorted(by.items()):
    m = statistics.median(v)
    each = ", ".join("%.1f" % x for x in v)
    print(f"| {t} | {m:.1f} | {each} | {m / base:.3f} |")
'
