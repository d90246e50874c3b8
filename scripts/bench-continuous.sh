#!/usr/bin/env bash
# Continuous vs static decoder batching with outputs of mixed lengths (1 to 64 tokens), measured
# side by side in one run (BENCHMARKS.md, "Continuous batching").
#   scripts/bench-continuous.sh [mini|small] [seconds per point] [concurrency]
# Closed loop gives throughput; then an open loop at 60% of static's closed-loop throughput
# gives latency at the same offered load for both. Needs release builds (make build build-dev).
set -euo pipefail
shape="${1:-mini}"; secs="${2:-20}"; concurrency="${3:-64}"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/bench-common.sh"
prepare "$shape" 1000
common=(--tasks 64 --min-new-tokens 1 --max-new-tokens 64 --duration-s "$secs" --warmup-s 3 --json)
declare -A closed
for decode in static continuous; do
  start_server --decode "$decode" --max-batch-size 32
  closed[$decode]=$("$dev" bench --url "$url" --concurrency "$concurrency" "${common[@]}" 2>/dev/null)
  echo "{\"decode\":\"$decode\",\"load\":\"closed\",\"result\":${closed[$decode]}}"
  stop_server
done
rate=$(python3 -c "import json,sys; print(round(0.6*json.loads(sys.argv[1])['requests_per_s'],1))" "${closed[static]}")
for decode in static continuous; do
  start_server --decode "$decode" --max-batch-size 32
  open=$("$dev" bench --url "$url" --rate "$rate" "${common[@]}" 2>/dev/null)
  echo "{\"decode\":\"$decode\",\"load\":\"open\",\"rate\":$rate,\"result\":$open}"
  stop_server
done
