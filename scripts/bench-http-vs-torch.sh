#!/usr/bin/env bash
# The HTTP server against what a team would build without it (issue 14, HTTP comparison), all on
# one workload: 16 tasks (20-row prompts), 64 requests at a time, 4..32 words per input, at most
# 16 new tokens (greedy, </s> stops), f32 on CPU, every side at the same thread count:
#   server    `promptd serve` driven by `promptd-dev bench`, 64 closed-loop clients
#   offline   `promptd-dev bench --offline`: the same generator through the engine in-process,
#             batches of 64 (continuous when the server decodes continuously)
#   torch     scripts/bench_torch_mixed.py: windows of 64 requests, one mixed-task
#             generate(inputs_embeds=...) each (sdpa)
#   peft      scripts/bench_hf_peft.py per-task: windows of 64, one generate() per task
# Prints each side's JSON line, then a markdown table with server/torch, server/PEFT and
# server/offline. The load generator shares the machine with the server (as in every
# scripts/bench-*.sh), so on few cores the server column pays for its client too.
#   scripts/bench-http-vs-torch.sh [mini|small] [seconds] [threads]
# Needs release builds (make build build-dev) and a python with torch, transformers, peft,
# tokenizers (PYTHON=...; default .venv/bin/python, else python3). DECODE=static|continuous
# (default continuous) sets the server's --decode. Writes bench-models/ (git-ignored).
set -euo pipefail
shape="${1:-mini}"; secs="${2:-20}"; threads="${3:-2}"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/bench-common.sh"
decode="${DECODE:-continuous}"
if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"
else py=python3; fi
[[ -x "$bin" && -x "$dev" ]] || { echo "needs release builds: make build build-dev" >&2; exit 2; }
case "$decode" in static|continuous) ;; *) echo "DECODE: static or continuous" >&2; exit 2 ;; esac
prepare "$shape" 16
tasks=16; window=64; warmup=3
# libtorch takes its intra-op thread count from these; the Python sides call set_num_threads.
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
work="$(mktemp -d)"; server_pid=""
trap '[[ -n "$server_pid" ]] && kill -TERM "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT

# Like start_server (bench-common.sh), on an ephemeral port read from the server's stdout.
start_ephemeral() {
  "$bin" serve --model "$model" --prompts "$prompts" --addr 127.0.0.1:0 --grpc-addr off \
    --audit-log off --max-batch-size "$window" --decode "$decode" >"$work/server.out" 2>"$models/server.log" &
  server_pid=$!
  url=""; local waited=0
  until [[ -n "$url" ]] && curl -sf "$url/readyz" >/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$models/server.log" >&2; exit 1; }
    (( waited++ < 1500 )) || { echo "server not ready after 300 s" >&2; cat "$models/server.log" >&2; exit 1; }
    [[ -n "$url" ]] || url="$(sed -n 's/^promptd listening on //p' "$work/server.out")"
    sleep 0.2
  done
}

# side NAME CMD...: CMD's stdout; on failure its stderr, and the script stops.
side() {
  local name="$1"; shift
  "$@" 2>"$work/$name.err" || { echo "$name failed:" >&2; cat "$work/$name.err" >&2; return 1; }
}

load=(--tasks "$tasks" --max-new-tokens 16 --duration-s "$secs" --warmup-s "$warmup" --json)
start_ephemeral
server=$(side server-load "$dev" bench --url "$url" --concurrency "$window" "${load[@]}")
stop_server; server_pid=""
echo "{\"impl\":\"server\",\"decode\":\"$decode\",\"result\":$server}"

offline_flags=(--offline --model "$model" --prompts "$prompts" --batch-size "$window")
[[ "$decode" == continuous ]] && offline_flags+=(--offline-continuous)
offline=$(side offline "$dev" bench "${offline_flags[@]}" "${load[@]}")
echo "{\"impl\":\"offline-engine\",\"result\":$offline}"

py_args=(--model "$model" --prompts "$prompts" --tasks "$tasks" --seconds "$secs" --warmup "$warmup"
  --threads "$threads" --max-new-tokens 16)
torch=$(side torch "$py" "$root/scripts/bench_torch_mixed.py" "${py_args[@]}" --per-task $((window / tasks)) | grep rows_per_s | tail -1)
echo "$torch"
peft=$(side peft "$py" "$root/scripts/bench_hf_peft.py" "${py_args[@]}" --modes per-task --window "$window" | grep rows_per_s | tail -1)
echo "$peft"

"$py" - "$shape" "$secs" "$threads" "$decode" "$server" "$offline" "$torch" "$peft" <<'PY'
import json, sys
shape, secs, threads, decode = sys.argv[1:5]
s, o, t, p = (json.loads(a) for a in sys.argv[5:9])
print(f"\n{shape}, {secs} s measured per side, {threads} threads, 16 tasks, 64 requests at a time, "
      f"≤ 16 new tokens, f32 CPU\n")
print("| side | rows/s | generated tokens/s | notes |")
print("|---|---:|---:|---|")
print(f"| promptd server (HTTP, {decode}) | {s['rows_per_s']:.1f} | {s['generated_tokens_per_s']:.0f} | "
      f"p50 {s['latency_ms']['p50']:.0f} ms, p99 {s['latency_ms']['p99']:.0f} ms; "
      f"{s['mean_rows_per_pass']:.1f} rows per pass; statuses {json.dumps(s['statuses'])} |")
print(f"| offline engine ({o['mode']}, batches of {o['batch_size']}) | {o['rows_per_s']:.1f} | "
      f"{o['generated_tokens_per_s']:.0f} | no HTTP, same generator |")
print(f"| hand-built torch mixed batch | {t['rows_per_s']:.1f} | {t['generated_tokens_per_s']:.0f} | "
      f"one generate() per window of {t['window']}, {t['mean_tasks_per_window']} tasks each |")
print(f"| transformers + PEFT per task | {p['rows_per_s']:.1f} | {p['generated_tokens_per_s']:.0f} | "
      f"one generate() per task in each window of 64 |")
r = s["rows_per_s"]
print(f"\nserver / torch {r / t['rows_per_s']:.2f}, server / PEFT {r / p['rows_per_s']:.2f}, "
      f"server / offline {r / o['rows_per_s']:.2f}")
PY
