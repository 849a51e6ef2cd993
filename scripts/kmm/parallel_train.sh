#!/usr/bin/env bash
# Trains the KMM comparison's variant x seed runs as parallel single-thread processes (the
# models are small: one core each is the efficient split on a many-core machine), each for at
# most BUDGET_S seconds. Every run checkpoints and resumes, so calling this again continues
# where a budget stopped it. Then aggregates what finished into RESULTS/kmm.json.
#
#   BIN=target/release/frugal OUT=runs/kmm BUDGET_S=540 scripts/kmm/parallel_train.sh
set -uo pipefail
BIN=${BIN:-target/release/frugal}
OUT=${OUT:-runs/kmm}
RESULTS=${RESULTS:-docs/results}
BUDGET_S=${BUDGET_S:-540}
SEEDS=${SEEDS:-"0 1 2"}
VARIANTS=${VARIANTS:-"random keyframe keyframe-align transformer"}
mkdir -p "$OUT/logs"
start=$(date +%s)
for v in $VARIANTS; do
  for s in $SEEDS; do
    timeout "$BUDGET_S" "$BIN" --threads 1 motion train --out "$OUT" --variant "$v" --seeds "$s" \
      >"$OUT/logs/train-$v-s$s.log" 2>&1 &
  done
done
wait
echo "training calls ended after $(( $(date +%s) - start )) s"
"$BIN" --threads 4 motion eval --out "$OUT" --seeds "${SEEDS// /,}" --results "$RESULTS" --existing-only
