#!/usr/bin/env bash
# Runs every test of communesync: formatting and lints, Rust unit and integration tests (real
# SQLite/SQLCipher files, SIGKILLed writer processes, a private PostgreSQL on 127.0.0.1, HTTP on
# loopback), and a smoke run of each benchmark suite.
# Installs what it needs by itself; safe to run on a fresh Debian machine with only Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "PostgreSQL for the server backend tests"
PG_DIR="$PWD/target/pg-test"
rm -rf "$PG_DIR"
eval "$(scripts/toolchains/postgres.sh start "$PG_DIR")"
trap 'scripts/toolchains/postgres.sh stop "$PG_DIR" >/dev/null 2>&1 || true' EXIT
export COMMUNESYNC_TEST_DATABASE_URL="$DATABASE_URL"

step "Rust tests (SQLite and PostgreSQL)"
cargo test --workspace

step "benchmark smoke run (small sizes; the figures in README come from full runs)"
# Every target of the workspace, as the test build had them (same features: nothing rebuilt).
cargo build -q --workspace --all-targets
target/debug/communesync-bench store --records 200 --edits 2 > target/bench-smoke-store.txt
grep -q '"bench":"store.bytes_per_record"' target/bench-smoke-store.txt
grep -q '"bench":"store.bytes_per_record_synced"' target/bench-smoke-store.txt
target/debug/communesync-bench sync --records 200 --database sqlite > target/bench-smoke-sync.txt
grep -q '"bench":"sync.sqlite.s3.requests"' target/bench-smoke-sync.txt
target/debug/communesync-bench hostile --seconds 3 --idle 100 --concurrency 2 \
  --bomb-docs 100000 --repeats 200 > target/bench-smoke-hostile.txt
grep -q '"bench":"hostile.honest_sync_p99"' target/bench-smoke-hostile.txt

# Further suites, each a script of its own (bindings on Kotlin and Swift, fuzzing, ...): they run in
# name order, with PostgreSQL still up and COMMUNESYNC_TEST_DATABASE_URL set.
for suite in scripts/test.d/*.sh; do
  [ -e "$suite" ] || continue
  step "$suite"
  bash "$suite"
done

step "all tests passed"
