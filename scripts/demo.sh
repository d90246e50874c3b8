#!/usr/bin/env bash
# Runs a few mixed-task inputs through `promptd predict` on the demo model.
set -euo pipefail
bin="$1"; model="$2"; prompts="$3"
cat <<'JSON' | "$bin" predict --model "$model" --prompts "$prompts" --max-new-tokens 8
{"task": "task00", "input": "translate the quick brown fox"}
{"task": "task05", "input": "summarize the model server batch"}
{"task": "task12", "input": "classify this token", "labels": ["positive", "negative", "neutral"]}
{"input": "no prompt at all: the plain model"}
{"task": "no-such-task", "input": "this line gets an error"}
JSON
