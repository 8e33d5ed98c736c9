//! The store epoch on sync answers (`Communesync-Store-Epoch`, docs/PROTOCOL.md): read from
//! storage at most every [`EPOCH_TTL`] per server process, so a restore done while replicas run
//! (PostgreSQL: `admin mark-restored`) reaches tablets within that time without a query per sync.

use std::time::{Duration, Instant};

use super::AppState;
use super::error::ApiError;

/// How long a read epoch is used before it is read again.
pub(crate) const EPOCH_TTL: Duration = Duration::from_secs(10);

/// The epoch last read, and when.
#[derive(Default)]
pub(crate) struct EpochCache(tokio::sync::Mutex<Option<(Instant, String)>>);

impl AppState {
    /// The store's epoch, from the cache while it is fresh.
    pub(crate) async fn store_epoch(&self) -> Result<String, ApiError> {
        let mut cached = self.store_epoch.0.lock().await;
        if let Some((read_at, epoch)) = cached.as_ref()
            && read_at.elapsed() < EPOCH_TTL
        {
            return Ok(epoch.clone());
        }
        let epoch = self.storage.store_epoch().await?;
        *cached = Some((Instant::now(), epoch.clone()));
        Ok(epoch)
    }
}
