#!/usr/bin/env bash
# One invocation: frugal bench vs llama.cpp (llama-cpp-python) on the same GGUF,
# same protocol, then a Markdown table of frugal/llama.cpp ratios.
#
# Env: FRUGAL_GGUF (model path; default: `frugal fetch --print-path`),
#      THREADS (default 2), PEER_VENV (default <repo>/.venv-peer),
#      FRUGAL_BIN (default target/release/frugal),
#      OURS_JSON / THEIRS_JSON (defaults /tmp/frugal_bench_ours.json, /tmp/frugal_bench_llamacpp.json),
#      PEER_FLASH_ATTN (on|off, default on = what llama.cpp's own "auto" picks on CPU).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
THREADS="${THREADS:-2}"
PREFILL="512,2048,8192"
DECODE_DEPTH=512
DECODE_TOKENS=128
export PEER_VENV="${PEER_VENV:-$REPO_ROOT/.venv-peer}"
FRUGAL_BIN="${FRUGAL_BIN:-target/release/frugal}"
OURS_JSON="${OURS_JSON:-/tmp/frugal_bench_ours.json}"
THEIRS_JSON="${THEIRS_JSON:-/tmp/frugal_bench_llamacpp.json}"
PEER_FLASH_ATTN="${PEER_FLASH_ATTN:-on}"

echo "== frugal vs llama.cpp =="
echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "arch:    $(uname -m)"
echo "cpu:     $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//') ($(nproc) logical CPUs)"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
echo "threads: $THREADS"

# 1. Peer venv (idempotent; first time builds llama.cpp, ~10-15 min).
scripts/peer/install_llamacpp.sh >&2

# 2. Model.
GGUF="${FRUGAL_GGUF:-}"
if [ -z "$GGUF" ] && [ -x "$FRUGAL_BIN" ]; then
    GGUF="$("$FRUGAL_BIN" fetch --print-path 2>/dev/null | tail -n1)" || GGUF=""
fi
if [ -z "$GGUF" ] || [ ! -f "$GGUF" ]; then
    echo "error: no GGUF: set FRUGAL_GGUF or make '$FRUGAL_BIN fetch --print-path' work" >&2
    exit 1
fi
echo "model:   $GGUF ($(stat -c %s "$GGUF") bytes, sha256 $(sha256sum "$GGUF" | cut -c1-16)...)"
echo

# 3. Ours.
echo "-- frugal bench --" >&2
MODEL_ARGS=()
# Flag frugal bench takes for the model path; set FRUGAL_MODEL_FLAG= (empty) to omit.
FRUGAL_MODEL_FLAG="${FRUGAL_MODEL_FLAG---model}"
[ -n "$FRUGAL_MODEL_FLAG" ] && MODEL_ARGS=("$FRUGAL_MODEL_FLAG" "$GGUF")
"$FRUGAL_BIN" bench "${MODEL_ARGS[@]}" --threads "$THREADS" --prefill "$PREFILL" \
    --decode-depth "$DECODE_DEPTH" --decode-tokens "$DECODE_TOKENS" --json "$OURS_JSON" >&2

# 4. Theirs.
echo "-- llama.cpp bench --" >&2
"$PEER_VENV/bin/python" scripts/peer/llamacpp_bench.py --model "$GGUF" --threads "$THREADS" \
    --prefill "$PREFILL" --decode-depth "$DECODE_DEPTH" --decode-tokens "$DECODE_TOKENS" \
    --flash-attn "$PEER_FLASH_ATTN" --json "$THEIRS_JSON" >/dev/null

# 5. Table.
python3 scripts/peer/compare.py "$OURS_JSON" "$THEIRS_JSON"
