#!/usr/bin/env bash
# Mixed-task batching vs per-task batching vs no batching, over 1, 8, 64 and 1000 tasks,
# measured side by side in one run on this machine (BENCHMARKS.md, "Batching modes").
#   scripts/bench-batching.sh [mini|small] [seconds per point] [concurrency]
# Needs a release build (make build). Writes bench-models/ (git-ignored).
set -euo pipefail
shape="${1:-mini}"
secs="${2:-10}"
concurrency="${3:-64}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/promptd"
models="$root/bench-models"
model="$models/$shape"
case "$shape" in
  mini) d_model=128 ;;
  small) d_model=512 ;;
  *) echo "shape: mini or small" >&2; exit 2 ;;
esac
prompts="$models/prompts-$d_model-1000"
[[ -f "$model/model.safetensors" ]] || "$bin" make-model --shape "$shape" --out "$model" >&2
[[ -d "$prompts" ]] || "$bin" make-prompts --count 1000 --length 20 --d-model "$d_model" --out "$prompts" >&2
port=18091
for mode in mixed per-task batch1; do
  extra=(--batching mixed)
  [[ "$mode" == per-task ]] && extra=(--batching per-task)
  [[ "$mode" == batch1 ]] && extra=(--max-batch-size 1)
  "$bin" serve --model "$model" --prompts "$prompts" --addr "127.0.0.1:$port" --grpc-addr off \
    --audit-log off --max-queue 4096 "${extra[@]}" >/dev/null 2>"$models/server-$mode.log" &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.2; done
  for tasks in 1 8 64 1000; do
    printf '{"mode":"%s","result":' "$mode"
    "$bin" bench --url "http://127.0.0.1:$port" --tasks "$tasks" --concurrency "$concurrency" \
      --duration-s "$secs" --warmup-s 2 --max-new-tokens 16 --json 2>/dev/null | tr -d '\n'
    printf '}\n'
  done
  kill -TERM "$pid"; wait "$pid" || true
done
