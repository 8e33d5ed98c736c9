//! # communesync-core
//!
//! The offline-first engine that commune tablets and the provincial server are built on:
//!
//! - [`record`]: applications and citizen requests as Automerge documents mapped from typed
//!   structs, with a status workflow, surfaced conflicts and a readable history;
//! - [`catalogue`]: the province's procedure catalogue and the working-day calendar that gives
//!   statutory due dates;
//! - [`search`]: text folding for Vietnamese (diacritics and đ → d) used by full-text search;
//! - [`attachment`]: scans and photos of the dossier's papers, content-addressed, prepared for
//!   2G and synced on their own resumable channel;
//! - [`store`]: the durable, encrypted device store on SQLite, with projections for queries.
//!
//! Nothing here starts a runtime or opens a socket: I/O sits behind the store and, later, the
//! transport trait.

pub mod attachment;
pub mod catalogue;
pub mod clock;
pub mod codec;
pub mod deadline;
pub mod error;
pub mod import;
pub mod integrity;
pub mod keys;
pub mod numbering;
pub mod protocol;
pub mod receipt;
pub mod record;
pub mod register_import;
pub mod search;
pub mod store;
pub mod sync;

pub use error::{Error, Result};

#[cfg(feature = "sample")]
pub mod sample;
