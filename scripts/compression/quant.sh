#!/usr/bin/env bash
# The quantisation route to 4x behind docs/results/compression.md, in two stages on disjoint
# prompt sets: `select` runs candidate KIVI formats on seed 0 (short, 1k tokens), `confirm`
# reruns full and the chosen settings on seed 1 at every length.
# usage: scripts/compression/quant.sh GRID OUT_DIR select|confirm SAMPLES [LENGTHS...] [-- POLICY...]
# GRID is the thin runner (target/release/frugal-eval-grid) or `frugal eval`.
set -euo pipefail
GRID=${1:?grid runner}
OUT=${2:?output directory}
STAGE=${3:?select or confirm}
N=${4:?samples per length}
shift 4
LENGTHS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do LENGTHS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
POLICIES=("$@")
if [ ${#POLICIES[@]} -eq 0 ]; then
  POLICIES=(
    full
    kivi:bits=4
    kivi:bits=4,residual=0
    kivi:bits=4,vbits=2,vgroup=64,residual=0
    kivi:bits=4,vbits=2,group=64,vgroup=64,residual=0
    kivi:bits=2
  )
fi
[ ${#LENGTHS[@]} -eq 0 ] && LENGTHS=(1024)
case "$STAGE" in
  select) SEED=0 ;;
  confirm) SEED=1 ;;
  *) echo "stage must be select or confirm" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
ARGS=()
for l in "${LENGTHS[@]}"; do ARGS+=(--length "$l"); done
for p in "${POLICIES[@]}"; do ARGS+=(--policy "$p"); done
$GRID --task passkey-user --task kv-retrieval-user "${ARGS[@]}" --samples "$N" --seed "$SEED" \
  --depths 0.1,0.5,0.9 --mode question-agnostic --out "$OUT/quant-$STAGE-seed$SEED.json"
