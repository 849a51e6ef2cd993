#!/usr/bin/env bash
# Runs a list of acquisition runs for one seed, in order, one process at a time, single-threaded
# and niced (the machine is shared). Every run resumes where it stopped; the seed's source model
# is trained by the first run and shared by the others.
# Usage: scripts/esa/run_all.sh SEED RUNS_DIR "esa:40 ripu-pa:40 ripu-ra:r0.022 full source-only esa-oracle:40 ..." [extra adapt args]
#   METHOD:N   -> --acquire METHOD --clicks N
#   ripu-ra:rX -> --acquire ripu-ra --ra-ratio X
#   esa-oracle:N -> --acquire esa --entities oracle --clicks N
set -euo pipefail
SEED="$1"; RUNS="$2"; SPECS="$3"; shift 3
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release/frugal-seg}"
for spec in $SPECS; do
  method="${spec%%:*}"; arg=""; [[ "$spec" == *:* ]] && arg="${spec##*:}"
  extra=()
  if [[ "$method" == esa-oracle ]]; then method=esa; extra+=(--entities oracle); fi
  if [[ "$arg" == r* ]]; then extra+=(--ra-ratio "${arg#r}");
  elif [[ -n "$arg" ]]; then extra+=(--clicks "$arg"); fi
  echo "== $spec seed $SEED"
  RAYON_NUM_THREADS=1 nice -n 10 "$BIN" adapt --acquire "$method" "${extra[@]}" \
    --seed "$SEED" --runs "$RUNS" --quiet "$@"
done
