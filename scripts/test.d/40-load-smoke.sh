#!/usr/bin/env bash
# Smoke run of the load suite (`communesync-bench -- load`): 3 communes x 2 tablets doing a day's
# work and syncing concurrently against a real `communesync serve`, on SQLite and, when the test
# command's PostgreSQL is up, on PostgreSQL too. Fails on any sync error, lost or duplicated
# change, missing record or unconverged tablet (the bench exits non-zero; the greps make sure the
# figures were printed at all). The full 45 x 8 run and its figures: docs/RELIABILITY.md, Load.
set -euo pipefail
cd "$(dirname "$0")/../.."

database=sqlite
if [ -n "${COMMUNESYNC_TEST_DATABASE_URL:-}" ]; then
  database=both
  export COMMUNESYNC_BENCH_DATABASE_URL="$COMMUNESYNC_TEST_DATABASE_URL"
fi
# Same feature set as the test build: nothing rebuilt (a `-p` build would rebuild much).
cargo build -q --workspace --all-targets
mkdir -p target
out=target/bench-smoke-load.txt
target/debug/communesync-bench load --communes 3 --tablets 2 --database "$database" \
  --seconds 120 > "$out"
backends=sqlite
[ "$database" = both ] && backends="sqlite postgres"
for backend in $backends; do
  for figure in errors lost_changes duplicate_changes missing_records unconverged_tablets; do
    grep -q "\"bench\":\"load.$backend.$figure\",\"unit\":\"\",\"value\":0.0}" "$out" || {
      echo "load smoke: load.$backend.$figure is not 0 (see $out)" >&2
      exit 1
    }
  done
done
echo "load smoke: ok ($backends)" >&2
