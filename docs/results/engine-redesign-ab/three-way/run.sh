#!/usr/bin/env bash
# The three-way A/B behind engine.md's "batch of one" recheck: OLD (d048249), BATCHED (d416273)
# and INLINE (the single-sequence attention step on the calling thread) alternate four rounds;
# each run is wrapped in `perf stat` for its CPU time.
#   OLD=… BATCHED=… INLINE=… bash run.sh   (run in this folder)
set -u
uptime > uptime-start.txt
for r in 1 2 3 4; do
  for side in old batched inline; do
    case $side in old) bin=$OLD;; batched) bin=$BATCHED;; inline) bin=$INLINE;; esac
    perf stat -x, -e instructions,task-clock -o perf-$side-$r.txt "$bin" --threads 2 bench --json $side-$r.json --prefill 512,8192 --repeats 1 --decode-tokens 32 >/dev/null 2>&1
    echo "round $r $side $(date +%T)"
  done
done
uptime > uptime-end.txt
