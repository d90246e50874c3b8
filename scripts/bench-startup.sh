#!/usr/bin/env bash
# Start-up time and resident memory with N prompt files (BENCHMARKS.md, "Start-up and memory").
#   scripts/bench-startup.sh <count> [d_model] [shape]
set -euo pipefail
count="${1:?count}"; d_model="${2:-512}"; shape="${3:-small}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/promptd"; dev="$root/target/release/promptd-dev"; models="$root/bench-models"
model="$models/$shape"; prompts="$models/prompts-$d_model-$count"
[[ -f "$model/model.safetensors" ]] || "$dev" make-model --shape "$shape" --out "$model" >&2
[[ -d "$prompts" ]] || "$dev" make-prompts --count "$count" --d-model "$d_model" --out "$prompts" >&2
# The model alone, for the baseline resident memory.
empty="$(mktemp -d)"
measure() {
  local dir="$1" port=18097
  local start; start=$(date +%s.%N)
  "$bin" serve --model "$model" --prompts "$dir" --addr "127.0.0.1:$port" --grpc-addr off --audit-log off >/dev/null 2>&1 &
  local pid=$!
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.05; done
  local ready; ready=$(echo "$(date +%s.%N) - $start" | bc)
  local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  local loaded; loaded=$(curl -sf "http://127.0.0.1:$port/readyz" | sed 's/.*"prompts":\([0-9]*\).*/\1/')
  kill -TERM "$pid"; wait "$pid" || true
  echo "$ready $rss $loaded"
}
read -r t0 rss0 _ < <(measure "$empty")
read -r t1 rss1 n < <(measure "$prompts")
raw=$((count * 20 * d_model * 4))
echo "{\"prompts\": $n, \"ready_s\": $t1, \"ready_s_no_prompts\": $t0, \"rss_kib\": $rss1, \"rss_kib_no_prompts\": $rss0, \"bytes_per_prompt\": $(( (rss1 - rss0) * 1024 / count )), \"raw_bytes_per_prompt\": $(( raw / count ))}"
rmdir "$empty"
