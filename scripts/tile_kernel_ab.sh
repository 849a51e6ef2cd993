#!/usr/bin/env bash
# A/B of the quantised product kernels, alternating, on SmolLM2-135M's shapes: the default
# (on AVX-512 VNNI: the sixteen-row panel kernel) against the environment setting OFF
# (default FRUGAL_QUANT_TILE=off: the grouped kernel per activation row; at commit 795e19f,
# FRUGAL_QUANT_PANEL=off chose the four-row tile kernel that the panel kernel replaced); then
# prefill on either side of the dequantising switch (--dequant-rows) and single-stream
# decode, both sides. Run on a quiet machine.
# Usage: [OFF=VAR=value] scripts/tile_kernel_ab.sh OUT_DIR [ROUNDS]
set -euo pipefail
OUT="$1"; ROUNDS="${2:-3}"; OFF="${OFF:-FRUGAL_QUANT_TILE=off}"
mkdir -p "$OUT"
cargo build --release --workspace --all-targets >/dev/null 2>&1
B=target/release/examples/quant_matmul_bench
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
HEAD="# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) threads=$RAYON_NUM_THREADS off: $OFF; $(grep -m1 'model name' /proc/cpuinfo)"
{
  echo "$HEAD"
  for r in $(seq "$ROUNDS"); do
    for shape in "1536 576 q4_1" "576 1536 q4_1" "960 576 q4_1" "49152 576 q8_0"; do
      for m in 1 2 4 8 16 32 128; do
        echo "round $r on $($B $shape $m 100)"
        echo "round $r off $(env "$OFF" $B $shape $m 100)"
      done
    done
  done
} | tee "$OUT/matmul.txt"
{
  echo "$HEAD"
  for r in $(seq "$ROUNDS"); do
    for p in 256 512 1024 2048; do
      for dq in 100000 1024; do
        echo "round $r on prefill $p dequant-rows $dq: $(target/release/frugal bench --prefill $p --decode-tokens 4 --repeats 2 --dequant-rows $dq 2>&1 | grep -m1 '^prefill ')"
      done
      echo "round $r off prefill $p dequant-rows 1024: $(env "$OFF" target/release/frugal bench --prefill $p --decode-tokens 4 --repeats 2 --dequant-rows 1024 2>&1 | grep -m1 '^prefill ')"
    done
  done
} | tee "$OUT/prefill.txt"
{
  echo "$HEAD; frugal bench --prefill 64 --decode-depth 512 --decode-tokens 128 --repeats 2"
  for r in $(seq "$ROUNDS"); do
    echo "round $r off $(env "$OFF" target/release/frugal bench --prefill 64 --decode-tokens 128 --repeats 2 2>&1 | grep -m1 '^decode ')"
    echo "round $r on $(target/release/frugal bench --prefill 64 --decode-tokens 128 --repeats 2 2>&1 | grep -m1 '^decode ')"
  done
} | tee "$OUT/decode.txt"
