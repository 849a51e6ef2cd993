#!/usr/bin/env bash
# The one-core rerun of the KMM comparison after the tokenizer fix: one training process at a
# time on one thread (nice 10), seeds in order, each variant x seed resumable, then the table.
#
#   BIN=target/release/kmm OUT=runs/kmm-fix SEEDS="0 1 2" scripts/kmm/one_core.sh
# (BIN may be the `frugal motion` front-end instead: BIN="target/release/frugal motion").
set -euo pipefail
BIN=${BIN:-target/release/kmm}
OUT=${OUT:-runs/kmm-fix}
RESULTS=${RESULTS:-docs/results}
SEEDS=${SEEDS:-"0 1 2"}
SIZE=${SIZE:-""}
export RAYON_NUM_THREADS=1
for s in $SEEDS; do
  for v in random keyframe keyframe-align transformer; do
    nice -n 10 $BIN train --out "$OUT" $SIZE --variant "$v" --seeds "$s"
  done
done
nice -n 10 $BIN eval --out "$OUT" $SIZE --seeds "$(echo $SEEDS | tr ' ' ',')" --results "$RESULTS" --existing-only
