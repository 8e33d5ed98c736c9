//! The failover suite: the drill of `communesync_tests::failover` (a PostgreSQL primary with a
//! synchronous streaming standby, `communesync serve` replicas on a multi-host connection
//! string, tablets syncing through them; the primary SIGKILLed, the standby promoted), measured.
//!
//! Figures: `failover.pause_max` and `failover.pause_median` (ms from the kill to a tablet's
//! first successful sync started after it, worst tablet and median tablet; includes
//! `--promote-after-ms`, the time a failover manager would take to decide), `failover.promotion`
//! (ms from the kill to the end of `pg_ctl promote`), `failover.lost_changes` (acknowledged
//! changes the promoted standby lacks; target 0), `failover.unconverged_tablets` (target 0) and
//! `failover.replicas_restarted` (replicas that did not serve again by themselves; target 0).
//! Exits non-zero when a target with 0 is missed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use communesync_tests::failover::{self, FailoverOptions};

use crate::report::{Report, ms};

/// Options of the failover suite.
#[derive(Args)]
pub struct FailoverArgs {
    /// `communesync serve` replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Communes.
    #[arg(long, default_value_t = 2)]
    communes: usize,
    /// Tablets per commune.
    #[arg(long, default_value_t = 3)]
    tablets: usize,
    /// Seconds of syncing before the primary is killed.
    #[arg(long, default_value_t = 3)]
    seconds_before: u64,
    /// Milliseconds between the kill and the promotion.
    #[arg(long, default_value_t = 0)]
    promote_after_ms: u64,
    /// Seconds of syncing after the promotion.
    #[arg(long, default_value_t = 4)]
    seconds_after: u64,
    /// The `communesync` binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

/// Runs the suite.
pub fn run(args: &FailoverArgs) -> anyhow::Result<()> {
    if !failover::postgres_installed() {
        bail!("PostgreSQL is not installed: run scripts/toolchains/postgres.sh first");
    }
    let binary = crate::sync::server_binary(args.server_bin.as_deref())?;
    let options = FailoverOptions {
        replicas: args.replicas.max(1),
        communes: args.communes.max(1),
        tablets_per_commune: args.tablets.max(1),
        before_kill: Duration::from_secs(args.seconds_before),
        promote_after: Duration::from_millis(args.promote_after_ms),
        after_promotion: Duration::from_secs(args.seconds_after.max(1)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(failover::run(&binary, &options))?;

    let mut report = Report::default();
    let mut pauses: Vec<Duration> = outcome.pauses.iter().filter_map(|(_, p)| *p).collect();
    pauses.sort();
    let stuck = outcome.pauses.len() - pauses.len();
    if let Some(longest) = outcome.longest_pause() {
        report.add("failover.pause_max", ms(longest), "ms", None);
    }
    if let Some(median) = pauses.get(pauses.len() / 2) {
        report.add("failover.pause_median", ms(*median), "ms", None);
    }
    report.add(
        "failover.promotion",
        ms(outcome.kill_to_promoted),
        "ms",
        None,
    );
    report.add(
        "failover.lost_changes",
        outcome.lost.len() as f64,
        "",
        Some(("==", 0.0)),
    );
    report.add(
        "failover.unconverged_tablets",
        (outcome.unconverged.len() + stuck) as f64,
        "",
        Some(("==", 0.0)),
    );
    report.add(
        "failover.replicas_restarted",
        (outcome.replicas_exited + options.replicas - outcome.replicas_serving_after) as f64,
        "",
        Some(("==", 0.0)),
    );
    report.add(
        "failover.acknowledged_heads",
        outcome.acknowledged_heads as f64,
        "",
        None,
    );
    let missed = report.table(&format!(
        "failover: {} replicas, {} tablets, promotion {} ms after the kill",
        options.replicas,
        options.communes * options.tablets_per_commune,
        args.promote_after_ms
    ));
    for problem in outcome
        .lost
        .iter()
        .chain(&outcome.unconverged)
        .chain(&outcome.unexpected)
        .take(20)
    {
        eprintln!("failover: {problem}");
    }
    if missed > 0 || !outcome.unexpected.is_empty() {
        bail!("failover: {missed} target(s) missed");
    }
    Ok(())
}
