#!/usr/bin/env bash
# Mixed-task batching (continuous and static decoding) vs per-task batching vs no batching,
# over 1, 8, 64 and 1000 tasks, measured side by side in one run on this machine
# (BENCHMARKS.md, "Batching modes").
#   scripts/bench-batching.sh [mini|small] [seconds per point] [concurrency]
# Needs release builds (make build build-dev). Writes bench-models/ (git-ignored).
set -euo pipefail
shape="${1:-mini}"; secs="${2:-10}"; concurrency="${3:-64}"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/bench-common.sh"
prepare "$shape" 1000
for mode in mixed mixed-static per-task batch1; do
  case "$mode" in
    mixed) flags=(--batching mixed --decode continuous) ;;
    mixed-static) flags=(--batching mixed --decode static) ;;
    per-task) flags=(--batching per-task) ;;
    batch1) flags=(--max-batch-size 1) ;;
  esac
  start_server "${flags[@]}"
  for tasks in 1 8 64 1000; do
    result=$("$dev" bench --url "$url" --tasks "$tasks" --concurrency "$concurrency" \
      --duration-s "$secs" --warmup-s 2 --max-new-tokens 16 --json 2>/dev/null)
    echo "{\"mode\":\"$mode\",\"result\":$result}"
  done
  stop_server
done
