#!/usr/bin/env bash
# Where the time goes (BENCHMARKS.md, "Profile"): per op family, the encoder pass and one decode
# step, promptd (`promptd-dev engine-pass --profile`, spans around its ops) next to transformers
# (`scripts/bench_engine_vs_hf.py --profile`, torch.profiler self times by op name), on the
# bench-vs-hf.sh batches cut to 1, 16 and 64 rows, short and long (~400-token) inputs, 16 tasks,
# 4 new tokens, f32 on CPU at the same thread count. Prints one markdown table per batch.
#   scripts/profile-vs-hf.sh [mini|small] [threads] [repeats]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shape="${1:-small}"; threads="${2:-2}"; repeats="${3:-3}"
dev="${DEV:-$root/target/release/promptd-dev}"
if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"; elif [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py=python3; fi
case "$shape" in mini) d_model=128 ;; small) d_model=512 ;; *) echo "shape: mini or small" >&2; exit 2 ;; esac
model="$root/bench-models/$shape"; prompts="$root/bench-models/prompts-$d_model-16"
[[ -f "$model/model.safetensors" ]] || "$dev" make-model --shape "$shape" --out "$model" >&2
[[ -d "$prompts" ]] || "$dev" make-prompts --count 16 --length 20 --d-model "$d_model" --out "$prompts" >&2
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
"$py" "$root/scripts/bench_rows.py" --tokenizer "$model/tokenizer.json" --tasks 16 --out "$work"
for inputs in short long; do
  for rows in 1 16 64; do
    head -n "$rows" "$work/$inputs.jsonl" >"$work/batch.jsonl"
    args=(--model "$model" --prompts "$prompts" --rows "$work/batch.jsonl" --new-tokens 4 --repeats "$repeats" --threads "$threads" --profile)
    ours="$("$dev" engine-pass "${args[@]}" --no-tokens 2>"$work/err")" || { cat "$work/err" >&2; exit 1; }
    theirs="$("$py" "$root/scripts/bench_engine_vs_hf.py" "${args[@]}" 2>"$work/err")" || { cat "$work/err" >&2; exit 1; }
    "$py" - "$inputs" "$rows" "$ours" "$theirs" <<'PY'
import json, sys
inputs, rows, a, b = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])["profile"], json.loads(sys.argv[4])["profile"]
print(f"\n**{rows} row(s), {inputs} inputs** (ms; decode: per step)\n")
print("| family | promptd encoder pass | transformers encoder pass | promptd decode step | transformers decode step |")
print("|---|---:|---:|---:|---:|")
keys = [k for k in a["encoder_pass"] if k != "total_ms"] + ["total_ms"]
for k in keys:
    cells = [a["encoder_pass"].get(k, 0), b["encoder_pass"].get(k, 0), a["decode_step"].get(k, 0), b["decode_step"].get(k, 0)]
    name = "**total**" if k == "total_ms" else k
    print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
PY
  done
done
