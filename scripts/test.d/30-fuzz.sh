#!/usr/bin/env bash
# Fuzzing: each libFuzzer target of tests/fuzz (sync wire decoding, Automerge change ingestion,
# the import format) runs for FUZZ_SECONDS (default 25) from its checked-in seeds. Any crash,
# leak of memory past the limit or slow input fails the suite; libFuzzer leaves the input in
# target/fuzz/artifacts/<target>/ (turn it into a regular test, see docs/RELIABILITY.md).
#
# The targets link libfuzzer-sys directly and are built with the same coverage instrumentation
# cargo-fuzz uses (SanitizerCoverage: inline 8-bit counters, PC table, comparison tracing), but
# without AddressSanitizer: the code under test is safe Rust, and the stable toolchain suffices.
#
# FUZZ_SECONDS=N  seconds per target; FUZZ_TARGETS="wire import"  a subset; FUZZ_OUT=DIR  build,
# corpus and artifacts elsewhere than target/fuzz; FUZZ_SEED=N  libFuzzer's seed (default 1, so
# that a fresh clone, as in CI, replays the same exploration; 0 draws a new one each run).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-25}"
TARGETS="${FUZZ_TARGETS:-wire changes import}"
OUT="${FUZZ_OUT:-$ROOT/target/fuzz}"
HOST="$(rustc -vV | sed -n 's/^host: //p')"
mkdir -p "$OUT"

# SQLCipher needs OpenSSL: link the static one the workspace build has made already instead of
# building the vendored copy a second time (half of the suite's cold build). Any workspace
# build will do (OpenSSL is C, built without the coverage flags); none found: vendored again.
OPENSSL_BUILT=""
for dir in $(ls -dt "${CARGO_TARGET_DIR:-$ROOT/target}"/*/build/openssl-sys-*/out/openssl-build/install 2>/dev/null); do
  if [ -f "$dir/include/openssl/opensslv.h" ] && { [ -f "$dir/lib/libcrypto.a" ] || [ -f "$dir/lib64/libcrypto.a" ]; }; then
    OPENSSL_BUILT="$dir"
    break
  fi
done
if [ -n "$OPENSSL_BUILT" ]; then
  export OPENSSL_NO_VENDOR=1 OPENSSL_STATIC=1 OPENSSL_DIR="$OPENSSL_BUILT"
  echo "fuzz build: OpenSSL from $OPENSSL_BUILT" >&2
fi

export CARGO_TARGET_DIR="$OUT/build"
# Flags only for the target crates: with --target, build scripts and proc macros stay plain.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
start=$(date +%s)
(cd tests/fuzz && cargo build --release --target "$HOST" --bins)
echo "fuzz build: $(( $(date +%s) - start )) s" >&2

status=0
for target in $TARGETS; do
  corpus="$OUT/corpus/$target"
  artifacts="$OUT/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  log="$OUT/$target.log"
  set +e
  # Corpus dir first (grows, kept under target/ between runs), then the read-only seeds.
  "$OUT/build/$HOST/release/$target" "$corpus" "tests/fuzz/seeds/$target" \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -max_len=65536 -seed="${FUZZ_SEED:-1}" -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "fuzz $target: ${runs:-?} executions in ${SECONDS_PER_TARGET} s (exit $rc)" >&2
  if [ "$rc" -ne 0 ]; then
    echo "fuzz $target FAILED; last lines of $log:" >&2
    tail -40 "$log" >&2
    status=1
  fi
done
exit "$status"
