#!/usr/bin/env bash
# The compression grid behind docs/results/compression.md: every evicting baseline (alone and
# over the KIVI format), StreamingLLM and KIVI against full, on the user-format passkey and
# kv-retrieval tasks, in both modes, plus a chunked-prefill run for peak bytes.
# usage: scripts/compression/run.sh "EVAL_COMMAND" OUT_DIR [SAMPLES] [LENGTHS...]
# EVAL_COMMAND is `frugal eval` or the thin runner `target/release/frugal-eval-grid`.
set -euo pipefail
FRUGAL=${1:?eval command}
OUT=${2:?output directory}
N=${3:-6}
shift 3 || true
LENGTHS=("${@:-1024}")
mkdir -p "$OUT"
LEN_ARGS=()
for l in "${LENGTHS[@]}"; do LEN_ARGS+=(--length "$l"); done
POLICIES=(
  full
  kivi:bits=4
  streaming:sink=4,window=128
  snapkv:ratio=0.75
  snapkv:ratio=0.875
  snapkv:ratio=0.5+kivi:bits=4
  pyramidkv:ratio=0.5+kivi:bits=4
  h2o:ratio=0.5+kivi:bits=4
  tova:ratio=0.5+kivi:bits=4
  knorm:ratio=0.5+kivi:bits=4
  expected-attention:ratio=0.5+kivi:bits=4
  adakv:ratio=0.5+kivi:bits=4
)
P_ARGS=()
for p in "${POLICIES[@]}"; do P_ARGS+=(--policy "$p"); done
for MODE in question-agnostic question-aware; do
  $FRUGAL --task passkey-user --task kv-retrieval-user "${LEN_ARGS[@]}" \
    --samples "$N" --depths 0.1,0.5,0.9 --mode "$MODE" "${P_ARGS[@]}" \
    --out "$OUT/$MODE.json"
done
# Peak bytes with a chunked prefill (evicting policies compress after every chunk).
$FRUGAL --task passkey-user "${LEN_ARGS[@]}" --samples "$N" --depths 0.1,0.5,0.9 \
  --mode question-agnostic --prefill-chunk 256 \
  --policy full --policy snapkv:ratio=0.75 --policy snapkv:ratio=0.5+kivi:bits=4 \
  --out "$OUT/question-agnostic-chunk256.json"
