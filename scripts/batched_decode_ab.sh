#!/usr/bin/env bash
# A/B of batched decode between builds, alternating, on a quiet machine: each round runs
# `frugal bench --batch 8` once per build (1 and 8 sequences at DEPTH tokens of context, 96
# steps each; 2 threads) and prints "label batch1_tok_s batch8_tok_s"; the summary gives
# each build's medians and the 8-over-1 ratio of every round.
# Usage: scripts/batched_decode_ab.sh ROUNDS DEPTH LABEL=BINARY [LABEL=BINARY ...] > raw.txt
#        python3 scripts/batched_decode_ab_summary.py raw.txt
set -euo pipefail
ROUNDS="$1"; DEPTH="$2"; shift 2
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) depth=$DEPTH; $(grep -m1 'model name' /proc/cpuinfo)"
for r in $(seq "$ROUNDS"); do
  for v in "$@"; do
    label="${v%%=*}"; bin="${v#*=}"
    out=$("$bin" -t 2 bench --prefill 32 --repeats 1 --decode-depth "$DEPTH" --decode-tokens 96 \
      --batch 8 --bandwidth-bytes 0 2>/dev/null | awk '/^decode batch/ {printf "%s ", $5}')
    echo "$label $out"
  done
done
