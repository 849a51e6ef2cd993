#!/usr/bin/env bash
# Regenerates every number on docs/results/minicache.md (SmolLM2-135M, CPU). Each step resumes.
set -euo pipefail
F=${FRUGAL:-target/release/frugal}
D=docs/results/minicache-data
mkdir -p $D
run() { local out=$1; shift; if [ -f $out ]; then $F eval "$@" --seed 0 --resume $out; else $F eval "$@" --seed 0 --out $out; fi; }
# 2. the bar at 4k: perplexity
run $D/ppl4k.json --task ppl --length 4096 --samples 2 \
  --policy full --policy minicache --policy minicache:start=14 --policy mean-merge --policy mean-merge:start=14 \
  --policy kivi:bits=4 --policy minicache+kivi:bits=4 --policy kivi:bits=2
# 3. passkey at 1k with decode speed
run $D/passkey1k.json --task passkey --length 1024 --samples 8 \
  --policy full --policy minicache --policy mean-merge --policy kivi:bits=4 --policy minicache+kivi:bits=4
# 4. sweeps at 1k: merged layers (deepest first), gamma, t
run $D/sweep1k.json --task ppl --length 1024 --samples 2 --policy full \
  --sweep minicache:start=28,24,20,15,10,4,0 --sweep mean-merge:start=28,24,20,15,10,4,0 \
  --sweep minicache:gamma=0,0.01,0.1,0.3 --sweep minicache:t=0.3,0.5,0.7
# 5. adjacent-layer K/V cosine similarity across depth
[ -f $D/kv-sim.json ] || $F probe kv-similarity --length 2048 --samples 2 --out $D/kv-sim.json
