# Shared by the scripts/bench-*.sh load benchmarks: the bench model and prompts, and one
# server at a time on a fixed local port. Source it; needs release builds (make build build-dev).
bin="$root/target/release/promptd"
dev="$root/target/release/promptd-dev"
models="$root/bench-models"
port=18091
url="http://127.0.0.1:$port"

# prepare <mini|small> <prompt count>: sets $model, $prompts, $d_model; makes what is missing.
prepare() {
  local shape="$1" count="$2"
  case "$shape" in
    mini) d_model=128 ;;
    small) d_model=512 ;;
    *) echo "shape: mini or small" >&2; exit 2 ;;
  esac
  model="$models/$shape"
  prompts="$models/prompts-$d_model-$count"
  [[ -f "$model/model.safetensors" ]] || "$dev" make-model --shape "$shape" --out "$model" >&2
  [[ -d "$prompts" ]] || "$dev" make-prompts --count "$count" --length 20 --d-model "$d_model" --out "$prompts" >&2
}

# start_server [serve flags...]: serves $model and $prompts on $url, waits until ready.
start_server() {
  "$bin" serve --model "$model" --prompts "$prompts" --addr "127.0.0.1:$port" --grpc-addr off \
    --audit-log off --max-queue 4096 "$@" >/dev/null 2>"$models/server.log" &
  server_pid=$!
  until curl -sf "$url/readyz" >/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$models/server.log" >&2; exit 1; }
    sleep 0.2
  done
}

stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || true
}

# pick_python: sets $py to python3 with torch, transformers, ctranslate2 and tokenizers:
# $PYTHON, else .venv/bin/python, else .tools/probe/bin/python.
pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"
  elif [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"
  else py="$root/.tools/probe/bin/python"; fi
}

# one_row_prompt: sets $prompts to a folder of one 1-row prompt (task00000) for $model.
one_row_prompt() {
  prompts="$models/prompts-$d_model-1row"
  [[ -d "$prompts" ]] || "$dev" make-prompts --count 1 --length 1 --d-model "$d_model" --out "$prompts" >&2
}
