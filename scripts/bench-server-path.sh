#!/usr/bin/env bash
# Where a request's time goes between the socket and the engine (issue 29, BENCHMARKS.md "The
# server path"): the server against the offline engine on the same rows, t5-small's shape
# (bench-models/small), a 1-row prompt, greedy, 16 new tokens, 2 threads:
#   - one client sending one request of 64 inputs, vs the engine running those 64 rows as one batch;
#   - 64 clients sending one input each, vs the same batch;
#   - one client sending one input, vs the engine running that row alone.
# The inputs are scripts/bench_rows.py's 64 short rows for both (promptd-dev bench --inputs-file).
# Server rows/s is the closed loop's rate (clients × inputs / mean latency; the answers come in
# waves, which makes rows counted in a window jump by whole waves), beside the rows counted; the
# breakdown is the server's own: per request validate / wait / respond, per row the queue wait,
# and the engine thread's admissions and decode steps over the window.
# The five runs are repeated over rounds, alternating server and engine, and the table gives
# each run's median over the rounds (this machine's speed drifts by ±10% over minutes).
#   scripts/bench-server-path.sh [seconds] [rounds]
# Needs release builds (make build build-dev) and python3 with tokenizers (PYTHON=...).
set -euo pipefail
secs="${1:-15}"; rounds="${2:-3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/bench-common.sh"
pick_python
prepare small 1
one_row_prompt
grep -m1 "model name" /proc/cpuinfo | sed 's/^/# cpu: /'
work="$(mktemp -d)"; trap 'rm -rf "$work"; [[ -n "${server_pid:-}" ]] && stop_server' EXIT
"$py" "$root/scripts/bench_rows.py" --tokenizer "$model/tokenizer.json" --tasks 0 --out "$work" >&2
common=(--tasks 1 --max-new-tokens 16 --duration-s "$secs" --warmup-s 3 --json --inputs-file "$work/short.jsonl")
offline() { "$dev" bench --offline --model "$model" --prompts "$prompts" --batch-size "$1" "${common[@]}" 2>/dev/null; }
serve() {
  "$bin" serve --model "$model" --prompts "$prompts" --addr "127.0.0.1:$port" --grpc-addr off \
    --audit-log off --max-queue 4096 --max-batch-size 64 >/dev/null 2>"$models/server.log" &
  server_pid=$!
  until curl -sf "$url/readyz" >/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$models/server.log" >&2; exit 1; }
    sleep 0.2
  done
}
for round in $(seq 1 "$rounds"); do
  echo "{\"run\":\"offline64\",\"r\":$(offline 64)}" >> "$work/runs"
  serve
  echo "{\"run\":\"one64\",\"r\":$("$dev" bench --url "$url" --concurrency 1 --inputs 64 "${common[@]}" 2>/dev/null)}" >> "$work/runs"
  echo "{\"run\":\"many\",\"r\":$("$dev" bench --url "$url" --concurrency 64 --inputs 1 "${common[@]}" 2>/dev/null)}" >> "$work/runs"
  echo "{\"run\":\"alone\",\"r\":$("$dev" bench --url "$url" --concurrency 1 --inputs 1 "${common[@]}" 2>/dev/null)}" >> "$work/runs"
  stop_server; server_pid=""
  echo "{\"run\":\"offline1\",\"r\":$(offline 1)}" >> "$work/runs"
done
cat "$work/runs" >&2
"$py" - "$work/runs" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    p = json.loads(line)
    runs.setdefault(p["run"], []).append(p["r"])
def med(run, f):
    return statistics.median(f(r) for r in runs[run])
print("| load | server rows/s (closed loop) | rows counted | offline engine rows/s | server / engine | request ms | validate | wait | respond | queue ms/row | rows/step | ms/step | engine busy |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, s, o, batch in [("1 request × 64 inputs", "one64", "offline64", 64), ("64 clients × 1 input", "many", "offline64", 64), ("1 client × 1 input", "alone", "offline1", 1)]:
    r = med(s, lambda x: x["rows_per_s_closed_loop"])
    off = med(o, lambda x: x["rows_per_s"])
    b = lambda k: med(s, lambda x: x["breakdown"][k])
    print(f"| {name} | {r:.1f} | {med(s, lambda x: x['rows_per_s']):.1f} | {off:.1f} (batch {batch}) | {r / off:.2f} | "
          f"{b('request_ms'):.1f} | {b('validate_ms'):.2f} | {b('wait_ms'):.1f} | {b('respond_ms'):.2f} | {b('queue_ms_per_row'):.1f} | "
          f"{b('rows_per_step'):.1f} | {b('ms_per_step'):.1f} | {b('engine_busy'):.2f} |")
PY
