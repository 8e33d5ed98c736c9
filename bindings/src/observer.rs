//! Observers: the app implements [`SyncObserver`]; the engine delivers events to it on a thread
//! of its own, so a slow or failing observer never slows or breaks a sync or an edit.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::error::CommuneSyncError;
use crate::types::SyncProgress;

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ChangeOrigin {
    /// An edit made through this engine (create, update, resolve).
    Local,
    /// Changes pulled from the server by a sync.
    Sync,
}

/// Records changed: refresh what shows them.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChangeEvent {
    /// Where the change came from.
    pub origin: ChangeOrigin,
    /// The records that changed, for local edits. Empty for a sync: any record may have changed
    /// (`changed_count` says how many), so re-run the queries on screen.
    pub record_ids: Vec<String>,
    /// How many records changed.
    pub changed_count: u64,
}

/// The province ordered this device wiped, and the engine did it: the store file (and its
/// `-wal`, `-shm`) is deleted and every later call fails with `CommuneSyncError.Wiped`. The app
/// deletes the key and the credential from the keystore and shows the officer what happened.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct WipeEvent {
    /// The device that was wiped.
    pub device_id: String,
    /// The store that was destroyed.
    pub store_path: String,
    /// The files deleted.
    pub deleted_files: Vec<String>,
    /// The server's message.
    pub message: String,
}

/// Implemented by the app to follow syncs and changes. Methods are called on a background
/// thread owned by the engine, one event at a time and in order; post to the UI thread yourself
/// (the Kotlin `Engine.events()` Flow and the Swift `AsyncStream` helpers do this).
#[uniffi::export(with_foreign)]
pub trait SyncObserver: Send + Sync {
    /// After each completed request of a sync.
    fn on_progress(&self, progress: SyncProgress);
    /// After records changed, locally or by a sync.
    fn on_changed(&self, event: ChangeEvent);
    /// After the engine destroyed the store on the province's order (the last event).
    fn on_wiped(&self, event: WipeEvent);
}

#[derive(Debug, Clone)]
pub(crate) enum Event {
    Progress(SyncProgress),
    Changed(ChangeEvent),
    Wiped(WipeEvent),
    /// A sync started or ended, or the enrollment changed: for status watchers only.
    Status,
    /// Bytes of one attachment moved: for attachment progress listeners only.
    Attachment(crate::attachments::AttachmentProgress),
}

/// The engine's list of observers.
#[derive(Default)]
pub(crate) struct Observers {
    next_id: AtomicU64,
    senders: Mutex<Vec<(u64, Sender<Event>)>>,
}

impl Observers {
    pub(crate) fn emit(&self, event: Event) {
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        // A closed channel means its thread is gone; forget it.
        senders.retain(|(_, tx)| tx.send(event.clone()).is_ok());
    }

    pub(crate) fn add(
        self: &Arc<Self>,
        observer: Arc<dyn SyncObserver>,
    ) -> Result<ObserverHandle, CommuneSyncError> {
        self.add_thread("communesync-observer", move |rx| {
            for event in rx {
                // An exception thrown by the app's observer must not end the delivery of the
                // next events, and must not unwind into the engine.
                let _ = catch_unwind(AssertUnwindSafe(|| match event {
                    Event::Progress(p) => observer.on_progress(p),
                    Event::Changed(c) => observer.on_changed(c),
                    Event::Wiped(w) => observer.on_wiped(w),
                    Event::Status | Event::Attachment(_) => {}
                }));
            }
        })
    }

    /// Starts a thread that receives every event, until the handle stops it.
    pub(crate) fn add_thread(
        self: &Arc<Self>,
        name: &str,
        run: impl FnOnce(Receiver<Event>) + Send + 'static,
    ) -> Result<ObserverHandle, CommuneSyncError> {
        let (tx, rx) = channel::<Event>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(rx))
            .map_err(|e| CommuneSyncError::Storage(format!("cannot start observer thread: {e}")))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, tx));
        Ok(ObserverHandle {
            observers: Arc::downgrade(self),
            id,
        })
    }

    fn remove(&self, id: u64) -> bool {
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        let before = senders.len();
        senders.retain(|(other, _)| *other != id);
        senders.len() != before
    }

    fn contains(&self, id: u64) -> bool {
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|(other, _)| *other == id)
    }
}

/// Keeps an observation going: [`ObserverHandle::stop`] ends it. Dropping the handle does not
/// (garbage collectors drop at unpredictable times); closing the engine does.
#[derive(uniffi::Object)]
pub struct ObserverHandle {
    observers: Weak<Observers>,
    id: u64,
}

#[uniffi::export]
impl ObserverHandle {
    /// Stops delivering events. Events already queued are still delivered; idempotent.
    pub fn stop(&self) {
        if let Some(observers) = self.observers.upgrade() {
            observers.remove(self.id);
        }
    }

    /// Whether events are still delivered.
    pub fn is_active(&self) -> bool {
        self.observers
            .upgrade()
            .is_some_and(|observers| observers.contains(self.id))
    }
}
