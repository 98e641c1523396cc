#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers and the decision (cargo-fuzz, libFuzzer) on the stable
# toolchain: `--sanitizer none` needs no nightly flags. Corpora are seeded from the fixtures.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   CI runs a short smoke (scripts/test.sh); by hand: scripts/fuzz.sh 600
# A crash stops the run with its input under fuzz/artifacts/<target>/; reproduce it with
#   cargo fuzz run --sanitizer none <target> fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-30}"
shift || true
TOOLS_BIN="$(scripts/install-tools.sh fuzz)"
export PATH="$TOOLS_BIN:$PATH"
python3 fuzz/seed.py >/dev/null
# The instrumented build is kept once per machine, beside the tools: later runs rebuild only
# what changed.
TARGET_DIR="${PORTCULLIS_FUZZ_TARGET:-$HOME/.cache/portcullis/fuzz-target}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
cargo fuzz build --fuzz-dir fuzz --sanitizer none --target-dir "$TARGET_DIR"
for t in "${targets[@]}"; do
  mkdir -p "fuzz/artifacts/$t"
  echo "fuzzing $t for ${SECONDS_PER_TARGET}s"
  cargo fuzz run --fuzz-dir fuzz --sanitizer none --target-dir "$TARGET_DIR" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 2>&1 |
    grep -E "^(#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|ERROR|thread|panicked|Done)" || true
  if ls "fuzz/artifacts/$t"/crash-* "fuzz/artifacts/$t"/timeout-* "fuzz/artifacts/$t"/oom-* >/dev/null 2>&1; then
    echo "fuzz target $t found a failing input:" >&2
    ls "fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "fuzzing: ${#targets[@]} targets, ${SECONDS_PER_TARGET}s each, no crash"
