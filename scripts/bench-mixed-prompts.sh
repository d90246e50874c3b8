#!/usr/bin/env bash
# Mixed traffic against single-task traffic of the same prompt length (issue 29, BENCHMARKS.md
# "Mixed traffic of prompts of 1 to 20 rows"): one server (continuous mixed batching), closed
# loop, t5-small's shape, 16 new tokens, the same 64 short inputs on every point
# (--inputs-file): traffic on one task with a 10-row prompt against traffic spread uniformly over
# 64, 1,000 and 10,000 tasks whose prompts have 1 to 20 rows (task k: 1 + k mod 20 rows; a mean
# of 10.0 over 64 tasks, 10.5 over 1,000 and 10,000). Points are interleaved over rounds so a
# shared machine's drift hits them alike; rows/s is the closed loop's (clients / mean latency).
#   scripts/bench-mixed-prompts.sh [seconds per point] [rounds] [clients]
# TASKS="1 64" runs a subset (1 = the single 10-row task). Needs release builds and python3 with
# tokenizers (PYTHON=...). Writes bench-models/ (git-ignored).
set -euo pipefail
secs="${1:-20}"; rounds="${2:-2}"; clients="${3:-32}"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/bench-common.sh"
pick_python
prepare small 1
prompts="$models/prompts-512-mixed-1to20"
if [[ ! -f "$prompts/single00000.npy" ]]; then
  rm -rf "$prompts" "$prompts.single"
  "$dev" make-prompts --count 10000 --min-length 1 --length 20 --d-model "$d_model" --out "$prompts" >&2
  "$dev" make-prompts --count 1 --length 10 --d-model "$d_model" --seed 7 --out "$prompts.single" >&2
  mv "$prompts.single/task00000.npy" "$prompts/single00000.npy"; rm -rf "$prompts.single"
fi
grep -m1 "model name" /proc/cpuinfo | sed 's/^/# cpu: /'
work="$(mktemp -d)"; trap 'rm -rf "$work"; [[ -n "${server_pid:-}" ]] && stop_server' EXIT
"$py" "$root/scripts/bench_rows.py" --tokenizer "$model/tokenizer.json" --tasks 0 --out "$work" >&2
start_server --batching mixed --decode continuous --max-batch-size 64
results=()
for round in $(seq 1 "$rounds"); do
  for tasks in ${TASKS:-1 64 1000 10000}; do
    if [[ "$tasks" == 1 ]]; then which=(--task-prefix single --tasks 1); else which=(--task-prefix task --tasks "$tasks"); fi
    r=$("$dev" bench --url "$url" "${which[@]}" --concurrency "$clients" --duration-s "$secs" \
      --warmup-s 3 --max-new-tokens 16 --inputs-file "$work/short.jsonl" --json 2>/dev/null)
    line="{\"round\":$round,\"tasks\":$tasks,\"result\":$r}"
    echo "$line"; results+=("$line")
  done
done
printf '%s\n' "${results[@]}" | "$py" -c '
import json, statistics, sys
pts = [json.loads(l) for l in sys.stdin]
by = {}
for p in pts:
    by.setdefault(p["tasks"], []).append(p["result"]["rows_per_s_closed_loop"])
base = by.get(1)
print("\n| tasks | rows/s (median of rounds) | per round | vs 1 task (10-row prompt) |")
print("|---:|---:|---|---:|")
for t, v in sorted(by.items()):
    m = statistics.median(v)
    each = ", ".join("%.1f" % x for x in v)
    ratio = "%.3f" % (m / statistics.median(base)) if base else "-"
    print(f"| {t} | {m:.1f} | {each} | {ratio} |")
'
