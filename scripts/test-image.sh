#!/usr/bin/env bash
# Builds the Dockerfile's runtime-cpu stage with podman from the built binary and .libtorch, runs
# it on loopback with the demo model and prompts mounted as the README's `docker run` does, and
# checks it: ready, a predict answers, the server runs as uid 10001, the HEALTHCHECK passes, and the
# container is gone afterwards. Prints "N passed, M failed"; exits 1 when any check failed.
#   scripts/test-image.sh [promptd binary]        (make test-image: after make build)
#
# Needs root. podman, runc and debootstrap come from apt when missing; when that fails, the run
# fails. The image's base (the runtime-base stage's FROM) is never pulled: it is made once with
# debootstrap (minbase) from the Debian mirror apt uses and `podman import`ed under the same name
# into this test's own image store, /var/lib/promptd-test-image, where it stays for the next run
# (TEST_IMAGE_REBASE=1 makes it again). podman's settings (runc; this machine's ulimits) come from
# deploy/podman/containers.conf; nothing under /etc is changed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-${CARGO_TARGET_DIR:-$root/target}/release/promptd}"
# This test's own podman store (images, build cache) and its run-time state.
store=/var/lib/promptd-test-image
runroot=/run/promptd-test-image
image="localhost/promptd-test-image:cpu"
name="promptd-test-image-$$"
ready_timeout_s="${TEST_IMAGE_READY_TIMEOUT_S:-180}"
export CONTAINERS_CONF="$root/deploy/podman/containers.conf"

# Every check, in order. A check that cannot run because an earlier one failed counts as failed.
checks=("podman, runc and debootstrap are installed" "the base image exists"
  "the runtime-cpu stage builds" "the container starts on 127.0.0.1"
  "/readyz answers 200" "a predict to the demo task rating answers"
  "the server runs as uid 10001" "the HEALTHCHECK passes" "the container is removed")
passed=0
done_checks=0
started=$SECONDS

