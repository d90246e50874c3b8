#!/usr/bin/env bash
# The HTTP server against what a team would build without it (issue 14, HTTP comparison), all on
# one workload: 16 tasks (20-row prompts), 64 requests at a time, 4..32 words per input, at most
# 16 new tokens (greedy, </s> stops), f32 on CPU, every side at the same thread count:
#   server    `promptd serve` driven by `promptd-dev bench`, 64 closed-loop clients
#   offline   `promptd-dev bench --offline`: the same generator through the engine in-process,
#             batches of 64 (continuous when the server decodes continuously)
#   torch     scripts/bench_torch_mixed.py: windows of 64 requests, one mixed-task
#             generate(inputs_embeds=...) each (sdpa)
#   peft      scripts/bench_hf_peft.py per-task: windows of 64, one generate() per task
# Prints each side's JSON line, then a markdown table with server/torch, server/PEFT and
# server/offline. The load generator shares the machine with the server (as in every
# scripts/bench-*.sh), so on few cores the server column pays for its client too.
#   scripts/bench-http-vs-torch.sh [mini|small] [seconds] [threads]
# Needs release builds (make build build-dev) and a python with torch, transformers, peft,
# tokenizers (PYTHON=...; default .venv/bin/python, else python3). DECODE=static|continuous
# (default continuous) sets the server's --decode; ROUNDS=N alternates the sides N times and
# reports medians. Writes bench-models/ (git-ignored).
set -euo pipefail
shape="${1:-mini}"; secs="${2:-20}"; threads="${3:-2}"
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/bench-common.sh"
decode="${DECODE:-continuous}"
if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"
else py=python3; fi
[[ -x "$bin" && -x "$dev" ]] || { echo "needs release builds: make build build-dev" >&2; exit 2; }
case "$decode" in static|continuous) ;; *) echo "DECODE: static or continuous" >&2; exit 2 ;; esac
prepare "$shape" 16
tasks=16; window=64; warmup=3
# libtorch takes its intra-op thread count from these; the Python sides call set_num_threads.
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
work="$(mktemp -d)"; server_pid=""
trap '[[ -n "$server_pid" ]] && kill -TERM "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT

# Like start_server (bench-common.sh), on an ephemeral port read from the server's stdout.
start_ephemeral() {
  "$bin" serve --model "$model" --prompts "$prompts" --addr 127.0.0.1:0 --grpc-addr off \
    --audit-log off --max-batch-size "$window" --decode "$decode" >"$work/server.out" 2>"$models/server.log" &
  server_pid=$!
  url=""; local waited=0
  until [[ -n "$url" ]] && curl -sf "$url/readyz" >/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$models/server.log" >&2; exit 1; }
    (( waited++ < 1500 )) || { echo "server not ready after 300 s" >&2; cat "$models/server.log" >&2; exit 1; }
    [[ -n "$url" ]] || url="$(sed -n 's/^promptd listening on //p' "$work/server.out")"
    sleep 0.2
  done
}

# side NAME CMD...: CMD's stdout; on failure its stderr, and the script stops.
side() {
  local name="$1"; shift
  "$@" 2>"$work/$name.err" || { echo "$name failed:" >&2; cat "$work/$name.err" >&2; return 1; }
}

load=(--tasks "$tasks" --max-new-tokens 16 --duration-s "$secs" --warmup-s "$warmup" --json)
offline_flags=(--offline --model "$model" --prompts "$prompts" --batch-size "$window")
[[ "$decode" == continuous ]] && offline_flags+=(--offline-continuous)
py_args=(--model "$model" --prompts "$prompts" --tasks "$tasks" --seconds "$secs" --warmup "$warmup"
  --threads "$threads" --max-new-tokens 16)
# ROUNDS (default 1) runs the four sides in turn that many times; the table has each side's
# median and the ratios of every round, so the machine's drift shows instead of hiding.
for round in $(seq 1 "${ROUNDS:-1}"); do
  start_ephemeral
  server=$(side server-load "$dev" bench --url "$url" --concurrency "$window" "${load[@]}")
  stop_server; server_pid=""
  echo "{\"impl\":\"server\",\"round\":$round,\"decode\":\"$decode\",\"result\":$server}" | tee -a "$work/server.jsonl"
  offline=$(side offline "$dev" bench "${offline_flags[@]}" "${load[@]}")
  echo "{\"impl\":\"offline-engine\",\"round\":$round,\"result\":$offline}" | tee -a "$work/offline.jsonl"
  side torch "$py" "$root/scripts/bench_torch_mixed.py" "${py_args[@]}" --per-task $((window / tasks)) \
    | grep rows_per_s | tail -1 | tee -a "$work/torch.jsonl"
  side peft "$py" "$root/scripts/bench_hf_peft.py" "${py_args[@]}" --modes per-task --window "$window" \
    | grep rows_per_s | tail -1 | tee -a "$work/peft.jsonl"
done

"$py" - "$shape" "$secs" "$threads" "$decode" "$work" <<'PY'
import json, statistics, sys
shape, secs, threads, decode, work = sys.argv[1:6]
def runs(name):
    rows = [json.loads(l) for l in open(f"{work}/{name}.jsonl") if l.strip()]
    return [r.get("result", r) for r in rows]
S, O, T, P = (runs(n) for n in ("server", "offline", "torch", "peft"))
def med(rs, key="rows_per_s"):
    return statistics.median(r[key] for r in rs)
def each(rs):
    return ", ".join(f"{r['rows_per_s']:.1f}" for r in rs)
s, o, t = S[-1], O[-1], T[-1]
print(f"\n{shape}, {secs} s measured per side, {len(S)} round(s), {threads} threads, 16 tasks, "
      f"64 requests at a time, ≤ 16 new tokens, f32 CPU (medians; rows/s of every round)\n")
print("| side | rows/s | generated tokens/s | rows/s per round | notes |")
print("|---|---:|---:|---|---|")
print(f"| promptd server (HTTP, {decode}) | {med(S):.1f} | {med(S, 'generated_tokens_per_s'):.0f} | {each(S)} | "
      f"last round: p50 {s['latency_ms']['p50']:.0f} ms, p99 {s['latency_ms']['p99']:.0f} ms, "
      f"{s['mean_rows_per_pass']:.1f} rows per pass, statuses {json.dumps(s['statuses'])} |")
print(f"| offline engine ({o['mode']}, batches of {o['batch_size']}) | {med(O):.1f} | "
      f"{med(O, 'generated_tokens_per_s'):.0f} | {each(O)} | no HTTP, same generator |")
print(f"| hand-built torch mixed batch | {med(T):.1f} | {med(T, 'generated_tokens_per_s'):.0f} | {each(T)} | "
      f"one generate() per window of {t['window']}, {t['mean_tasks_per_window']} tasks each |")
print(f"| transformers + PEFT per task | {med(P):.1f} | {med(P, 'generated_tokens_per_s'):.0f} | {each(P)} | "
      f"one generate() per task in each window of 64 |")
def ratio(a, b):
    per = ", ".join(f"{x['rows_per_s'] / y['rows_per_s']:.2f}" for x, y in zip(a, b))
    return f"{med(a) / med(b):.2f} (per round {per})"
print(f"\nserver / torch {ratio(S, T)}; server / PEFT {ratio(S, P)}; server / offline {ratio(S, O)}")
PY
