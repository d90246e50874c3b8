#!/usr/bin/env bash
# promptd against CTranslate2 and transformers where a user compares them (issue 29;
# BENCHMARKS.md, "promptd, CTranslate2 and transformers in f32 and int8"), side by side in one
# run on this machine, t5-small's shape (bench-models/small), greedy, 16 new tokens at most,
# 2 threads each:
#   engine: one batch of 1, 8 or 64 rows, short (8-word) or long (~400-token) inputs, no soft
#     prompt anywhere (CTranslate2 has none): promptd-dev engine-pass --dtype f32|int8,
#     scripts/bench_ct2.py --compute-type float32|int8, scripts/bench_engine_vs_hf.py;
#     rows/s = rows / the median pass, ms/token = the median pass / its most generated tokens.
#   server: promptd serve --dtype f32|int8 --max-batch-size 64 with a 1-row prompt under promptd-dev bench, 64
#     closed-loop clients each sending one of the engine's 64 short rows (--inputs-file), and
#     one client alone; rows/s = clients / mean latency (the closed loop's rate: answers come
#     in waves, so rows counted in a window jump by whole waves), ms/token = mean latency /
#     mean generated tokens per row (what one client waits per token).
# The CPU's model and flags are printed first: the kernels' ranking depends on them.
#   scripts/bench-vs-ct2.sh [repeats] [server seconds]
# Needs release builds (make build build-dev) and python3 with torch, transformers, ctranslate2
# and tokenizers (PYTHON=...; defaults to .venv/bin/python, else .tools/probe/bin/python).
set -euo pipefail
repeats="${1:-3}"; secs="${2:-20}"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/bench-common.sh"
pick_python
prepare small 1
one_row_prompt
grep -m1 "model name" /proc/cpuinfo | sed 's/^/# cpu: /'
echo "# flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|avx_vnni|amx_int8|amx_bf16)$' | tr '\n' ' ')"
work="$(mktemp -d)"; trap 'rm -rf "$work"; [[ -n "${server_pid:-}" ]] && stop_server' EXIT
"$py" "$root/scripts/bench_rows.py" --tokenizer "$model/tokenizer.json" --tasks 0 --out "$work" >&2

run() {  # run <engine> <rows file>: one JSON line {"median_ms", "tokens", ...}
  local args=(--model "$model" --rows "$2" --new-tokens 16 --repeats "$repeats" --threads 2)
  case "$1" in
    promptd-f32) "$dev" engine-pass "${args[@]}" --dtype f32 ;;
    promptd-int8) "$dev" engine-pass "${args[@]}" --dtype int8 ;;
    ct2-f32) "$py" "$root/scripts/bench_ct2.py" "${args[@]}" --compute-type float32 ;;
    ct2-int8) "$py" "$root/scripts/bench_ct2.py" "${args[@]}" --compute-type int8 ;;
    transformers) "$py" "$root/scripts/bench_engine_vs_hf.py" "${args[@]}" ;;
  esac 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
}

echo "| level | inputs | batch | engine | rows/s | ms/token |"
echo "|---|---|---:|---|---:|---:|"
# SERVER_ONLY=1 skips the engine rows.
for inputs in $([[ -n "${SERVER_ONLY:-}" ]] || echo short long); do
  for batch in 1 8 64; do
    head -n "$batch" "$work/$inputs.jsonl" > "$work/rows.jsonl"
    for engine in promptd-f32 promptd-int8 ct2-f32 ct2-int8 transformers; do
      run "$engine" "$work/rows.jsonl" | "$py" -c '
import json, sys
r = json.loads(sys.stdin.read()); steps = max(len(t) for t in r["tokens"]); ms = r["median_ms"]
rows_per_s = int(sys.argv[2]) / ms * 1e3
print(f"| engine | {sys.argv[1]} | {sys.argv[2]} | {sys.argv[3]} | {rows_per_s:.1f} | {ms / steps:.2f} |")
' "$inputs" "$batch" "$engine"
    done
  done
done

for dtype in f32 int8; do
  model_prompts="$prompts"
  "$bin" serve --model "$model" --prompts "$model_prompts" --addr "127.0.0.1:$port" --grpc-addr off \
    --audit-log off --max-queue 4096 --max-batch-size 64 --dtype "$dtype" >/dev/null 2>"$models/server.log" &
  server_pid=$!
  until curl -sf "$url/readyz" >/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$models/server.log" >&2; exit 1; }
    sleep 0.2
  done
  for clients in 64 1; do
    "$dev" bench --url "$url" --tasks 1 --concurrency "$clients" --duration-s "$secs" --warmup-s 3 \
      --inputs-file "$work/short.jsonl" --max-new-tokens 16 --json 2>/dev/null | "$py" -c '
import json, sys
r = json.loads(sys.stdin.read())
# Each client waits this long per token of its own answer (as the engine rows: pass / steps).
per_token = r["breakdown"]["request_ms"] / r["tokens_per_row"]; rows_per_s = r["rows_per_s_closed_loop"]
print(f"| server | short | {sys.argv[2]} clients | promptd-{sys.argv[1]} | {rows_per_s:.1f} | {per_token:.2f} |")
' "$dtype" "$clients"
  done
  stop_server; server_pid=""
done
