//! Server storage: one contract ([`ServerStorage`]), two backends (SQLite, the embedded default,
//! and PostgreSQL for several stateless server replicas), one conformance suite
//! (`server/tests/storage_conformance.rs`) that both pass.
//!
//! The contract. Storage keeps communes, one-time enrollment codes, devices, admin tokens,
//! enrollment-failure counters, record documents (each registered once to a commune and a kind)
//! with their Automerge changes, and the province catalogue. Only hashes of secrets (enrollment
//! codes, device and admin tokens) are ever stored. Times are milliseconds since the Unix epoch
//! and are passed in by the caller (the server clock), never read from the database host.
//! Storage does not decode changes: the HTTP layer has validated them and storage trusts the
//! hash and deps it is given. Every method is atomic: it either does all it says or, on error,
//! changes nothing. In particular one [`ServerStorage::ingest`] call is one transaction for the
//! whole batch.
//!
//! The change feed. Every stored change gets the next number of its commune's sequence (`seq`)
//! and the next number of one province-wide sequence (`gseq`). Both are allocated under a row
//! lock held until commit, so **sequence order equals commit order**: a reader that has seen
//! sequence number `n` has already been able to see every number below `n`, and a cursor
//! ("everything after `n`") never skips a change that a concurrent transaction commits late.
//! [`Scope::Commune`] feeds page by `seq`; [`Scope::Province`] feeds page by `gseq`. The two
//! cursors are different number spaces: a client keeps the cursor of the scope it reads.
//! Sequences have no gaps and rows are never deleted.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use communesync_core::record::{DeviceId, RecordId, RecordKind};

mod plan;
pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStorage;
pub use sqlite::SqliteStorage;

/// Result of a storage call.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What can go wrong in storage. Callers branch on every variant except [`StorageError::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The commune, device or document named does not exist.
    #[error("not found")]
    NotFound,
    /// Something with that identity (code, id or hash) already exists.
    #[error("already exists")]
    AlreadyExists,
    /// The enrollment code is unknown, already used or expired. The three cases are deliberately
    /// one error, so that a caller cannot learn which codes exist.
    #[error("invalid enrollment code")]
    InvalidEnrollmentCode,
    /// The document is registered to another commune or as another kind, is pushed into a
    /// commune outside the device's scope, or names a commune that does not exist. The whole
    /// batch it came in was rejected.
    #[error("document {doc} is outside the scope of this request")]
    OutOfScope {
        /// The first document found out of scope.
        doc: RecordId,
    },
    /// The disk under the database is full: nothing of the operation was stored, and it can be
    /// retried once space returns.
    #[error("storage full: {0}")]
    Full(String),
    /// Anything else from the database or the runtime (I/O, corrupt rows, a schema newer than
    /// this build).
    #[error("storage backend: {0}")]
    Backend(String),
}

impl StorageError {
    pub(crate) fn backend(message: impl std::fmt::Display) -> Self {
        StorageError::Backend(message.to_string())
    }
}

/// What a device or account may read and write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One commune, by code: a commune's tablets.
    Commune(String),
    /// The whole province: province accounts read every commune.
    Province,
}

impl Scope {
    /// The commune code, or `None` for the province.
    pub fn commune(&self) -> Option<&str> {
        match self {
            Scope::Commune(code) => Some(code),
            Scope::Province => None,
        }
    }

    pub(crate) fn from_commune(commune: Option<String>) -> Self {
        commune.map_or(Scope::Province, Scope::Commune)
    }
}

/// An enrolled device (a tablet or a province account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Device id (also the Automerge actor of its edits).
    pub id: DeviceId,
    /// What it may read and write, fixed by the enrollment code it used.
    pub scope: Scope,
    /// Human label given at enrollment ("Tablet 2, Bản Phiêng").
    pub label: String,
    /// Revoked devices are still returned by [`ServerStorage::authenticate`], so that the HTTP
    /// layer can tell "revoked" from "unknown"; it refuses them.
    pub revoked: bool,
}

