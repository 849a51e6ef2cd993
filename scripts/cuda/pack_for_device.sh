#!/usr/bin/env bash
# Packs what a GPU machine needs to run the CUDA build into .gpu-carry/ at the repo root
# (ignored by git), in pieces small enough to travel with the working tree of a device call
# (64 MiB per call including the repo's tracked files).
#
#   scripts/cuda/pack_for_device.sh [MODEL.gguf]     # default: the cached SmolLM2 Q4_1 GGUF
#   PART_MB=20 scripts/cuda/pack_for_device.sh       # smaller model parts
#
# Layout (one folder per device call; carry them in order while the machine stays warm, since a
# warm machine keeps ignored files between calls):
#   .gpu-carry/bin/    frugal.xz, engine-cuda-test.xz, SHA256SUMS (from dist-cuda/, see
#                      build_candle_cuda.sh)
#   .gpu-carry/m1/ …   the model split into PART_MB-MiB pieces (model.gguf.part-aa, …) plus
#                      model.sha256
# scripts/cuda/device_engine_run.sh (tracked, so it always travels) reassembles and checks them.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIST="${DIST:-$ROOT/dist-cuda}"
CARRY="$ROOT/.gpu-carry"
PART_MB="${PART_MB:-24}"
MODEL="${1:-${FRUGAL_HOME:-$HOME/.cache/frugal}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
[ -f "$DIST/frugal.xz" ] || { echo "no $DIST/frugal.xz: run scripts/cuda/build_candle_cuda.sh first" >&2; exit 1; }
rm -rf "$CARRY"
mkdir -p "$CARRY/bin"
cp "$DIST"/*.xz "$DIST/SHA256SUMS" "$CARRY/bin/"
if [ -f "$MODEL" ]; then
  tmp="$(mktemp -d)"
  split -b "${PART_MB}M" "$MODEL" "$tmp/model.gguf.part-"
  i=0
  for p in "$tmp"/model.gguf.part-*; do
    i=$((i + 1))
    mkdir -p "$CARRY/m$i"
    mv "$p" "$CARRY/m$i/"
  done
  (cd "$(dirname "$MODEL")" && sha256sum "$(basename "$MODEL")" | awk '{print $1"  model.gguf"}') > "$CARRY/m1/model.sha256"
  rmdir "$tmp"
else
  echo "model $MODEL not found: packing the binaries only" >&2
fi
du -sh "$CARRY"/*
echo "tracked tree: $(git -C "$ROOT" ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes"
