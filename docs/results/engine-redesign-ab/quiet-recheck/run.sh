#!/usr/bin/env bash
# The quiet recheck behind engine.md: OLD (d048249) and NEW alternate four rounds of
# `frugal bench --prefill 512,8192 --repeats 1 --decode-tokens 32`, each under `perf stat`.
# NEW decodes on candle's kernel (FRUGAL_DECODE_KERNEL=candle) so only the redesign differs.
#   OLD=… NEW=… bash run.sh   (run in this folder)
set -u
for r in 1 2 3 4; do
  for side in old new; do
    bin=$OLD; [ $side = new ] && bin=$NEW
    FRUGAL_DECODE_KERNEL=candle perf stat -x, -e task-clock -o perf-$side-$r.txt "$bin" --threads 2 bench --json $side-$r.json --prefill 512,8192 --repeats 1 --decode-tokens 32 >/dev/null 2>&1
    echo "ab round $r $side $(date +%T)"
  done
done
