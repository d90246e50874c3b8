#!/usr/bin/env bash
# Fairness under load (BENCHMARKS.md, "Flood"): 8 quiet tasks at a steady open-loop rate, measured
# alone and then while one other task floods at 10x each quiet task's rate.
#   scripts/bench-flood.sh [mini|small] [seconds] [quiet rate per task, req/s]
set -euo pipefail
shape="${1:-mini}"; secs="${2:-20}"; per_task="${3:-2}"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/bench-common.sh"
prepare "$shape" 1000
quiet_rate=$(python3 -c "print($per_task * 8)")
flood_rate=$(python3 -c "print($per_task * 10)")
quiet=(--first-task 1 --tasks 8 --rate "$quiet_rate" --max-new-tokens 16 --duration-s "$secs" --warmup-s 3 --json)
start_server
alone=$("$dev" bench --url "$url" "${quiet[@]}" 2>/dev/null)
echo "{\"run\":\"quiet alone\",\"result\":$alone}"
# The flood starts first and outlasts the quiet run.
"$dev" bench --url "$url" --first-task 0 --tasks 1 --rate "$flood_rate" --max-new-tokens 16 \
  --duration-s "$(python3 -c "print($secs + 6)")" --warmup-s 0 --seed 99 --json \
  >"$models/flood.json" 2>/dev/null &
flood_pid=$!
sleep 2
flooded=$("$dev" bench --url "$url" "${quiet[@]}" 2>/dev/null)
wait "$flood_pid"
echo "{\"run\":\"quiet with flood\",\"result\":$flooded}"
echo "{\"run\":\"flood\",\"result\":$(cat "$models/flood.json")}"
stop_server
