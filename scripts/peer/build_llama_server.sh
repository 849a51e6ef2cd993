#!/usr/bin/env bash
# Build llama.cpp's own HTTP server (`llama-server`: parallel slots, continuous batching) from
# the llama.cpp that the llama-cpp-python sdist of install_llamacpp.sh vendors, so both peers
# are the same llama.cpp. llama-cpp-python's `llama_cpp.server` serves one request at a time;
# `llama-server -np N` is the peer with slots equal to ours.
# Output: $PEER_VENV/llama-server/bin/llama-server (idempotent: skips when it exists).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEER_VENV="${PEER_VENV:-$REPO_ROOT/.venv-peer}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
OUT="$PEER_VENV/llama-server"
if [ -x "$OUT/bin/llama-server" ]; then
    echo "[build_llama_server] $OUT/bin/llama-server exists; skipping"
    exit 0
fi
[ -x "$PEER_VENV/bin/python" ] || "$REPO_ROOT/scripts/peer/install_llamacpp.sh"
"$PEER_VENV/bin/python" -m pip install -q cmake ninja
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
( cd "$work" && "$PEER_VENV/bin/python" -m pip download -q --no-deps \
    --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d . )
tar xzf "$work"/llama_cpp_python-"$VERSION".tar.gz -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
start=$(date +%s)
PATH="$PEER_VENV/bin:$PATH" cmake -S "$src" -B "$work/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF >/dev/null
PATH="$PEER_VENV/bin:$PATH" cmake --build "$work/build" --target llama-server \
    -j "${PEER_BUILD_JOBS:-$(nproc)}"
mkdir -p "$OUT/bin"
cp "$work/build/bin/llama-server" "$OUT/bin/"
echo "[build_llama_server] built $OUT/bin/llama-server in $(( $(date +%s) - start )) s"
