#!/usr/bin/env bash
# Reproduces docs/results/kmm.md: shared stages, then 4 variants x 3 seeds (resumable), the
# aggregate table and JSON, the BVH check and the three generated strips.
set -euo pipefail
OUT=${OUT:-runs/kmm}
BIN="cargo run --release -p frugal-cli -- motion"
$BIN train --out "$OUT" --variant random --seeds 0,1,2
$BIN train --out "$OUT" --variant keyframe --seeds 0,1,2
$BIN train --out "$OUT" --variant keyframe-align --seeds 0,1,2
$BIN train --out "$OUT" --variant transformer --seeds 0,1,2
$BIN eval --out "$OUT" --seeds 0,1,2 --results docs/results | tee docs/results/kmm-data/table.md
$BIN bvh-check | tee docs/results/kmm-data/bvh-check.txt
$BIN generate --out "$OUT" --variant keyframe-align --output docs/results/kmm-data/walk_turn_wave "walk forward" "turn left" "wave the right hand"
$BIN generate --out "$OUT" --variant keyframe-align --output docs/results/kmm-data/kick_step_sit "kick with the left leg" "step to the right" "sit down"
$BIN generate --out "$OUT" --variant keyframe-align --output docs/results/kmm-data/raise_jump_back "raise the left arm" "jump" "raise the right arm" "walk backward"
