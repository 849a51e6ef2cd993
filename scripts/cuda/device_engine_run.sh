#!/usr/bin/env bash
# On the GPU machine, from the repo root: unpacks .gpu-carry/ (scripts/cuda/pack_for_device.sh),
# checks it, and runs the candle-CUDA build: the engine's CUDA-vs-CPU consistency test,
# `frugal --device cuda bench` and `generate`, the same bench on the CPU for reference, and
# `frugal zpressor bench --device cuda`. Logs and JSON go to $OUT (default /tmp/gpu-out).
#
#   STEPS="test bench generate zpressor" OUT=$OUT bash scripts/cuda/device_engine_run.sh
#
# Needs: the NVIDIA driver (libcuda.so.1) and PyTorch's CUDA 13 wheels (libcublas, libcublasLt,
# libcudart, libnvrtc 13, libcurand 10 under <site-packages>/nvidia/cu13/lib), as on the lent
# machines' image.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu-out}"; mkdir -p "$OUT"
STEPS="${STEPS:-test bench generate zpressor}"
R="$(pwd)"; C="$R/.gpu-carry"
W=/tmp/frugal-gpu; mkdir -p "$W"

# Binaries: xz-compressed here (python's lzma, in case the image has no xz tool).
for b in frugal engine-cuda-test; do
  [ -f "$C/bin/$b.xz" ] || continue
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$C/bin/$b.xz" "$W/$b"
  chmod +x "$W/$b"
done
(cd "$W" && grep -E " (frugal|engine-cuda-test)$" "$C/bin/SHA256SUMS" | sha256sum -c -) | tee "$OUT/bins.txt" || { echo "binary checksum mismatch" >&2; exit 1; }

# Model: the parts of every carried m*/ folder, joined in name order and checked.
MODEL="${MODEL:-}"
if [ -z "$MODEL" ] && [ -f "$C/m1/model.sha256" ]; then
  python3 - "$C" "$W/model.gguf" <<'PY'
import glob, os, shutil, sys
parts = sorted(glob.glob(os.path.join(sys.argv[1], "m*", "model.gguf.part-*")), key=os.path.basename)
with open(sys.argv[2], "wb") as out:
    for p in parts:
        shutil.copyfileobj(open(p, "rb"), out)
print(f"joined {len(parts)} model parts")
PY
  if (cd "$W" && sha256sum -c "$C/m1/model.sha256"); then MODEL="$W/model.gguf"; else
    echo "model parts incomplete or corrupt: the model steps are skipped" >&2; fi
fi

CU13="$(python3 -c 'import nvidia,os;print(os.path.join(nvidia.__path__[0],"cu13","lib"))')"
export LD_LIBRARY_PATH="$CU13${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
ldd "$W/frugal" | tee "$OUT/ldd.txt" | grep -E "not found" && echo "missing libraries above" >&2
F="$W/frugal"
rc=0
for s in $STEPS; do
  case "$s" in
  test)
    FRUGAL_REQUIRE_CUDA=1 FRUGAL_CUDA_TEST_MODEL="$MODEL" "$W/engine-cuda-test" --nocapture --test-threads 1 2>&1 | tee "$OUT/consistency.log" || rc=1 ;;
  bench)
    [ -n "$MODEL" ] || { echo "bench: no model" >&2; continue; }
    "$F" --model "$MODEL" --device cuda bench --prefill 512,2048,8192 --decode-depth 512 --decode-tokens 128 --repeats 3 --json "$OUT/bench-cuda.json" 2>&1 | tee "$OUT/bench-cuda.log" || rc=1
    "$F" --model "$MODEL" --dtype f32 --device cuda bench --prefill 512,2048,8192 --decode-depth 512 --decode-tokens 128 --repeats 3 --json "$OUT/bench-cuda-f32.json" 2>&1 | tee "$OUT/bench-cuda-f32.log" || rc=1
    "$F" --model "$MODEL" --threads 16 bench --prefill 512,2048 --decode-depth 512 --decode-tokens 64 --repeats 1 --json "$OUT/bench-cpu.json" 2>&1 | tee "$OUT/bench-cpu.log" || rc=1 ;;
  generate)
    [ -n "$MODEL" ] || { echo "generate: no model" >&2; continue; }
    for dev in cuda cpu; do
      "$F" --model "$MODEL" --device "$dev" generate --chat --max-tokens 48 "What is the capital of France? Answer in two sentences." 2>&1 | tee "$OUT/generate-$dev.log" || rc=1
    done ;;
  zpressor)
    "$F" zpressor bench --device cuda --mem-cap-gb 60 --out "$OUT/zpressor-gpu.json" --label "H100/H200 via candle CUDA" 2>&1 | tee "$OUT/zpressor-gpu.log" || rc=1 ;;
  esac
done
exit $rc
