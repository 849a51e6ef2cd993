#!/usr/bin/env bash
# Regenerates every number on docs/results/minicache.md (SmolLM2-135M, CPU). Each step resumes.
# FRUGAL=path/to/frugal overrides the binary (default target/release/frugal).
set -euo pipefail
F=${FRUGAL:-target/release/frugal}
D=docs/results/minicache-data
mkdir -p $D
run() { local out=$1; shift; if [ -f $out ]; then $F eval "$@" --seed 0 --resume $out; else $F eval "$@" --seed 0 --out $out; fi; }
# 1. the bar at 4k: perplexity on held-out text; option A (start=15, the default) and option B
#    (start=14); the deepest pair alone; KIVI-4 and KIVI-2 alone and composed; KIVI groups of 64
#    (half the scale/min overhead) for the 4x point
run $D/ppl4k.json --task ppl --length 4096 --samples 4 \
  --policy full --policy minicache --policy mean-merge --policy kivi:bits=4 --policy minicache+kivi:bits=4 \
  --policy minicache:start=14+kivi:bits=4 \
  --policy minicache:start=28 --policy minicache:start=28+kivi:bits=4 \
  --policy kivi:bits=2 --policy minicache+kivi:bits=2 \
  --policy kivi:bits=4,group=64 --policy minicache:start=14+kivi:bits=4,group=64 \
  --policy minicache:start=28+kivi:bits=4,group=64
# 2. passkey and kv-retrieval at 1k against the number of merged layers (deepest first, via
#    start: 28 → 2 layers, 20 → 10, 15 → 14), SLERP + retention against mean-merge, with decode
#    tokens/s of every policy in the same run
run $D/retrieval1k.json --task passkey --task kv-retrieval --length 1024 --samples 6 \
  --policy full --sweep minicache:start=28,20,15 --sweep mean-merge:start=28,20,15 \
  --policy kivi:bits=4 --policy minicache+kivi:bits=4 --policy minicache:start=28+kivi:bits=4
# 3. perplexity sweeps at 1k: merged layers, SLERP+retention vs mean; gamma; t
run $D/sweep1k.json --task ppl --length 1024 --samples 3 --policy full \
  --sweep minicache:start=28,20,15,0 --sweep mean-merge:start=28,20,15,0 \
  --sweep minicache:gamma=0,0.1,0.5 --sweep minicache:t=0.3,0.7
# 4. adjacent-layer K/V cosine similarity across depth (plot)
[ -f $D/kv-sim.png ] || $F probe kv-similarity --length 2048 --samples 2 --out $D/kv-sim.json
