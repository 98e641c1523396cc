#!/usr/bin/env bash
# Builds a release of the `portcullis` binary into dist/ with its CycloneDX SBOM
# (cargo-cyclonedx 0.5) and SHA-256 sums.
# Usage: scripts/release.sh              (build, SBOM, sums)
#        scripts/release.sh --sbom-only  (the SBOM alone; CI checks it this way)
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_BIN="$(scripts/install-tools.sh cyclonedx)"
export PATH="$TOOLS_BIN:$PATH"
mkdir -p dist
version=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="portcullis"))')
target=$(rustc -vV | awk '/^host:/ { print $2 }')

# The SBOM of the binary: the host package and everything it links, for the release target.
cargo cyclonedx --manifest-path host/Cargo.toml --format json --spec-version 1.5 \
  --target "$target" --override-filename "portcullis-$version.cdx" >/dev/null
mv "host/portcullis-$version.cdx.json" "dist/portcullis-$version-$target.cdx.json"
# cargo-cyclonedx writes one file per workspace member; only the binary's is wanted.
find . -name "portcullis-$version.cdx.json" -not -path "./dist/*" -not -path "./target/*" -delete
python3 - "dist/portcullis-$version-$target.cdx.json" <<'PY'
import json, sys
bom = json.load(open(sys.argv[1]))
names = {c["name"] for c in bom.get("components", [])}
need = {"wasmtime", "tokio", "tonic", "portcullis-core", "rsa"}
missing = need - names
assert bom["bomFormat"] == "CycloneDX" and not missing, f"SBOM lacks {missing}"
print(f"SBOM: {sys.argv[1]}: {len(names)} components")
PY
[ "${1:-}" = "--sbom-only" ] && exit 0

cargo build --release --locked -p portcullis
cp target/release/portcullis "dist/portcullis-$version-$target"
(cd dist && sha256sum "portcullis-$version-$target" "portcullis-$version-$target.cdx.json" > "portcullis-$version-$target.sha256")
echo "dist/portcullis-$version-$target (+ .cdx.json, .sha256)"
