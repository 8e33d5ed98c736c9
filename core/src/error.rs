//! The one error type of `communesync-core`.
//!
//! Callers branch on the variants that need different handling (not found, invalid input, illegal
//! transition, wrong key, full disk); everything else is carried with its source for the message.

use crate::record::{RecordId, RecordKind};

/// Result with the core error as default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No record with this id exists in the store.
    #[error("no record with id {0}")]
    NotFound(RecordId),
    /// The record exists but is of another kind than the call expects.
    #[error("record {id} is a {actual}, not a {expected}")]
    WrongKind {
        /// The record.
        id: RecordId,
        /// What the caller asked for.
        expected: RecordKind,
        /// What the record is.
        actual: RecordKind,
    },
    /// A field value that the domain does not accept.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The field, as a dotted path (`applicant.phone`).
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// A status change that the workflow does not allow.
    #[error("cannot move from status {from} to {to}")]
    IllegalTransition {
        /// Current status.
        from: String,
        /// Requested status.
        to: String,
    },
    /// The procedure code is not in the catalogue.
    #[error("unknown procedure code {0:?}")]
    UnknownProcedure(String),
    /// The encryption key does not open this store (or the file is not a store at all).
    #[error("the store cannot be opened with this key (wrong key or not a communesync store)")]
    WrongKey,
    /// A key was given but this build has no SQLCipher.
    #[error("encryption at rest is not available in this build")]
    EncryptionUnavailable,
    /// The disk (or the store's size limit) is full; nothing was written.
    #[error("the storage is full; the edit was not saved")]
    StorageFull,
    /// Bytes from disk or network are not a valid Automerge document or change.
    #[error("corrupt record data for {id}: {reason}")]
    Corrupt {
        /// The record whose bytes are bad.
        id: RecordId,
        /// What the decoder said.
        reason: String,
    },
    /// The store file is from a newer version of communesync.
    #[error("store schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A file of the store could not be handled outside SQLite (deleting it at a wipe).
    #[error("store file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What the system said.
        reason: String,
    },
    /// Any other SQLite failure.
    #[error("storage error: {0}")]
    Storage(#[source] rusqlite::Error),
    /// Automerge refused an operation (a bug or corrupt data).
    #[error("document error: {0}")]
    Document(String),
    /// The attachment content with this SHA-256 is not (wholly) on this device: download it
    /// (it is on the server) or wait for it to be uploaded by the tablet that attached it.
    #[error("attachment content {0} is not on this device")]
    ContentMissing(String),
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match err.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Error::StorageFull,
            Some(ErrorCode::NotADatabase) => Error::WrongKey,
            _ => Error::Storage(err),
        }
    }
}

impl From<automerge::AutomergeError> for Error {
    fn from(err: automerge::AutomergeError) -> Self {
        Error::Document(err.to_string())
    }
}

impl From<autosurgeon::ReconcileError> for Error {
    fn from(err: autosurgeon::ReconcileError) -> Self {
        Error::Document(err.to_string())
    }
}
