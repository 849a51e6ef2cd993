#!/usr/bin/env bash
# FPSAttention kernels on a Hopper GPU: correctness + timings of our four variants, then PyTorch
# SDPA / FlexAttention on the same card, joined into one table. Run from the repo root on the GPU
# machine, with target/release/fps-bench built elsewhere
# (`cargo build --release -p frugal-gpu --features cuda`) and copied there:
#   OUT=results bash scripts/cuda/device_run.sh
# Output: $OUT/ours.log, ours.json, torch.log, torch.json, table.md, sass.txt
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/fps-out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
# SASS: which MMA instructions the kernels use (HMMA = mma.sync bf16, QMMA/HMMA for fp8 on sm_90)
cuobjdump -sass crates/frugal-gpu/kernels/out/fps_attn.sm_90a.cubin > /tmp/sass.txt 2>&1 && \
  { grep -oE "(HGMMA|QGMMA|HMMA|QMMA|IMMA)[.A-Z0-9_]*" /tmp/sass.txt | sort | uniq -c; grep -cE "LDL|STL" /tmp/sass.txt; } | tee "$OUT/sass.txt"
./target/release/fps-bench --json "$OUT/ours.json" --maps-dir /tmp/maps 2>&1 | tee "$OUT/ours.log"
rc=$?
python3 scripts/cuda/torch_baseline.py --maps /tmp/maps --ours "$OUT/ours.json" --json "$OUT/torch.json" --md "$OUT/table.md" 2>&1 | tee "$OUT/torch.log"
exit $rc
