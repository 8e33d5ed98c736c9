//! # communesync-ffi
//!
//! The communesync engine for Android (Kotlin) and iOS (Swift), through uniffi. This crate is the
//! only uniffi user and the only cdylib of the workspace; it converts types and errors and
//! forwards to `communesync-core`, and holds no business logic.
//!
//! - [`Engine`]: one device store plus its sync client, opened from an [`EngineConfig`];
//! - [`types`]: records mirroring the core types (ids as strings, times as milliseconds since
//!   the Unix epoch, civil dates as `YYYY-MM-DD` strings);
//! - [`CommuneSyncError`]: the small error enum an app acts on;
//! - [`SyncObserver`]: a trait the app implements to hear about sync progress and changes;
//! - [`next_sync_after`]: the background-sync policy, for the WorkManager / BGTaskScheduler glue.
//!
//! No panic crosses the boundary: nothing here unwraps, locks survive poisoning, and observer
//! callbacks run on their own thread behind `catch_unwind`.

mod catalogue;
mod engine;
mod error;
mod observer;
mod policy;
pub mod types;

pub use catalogue::{
    DossierForm, FieldKind, FormEntry, FormField, FormValue, ProcedureDetails, ProcedureFee,
    ProcedureSummary, RequiredPaper, SectorCount,
};
pub use engine::Engine;
pub use error::{CommuneSyncError, ErrorKind};
pub use observer::{ChangeEvent, ChangeOrigin, ObserverHandle, SyncObserver, WipeEvent};
pub use policy::{BackgroundPolicy, PolicyInput, SyncDecision, next_sync_after};
pub use types::*;

uniffi::setup_scaffolding!();
