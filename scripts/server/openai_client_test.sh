#!/usr/bin/env bash
# Drives `frugal serve` with the official `openai` Python package: chat, streaming, a policy
# extension and error cases (see openai_client_test.py). Uses the real default model (fetched
# on first use) so the client sees real text. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
OPENAI_VERSION=3.57.0
VENV=.venv-openai

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "openai==$OPENAI_VERSION"
fi
[ -x target/release/frugal ] || cargo build --release -p frugal-cli
MODEL_PATH=$(target/release/frugal fetch --print-path)
# A free loopback port, chosen by the OS.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp)
target/release/frugal --model "$MODEL_PATH" serve --host 127.0.0.1 --port "$PORT" \
  --served-model-name smollm2 --kv-budget 256M --max-concurrent 4 --prefill-chunk 64 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 100); do
  python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$LOG"; echo "server exited" >&2; exit 1; }
  sleep 0.2
done
"$VENV/bin/python" scripts/server/openai_client_test.py "http://127.0.0.1:$PORT/v1" smollm2 || { cat "$LOG"; exit 1; }