work="$(mktemp -d)"
exec 3>&2 # the terminal's stderr, for notes from commands whose output goes to a log
container_started=""
cleanup() {
  [[ -n "$container_started" ]] && pm rm -f -t 0 -i "$name" >/dev/null 2>&1
  # The image of an earlier run, untagged by this one, and its layers; the base and the build
  # cache of runtime-base stay.
  pm image prune -f >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

# pass/fail <detail>: records the next check in $checks.
pass() {
  echo "ok   ${checks[done_checks]}${1:+ ($1)}"
  passed=$((passed + 1)); done_checks=$((done_checks + 1))
}
fail() {
  echo "FAIL ${checks[done_checks]}${1:+: $1}"
  done_checks=$((done_checks + 1))
}
# finish: counts the checks not reached as failed, prints the summary and exits.
finish() {
  while ((done_checks < ${#checks[@]})); do fail "not reached"; done
  local failed=$((${#checks[@]} - passed))
  echo "test-image: $passed passed, $failed failed ($((SECONDS - started)) s)"
  ((failed == 0)) || exit 1
  exit 0
}
# show <file>: the end of a log, indented, after a failure.
show() { tail -n "${2:-40}" "$1" | sed 's/^/    /'; }
# server_log: the end of the container's output.
server_log() { pm logs "$name" >"$work/server.log" 2>&1; show "$work/server.log"; }

# pm <args>: podman on this test's store. A crash of podman itself (killed by a signal, or a Go
# panic) is retried once; any other failure is the command's answer. Without systemd, podman
# cannot start the healthcheck's timer and says so on every run: the test runs the check itself.
pm() {
  local try rc
  for try in 1 2; do
    podman --root "$store/storage" --runroot "$runroot" "$@" 2>"$work/podman.err"
    rc=$?
    grep -v 'unable to get systemd connection\|Removing timer for container' "$work/podman.err" >&2
    if ((try == 1 && rc != 0)) && { ((rc >= 128)) ||
      grep -qE '^(panic: |fatal error: |SIGSEGV)' "$work/podman.err"; }; then
      echo "podman crashed (exit $rc); retrying once: podman $*" >&3
      [[ "$1" == run ]] && podman --root "$store/storage" --runroot "$runroot" \
        rm -f -t 0 -i "$name" >/dev/null 2>&1
      continue
    fi
    return "$rc"
  done
}

# ---- 1. tools --------------------------------------------------------------------------------
echo "test-image: $bin"
if ((EUID != 0)); then
  fail "needs root (apt, debootstrap, the image store under $store)"; finish
fi
if [[ ! -x "$bin" ]]; then
  fail "no binary at $bin (make build)"; finish
fi
t0=$SECONDS
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  echo "installing ${missing[*]} with apt"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    podman runc debootstrap; } >"$work/apt.log" 2>&1; then
    show "$work/apt.log"; fail "apt-get could not install ${missing[*]}"; finish
  fi
fi
installed="${missing[*]:+, ${missing[*]} installed in $((SECONDS - t0)) s}"
pass "$(podman --version), $(runc --version | head -n 1)$installed"

# ---- 2. the base image -----------------------------------------------------------------------
# The runtime-base stage's FROM, with the Dockerfile's ARG defaults substituted.
from="$(awk '$1 == "FROM" && $NF == "runtime-base" { print $2 }' "$root/Dockerfile")"
while read -r arg value; do
  from="${from//\$\{$arg\}/$value}"
done < <(sed -n 's/^ARG \([A-Z_]*\)=\(.*\)$/\1 \2/p' "$root/Dockerfile")
base="localhost/${from}"
suite="${from#debian:}"; suite="${suite%%-*}"
# The mirror apt uses (one-line or deb822 sources), unless DEBIAN_MIRROR names one.
mirror="${DEBIAN_MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
  /etc/apt/sources.list.d/*.sources 2>/dev/null |
  grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ')}"
mirror="${mirror:-http://deb.debian.org/debian}"
if [[ "${TEST_IMAGE_REBASE:-0}" == 1 ]]; then pm rmi -f "$base" >/dev/null 2>&1; fi
if [[ "$from" != debian:*-slim ]]; then
  fail "runtime-base is FROM $from, not a debian:<suite>-slim this test can make"; finish
elif pm image exists "$base"; then
  pass "$base, kept from an earlier run"
else
  echo "making $base with debootstrap from $mirror (once; kept in $store)"
  t0=$SECONDS
  rootfs="$work/rootfs"
  if ! timeout 900 debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1; then
    show "$work/debootstrap.log"; fail "debootstrap $suite $mirror failed"; finish
  fi
  # As in Debian's own images: updates and security too, and no package lists left behind.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: ${mirror%/}
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/}-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  if ! tar -C "$rootfs" --numeric-owner -cf - . |
    pm import --change 'CMD ["bash"]' - "$base" >"$work/import.log" 2>&1; then
    show "$work/import.log"; fail "podman import failed"; finish
  fi
  rm -rf "$rootfs"
  pass "$base from debootstrap $suite, $((SECONDS - t0)) s"
fi

# ---- 3. the build --------------------------------------------------------------------------
# The build-cpu context: every file the runtime-cpu stage copies from the build-cpu stage, at the
# same path, linked from this checkout: /src/<path> is <repo>/<path>, /usr/local/bin/promptd the
# binary. The paths are read from the Dockerfile's COPY --from=build-cpu lines.
ctx="$work/build-cpu"
# link <from> <to>: a hard link of a file or a tree (a copy across file systems).
link() {
  mkdir -p "$(dirname "$2")"
  if [[ -d "$1" ]]; then
    mkdir -p "$2" && { cp -al "$1/." "$2/" 2>/dev/null || cp -a "$1/." "$2/"; }
  else
    ln "$1" "$2" 2>/dev/null || cp "$1" "$2"
  fi
}
sources="$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$root/Dockerfile" |
  awk '$1 == "COPY" && $2 == "--from=build-cpu" { for (i = 3; i < NF; i++) print $i }')"
ctx_ok=1
for src in $sources; do
  case "$src" in
    /usr/local/bin/promptd) host="$bin" ;;
    /src/*) host="$(readlink -f "$root/${src#/src/}")" ;;
    *) host="" ;;
  esac
  if [[ -z "$host" || ! -e "$host" ]]; then
    ctx_ok=0; echo "no file in this checkout for build-cpu's $src" >&2; continue
  fi
  link "$host" "$ctx$src" || ctx_ok=0
done
t0=$SECONDS
if [[ -z "$sources" || "$ctx_ok" != 1 ]]; then
  fail "could not lay out the build-cpu context (sources: ${sources:-none})"; finish
fi
# --format docker: OCI images have no HEALTHCHECK. --pull=never: the base is the one made above.
if ! pm build --format docker --pull=never --target runtime-cpu \
  --build-context "build-cpu=$ctx" -t "$image" -f "$root/Dockerfile" "$root" \
  >"$work/build.log" 2>&1; then
  show "$work/build.log"; fail "podman build failed"; finish
fi
pass "$image, $((SECONDS - t0)) s"

# ---- 4. run it on loopback -----------------------------------------------------------------
# The demo of `make run`: the model read-only at /models, a copy of the prompts at /prompts,
# writable by the image's user.
mkdir -p "$work/demo"
cp -r "$root/tests/fixtures/models/demo-reviews" "$work/demo/model"
cp -r "$root/prompts" "$work/demo/prompts"
rm -rf "$work/demo/prompts/.tune-jobs" "$work/demo/prompts/.audit.jsonl"
chmod -R a+rX "$work/demo"
chown -R 10001:10001 "$work/demo/prompts"
container_started=1
if ! pm run -d --name "$name" -p 127.0.0.1::8080 \
  -v "$work/demo/model:/models:ro" -v "$work/demo/prompts:/prompts" "$image" >/dev/null; then
  fail "podman run failed"; finish
fi
hostport="$(pm port "$name" 8080/tcp | head -n 1)"
if [[ "$hostport" != 127.0.0.1:* ]]; then
  server_log
  fail "8080 is published at '${hostport}', not on 127.0.0.1 ($(pm inspect -f \
    '{{.State.Status}}, exit code {{.State.ExitCode}}' "$name"))"; finish
fi
url="http://$hostport"
pass "$url"

# ---- 5. ready ----------------------------------------------------------------------------------
t0=$SECONDS
status=""
while ((SECONDS - t0 < ready_timeout_s)); do
  status="$(curl -s --max-time 10 -o "$work/readyz" -w '%{http_code}' "$url/readyz")"
  [[ "$status" == 200 ]] && break
  if [[ "$(pm inspect -f '{{.State.Running}}' "$name")" != true ]]; then
    server_log; fail "the container exited"; finish
  fi
  sleep 0.2
done
if [[ "$status" != 200 ]]; then
  server_log
  fail "still $status after ${ready_timeout_s} s"; finish
fi
pass "$(cat "$work/readyz") after $((SECONDS - t0)) s"

# ---- 6. predict ------------------------------------------------------------------------------
# README's sentence: the rating task answers its stars.
review='at the night owl the bread was cold but the waitress was lovely, 3 stars'
status="$(curl -s --max-time 10 -o "$work/predict" -w '%{http_code}' \
  "$url/v1/tasks/rating/predict" -H 'content-type: application/json' \
  -d "{\"inputs\": \"$review\"}")"
text="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["outputs"][0]["text"])' \
  "$work/predict" 2>/dev/null)"
if [[ "$status" == 200 && "$text" == 3 ]]; then
  pass "200, \"$text\""
else
  fail "HTTP $status, text '$text' (expected 200, '3'): $(head -c 300 "$work/predict")"
fi

# ---- 7. the user ---------------------------------------------------------------------------
# The server process itself, seen from the host: real, effective, saved and fs uids.
pid="$(pm inspect -f '{{.State.Pid}}' "$name")"
comm="$(cat "/proc/$pid/comm" 2>/dev/null)"
uids="$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status" 2>/dev/null)"
if [[ "$comm" == promptd && "$uids" == "10001 10001 10001 10001" ]]; then
  pass "pid $pid, uids $uids"
else
  fail "pid $pid is '$comm' with uids '$uids'"
fi

# ---- 8. HEALTHCHECK --------------------------------------------------------------------------
healthcheck="$(pm image inspect -f '{{json .HealthCheck.Test}}' "$image")"
if pm healthcheck run "$name" >"$work/health" 2>&1; then
  pass "$healthcheck"
else
  fail "$healthcheck: $(cat "$work/health")"
fi

# ---- 9. cleanup ------------------------------------------------------------------------------
pm rm -f -t 10 "$name" >/dev/null
if pm container exists "$name"; then
  fail "$name is still there"
else
  container_started=""
  pass "$name"
fi
finish
