//! The store epoch on sync answers (`Communesync-Store-Epoch`, docs/PROTOCOL.md): read from
//! storage at most every [`EPOCH_TTL`] per server process, so a restore done while replicas run
//! (PostgreSQL: `admin mark-restored`) reaches tablets within that time without a query per sync.
//! The epoch is read after the request's work: should that read fail (the database lost between
//! the two), the last epoch read is sent rather than failing a sync whose changes are stored.

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
        match self.storage.store_epoch().await {
            Ok(epoch) => {
                *cached = Some((Instant::now(), epoch.clone()));
                Ok(epoch)
            }
            Err(err) => match cached.as_ref() {
                Some((_, epoch)) => {
                    tracing::debug!(%err, "store epoch not re-read; sending the last one");
                    Ok(epoch.clone())
                }
                None => Err(err.into()),
            },
        }
    }
}
