#!/usr/bin/env bash
# Re-tunes the demo prompts with `promptd tune` on the frozen demo model (`make demo-prompts`).
#
#   scripts/demo-prompts.sh [TASK...]          (default: every demo task)
#
# For each task: a 20-row soft prompt tuned on tests/fixtures/demo/<task>.train.jsonl (inputs
# WITHOUT any text prefix), the best of the dev evaluations kept, written to prompts/<task>.safetensors
# and its report to prompts/reports/<task>.json, with its curves drawn beside it (<task>.svg).
# Seeded: the same model, data, binary and threads give the same prompt bytes (the reports'
# timings differ, nothing else).
# The served demo tasks are the five pretrained ones, `verdict` (never pretrained) and `dish`
# (never pretrained either): no prompt teaches this model to copy a dish's name (BENCHMARKS.md
# §12), so `dish` is a LoRA (rank 8 on q and v, Adam), written as a PEFT folder prompts/dish/.
# Env: PROMPTD (binary; default target/release/promptd), DEMO_MODEL, DEMO_DATA, DEMO_PROMPTS,
# ENSEMBLE_SEEDS (default "1 2 3 4 5").
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${PROMPTD:-target/release/promptd}"
model="${DEMO_MODEL:-tests/fixtures/models/demo-reviews}"
data="${DEMO_DATA:-tests/fixtures/demo}"
out="${DEMO_PROMPTS:-prompts}"

# The demo tasks and how each prompt starts (paper §3.2): the class labels' embeddings for the
# classification tasks, sampled vocabulary for the generation tasks, unless INIT says otherwise.
declare -A LABELS=(
  [sentiment]="positive,negative,mixed"
  [rating]="1,2,3,4,5"
  [verdict]="good,fine,bad"
)
# Steps and learning rate (Adafactor): the pretrained tasks need few; the output the model was
# never trained to give (verdict's labels) and the longest output (translate) need more.
declare -A STEPS=([translate]=1000 [verdict]=1500 [dish]=1500)
declare -A LR=([verdict]=1.0 [dish]=1.0)
# verdict starts from uniform noise: on dev it reached 99.3% from it, 98.3% from sampled
# vocabulary and 88.0% from its labels' embeddings (make demo-study; BENCHMARKS.md §12).
declare -A INIT=([verdict]=random-uniform)
ALL=(sentiment aspects rating name translate verdict dish)
# Tasks tuned as a LoRA instead of a prompt, with PEFT's usual optimizer.
declare -A LORA=([dish]="--lora-rank 8 --lora-alpha 16 --lora-targets q,v --optimizer adam --lr 0.003")
# The demo ensemble (paper §6): verdict tuned five more times, seeds 1 to 5, served as
# verdict-s1 .. verdict-s5 and combined by the ensemble verdict-x5
# (prompts/verdict-x5.ensemble.json; `ensemble` as a TASK argument makes just these).
ENSEMBLE_TASK=verdict
read -ra ENSEMBLE_SEEDS <<< "${ENSEMBLE_SEEDS:-1 2 3 4 5}"
tasks=("$@")
[[ ${#tasks[@]} -gt 0 ]] || tasks=("${ALL[@]}" ensemble)

[[ -x "$bin" ]] || { echo "no $bin: run make build first" >&2; exit 1; }
mkdir -p "$out/reports"

# tune NAME TASK SEED: $out/NAME.safetensors and its report, for TASK with its settings.
tune() {
  local name="$1" task="$2" seed="$3" init steps lr
  [[ -f "$data/$task.train.jsonl" ]] || { echo "unknown task $task (no $data/$task.train.jsonl)" >&2; exit 1; }
  if [[ -n "${INIT[$task]:-}" ]]; then
    init=(--init "${INIT[$task]}")
  elif [[ -n "${LABELS[$task]:-}" ]]; then
    init=(--init class-labels --labels "${LABELS[$task]}")
  else
    init=(--init sampled-vocab)
  fi
  steps="${STEPS[$task]:-300}" lr="${LR[$task]:-0.3}"
  if [[ -n "${LORA[$task]:-}" ]]; then
    read -ra lora <<< "${LORA[$task]}"
    echo "== $name: LoRA ${lora[*]}, $steps steps, seed $seed"
    rm -rf "$out/$name"
    "$bin" tune --model "$model" \
      --train "$data/$task.train.jsonl" --dev "$data/$task.dev.jsonl" \
      --method lora "${lora[@]}" --steps "$steps" --eval-every 100 --seed "$seed" \
      --out "$out/$name" --report "$out/reports/$name.json" --quiet
  else
    echo "== $name: ${init[*]}, $steps steps, lr $lr, seed $seed"
    "$bin" tune --model "$model" \
      --train "$data/$task.train.jsonl" --dev "$data/$task.dev.jsonl" \
      --prompt-length 20 "${init[@]}" --steps "$steps" --lr "$lr" --eval-every 50 --seed "$seed" \
      --out "$out/$name.safetensors" --report "$out/reports/$name.json" --quiet
  fi
  python3 - "$out/reports/$name.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"   best dev accuracy {r['best_metric']:.3f} at step {r['best_step']}, "
      f"{r['steps_per_second']:.2f} steps/s")
EOF
}

for task in "${tasks[@]}"; do
  if [[ "$task" != ensemble ]]; then
    tune "$task" "$task" 0
    continue
  fi
  members=()
  for seed in "${ENSEMBLE_SEEDS[@]}"; do
    tune "$ENSEMBLE_TASK-s$seed" "$ENSEMBLE_TASK" "$seed"
    members+=("\"$ENSEMBLE_TASK-s$seed\"")
  done
  # As the server stores PUT /v1/ensembles/verdict-x5, version 1.
  (IFS=,; printf '{\n  "members": [%s],\n  "combine": "vote",\n  "version": 1\n}\n' "${members[*]}") \
    > "$out/$ENSEMBLE_TASK-x5.ensemble.json"
  echo "== $ENSEMBLE_TASK-x5: the ensemble of ${members[*]}"
done
