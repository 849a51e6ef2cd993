#!/usr/bin/env bash
# Install llama-cpp-python (the speed peer) and its OpenAI-compatible server's dependencies
# into a private venv.
# Venv path: $PEER_VENV (default <repo>/.venv-peer, gitignored by /.venv*).
# Idempotent: does nothing if llama_cpp and numpy already import from that venv.
# Builds llama.cpp from the PyPI sdist (cmake/ninja build-dep wheels), the text library only.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEER_VENV="${PEER_VENV:-$REPO_ROOT/.venv-peer}"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"

# llama.cpp is built with -march=native: a venv built on another CPU may SIGILL.
# Remember the CPU flags it was built for and rebuild (no wheel cache) if they change.
CPU_FLAGS="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-16)"
STAMP="$PEER_VENV/.llamacpp-cpu-flags"
PIP_EXTRA=()
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" != "$CPU_FLAGS" ]; then
    echo "[install_llamacpp] CPU flags changed since the build; rebuilding llama-cpp-python"
    PIP_EXTRA=(--force-reinstall --no-cache-dir --no-deps)
elif [ -x "$PEER_VENV/bin/python" ] && \
   "$PEER_VENV/bin/python" -c "import llama_cpp, llama_cpp.server.app, numpy, sys; sys.exit(0 if llama_cpp.__version__ == '$LLAMA_CPP_PYTHON_VERSION' else 1)" 2>/dev/null; then
    echo "[install_llamacpp] llama-cpp-python $LLAMA_CPP_PYTHON_VERSION already importable in $PEER_VENV; skipping"
    exit 0
fi

if [ ! -x "$PEER_VENV/bin/python" ]; then
    echo "[install_llamacpp] creating venv $PEER_VENV"
    "$PYTHON" -m venv "$PEER_VENV"
fi

# Compile jobs: every core by default (PEER_BUILD_JOBS to lower it when the machine is shared).
export CMAKE_BUILD_PARALLEL_LEVEL="${PEER_BUILD_JOBS:-$(nproc)}"
# Only the text library is needed: skip the multimodal (mtmd/llava) library, examples and tests,
# which are most of the compile time.
export CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF"
# Keep the build verbose enough to show progress in logs.
start=$(date +%s)
echo "[install_llamacpp] pip install llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION numpy (CMAKE_BUILD_PARALLEL_LEVEL=$CMAKE_BUILD_PARALLEL_LEVEL) ..."
"$PEER_VENV/bin/python" -m pip install --upgrade pip >/dev/null 2>&1 || true
"$PEER_VENV/bin/python" -m pip install numpy
"$PEER_VENV/bin/python" -m pip install "${PIP_EXTRA[@]}" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
# The OpenAI-compatible server's dependencies (pure Python; the extra rebuilds nothing).
"$PEER_VENV/bin/python" -m pip install "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
end=$(date +%s)
echo "$CPU_FLAGS" > "$STAMP"
"$PEER_VENV/bin/python" -c "import llama_cpp; print('[install_llamacpp] installed llama_cpp', llama_cpp.__version__)"
echo "[install_llamacpp] done in $((end - start)) s"
