#!/usr/bin/env bash
# Peak resident memory while loading a t5-base-shaped checkpoint (BENCHMARKS.md, "Loading
# checkpoints"): pytorch_model.bin vs safetensors, f32 vs bf16, one `promptd predict` each.
#   scripts/bench-load-rss.sh [python]    (python with torch + transformers, for the .bin)
set -euo pipefail
py="${1:-python3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/promptd"; dev="$root/target/release/promptd-dev"; models="$root/bench-models"
base="$models/t5-base-bin"; st="$models/t5-base-st"
[[ -f "$base/pytorch_model.bin" ]] || "$py" "$root/scripts/make_t5_base_bin.py" "$base" >&2
[[ -f "$st/model.safetensors" || -f "$st/model.safetensors.index.json" ]] \
  || "$bin" convert "$base" --out "$st" >&2
prompts="$(mktemp -d)"
"$dev" make-prompts --count 1 --length 5 --d-model 768 --out "$prompts" >/dev/null
input='{"task":"task00000","input":"hello world","max_new_tokens":4}'
for dir in "$base" "$st"; do
  for dtype in f32 bf16; do
    out=$( { /usr/bin/time -v "$bin" predict --model "$dir" --prompts "$prompts" --dtype "$dtype" \
               <<<"$input" >/dev/null; } 2>&1 )
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' <<<"$out")
    secs=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' <<<"$out")
    size=$(du -sb "$dir" | cut -f1)
    echo "{\"dir\": \"$(basename "$dir")\", \"dtype\": \"$dtype\", \"files_bytes\": $size, \"peak_rss_kib\": $rss, \"wall\": \"$secs\"}"
  done
done
rm -rf "$prompts"
