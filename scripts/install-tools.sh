#!/usr/bin/env bash
# Installs the cargo tools CI needs (cargo-fuzz, cargo-deny, cargo-cyclonedx) once per machine,
# into $PORTCULLIS_TOOLS (default ~/.cache/portcullis/tools), and prints its bin directory.
# A tool already there at the wanted version is kept, so later runs cost nothing.
# Usage: scripts/install-tools.sh [fuzz] [deny] [cyclonedx]   (default: all)
set -euo pipefail
TOOLS="${PORTCULLIS_TOOLS:-$HOME/.cache/portcullis/tools}"
mkdir -p "$TOOLS/bin"
want() { # crate version-requirement binary version-pattern
  local crate=$1 req=$2 bin=$3 pattern=$4
  # As cargo runs it: `cargo-x x --version`.
  if "$TOOLS/bin/$bin" "${bin#cargo-}" --version 2>/dev/null | grep -Eq "$pattern"; then
    return 0
  fi
  echo "installing $crate $req into $TOOLS" >&2
  cargo install "$crate" --version "$req" --locked --root "$TOOLS" --quiet >&2
}
set -- "${@:-fuzz deny cyclonedx}"
for t in $*; do
  case "$t" in
    fuzz) want cargo-fuzz "^0.13" cargo-fuzz "cargo-fuzz 0\.13\." ;;
    deny) want cargo-deny "^0.20" cargo-deny "cargo-deny 0\.20\." ;;
    cyclonedx) want cargo-cyclonedx "^0.5" cargo-cyclonedx "cyclonedx 0\.5\." ;;
    *) echo "unknown tool $t" >&2; exit 2 ;;
  esac
done
echo "$TOOLS/bin"
