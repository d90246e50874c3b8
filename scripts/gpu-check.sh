#!/usr/bin/env bash
# The GPU check (issue 14), one prepared script for a lent GPU's few minutes (budget: under
# 8 minutes on an H100/H200). It needs a promptd and a promptd-dev built here with CUDA
# (`cargo build --release --features cuda,dev-tools`), carried to the machine, and libtorch's
# CUDA libraries on LD_LIBRARY_PATH (on the device machine: the lib/ of its torch 2.11 wheel).
#   scripts/gpu-check.sh [out-dir]            # on the GPU: DEVICE=cuda, t5-xxl shapes, bf16
#   DEVICE=cpu scripts/gpu-check.sh [out-dir] # its CPU path, on a small shape (no GPU numbers)
# Steps, each one JSON line in OUT/gpu-check.jsonl, and a table in OUT/gpu-check.md:
#   parity   the committed fixtures' 100 cases (transformers' greedy tokens and label scores,
#            tests/fixtures/expected) through `promptd predict` on DEVICE in f32
#   gemm     the device's matmul peak in this libtorch (DTYPE), for the pass below
#   encoder  one encoder pass, BATCH rows x INPUT tokens, SHAPE in DTYPE: achieved TFLOP/s
#   decode   tokens/s at batch 32, 64, 128 with INPUT-token inputs, NEW new tokens
#   mixed    a 64-row pass over 64 prompts vs over 1 prompt (the mixed-task overhead)
#   prompts  prompt memory: 10,000 prompts of 20 rows in the bank
# Env: BIN (target/release), DEVICE (cuda), SHAPE (t5-xxl; cpu: t5-small), DTYPE (bf16; cpu:
# f32), INPUT (228), NEW (32), BATCHES ("32 64 128"; cpu: "8 16"), PYTHON (python3).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/gpu-check-out}"; mkdir -p "$out"
bin="${BIN:-$root/target/release}"; py="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
if [[ "$device" == cpu ]]; then
  shape="${SHAPE:-t5-small}"; dtype="${DTYPE:-f32}"; batches="${BATCHES:-8 16}"; threads="${THREADS:-2}"
else
  shape="${SHAPE:-t5-xxl}"; dtype="${DTYPE:-bf16}"; batches="${BATCHES:-32 64 128}"; threads="${THREADS:-4}"
fi
input="${INPUT:-228}"; new="${NEW:-32}"
log="$out/gpu-check.jsonl"; : >"$log"
started=$SECONDS
note() { echo "[gpu-check $((SECONDS - started))s] $*" >&2; }
record() { # record STEP JSON: one line {"step": STEP, ...JSON}
  "$py" -c 'import json,sys; d=json.loads(sys.argv[2]); d={"step": sys.argv[1], **d}; print(json.dumps(d))' "$1" "$2" | tee -a "$log"
}
pass() { "$bin/promptd-dev" engine-pass --synthetic "$shape" --device "$device" --dtype "$dtype" \
  --threads "$threads" --no-tokens "$@"; }

note "device $device, shape $shape, dtype $dtype"
[[ "$device" == cpu ]] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>/dev/null || true

# parity: the fixtures' transformers outputs, on this device.
for model in t5-v1_0-tiny t5-v1_1-tiny; do
  expected="$root/tests/fixtures/expected/$model.jsonl"
  "$py" -c 'import json,sys
for l in open(sys.argv[1]):
    c = json.loads(l)
    row = {"input": c["input"], "max_new_tokens": c["max_new_tokens"]}
    if c.get("task"): row["task"] = c["task"]
    if c.get("labels"): row["labels"] = c["labels"]
    print(json.dumps(row))' "$expected" >"$out/$model.in.jsonl"
  "$bin/promptd" predict --model "$root/tests/fixtures/models/$model" --prompts "$root/tests/fixtures/prompts/$model" \
    --device "$device" --dtype f32 <"$out/$model.in.jsonl" >"$out/$model.out.jsonl" 2>"$out/$model.err"
  record parity "$("$py" -c 'import json,sys
