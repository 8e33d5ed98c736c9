//! The sync status as a stream: [`Engine::watch_sync_status`] delivers a [`SyncStatus`] when
//! the watch starts and again after anything that may change it (a sync starting, each request
//! of a sync, a sync ending, a local edit, an enrollment, a wipe). The Kotlin `StateFlow` and the
//! Swift `AsyncStream` of the platform layers are built on it.
//!
//! Contract: the listener runs on a thread of its own, one status at a time; statuses are
//! coalesced (a burst of events gives one status read after the burst, never a stale one last);
//! a listener that throws or is slow never slows a sync or an edit. The snapshot is read on that
//! thread, so the store lock is never taken on the app's thread or on the sync's.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use communesync_core::record::DeviceId;
use communesync_core::store::DeviceStore;

use crate::engine::{Closed, Engine, SyncState, check_open, lock_store};
use crate::error::CommuneSyncError;
use crate::observer::ObserverHandle;
use crate::types::{SyncStatus, time_from_ms};

type Result<T, E = CommuneSyncError> = std::result::Result<T, E>;

/// Implemented by the app (or the platform layers) to follow the sync status.
#[uniffi::export(with_foreign)]
pub trait SyncStatusListener: Send + Sync {
    /// The status now; called at the start of the watch and after each change.
    fn on_status(&self, status: SyncStatus);
}

/// What a status snapshot reads, shareable with a watcher thread.
pub(crate) struct StatusSource {
    pub(crate) device_id: DeviceId,
    pub(crate) store: Arc<Mutex<DeviceStore>>,
    pub(crate) state: Arc<Mutex<SyncState>>,
    pub(crate) closed: Closed,
}

impl StatusSource {
    /// The status now (blocking: takes the store's lock).
    pub(crate) fn snapshot(&self) -> Result<SyncStatus> {
        check_open(&self.closed)?;
        let (pending_changes, quarantined, enrolled_commune, upgrade_required, last_server_sync) = {
            let store = lock_store(&self.store);
            check_open(&self.closed)?;
            (
                store.pending_count()?,
                store.quarantined_count()?,
                store.enrolled_commune().map(str::to_owned),
                store.upgrade_required()?,
                store.last_sync_at()?,
            )
        };
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(SyncStatus {
            device_id: self.device_id.to_string(),
            enrolled: state.credential.is_some(),
            syncing: state.running > 0,
            pending_changes,
            quarantined,
            enrolled_commune,
            upgrade_required,
            last_server_sync: last_server_sync.map(time_from_ms),
            last_success: state.last_success_ms.map(time_from_ms),
            consecutive_failures: state.consecutive_failures,
            last_error_kind: state.last_error.as_ref().map(|(kind, _)| *kind),
            last_error: state.last_error.as_ref().map(|(_, m)| m.clone()),
            last_report: state.last_report.clone(),
        })
    }

    /// The status of a closed engine (wiped, or after a failed rekey): nothing pending, not
    /// enrolled, and why it closed.
    fn closed_status(&self, err: &CommuneSyncError) -> SyncStatus {
        SyncStatus {
            device_id: self.device_id.to_string(),
            enrolled: false,
            syncing: false,
            pending_changes: 0,
            quarantined: 0,
            enrolled_commune: None,
            upgrade_required: false,
            last_server_sync: None,
            last_success: None,
            consecutive_failures: 0,
            last_error_kind: Some(err.kind()),
            last_error: Some(err.to_string()),
            last_report: None,
        }
    }
}

#[uniffi::export]
impl Engine {
    /// Delivers the sync status to `listener` now and after each change, until
    /// [`ObserverHandle::stop`] (see the module's contract). For a status bar: the Kotlin
    /// `engine.syncStatusFlow(scope)` and the Swift `engine.syncStatusUpdates()` wrap it.
    pub fn watch_sync_status(
        &self,
        listener: Arc<dyn SyncStatusListener>,
    ) -> Result<Arc<ObserverHandle>> {
        let source = self.status_source();
        let handle = self
            .observers
            .add_thread("communesync-status", move |events| {
                let mut last: Option<SyncStatus> = None;
                let mut deliver = || {
                    let status = match source.snapshot() {
                        Ok(status) => status,
                        Err(err) => match check_open(&source.closed) {
                            Err(closed) => source.closed_status(&closed),
                            // A store error: the next event reads again.
                            Ok(()) => {
                                tracing::warn!(%err, "sync status not readable");
                                return;
                            }
                        },
                    };
                    if last.as_ref() != Some(&status) {
                        last = Some(status.clone());
                        let _ = catch_unwind(AssertUnwindSafe(|| listener.on_status(status)));
                    }
                };
                deliver();
                while events.recv().is_ok() {
                    // Coalesce a burst: one read after the events that wait already.
                    while events.try_recv().is_ok() {}
                    deliver();
                }
            })?;
        Ok(Arc::new(handle))
    }
}
