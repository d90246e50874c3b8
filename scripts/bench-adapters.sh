#!/usr/bin/env bash
# Adapters mixed per row (BENCHMARKS.md §16): one batch of 64 rows through the engine, each row
# with its own adapter, against the same rows with soft prompts and with no task; both ways to
# apply many LoRAs (--lora-kernel gathered = BGMV, grouped = SGMV); and PEFT's own mixed-LoRA
# batch (`adapter_names=`) on the same model, adapters and rows.
#   scripts/bench-adapters.sh [repeats] [threads]
# Needs release builds (make build-dev) and python3 with torch, transformers and peft
# (PYTHON=...; defaults to .venv/bin/python when present). Adapters are made once with PEFT
# (scripts/bench_adapters.py make) into bench-models/adapters-64.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
repeats="${1:-5}"; threads="${2:-2}"
dev="${DEV:-$root/target/release/promptd-dev}"
if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"; elif [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py=python3; fi
model="$root/bench-models/small"; adapters="$root/bench-models/adapters-64"
[[ -f "$model/model.safetensors" ]] || "$dev" make-model --shape small --out "$model" >&2
[[ -f "$adapters/rows-lora.jsonl" ]] || "$py" "$root/scripts/bench_adapters.py" make --model "$model" --out "$adapters" >&2
grep -m1 "model name" /proc/cpuinfo | sed 's/^/# /'
echo "# $(nproc) cores, $threads threads, median of $repeats"
pass() { # case kernel new_tokens -> median ms
  "$dev" --lora-kernel "$2" engine-pass --model "$model" --prompts "$adapters" \
    --rows "$adapters/rows-$1.jsonl" --new-tokens "$3" --repeats "$repeats" --threads "$threads" |
    "$py" -c 'import json,sys; d=json.load(sys.stdin); print("%.0f %d" % (d["median_ms"], d["generated_tokens"]))'
}
echo "| rows (64) | kernel | encoder + 1 step, ms | 16 new tokens, ms | tokens | ÷ soft prompts (16) |"
echo "|---|---|---:|---:|---:|---:|"
base=""
for spec in plain:gathered prompts:gathered lora:gathered lora:grouped lora1:gathered lora1:grouped ia3:gathered prefix:gathered; do
  case_="${spec%%:*}"; kernel="${spec##*:}"
  read -r one _ <<<"$(pass "$case_" "$kernel" 1)"
  read -r sixteen tokens <<<"$(pass "$case_" "$kernel" 16)"
  [[ "$case_" == prompts ]] && base="$sixteen"
  ratio=""; [[ -n "$base" ]] && ratio="$("$py" -c "print(f'{$sixteen / $base:.2f}')")"
  echo "| $case_ | $kernel | $one | $sixteen | $tokens | $ratio |"
done
ours="$("$dev" engine-pass --model "$model" --prompts "$adapters" --rows "$adapters/rows-lora.jsonl" \
  --new-tokens 16 --repeats "$repeats" --threads "$threads")"
theirs="$("$py" "$root/scripts/bench_adapters.py" peft --model "$model" --out "$adapters" \
  --new-tokens 16 --threads "$threads" --repeats "$repeats")"
"$py" - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
same = sum(x == y for x, y in zip(a["tokens"], b["tokens"]))
print(f"\nPEFT adapter_names batch (64 distinct LoRAs, 16 new tokens): {b['median_ms']:.0f} ms, "
      f"promptd {a['median_ms']:.0f} ms: promptd rows/s = {b['median_ms'] / a['median_ms']:.2f}x PEFT's; "
      f"same tokens on {same}/{len(a['tokens'])} rows")
PY
