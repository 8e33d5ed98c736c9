//! The periodic removal of attachment contents no live record names.
//!
//! Contract. `communesync serve` runs [`run`] beside the listener: every [`SWEEP_INTERVAL`] it
//! asks storage to delete each commune's contents (whole or partial uploads) that no live
//! reference of that commune names and that nothing touched for [`GRACE`]
//! (`AttachmentStorage::sweep_attachments`). The grace covers a tablet that uploads a content
//! before the record naming it is pushed, and a removal undone by a concurrent edit. A failed
//! sweep is logged and retried at the next interval; the task never stops the server. With
//! PostgreSQL every replica sweeps: the deletion is one statement per content, so two replicas
//! sweeping together delete each content once.

use std::sync::Arc;
use std::time::Duration;

use crate::storage::ServerStorage;

/// How often the server sweeps.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// How long an unreferenced content is kept.
pub const GRACE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Sweeps once: how many contents were deleted.
pub async fn sweep_once(storage: &dyn ServerStorage, now_ms: i64) -> crate::storage::Result<u64> {
    let grace_ms = i64::try_from(GRACE.as_millis()).unwrap_or(i64::MAX);
    storage.sweep_attachments(now_ms, grace_ms).await
}

/// Sweeps every [`SWEEP_INTERVAL`], forever (spawn it; drop the task to stop).
pub async fn run(storage: Arc<dyn ServerStorage>) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        match sweep_once(&*storage, now_ms).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "unreferenced attachment contents removed"),
            Err(err) => {
                tracing::warn!(%err, "attachment sweep failed; retried at the next interval")
            }
        }
    }
}
