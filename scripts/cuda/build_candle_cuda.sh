#!/usr/bin/env bash
# Builds frugal with candle's CUDA backend on a machine that has no GPU and no system CUDA, so
# the binaries can be carried to the GPU machine (which has a driver and PyTorch's CUDA 13
# wheels, but no Rust toolchain and no internet).
#
#   scripts/cuda/build_candle_cuda.sh            # frugal (+ the CUDA consistency test binary)
#   JOBS=1 scripts/cuda/build_candle_cuda.sh     # fewer parallel nvcc jobs (shared machines)
#
# Output: dist-cuda/ at the repo root (ignored by git):
#   frugal                 the CLI with `--device cuda` (engine) and `zpressor bench --device cuda`
#   engine-cuda-test       the engine's CUDA-vs-CPU consistency test (a cargo test binary)
#   *.xz                   the same, xz-compressed, for carrying (the PTX inside compresses ~10x)
#   SHA256SUMS
#
# How the toolkit is found (read from the crates' build scripts):
# - candle-kernels' build script (crate `cudaforge`) compiles its .cu files with nvcc: PTX for
#   the elementwise/reduce/quantized kernels (embedded in the binary as text) and a static
#   `libmoe.a` (GGUF mmq/mmvq kernels, SASS). It finds nvcc through $NVCC, then PATH, then
#   $CUDA_HOME/bin, $CUDA_PATH/bin; the target comes from $CUDA_COMPUTE_CAP (else it runs
#   nvidia-smi, which does not exist here): 90 gives `sm_90a` PTX/SASS, loadable on H100/H200
#   only. Parallel nvcc jobs: $CUDAFORGE_THREADS. No network access (no CUTLASS fetch).
# - cudarc (candle's CUDA binding) reads the toolkit version from `nvcc --version` or
#   $CUDARC_CUDA_VERSION (13000 here: the GPU machines' driver is CUDA 13.0, and PTX from a
#   newer nvcc would not JIT there).
# - candle-core turns on cudarc's `dynamic-linking` feature (cudarc refuses `dynamic-loading`
#   beside it, and a feature cannot be switched off from a dependent crate), so the binary is
#   linked against libcuda, libcublas, libcublasLt, libcurand, libnvrtc and, through
#   candle-kernels' libmoe.a, libcudart. At link time we give it: the real 13.0 libraries from
#   the pinned PyPI wheels (unversioned symlinks to them), and a stub `libcuda.so` (soname
#   libcuda.so.1) that only defines the driver entry points cudarc names, since no wheel ships
#   the driver. At run time the real driver's libcuda.so.1 replaces the stub.
#
# What the binary loads at run time (its NEEDED list; check with `readelf -d dist-cuda/frugal`):
#   libcuda.so.1       the NVIDIA driver: /usr/lib/x86_64-linux-gnu or /usr/local/nvidia/lib64
#                      on the GPU machine (already on the loader path there)
#   libcublas.so.13, libcublasLt.so.13, libcudart.so.13, libnvrtc.so.13, libcurand.so.10
#                      shipped by PyTorch's cu130 pip wheels (nvidia-cublas, nvidia-cuda-runtime,
#                      nvidia-cuda-nvrtc, nvidia-curand), all in one folder:
#                      <site-packages>/nvidia/cu13/lib
#   libstdc++.so.6, libgcc_s, libc, libm
# So on the GPU machine:
#   export LD_LIBRARY_PATH="$(python3 -c 'import nvidia,os;print(os.path.join(nvidia.__path__[0],"cu13","lib"))'):$LD_LIBRARY_PATH"
# (on the image seen so far that is /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-cuda}"
JOBS="${JOBS:-2}"
DIST="${DIST:-$ROOT/dist-cuda}"

# 1. The compiler (nvcc 13.0 from PyPI), then the libraries candle links against, same release.
[ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import nvidia' 2>/dev/null || "$ROOT/scripts/cuda/install_nvcc.sh"
"$VENV/bin/python" -m pip install -q \
  nvidia-cuda-nvrtc==13.0.88 "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*"
C="$("$VENV/bin/python" -c 'import nvidia,os;print(os.path.join(nvidia.__path__[0],"cu13"))')"

# 2. Link-time folder: unversioned names for the versioned wheel libraries, and the driver stub.
LINK="$VENV/candle-link"
mkdir -p "$LINK"
for lib in cublas cublasLt cudart nvrtc curand; do
  real="$(ls "$C"/lib/lib$lib.so.* 2>/dev/null | grep -E "lib$lib\.so\.[0-9]+$" | head -1)"
  [ -n "$real" ] || { echo "missing lib$lib.so.* in $C/lib" >&2; exit 1; }
  ln -sf "$real" "$LINK/lib$lib.so"
done
if [ ! -f "$LINK/libcuda.so" ]; then
  CUDARC_SRC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort | tail -1)"
  if [ -z "$CUDARC_SRC" ]; then
    (cd "$ROOT" && cargo fetch -q)
    CUDARC_SRC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort | tail -1)"
  fi
  grep -oE "^pub unsafe fn cu[A-Za-z0-9_]+" "$CUDARC_SRC/src/driver/sys/mod.rs" | awk '{print $4}' | sort -u |
    sed 's/.*/int &(void){return 999;}/' > "$LINK/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/libcuda_stub.c"
fi

# 3. Build. The environment only points the build scripts and the linker at the wheels.
export PATH="$C/bin:$PATH" CUDA_HOME="$C" CUDA_ROOT="$C" CUDA_PATH="$C"
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS="$JOBS"
export LIBRARY_PATH="$LINK:$C/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
cd "$ROOT"
nice -n 10 cargo build --release -p frugal-cli --features cuda -j "$JOBS"
TEST_BIN="$(nice -n 10 cargo test --release -p frugal-engine --features cuda --test cuda_consistency \
  --no-run --message-format=json -j "$JOBS" 2>/dev/null |
  "$VENV/bin/python" -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="cuda_consistency": print(m["executable"])' | tail -1)"

# 4. Collect, strip the debug line tables (smaller to carry), compress.
T="${CARGO_TARGET_DIR:-$ROOT/target}/release"
mkdir -p "$DIST"
cp "$T/frugal" "$DIST/frugal"
[ -n "$TEST_BIN" ] && cp "$TEST_BIN" "$DIST/engine-cuda-test"
cd "$DIST"
for b in frugal engine-cuda-test; do
  [ -f "$b" ] || continue
  strip --strip-debug "$b"
  xz -T"$JOBS" -6 -kf "$b"
done
sha256sum frugal* engine-cuda-test* > SHA256SUMS
ls -l "$DIST"
echo "NEEDED:"; readelf -d "$DIST/frugal" | grep NEEDED