/// A device with its activity, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device.
    pub device: Device,
    /// When it enrolled (server time, ms).
    pub enrolled_at: i64,
    /// When it last pushed (the `now` of its last [`ServerStorage::ingest`]), if ever.
    pub last_sync_at: Option<i64>,
    /// How many changes it has pushed that were stored (duplicates excluded).
    pub changes_pushed: u64,
    /// Documents waiting on the device, as it last reported.
    pub pending_docs: Option<u64>,
    /// Last authenticated sync, pushes or not (server time, ms).
    pub last_seen_at: Option<i64>,
}

/// A commune (scope of records and devices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commune {
    /// Administrative code, the commune's identity.
    pub code: String,
    /// Display name ("Xã Mường Phăng").
    pub name: String,
}

/// Activity of one commune, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommuneStats {
    /// Commune code.
    pub code: String,
    /// Documents registered to it.
    pub documents: u64,
    /// Changes stored for it.
    pub changes: u64,
    /// Devices enrolled in it and not revoked.
    pub devices: u64,
    /// Server receive time of its latest change in feed order, if any.
    pub last_change_at: Option<i64>,
}

/// A document the server holds: where it is registered and its stored changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDoc {
    /// Commune it is registered to.
    pub commune: String,
    /// Its kind.
    pub kind: RecordKind,
    /// Every stored change, in storage (feed) order.
    pub changes: Vec<Vec<u8>>,
}

/// One Automerge change pushed by a device, already decoded and validated by the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingChange {
    /// The change hash.
    pub hash: [u8; 32],
    /// Hashes of the changes it depends on (same document).
    pub deps: Vec<[u8; 32]>,
    /// The encoded change, stored and served as is.
    pub bytes: Vec<u8>,
}

/// Changes of one document pushed by a device, in causal order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingDoc {
    /// The record.
    pub id: RecordId,
    /// Its kind; must match its registration.
    pub kind: RecordKind,
    /// Its commune; must match its registration and the device's scope.
    pub commune: String,
    /// Changes, each after its deps.
    pub changes: Vec<IncomingChange>,
}

/// What [`ServerStorage::ingest`] did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Changes stored.
    pub stored: u64,
    /// Changes the server already had (no-ops).
    pub duplicates: u64,
    /// Documents skipped entirely because a change depends on a change the server lacks; the
    /// client resends their full history.
    pub missing_deps: Vec<RecordId>,
}

/// One change in the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    /// Position in the feed of the scope read (`seq` for a commune, `gseq` for the province).
    pub seq: u64,
    /// The document.
    pub doc: RecordId,
    /// Its kind.
    pub kind: RecordKind,
    /// The encoded change.
    pub bytes: Vec<u8>,
    /// The device that pushed it.
    pub device: DeviceId,
    /// Server receive time (ms).
    pub received_at: i64,
    /// Whether this is the document's first change (it depends on none).
    pub root: bool,
}

/// One page of the feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedPage {
    /// Changes in feed order.
    pub items: Vec<FeedItem>,
    /// Cursor for the next call: the highest position examined, which may be past the last item
    /// when changes of the excluded device followed it. Equals `after` when nothing was examined.
    pub next_cursor: u64,
    /// Whether changes remain after `next_cursor`.
    pub more: bool,
}

/// Most items a feed page returns whatever `max_items` asks.
pub const FEED_MAX_ITEMS: usize = 10_000;

/// Rows of the excluded device a page may step over on top of its items, so that a page of
/// one's own changes is bounded too.
const FEED_SCAN_EXTRA: usize = 2_000;

