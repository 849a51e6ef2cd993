#!/usr/bin/env bash
# ZPressor on a lent GPU, from a carried binary: the full-size scaling bench (ZPressor + stand-in
# vs the stand-in over every view) and the toy's training and evaluation, with and without
# ZPressor. Run from the repo root on the GPU machine; results go to $OUT (default ./device-out).
#
#   BIN=.device/frugal TEXTURES=.device/textures STEPS=3000 bash scripts/zpressor/device_run.sh
#
# BIN is a `frugal` built with the `cuda` feature (scripts/cuda/build_candle_cuda.sh); it loads
# libcuda, cuBLAS and cuRAND at run time, found here in the pip wheels that PyTorch ships with.
set -euo pipefail
# At most six files come back: gpu.txt, run.log, scaling-gpu.json, toy-train-{zpressor,baseline}.json, toy-eval.json.
BIN="${BIN:-.device/frugal}"
TEXTURES="${TEXTURES:-.device/textures}"
STEPS="${STEPS:-3000}"
OUT="${OUT:-device-out}"
WHAT="${WHAT:-bench,toy}"
mkdir -p "$OUT"
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
for d in "$site"/nvidia/*/lib; do LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
card=$(head -1 "$OUT/gpu.txt" | cut -d, -f1)
chmod +x "$BIN"
if [[ ",$WHAT," == *",bench,"* ]]; then
  "$BIN" zpressor bench --device cuda --mem-cap-gb 1000 --out "$OUT/scaling-gpu.json" --label "$card, alone on the machine" 2>&1 | tee -a "$OUT/run.log"
fi
if [[ ",$WHAT," == *",toy,"* ]]; then
  "$BIN" zpressor train --device cuda --steps "$STEPS" --time-budget-s "${BUDGET_S:-150}" --textures "$TEXTURES" --out /tmp/ck/zpressor 2>&1 | tee -a "$OUT/run.log"
  "$BIN" zpressor train --device cuda --no-zpressor --steps "$STEPS" --time-budget-s "${BUDGET_S:-150}" --textures "$TEXTURES" --out /tmp/ck/baseline 2>&1 | tee -a "$OUT/run.log"
  for m in zpressor baseline; do cp "/tmp/ck/$m/config.json" "$OUT/toy-train-$m.json"; done
  "$BIN" zpressor eval --device cuda --checkpoint /tmp/ck/zpressor /tmp/ck/baseline --views 8,12,24,36,100 --scenes 50 --textures "$TEXTURES" --out "$OUT/toy-eval.json" 2>&1 | tee -a "$OUT/run.log"
fi
