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

# run <mode> [serve flags...]: serves a copy of prompts/ and fuzzes it for $seconds.
run() {
  local mode="$1"; shift
  rm -rf "$work/prompts"; cp -r "$root/prompts" "$work/prompts"
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
  echo "schemathesis $SCHEMATHESIS_VERSION, $mode server, ${seconds}s:"
  if ! (cd "$work" && "$venv/bin/schemathesis" --config-file "$root/scripts/schemathesis.toml" \
      run "$url/openapi.json" "${auth[@]}" --max-time "$seconds" --seed "${FUZZ_SEED:-1}" --workers 2 \
      --phases examples,coverage,fuzzing --no-color >"$work/report.txt" 2>&1); then
    cat "$work/report.txt"
    echo "schemathesis found failures ($mode server)" >&2
    exit 1
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
