#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler from PyPI wheels into .venv-cuda at the repo root (or $VENV).
# Why 13.0.x: the cu12 wheels ship no nvcc, and 13.1+ emit PTX ISA newer than the GPU
# machines' driver (CUDA 13.0) can JIT.
# Afterwards nvcc is at $VENV/lib/python3*/site-packages/nvidia/cu13/bin/nvcc; only PATH is needed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-cuda}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
C="$("$VENV/bin/python" -c 'import nvidia,os;print(os.path.join(nvidia.__path__[0],"cu13"))')"
"$C/bin/nvcc" --version | tail -2
echo "CUDA_HOME=$C"
