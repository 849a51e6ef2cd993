#!/usr/bin/env bash
# Regenerates every number on docs/results/minicache.md (SmolLM2-135M, CPU). Each step resumes.
# FRUGAL=path/to/frugal overrides the binary (default target/release/frugal).
set -euo pipefail
F=${FRUGAL:-target/release/frugal}
D=docs/results/minicache-data
mkdir -p $D
run() { local out=$1; shift; if [ -f $out ]; then $F eval "$@" --seed 0 --resume $out; else $F eval "$@" --seed 0 --out $out; fi; }
# 1. the bar at 4k: perplexity on held-out text
run $D/ppl4k.json --task ppl --length 4096 --samples 2 \
  --policy full --policy minicache --policy mean-merge --policy kivi:bits=4 --policy minicache+kivi:bits=4
# 2. passkey at 1k, with decode tokens/s of every policy in the same run
run $D/passkey1k.json --task passkey --length 1024 --samples 6 \
  --policy full --policy minicache --policy mean-merge --policy kivi:bits=4 --policy minicache+kivi:bits=4
# 3. sweeps at 1k: merged layers (deepest first, via start), SLERP+retention vs mean; gamma; t
run $D/sweep1k.json --task ppl --length 1024 --samples 2 --policy full \
  --sweep minicache:start=28,20,15,0 --sweep mean-merge:start=28,20,15,0 \
  --sweep minicache:gamma=0,0.1,0.5 --sweep minicache:t=0.3,0.7
# 4. adjacent-layer K/V cosine similarity across depth (plot)
[ -f $D/kv-sim.png ] || $F probe kv-similarity --length 2048 --samples 2 --out $D/kv-sim.json
# 5. the best setting that holds (deepest pair only) at 4k, and KIVI-2 for the >= 4x point
run $D/ppl4k.json --task ppl --length 4096 --samples 2 \
  --policy minicache:start=28 --policy mean-merge:start=28 --policy minicache:start=28+kivi:bits=4 \
  --policy minicache:start=26 --policy kivi:bits=2 --policy minicache+kivi:bits=2
run $D/passkey1k.json --task passkey --length 1024 --samples 6 \
  --policy minicache:start=28 --policy mean-merge:start=28 --policy minicache:start=28+kivi:bits=4
