#!/usr/bin/env bash
# Runs a list of (protocol, method) pairs for one seed, in order, single-threaded (on a loaded
# two-core machine one thread per job is faster than two). Every run resumes where it stopped.
# Usage: scripts/seg/run_all.sh SEED RUNS_DIR "10-1:cit 10-1:iterative ..." [extra train args]
set -euo pipefail
SEED="$1"; RUNS="$2"; PAIRS="$3"; shift 3
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release/frugal-seg}"
for pair in $PAIRS; do
  proto="${pair%%:*}"; method="${pair##*:}"
  echo "== $proto $method seed $SEED"
  RAYON_NUM_THREADS=1 nice -n 10 "$BIN" train --protocol "$proto" --method "$method" \
    --seed "$SEED" --runs "$RUNS" --quiet "$@"
done
