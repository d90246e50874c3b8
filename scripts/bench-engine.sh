#!/usr/bin/env bash
# Engine benches (benches/engine.rs) and their ratio table (BENCHMARKS.md, "Engine").
#   scripts/bench-engine.sh [mini|small] [new tokens]
# Per batch size: (a) every row one task, (b) every row a different task, (c) no prompt.
set -euo pipefail
shape="${1:-mini}"
export PROMPTD_BENCH_SHAPE="$shape" PROMPTD_BENCH_NEW_TOKENS="${2:-8}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rm -rf target/criterion/engine_batch*
cargo bench --bench engine -- --noplot >&2
python3 - <<'PY'
import json, glob, os
rows = {}
for path in glob.glob("target/criterion/engine_batch*/*/new/estimates.json"):
    group, variant = path.split("/")[2], path.split("/")[3]
    est = json.load(open(path))
    rows.setdefault(int(group.replace("engine_batch", "")), {})[variant] = est["median"]["point_estimate"] / 1e6
paired = {p["batch"]: p for p in json.load(open("target/criterion/engine-paired.json"))}
print("criterion medians (ms), then the paired ratios (median of 15 back-to-back rounds)")
print("| batch | (a) one task | (b) all different | (c) no prompt | rows/s (b) | (b)/(a) paired | (c)/(a) paired |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for b in sorted(rows):
    r = rows[b]
    a, m, c = r["a_one_task"], r["b_all_different"], r["c_no_prompt"]
    p = paired[b]
    print(f"| {b} | {a:.1f} | {m:.1f} | {c:.1f} | {b/m*1e3:.0f} | {p['b_over_a']:.3f} | {p['c_over_a']:.3f} |")
PY
