//! Records: one Automerge document per record, mapped from typed structs with `autosurgeon`.
//!
//! Two kinds exist: [`Application`] (intake of an administrative procedure) and
//! [`CitizenRequest`] (a request or feedback raised at the office or on a village visit).
//! [`doc::RecordDoc`] holds the Automerge document of one record and is the only place that
//! touches Automerge directly: it applies typed edits, surfaces concurrent values of single-valued
//! fields as [`Conflict`]s and lists the history of changes with who made them.

pub mod doc;
mod imported;
mod read;
mod types;
mod workflow;

pub use doc::{
    Conflict, ConflictValue, HistoryEntry, RecordDoc, Source, decode_change, decode_changes,
    describe_change, record_id_of_changes,
};
pub use imported::{Imported, MAX_EXTERNAL_ID, MAX_ORIGINAL_REFERENCE};
pub use types::*;
pub use workflow::{RequestStatus, Status};
