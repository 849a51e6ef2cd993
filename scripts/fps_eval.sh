#!/usr/bin/env bash
# Quality of FPSAttention's CPU emulation (`fps` policy, training-free) against full attention on
# SmolLM2-135M: perplexity and passkey at 4k, FP8 alone, the block window alone, both together,
# at two window sizes. Regenerates docs/results/fps-quality-data/; each step resumes.
# FRUGAL=path/to/frugal overrides the binary (default target/release/frugal).
set -euo pipefail
F=${FRUGAL:-target/release/frugal}
D=docs/results/fps-quality-data
mkdir -p $D
run() { local out=$1; shift; if [ -f $out ]; then $F eval "$@" --seed 0 --resume $out; else $F eval "$@" --seed 0 --out $out; fi; }
# window=16 key blocks (+1 sink) = 1088 of 4096 tokens: ~47 % block density at 4k;
# window=6 (+1 sink) ~ 25 % density at 4k, the kernel benchmark's operating point.
POLICIES=(--policy full --policy fps:window=0 --policy fps:qk=0,v=0,p=0 --policy fps
  --policy fps:window=6,qk=0,v=0,p=0 --policy fps:window=6)
run $D/ppl4k.json --task ppl --length 4096 --samples 4 "${POLICIES[@]}"
run $D/passkey4k.json --task passkey --length 4096 --samples 5 "${POLICIES[@]}"