/// The server's storage. Implemented by [`SqliteStorage`] and [`PostgresStorage`]; every
/// implementation passes the conformance suite.
#[async_trait]
pub trait ServerStorage: Send + Sync + 'static {
    /// Creates a commune. [`StorageError::AlreadyExists`] if the code is taken.
    async fn create_commune(&self, code: &str, name: &str) -> Result<()>;

    /// Every commune, by code.
    async fn list_communes(&self) -> Result<Vec<Commune>>;

    /// Stores a one-time enrollment code (its hash) for `scope`, valid while `now < expires_at`.
    /// [`StorageError::NotFound`] if the commune does not exist, [`StorageError::AlreadyExists`]
    /// if the hash is already stored.
    async fn create_enrollment_code(
        &self,
        scope: &Scope,
        code_hash: [u8; 32],
        expires_at: i64,
    ) -> Result<()>;

    /// Consumes an enrollment code and creates the device with the code's scope, atomically: a
    /// code enrolls exactly one device even when several replicas race. An unknown, used or
    /// expired code is [`StorageError::InvalidEnrollmentCode`]; a device id or token hash already
    /// taken is [`StorageError::AlreadyExists`] and leaves the code unused.
    async fn enroll(
        &self,
        code_hash: [u8; 32],
        device: DeviceId,
        token_hash: [u8; 32],
        label: &str,
        now: i64,
    ) -> Result<Device>;

    /// The device holding this token (by hash), revoked or not.
    async fn authenticate(&self, token_hash: [u8; 32]) -> Result<Option<Device>>;

    /// Revokes a device, immediately and for good. Idempotent; [`StorageError::NotFound`] if
    /// unknown.
    async fn revoke_device(&self, id: DeviceId) -> Result<()>;

    /// Devices whose scope equals `scope` (`None`: every device), by enrollment time.
    async fn list_devices(&self, scope: Option<&Scope>) -> Result<Vec<DeviceInfo>>;

    /// Stores an operator token (its hash). [`StorageError::AlreadyExists`] if already stored.
    async fn create_admin_token(&self, token_hash: [u8; 32], label: &str) -> Result<()>;

    /// Whether this operator token (by hash) exists.
    async fn authenticate_admin(&self, token_hash: [u8; 32]) -> Result<bool>;

    /// Counts one failed enrollment from `source` (e.g. a client address) and returns the
    /// failures of its current window. Windows are fixed: the first failure after a window ends
    /// opens a new one of `window_ms`. The counter lives in the database, so replicas share it.
    async fn record_enrollment_failure(
        &self,
        source: &str,
        now: i64,
        window_ms: i64,
    ) -> Result<u32>;

    /// Failures of `source` in its current window (0 if its window has ended). `window_ms` is
    /// accepted for symmetry; the window's length was fixed when it opened.
    async fn enrollment_failures(&self, source: &str, now: i64, window_ms: i64) -> Result<u32>;

    /// Stores a batch of pushed changes in one transaction; see [`IngestOutcome`].
    ///
    /// - A document seen for the first time is registered with its commune and kind. A document
    ///   registered to another commune or kind, or pushed into a commune outside the device's
    ///   scope or unknown, is [`StorageError::OutOfScope`] and the whole batch changes nothing.
    /// - A change whose hash the document already has (stored or earlier in the batch) is a
    ///   counted no-op.
    /// - A change with a dep neither stored for its document nor earlier in the batch skips that
    ///   document's whole entry (listed in `missing_deps`); other documents are stored.
    /// - Stored changes get the next `seq` of their commune and `gseq` of the province, the
    ///   pushing device and `now` as receive time. The device's `last_sync_at` becomes `now`
    ///   and `changes_pushed` grows by the number stored.
    /// - A device unknown or revoked by the time of commit is [`StorageError::NotFound`] and
    ///   the batch changes nothing (revocation is immediate, even mid-request).
    async fn ingest(
        &self,
        device: &Device,
        docs: Vec<IncomingDoc>,
        now: i64,
    ) -> Result<IngestOutcome>;

    /// One page of the feed of `scope` after cursor `after`, read from one consistent snapshot:
    /// changes in feed order, without those pushed by `exclude_device`, stopping before the
    /// change bytes would exceed `max_bytes` (but with at least one item if any remain) or at
    /// `max_items` (capped at [`FEED_MAX_ITEMS`], at least 1). See [`FeedPage`] for the cursor.
    async fn feed(
        &self,
        scope: &Scope,
        after: u64,
        exclude_device: Option<DeviceId>,
        max_bytes: usize,
        max_items: usize,
    ) -> Result<FeedPage>;

    /// Records what a device reported at a sync: documents still waiting on it, and the time.
    /// Unknown devices are ignored (the sync itself was refused).
    async fn record_device_status(
        &self,
        device: DeviceId,
        pending_docs: u64,
        now: i64,
    ) -> Result<()>;

    /// Every stored change of a document, in storage (feed) order; empty if unknown.
    async fn doc_changes(&self, doc: RecordId) -> Result<Vec<Vec<u8>>>;

    /// The commune and kind a document is registered with, if it is.
    async fn doc_registration(&self, doc: RecordId) -> Result<Option<(String, RecordKind)>>;

    /// What the server holds of each of `docs` that it knows (registration and every stored
    /// change, in storage order), in one round trip: what validating a pushed batch needs.
    /// Unknown ids are absent from the map; duplicates in `docs` are harmless.
    async fn known_docs(&self, docs: &[RecordId]) -> Result<HashMap<RecordId, KnownDoc>>;

    /// Replaces the province catalogue (reference data, JSON) and returns its new version
    /// (1, 2, ...).
    async fn put_catalogue(&self, json: &str) -> Result<u64>;

    /// The current catalogue and its version, if one was ever put.
    async fn catalogue(&self) -> Result<Option<(u64, String)>>;

    /// Activity of every commune, by code.
    async fn stats(&self) -> Result<Vec<CommuneStats>>;
}

