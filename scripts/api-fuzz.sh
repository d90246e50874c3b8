#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document with schemathesis (every check, the
# exceptions a schema cannot express listed in scripts/schemathesis.toml), in both modes:
# an open server, and a server with a tenants file queried with an admin key. schemathesis
# comes from PyPI into .tools/ (git-ignored) on first use.
#   scripts/api-fuzz.sh [promptd binary] [seconds per mode]
set -euo pipefail
SCHEMATHESIS_VERSION="4.32.5"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/debug/promptd}"
seconds="${2:-40}"
venv="$root/.tools/schemathesis-$SCHEMATHESIS_VERSION"
if [[ ! -x "$venv/bin/schemathesis" ]]; then
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi
work="$(mktemp -d)"
server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# fuzz <url> <seed> [curl-style auth...]: one schemathesis run into $work/report.txt. One
# worker: hypothesis' example generation is not safe to share between threads.
fuzz() {
  local url="$1" seed="$2"; shift 2
  (cd "$work" && "$venv/bin/schemathesis" --config-file "$root/scripts/schemathesis.toml" \
    run "$url/openapi.json" "$@" --max-time "$seconds" --seed "$seed" --workers 1 \
    --phases examples,coverage,fuzzing --no-color >"$work/report.txt" 2>&1)
}

fail() {
  cat "$work/report.txt"
  echo "schemathesis found failures ($1 server)" >&2
  exit 1
}

# run <mode> [serve flags...]: serves the tiny fixture model with a copy of its three demo prompts
# (tests/fixtures/prompts/tiny-demo) and fuzzes it for $seconds.
run() {
  local mode="$1"; shift
  rm -rf "$work/prompts"; cp -r "$root/tests/fixtures/prompts/tiny-demo" "$work/prompts"
  "$bin" serve --model "$root/tests/fixtures/models/t5-v1_1-tiny" --prompts "$work/prompts" \
    --addr 127.0.0.1:0 --grpc-addr off --audit-log off "$@" >"$work/addr" 2>"$work/server.log" &
  server_pid=$!
  local url=""
  for _ in $(seq 1 300); do
    url="$(sed -n 's/^promptd listening on //p' "$work/addr")"
    [[ -n "$url" ]] && curl -sf "$url/readyz" >/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.1
  done
  local auth=()
  [[ "$mode" == tenants ]] && auth=(-H "Authorization: Bearer fuzz-admin-key")
  local seed="${FUZZ_SEED:-1}"
  echo "schemathesis $SCHEMATHESIS_VERSION, $mode server, ${seconds}s, seed $seed:"
  if ! fuzz "$url" "$seed" "${auth[@]}"; then
    # A run whose only errors are schemathesis' own (a "Runtime Error" while generating,
    # e.g. hypothesis' FlakyFailure) found nothing about the API: show it, run once more
    # with the next seed. Any failed check, or a second tool error, fails the run.
    if grep -q "Runtime Error" "$work/report.txt" && ! grep -q "^Failures:" "$work/report.txt"; then
      cat "$work/report.txt"
      echo "schemathesis failed inside itself, not on the API; rerunning with seed $((seed + 1))" >&2
      fuzz "$url" "$((seed + 1))" "${auth[@]}" || fail "$mode"
    else
      fail "$mode"
    fi
  fi
  tail -n 12 "$work/report.txt"
  kill "$server_pid"; wait "$server_pid" || true; server_pid=""
}

run open
key_sha="$(printf %s fuzz-admin-key | sha256sum | cut -d' ' -f1)"
cat >"$work/tenants.toml" <<TOML
[[tenants]]
name = "fuzz"
admin = true
key_sha256 = ["$key_sha"]
[tenants.quotas]
requests_per_second = 100000
burst = 100000
max_in_flight = 1000
TOML
run tenants --tenants "$work/tenants.toml"
