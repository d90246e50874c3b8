#!/usr/bin/env bash
# The engine against transformers on the same mixed-task batch (BENCHMARKS.md, "Engine vs
# transformers"): 64 rows over 16 tasks (20-row prompts), short and long (~400-token) inputs,
# 1 and 16 new tokens, f32 on CPU, both at the same thread count, run side by side. The
# ratio is transformers' median time over promptd's; "same tokens" compares the greedy outputs.
#   scripts/bench-vs-hf.sh [mini|small] [threads] [repeats]
# Needs release builds (make build build-dev) and python3 with torch + transformers (PYTHON=...).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shape="${1:-small}"; threads="${2:-2}"; repeats="${3:-10}"
dev="${DEV:-$root/target/release/promptd-dev}"; py="${PYTHON:-python3}"
case "$shape" in mini) d_model=128 ;; small) d_model=512 ;; *) echo "shape: mini or small" >&2; exit 2 ;; esac
models="$root/bench-models"; model="$models/$shape"; prompts="$models/prompts-$d_model-16"
[[ -f "$model/model.safetensors" ]] || "$dev" make-model --shape "$shape" --out "$model" >&2
[[ -d "$prompts" ]] || "$dev" make-prompts --count 16 --length 20 --d-model "$d_model" --out "$prompts" >&2
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
"$py" - "$work" <<'PY'
import json, random, sys
words = "the quick brown fox jumps over lazy dogs while seven tired cooks argue about soup".split()
rng = random.Random(0)
for name, n in [("short", 8), ("long", 330)]:
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        for i in range(64):
            f.write(json.dumps({"task": f"task{i % 16:05d}", "input": " ".join(rng.choice(words) for _ in range(n))}) + "\n")
PY
echo "| inputs | new tokens | promptd ms | transformers ms | transformers / promptd | same tokens |"
echo "|---|---:|---:|---:|---:|---|"
for inputs in short long; do
  for new in 1 16; do
    args=(--model "$model" --prompts "$prompts" --rows "$work/$inputs.jsonl" --new-tokens "$new" --repeats "$repeats" --threads "$threads")
    ours="$("$dev" engine-pass "${args[@]}" 2>/dev/null)"
    theirs="$("$py" "$root/scripts/bench_engine_vs_hf.py" "${args[@]}" 2>/dev/null)"
    "$py" - "$inputs" "$new" "$ours" "$theirs" <<'PY'
import json, sys
inputs, new, a, b = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
same = "yes" if a["tokens"] == b["tokens"] else f"no ({sum(x == y for x, y in zip(a['tokens'], b['tokens']))}/{len(a['tokens'])} rows)"
print(f"| {inputs} | {new} | {a['median_ms']:.1f} | {b['median_ms']:.1f} | {b['median_ms'] / a['median_ms']:.2f} | {same} |")
PY
  done
done
