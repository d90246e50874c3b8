#!/usr/bin/env bash
# The HTTP server at saturation vs the offline engine running the same requests in full
# batches in-process (BENCHMARKS.md, "Server overhead"). Same model, prompts, inputs, lengths.
#   scripts/bench-overhead.sh [mini|small] [seconds] [tasks]
set -euo pipefail
shape="${1:-mini}"; secs="${2:-20}"; tasks="${3:-64}"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/bench-common.sh"
prepare "$shape" 1000
common=(--tasks "$tasks" --max-new-tokens 16 --duration-s "$secs" --warmup-s 3 --json)
offline=$("$dev" bench --offline --model "$model" --prompts "$prompts" --batch-size 32 "${common[@]}" 2>/dev/null)
echo "{\"impl\":\"offline-engine\",\"result\":$offline}"
for decode in static continuous; do
  start_server --decode "$decode" --max-batch-size 32
  served=$("$dev" bench --url "$url" --concurrency 64 "${common[@]}" 2>/dev/null)
  echo "{\"impl\":\"server\",\"decode\":\"$decode\",\"result\":$served}"
  stop_server
done
