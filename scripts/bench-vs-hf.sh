#!/usr/bin/env bash
# The engine against an anchor on the same batch (BENCHMARKS.md, "Engine vs transformers" and
# "vs CTranslate2"): 64 rows, short (8-word), long (~400-token) and varied (4 to 32 words)
# inputs, 1 and 16 new tokens,
# f32 on CPU, both at the same thread count, run side by side.
#   transformers (default): the rows over 16 tasks (20-row prompts prepended as inputs_embeds,
#     attn sdpa), scripts/bench_engine_vs_hf.py;
#   ctranslate2: the same rows without prompts (it has none), scripts/bench_ct2.py.
# The ratio is the anchor's median time over promptd's; "same tokens" compares the greedy outputs.
#   scripts/bench-vs-hf.sh [mini|small] [threads] [repeats] [transformers|ctranslate2]
# Needs release builds (make build build-dev) and python3 with torch + transformers, and
# ctranslate2 for that anchor (PYTHON=...; defaults to .venv/bin/python when present).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shape="${1:-small}"; threads="${2:-2}"; repeats="${3:-10}"; anchor="${4:-transformers}"
dev="${DEV:-$root/target/release/promptd-dev}"
if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"; elif [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py=python3; fi
case "$shape" in mini) d_model=128 ;; small) d_model=512 ;; *) echo "shape: mini or small" >&2; exit 2 ;; esac
models="$root/bench-models"; model="$models/$shape"; prompts="$models/prompts-$d_model-16"
[[ -f "$model/model.safetensors" ]] || "$dev" make-model --shape "$shape" --out "$model" >&2
case "$anchor" in
  transformers)
    [[ -d "$prompts" ]] || "$dev" make-prompts --count 16 --length 20 --d-model "$d_model" --out "$prompts" >&2
    script="$root/scripts/bench_engine_vs_hf.py"; tasks=16; with_prompts=(--prompts "$prompts") ;;
  ctranslate2) script="$root/scripts/bench_ct2.py"; tasks=0; with_prompts=() ;;
  *) echo "anchor: transformers or ctranslate2" >&2; exit 2 ;;
esac
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
"$py" "$root/scripts/bench_rows.py" --tokenizer "$model/tokenizer.json" --tasks "$tasks" --out "$work"
echo "| inputs | new tokens | promptd ms | $anchor ms | $anchor / promptd | same tokens |"
echo "|---|---:|---:|---:|---:|---|"
for inputs in ${INPUTS:-short long varied}; do
  for new in 1 16; do
    args=(--model "$model" "${with_prompts[@]}" --rows "$work/$inputs.jsonl" --new-tokens "$new" --repeats "$repeats" --threads "$threads")
    ours="$("$dev" engine-pass "${args[@]}" 2>"$work/err")" || { cat "$work/err" >&2; exit 1; }
    theirs="$("$py" "$script" "${args[@]}" 2>"$work/err")" || { cat "$work/err" >&2; exit 1; }
    "$py" - "$inputs" "$new" "$ours" "$theirs" <<'PY'
import json, sys
inputs, new, a, b = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
same = "yes" if a["tokens"] == b["tokens"] else f"no ({sum(x == y for x, y in zip(a['tokens'], b['tokens']))}/{len(a['tokens'])} rows)"
print(f"| {inputs} | {new} | {a['median_ms']:.1f} | {b['median_ms']:.1f} | {b['median_ms'] / a['median_ms']:.2f} | {same} |")
PY
  done
done
