//! The server survives losing its database machine: a PostgreSQL primary with a synchronous
//! streaming standby, three `communesync serve` replicas on a multi-host connection string, and
//! six tablets syncing through them; the primary is SIGKILLed and the standby promoted
//! (`communesync_tests::failover`). Asserted: no acknowledged change is lost, every tablet
//! converges, every replica serves again without a restart, and only "offline"/"server" errors
//! reach tablets. The pause tablets see is measured by `communesync-bench failover`, not here.
//!
//! Runs when PostgreSQL's server binaries are installed (`scripts/toolchains/postgres.sh`);
//! under `CI` their absence is a failure.

use communesync_tests::failover::{self, FailoverOptions};
use communesync_tests::process::communesync_binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ride_through_a_primary_loss_and_promotion() {
    if !failover::postgres_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL is not installed (scripts/toolchains/postgres.sh installs it)"
        );
        eprintln!("skipped: PostgreSQL is not installed");
        return;
    }
    let binary = communesync_binary().unwrap();
    // The promotion a second after the kill: every tablet tries (and fails) meanwhile.
    let options = FailoverOptions {
        promote_after: std::time::Duration::from_secs(1),
        ..FailoverOptions::default()
    };
    let report = failover::run(&binary, &options).await.unwrap();
    eprintln!("{report:?}");
    assert!(
        report.lost.is_empty(),
        "acknowledged changes lost: {:#?}",
        report.lost
    );
    assert!(report.acknowledged_heads > 0, "nothing was acknowledged");
    assert!(
        report.unconverged.is_empty(),
        "tablets did not converge: {:#?}",
        report.unconverged
    );
    assert!(
        report.unexpected.is_empty(),
        "unexpected errors: {:#?}",
        report.unexpected
    );
    assert_eq!(report.replicas_exited, 0, "a replica exited");
    assert_eq!(
        report.replicas_serving_after, options.replicas,
        "a replica did not serve again after the promotion"
    );
    assert!(
        report.longest_pause().is_some(),
        "a tablet never synced after the kill: {:?}",
        report.pauses
    );
    // The outage was seen: syncs failed while no database accepted writes.
    assert!(
        report.syncs_failed > 0,
        "no sync failed: was the primary killed?"
    );
}
