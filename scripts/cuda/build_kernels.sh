#!/usr/bin/env bash
# Compiles crates/frugal-gpu/kernels/*.cu with the pinned CUDA 13.0 nvcc from PyPI
# (scripts/cuda/install_nvcc.sh) into crates/frugal-gpu/kernels/out/{NAME}.sm_90a.cubin and
# {NAME}.compute_90a.ptx. The Rust crate embeds the cubin with include_bytes! (PTX kept for
# inspection / JIT fallback). Prints the compiler's resource report (registers, spills, smem).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-cuda}"
[ -x "$VENV/bin/python" ] || "$ROOT/scripts/cuda/install_nvcc.sh"
C="$("$VENV/bin/python" -c 'import nvidia,os;print(os.path.join(nvidia.__path__[0],"cu13"))')"
export PATH="$C/bin:$PATH"
K="$ROOT/crates/frugal-gpu/kernels"
mkdir -p "$K/out"
for f in "$K"/*.cu; do
  n="$(basename "$f" .cu)"
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -cubin -Xptxas -v \
       -o "$K/out/$n.sm_90a.cubin" "$f" 2>&1 | grep -E "error|warning|registers|spill|Compiling" || true
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=compute_90a -ptx -o "$K/out/$n.compute_90a.ptx" "$f"
  test -s "$K/out/$n.sm_90a.cubin"
done
ls -l "$K/out"
