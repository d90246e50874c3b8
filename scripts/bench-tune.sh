#!/usr/bin/env bash
# Prompt-tuning benchmarks (BENCHMARKS.md, "Prompt tuning"):
#   steps  — `promptd tune` steps/s, tokens/s and peak RSS on the test models and t5-small shapes,
#            each next to the same step in PyTorch + transformers (scripts/bench_tune_torch.py, run
#            with $PYTHON, default .venv/bin/python, when it has torch and transformers)
#   serve  — serving throughput and p99 with one tuning job running on the server vs none
#   scripts/bench-tune.sh [steps|serve|all] [mini|small] [seconds]
set -euo pipefail
what="${1:-all}"; shape="${2:-mini}"; secs="${3:-20}"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/bench-common.sh"
work="$models/tune"
py="${PYTHON:-$root/.venv/bin/python}"
mkdir -p "$work"

# data <file> <rows> <seed>: labelled rows of 8-24 fixture words, target yes/no.
data() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, random, sys
path, rows, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
words = ("the a of to and in is was for on that with as by at from it his an were are which "
         "river city model prompt task tenant batch token server engine decoder encoder frozen soft "
         "vector matrix weight memory device kernel queue shared fast slow quick brown fox").split()
rng = random.Random(seed)
with open(path, "w") as f:
    for _ in range(rows):
        s = [rng.choice(words) for _ in range(rng.randint(8, 24))]
        f.write(json.dumps({"input": " ".join(s), "target": "yes" if "river" in s else "no"}) + "\n")
PY
}

steps_bench() {
  data "$work/train.jsonl" 256 1
  "$dev" make-model --shape small --out "$models/small" >/dev/null 2>&1 || true
  for m in "$root/tests/fixtures/models/t5-v1_0-tiny" "$root/tests/fixtures/models/t5-v1_1-tiny" "$models/small"; do
    for batch in 8 32; do
      /usr/bin/time -f "%M" -o "$work/rss" "$bin" tune --model "$m" --train "$work/train.jsonl" \
        --prompt-length 100 --steps 20 --batch-size "$batch" --out "$work/p.safetensors" \
        --report "$work/report.json" --quiet 2>/dev/null
      python3 - "$m" "$batch" "$work/report.json" "$(cat "$work/rss")" <<'PY'
import json, os, sys
m, batch, path, rss = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
r = json.load(open(path))
print(json.dumps({"model": os.path.basename(m), "batch_size": batch, "prompt_length": 100,
                  "steps": r["steps"], "steps_per_s": round(r["steps_per_second"], 3),
                  "tokens_per_s": round(r["tokens_per_second"], 1),
                  "s_per_step": round(r["train_seconds"] / r["steps"], 3),
                  "peak_rss_mb": round(rss / 1024, 1)}))
PY
      if "$py" -c "import torch, transformers" 2>/dev/null; then
        "$py" "$root/scripts/bench_tune_torch.py" --model "$m" --train "$work/train.jsonl" \
          --prompt-length 100 --batch-size "$batch" --steps 20 --threads 2
      fi
    done
  done
}

serve_bench() {
  prepare "$shape" 1000
  data "$work/job.jsonl" 64 2
  local body
  body=$(python3 -c "import json,sys; rows=[json.loads(l) for l in open('$work/job.jsonl')]; print(json.dumps({'train': rows, 'steps': 20000, 'prompt_length': 20, 'batch_size': 32, 'dropout': 0.1}))")
  start_server --max-batch-size 32
  for mode in closed open; do
    local load=(--concurrency 64)
    [[ "$mode" == open ]] && load=(--rate "${RATE:-20}" --concurrency 256)
    for tuning in none one; do
      local job=""
      if [[ "$tuning" == one ]]; then
        job=$(curl -sf -X POST "$url/v1/tasks/tuned/tune" -H 'content-type: application/json' -d "$body" |
              python3 -c "import json,sys; print(json.load(sys.stdin)['job'])")
        until curl -sf "$url/v1/tune-jobs/$job" | grep -q '"state":"running"'; do sleep 0.2; done
      fi
      local steps0 secs0
      steps0=$(curl -sf "$url/metrics" | awk '/^promptd_tune_steps_total/ {print $2}')
      secs0=$(curl -sf "$url/metrics" | awk '/^promptd_tune_engine_seconds_total/ {print $2}')
      result=$("$dev" bench --url "$url" --tasks 64 "${load[@]}" --max-new-tokens 16 \
               --duration-s "$secs" --warmup-s 3 --json 2>/dev/null)
      local steps1 secs1
      steps1=$(curl -sf "$url/metrics" | awk '/^promptd_tune_steps_total/ {print $2}')
      secs1=$(curl -sf "$url/metrics" | awk '/^promptd_tune_engine_seconds_total/ {print $2}')
      echo "{\"load\":\"$mode\",\"tuning\":\"$tuning\",\"tune_steps\":$(python3 -c "print($steps1-$steps0)"),\"tune_engine_s\":$(python3 -c "print(round($secs1-$secs0,2))"),\"result\":$result}"
      [[ -n "$job" ]] && curl -sf -X DELETE "$url/v1/tune-jobs/$job" >/dev/null
      sleep 1
    done
  done
  stop_server
}

case "$what" in
  steps) steps_bench ;;
  serve) serve_bench ;;
  all) steps_bench; serve_bench ;;
  *) echo "usage: $0 [steps|serve|all] [mini|small] [seconds]" >&2; exit 2 ;;
esac
