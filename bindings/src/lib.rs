//! # communesync-ffi
//!
//! The communesync engine for Android (Kotlin) and iOS (Swift), through uniffi. This crate is the
//! only uniffi user and the only cdylib of the workspace; it converts types and errors and
//! forwards to `communesync-core`, and holds no business logic.
//!
//! - [`Engine`]: one device store plus its sync client, opened from an [`EngineConfig`];
//! - [`types`]: records mirroring the core types (ids as strings, instants as `SystemTime`,
//!   civil dates as `CivilDate`: `Instant`/`LocalDate` in Kotlin, `Date`/`DateComponents` in Swift);
//! - [`CommuneSyncError`]: the small error enum an app acts on;
//! - [`SyncObserver`]: a trait the app implements to hear about sync progress and changes;
//! - [`SyncStatusListener`]: the sync status now and after each change (`Engine::watch_sync_status`);
//! - [`EngineLogger`] and [`set_logger`]: the engine's logs, to Logcat or `os_log`;
//! - [`attachments`]: scans and photos of a dossier's papers, their settings and progress;
//! - `Engine::rekey`: rotating the store key;
//! - [`next_sync_after`]: the background-sync policy, for the WorkManager / BGTaskScheduler glue.
//!
//! No panic crosses the boundary: nothing here unwraps, locks survive poisoning, and observer
//! callbacks run on their own thread behind `catch_unwind`.

pub mod attachments;
mod catalogue;
mod deadlines;
mod dossier_number;
mod engine;
mod error;
mod keys;
mod logging;
mod observer;
mod policy;
pub mod receipt;
mod register_import;
mod status;
pub mod types;

pub use attachments::{
    Attachment, AttachmentCategory, AttachmentProgress, AttachmentProgressListener,
    AttachmentSettings, NewAttachment, PhotoOptions,
};
pub use catalogue::{
    DossierForm, FieldKind, FormEntry, FormField, FormValue, ProcedureDetails, ProcedureFee,
    ProcedureSummary, RequiredPaper, SectorCount,
};
pub use deadlines::{DeadlineEvent, DeadlineEventKind, DossierDeadline, ReturnedDossier};
pub use engine::Engine;
pub use error::{CommuneSyncError, ErrorKind};
pub use logging::{EngineLogger, LogLevel, LogRecord, set_logger};
pub use observer::{ChangeEvent, ChangeOrigin, ObserverHandle, SyncObserver, WipeEvent};
pub use policy::{BackgroundPolicy, PolicyInput, SyncDecision, next_sync_after};
pub use receipt::{ReceiptInfo, ReceiptPaperInfo, ReceiptVerdict};
pub use status::SyncStatusListener;
pub use types::*;

uniffi::setup_scaffolding!();