/// Opens the storage named by `url`: `postgres://...` or `postgresql://...` is PostgreSQL;
/// `sqlite:PATH`, `sqlite://PATH` or a plain path is a SQLite file (created if missing;
/// `:memory:` for a private in-memory database). Migrations are applied before it returns.
pub async fn open(url: &str) -> Result<Arc<dyn ServerStorage>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStorage::connect(url).await?));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.is_empty() {
        return Err(StorageError::backend("empty SQLite path"));
    }
    Ok(Arc::new(SqliteStorage::open(path).await?))
}

/// Feed bounds after clamping: how many items, and how many rows a page may examine.
pub(crate) fn feed_limits(max_items: usize) -> (usize, usize) {
    let items = max_items.clamp(1, FEED_MAX_ITEMS);
    (items, items + FEED_SCAN_EXTRA)
}

/// Stored integer to `u64` (storage never writes negatives).
pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A `u64` as a stored integer; values past `i64::MAX` saturate (no such seq can exist).
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored 32-byte hash.
pub(crate) fn hash32(bytes: &[u8]) -> Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| StorageError::backend(format!("stored hash has {} bytes", bytes.len())))
}

/// A stored 16-byte record id.
pub(crate) fn record_id(bytes: &[u8]) -> Result<RecordId> {
    RecordId::from_slice(bytes)
        .ok_or_else(|| StorageError::backend(format!("stored record id has {} bytes", bytes.len())))
}

/// A stored 16-byte device id.
pub(crate) fn device_id(bytes: &[u8]) -> Result<DeviceId> {
    uuid::Uuid::from_slice(bytes)
        .map(DeviceId)
        .map_err(|_| StorageError::backend(format!("stored device id has {} bytes", bytes.len())))
}

/// A stored kind code.
pub(crate) fn record_kind(code: i64) -> Result<RecordKind> {
    RecordKind::from_code(code)
        .ok_or_else(|| StorageError::backend(format!("stored record kind {code} is unknown")))
}

/// Concatenated deps, as stored.
pub(crate) fn join_deps(deps: &[[u8; 32]]) -> Vec<u8> {
    deps.concat()
}

/// Registrations read from a store, by document.
pub(crate) type Registrations = HashMap<RecordId, (String, RecordKind)>;
