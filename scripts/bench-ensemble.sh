#!/usr/bin/env bash
# What an N-prompt ensemble costs against N task requests (BENCHMARKS.md §13):
#
#   scripts/bench-ensemble.sh [small|mini]       (default small: t5-small's shape, random weights)
#
# One release server on the bench model with 16 random 20-row prompts; ensembles of the first
# 2, 5 and 10 of them; scripts/bench_ensemble.py times one ensemble request against the same
# inputs sent to each member (at once and one by one) and reads rows per pass from /metrics.
# Writes target/bench-ensemble/cost.{md,json}. Run nothing else meanwhile (2 cores).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/bench-common.sh
[[ -x "$bin" && -x "$dev" ]] || make build build-dev >&2
prepare "${1:-small}" 16
start_server
trap stop_server EXIT
tasks=$(curl -sf "$url/v1/prompts" | python3 -c 'import json,sys; print(",".join(p["task"] for p in json.load(sys.stdin)["prompts"]))')
python3 scripts/bench_ensemble.py --url "$url" --tasks "$tasks" --sizes 2,5,10 --inputs 1,8
