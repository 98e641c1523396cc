#!/usr/bin/env bash
# Makes sure Postgres server binaries (initdb, pg_ctl) are present for the tests, installing
# Debian's `postgresql` package when they are not. Prints the bin directory. Idempotent.
# The tests start their own throwaway clusters on 127.0.0.1 unless DATABASE_URL is set.
set -euo pipefail
find_bin() {
  local best=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && best="$d"
  done
  [ -n "$best" ] && echo "$best"
}
if ! BIN=$(find_bin); then
  if [ "$(id -u)" != 0 ]; then
    echo "Postgres is missing: install Debian's postgresql package (or set PG_BIN)" >&2
    exit 1
  fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  BIN=$(find_bin)
fi
echo "$BIN"
