#!/usr/bin/env bash
# Smoke run of the failover suite (`communesync-bench failover`): a private PostgreSQL primary
# with a synchronous streaming standby (scripts/toolchains/postgres.sh start/standby, on free
# ports, under target/), three `communesync serve` replicas on a multi-host connection string and
# six tablets syncing; the primary is SIGKILLed and the standby promoted. Fails unless no
# acknowledged change is lost, every tablet converges and every replica serves again unrestarted
# (the bench exits non-zero; the greps make sure the figures were printed). The assertions also
# run in `cargo test` (tests/tests/failover.rs); this prints the pause figure of docs/RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

# PostgreSQL's binaries (a no-op when installed, as scripts/test.sh has done).
scripts/toolchains/postgres.sh >/dev/null
# Same feature set as the test build: nothing rebuilt (a `-p` build would rebuild much).
cargo build -q --workspace --all-targets
mkdir -p target
out=target/bench-smoke-failover.txt
target/debug/communesync-bench failover --seconds-before 2 --seconds-after 2 > "$out"
for figure in lost_changes unconverged_tablets replicas_restarted; do
  grep -q "\"bench\":\"failover.$figure\",\"unit\":\"\",\"value\":0.0}" "$out" || {
    echo "failover smoke: failover.$figure is not 0 (see $out)" >&2
    exit 1
  }
done
grep -q '"bench":"failover.pause_max"' "$out"
echo "failover smoke: ok ($(grep -o '"bench":"failover.pause_max"[^}]*' "$out"))" >&2
