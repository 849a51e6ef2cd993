#!/usr/bin/env bash
# Decode A/B of the two quantised kernels in one binary: FRUGAL_DECODE_KERNEL=candle vs ours,
# alternating ROUNDS times; `frugal bench --prefill 512 --decode-depth 512 --decode-tokens 128`,
# 2 threads. Extra arguments go before `bench` (e.g. `--model gemma3-270m`).
#   BIN=target/release/frugal ROUNDS=5 scripts/decode_kernel_ab.sh OUT_DIR [global flags…]
set -u
out="$1"; shift
mkdir -p "$out"
uptime > "$out/uptime-start.txt"
for r in $(seq 1 "${ROUNDS:-5}"); do
  for k in candle ours; do
    FRUGAL_DECODE_KERNEL=$k "${BIN:-target/release/frugal}" "$@" --threads 2 bench --json "$out/$k-$r.json" \
      --prefill 512 --repeats 1 --decode-depth 512 --decode-tokens 128 >/dev/null 2>&1
    echo "round $r $k $(date +%T)"
  done
done
uptime > "$out/uptime-end.txt"
