#!/usr/bin/env bash
# A/B of the batched quantised product: the AVX-512 tile kernel against the grouped kernel per
# activation row (FRUGAL_QUANT_TILE=off), alternating, on SmolLM2-135M's shapes, then the
# prefill speed on either side of the dequantising switch (--dequant-rows). Run on a quiet
# machine. Usage: scripts/tile_kernel_ab.sh OUT_DIR [ROUNDS]
set -euo pipefail
OUT="$1"; ROUNDS="${2:-3}"
mkdir -p "$OUT"
cargo build --release -p frugal-numerics --example quant_matmul_bench -p frugal-cli >/dev/null 2>&1
B=target/release/examples/quant_matmul_bench
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
{
  echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) threads=$RAYON_NUM_THREADS $(grep -m1 'model name' /proc/cpuinfo)"
  for r in $(seq "$ROUNDS"); do
    for shape in "1536 576 q4_1" "576 1536 q4_1" "192 576 q4_1" "49152 576 q8_0"; do
      for m in 2 4 8 16 32 128; do
        echo "round $r tile $($B $shape $m 100)"
        echo "round $r rows $(FRUGAL_QUANT_TILE=off $B $shape $m 100)"
      done
    done
  done
} | tee "$OUT/matmul.txt"
{
  for r in $(seq "$ROUNDS"); do
    for p in 128 256 512 1024; do
      for dq in 32 100000; do
        echo "round $r prefill $p dequant-rows $dq: $(target/release/frugal bench --prefill $p --decode-tokens 4 --repeats 2 --dequant-rows $dq 2>&1 | grep -m1 '^prefill ')"
      done
    done
  done
} | tee "$OUT/prefill.txt"
