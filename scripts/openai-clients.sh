#!/usr/bin/env bash
# The OpenAI-compatible API against the real clients: the official `openai` Python package
# (scripts/check_openai.py: models, completions, logprobs, seeded sampling, refused fields,
# streaming, chat, the error shape) and `curl -N` reading the server-sent events of a streaming
# predict, completion and chat. Serves the tiny fixture model with a copy of its demo prompts
# (tests/fixtures/prompts/tiny-demo). `openai` comes from PyPI into .tools/ (git-ignored) on
# first use.
#   scripts/openai-clients.sh [promptd binary]
set -euo pipefail
OPENAI_VERSION="3.63.0"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/debug/promptd}"
venv="$root/.tools/openai-$OPENAI_VERSION"
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# pip_install: installs the pinned client into a fresh venv. A pip that fails on the network
# (PyPI or a proxy dropping the connection: a failure outside this check) is retried once;
# any other failure stops here.
pip_install() {
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --quiet "openai==$OPENAI_VERSION" >"$work/pip.log" 2>&1
}
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  if ! pip_install; then
    cat "$work/pip.log" >&2
    if grep -Eqi 'NewConnectionError|ConnectTimeout|ReadTimeout|ConnectionError|Connection (reset|refused|aborted)|Temporary failure in name resolution|Max retries exceeded|ProtocolError|IncompleteRead|SSLError|HTTP error 5[0-9][0-9]' "$work/pip.log"; then
      echo "pip failed on the network; retrying once" >&2
      pip_install || { cat "$work/pip.log" >&2; rm -rf "$venv"; exit 1; }
    else
      rm -rf "$venv"; exit 1
    fi
  fi
fi

# The server: an open one on a free loopback port, ready when /readyz answers 200.
cp -r "$root/tests/fixtures/prompts/tiny-demo" "$work/prompts"
"$bin" serve --model "$root/tests/fixtures/models/t5-v1_1-tiny" --prompts "$work/prompts" \
  --addr 127.0.0.1:0 --grpc-addr off --audit-log off >"$work/addr" 2>"$work/server.log" &
server_pid=$!
url=""
deadline=$((SECONDS + 60))
while :; do
  url="$(sed -n 's/^promptd listening on //p' "$work/addr")"
  [[ -n "$url" ]] && curl -sf "$url/readyz" >/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { echo "promptd exited before it was ready:" >&2; cat "$work/server.log" >&2; exit 1; }
  if ((SECONDS >= deadline)); then
    echo "promptd was not ready within 60 s:" >&2; cat "$work/server.log" >&2; exit 1
  fi
  sleep 0.1
done

# A task: the first served prompt (GET /v1/prompts), else the fixture's first prompt file.
task="$(curl -sf "$url/v1/prompts" | "$venv/bin/python" -c \
  'import json, sys; p = sorted(x["task"] for x in json.load(sys.stdin)["prompts"]); print(p[0] if p else "")' \
  || true)"
if [[ -z "$task" ]]; then
  files=("$root"/tests/fixtures/prompts/tiny-demo/*)
  first="$(basename "${files[0]}")"
  task="${first%%.*}"
fi

status=0
echo "== openai $OPENAI_VERSION (scripts/check_openai.py), task $task"
"$venv/bin/python" "$root/scripts/check_openai.py" --base-url "$url/v1" --api-key promptd-check \
  --model "$task" || status=1

# curl -N: the raw server-sent events, read as they come.
echo "== curl -N, server-sent events"
passed=0
failed=0
check() { # check <name> <ok: 0|1> [detail file]
  if [[ "$2" == 1 ]]; then
    passed=$((passed + 1)); echo "PASS $1"
  else
    failed=$((failed + 1)); echo "FAIL $1"
    [[ -n "${3:-}" ]] && head -c 2000 "$3" && echo
  fi
  return 0
}
# sse <name> <path> <json body> <grep -E pattern a data chunk must match>...: POSTs with curl -N;
# the answer must be `data: {json}` lines ending with `data: [DONE]`, and each pattern must
# match some chunk.
sse() {
  local name="$1" path="$2" body="$3"; shift 3
  local out="$work/sse.txt"
  local rc=0
  curl -sN --max-time 60 -X POST "$url$path" -H 'content-type: application/json' -d "$body" \
    >"$out" || rc=$?
  check "$name: curl -N exits 0" "$([[ $rc == 0 ]] && echo 1 || echo 0)" "$out"
  local chunks last
  chunks="$(grep -c '^data: {' "$out" || true)"
  last="$(grep -v '^[[:space:]]*$' "$out" | tail -n 1 | tr -d '\r' || true)"
  check "$name: data: { lines ($chunks)" "$([[ $chunks -gt 0 ]] && echo 1 || echo 0)" "$out"
  check "$name: ends with data: [DONE]" "$([[ "$last" == "data: [DONE]" ]] && echo 1 || echo 0)" "$out"
  local bad
  bad="$(grep -v '^[[:space:]]*$' "$out" | grep -v '^data: ' | grep -v '^:' | head -n 1 || true)"
  check "$name: every line is an event" "$([[ -z "$bad" ]] && echo 1 || echo 0)" "$out"
  local p
  for p in "$@"; do
    check "$name: a chunk matches $p" "$(grep '^data: {' "$out" | grep -Eq "$p" && echo 1 || echo 0)" "$out"
  done
}
sse "predict stream" "/v1/tasks/$task/predict" \
  '{"inputs":"the soup was cold","max_new_tokens":8,"stream":true}' \
  '"token_id"' '"output"'
sse "completions stream" "/v1/completions" \
  "{\"model\":\"$task\",\"prompt\":\"the soup was cold\",\"max_tokens\":8,\"stream\":true}" \
  '"object": ?"text_completion"' '"finish_reason": ?"(stop|length)"'
sse "chat stream" "/v1/chat/completions" \
  "{\"model\":\"$task\",\"messages\":[{\"role\":\"user\",\"content\":\"the soup was cold\"}],\"max_tokens\":8,\"stream\":true}" \
  '"object": ?"chat\.completion\.chunk"' '"role": ?"assistant"'
echo "$passed passed, $failed failed"
((failed == 0)) || status=1

if ((status != 0)); then
  echo "server log (tail):" >&2
  tail -n 40 "$work/server.log" >&2
fi
exit "$status"
