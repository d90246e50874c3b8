#!/usr/bin/env bash
# `make demo-model`: trains the demo model from scratch and writes it with its task data
# (scripts/make_demo_model.py; seeded, about 22 minutes on 2 cores):
#   tests/fixtures/models/demo-reviews/   config.json, model.safetensors (float16), tokenizer.json
#   tests/fixtures/demo/<task>.{train,dev,test}.jsonl
# Python: $PYTHON when set (it needs torch, transformers, tokenizers, safetensors), else a venv in
# .tools/ with the pinned versions below, installed from PyPI on first use.
# Arguments go to the script (e.g. --steps 500 --model /tmp/m --data /tmp/d for a quick try).
set -euo pipefail
cd "$(dirname "$0")/.."
PINS=(torch==2.11.0 transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0 numpy==2.4.6)
if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
else
  venv=".tools/demo-model-torch-2.11.0"
  if ! "$venv/bin/python" -c 'import torch, transformers, tokenizers, safetensors' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    echo "demo-model: installing ${PINS[*]} into $venv (once)" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
  fi
  py="$venv/bin/python"
fi
exec "$py" scripts/make_demo_model.py "$@"