want = [json.loads(l) for l in open(sys.argv[1])]
got = [json.loads(l) for l in open(sys.argv[2])]
same = sum(w["token_ids"] == g.get("token_ids") for w, g in zip(want, got))
diffs = [abs(a - b) for w, g in zip(want, got) if w.get("scores") for a, b in zip(w["scores"], g.get("scores") or [])]
print(json.dumps({"model": sys.argv[3], "cases": len(want), "answered": len(got), "same_tokens": same,
                  "max_score_diff": max(diffs, default=0.0)}))' "$expected" "$out/$model.out.jsonl" "$model")"
done
note "parity done"

gemm="$("$bin/promptd-dev" gemm --device "$device" --dtype "$dtype" --threads "$threads" --size "${GEMM_SIZE:-8192}")"
record gemm "$gemm"
peak="$("$py" -c 'import json,sys; print(json.loads(sys.argv[1])["tflops"])' "$gemm")"
note "gemm done"

enc="$(pass --random-rows 64 --input-len "$input" --tasks 0 --new-tokens 0 --repeats 5)"
record encoder "$("$py" -c 'import json,sys
d = json.loads(sys.argv[1]); t = d["encoder_tflop"] / (d["median_ms"] / 1e3)
print(json.dumps({**d, "tflops": t, "peak_tflops": float(sys.argv[2]), "fraction_of_peak": t / float(sys.argv[2])}))' "$enc" "$peak")"
note "encoder done"

for b in $batches; do
  d="$(pass --random-rows "$b" --input-len "$input" --tasks 0 --new-tokens "$new" --repeats 3 --warmup 1)"
  record decode "$("$py" -c 'import json,sys
d = json.loads(sys.argv[1]); print(json.dumps({**d, "batch": int(sys.argv[2]), "tokens_per_s": d["generated_tokens"] / (d["median_ms"] / 1e3)}))' "$d" "$b")"
done
note "decode done"

for tasks in 1 64; do
  record mixed "$(pass --random-rows 64 --input-len "$input" --tasks "$tasks" --prompt-len 20 --new-tokens 16 --repeats 5 --warmup 1 | "$py" -c 'import json,sys; d=json.load(sys.stdin); d["tasks"]=int(sys.argv[1]); print(json.dumps(d))' "$tasks")"
done
note "mixed done"

record prompts "$(pass --random-rows 1 --input-len 8 --tasks 1 --prompt-len 20 --extra-prompts 10000 --new-tokens 1 --repeats 1 --warmup 0)"
note "prompts done"

"$py" - "$log" "$out/gpu-check.md" "$device" "$shape" "$dtype" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
device, shape, dtype = sys.argv[3:6]
md = [f"### gpu-check: {shape} shapes, {dtype}, device {device}", ""]
md += ["| check | result |", "|---|---|"]
for r in rows:
    s = r["step"]
    if s == "parity":
        md.append(f"| parity {r['model']} (f32) | {r['same_tokens']}/{r['cases']} same greedy tokens as transformers; label scores within {r['max_score_diff']:.2e} |")
    elif s == "gemm":
        md.append(f"| matmul peak {r['size']}³ {r['dtype']} | {r['tflops']:.1f} TFLOP/s |")
    elif s == "encoder":
        md.append(f"| encoder pass {r['rows']}×{r['width']} | {r['median_ms']:.1f} ms, {r['tflops']:.1f} TFLOP/s = {100 * r['fraction_of_peak']:.0f}% of the matmul peak |")
    elif s == "decode":
        md.append(f"| decode batch {r['batch']}, {r['width']}-token inputs | {r['tokens_per_s']:.0f} tokens/s ({r['generated_tokens']} tokens in {r['median_ms']:.0f} ms, encoder pass included) |")
    elif s == "mixed":
        md.append(f"| 64 rows over {r['tasks']} prompt(s), 16 new tokens | {r['median_ms']:.1f} ms |")
    elif s == "prompts":
        per = r["bank_bytes"] / max(r["bank_rows"], 1) * 20
        md.append(f"| prompt bank with 10,001 prompts × 20 rows | {r['bank_bytes'] / 2**20:.1f} MiB allocated ({per / 1024:.1f} KiB per prompt) |")
mixed = {r["tasks"]: r["median_ms"] for r in rows if r["step"] == "mixed"}
if 1 in mixed and 64 in mixed:
    md.append(f"| mixed-task overhead (64 prompts vs 1) | {mixed[64] / mixed[1]:.3f}× |")
open(sys.argv[2], "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
note "finished in $((SECONDS - started)) s"
