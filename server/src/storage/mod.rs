//! Server storage: one contract ([`ServerStorage`]), two backends (SQLite, the embedded default,
//! and PostgreSQL for several stateless server replicas), one conformance suite
//! (`server/tests/storage_conformance.rs`) that both pass.
//!
//! The contract. Storage keeps communes, one-time enrollment and re-enrollment codes, devices
//! (with their revocation, wipe order, refused documents and issued feed cursor), operator
//! tokens, enrollment-attempt counters, record documents (each registered once to a commune and
//! a kind) with their Automerge changes, and the province catalogue. Only hashes of secrets (enrollment
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
use communesync_core::keys::{DeviceKeyEntry, PublicKey};
use communesync_core::record::{DeviceId, RecordId, RecordKind};

pub mod attachments;
pub mod pg_tls;
mod plan;
pub mod postgres;
pub mod read_model;
pub mod sqlite;

pub use read_model::ReadModelRow;

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
    /// The operation is refused because of the state it would leave (e.g. revoking the last
    /// active operator token); the message says why. Nothing changed.
    #[error("conflict: {0}")]
    Conflict(String),
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
    /// Revoked with a wipe order: the device is told to destroy its store. Implies `revoked`.
    pub wiped: bool,
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
    /// Documents of this device currently set aside as refused (rows of
    /// [`ServerStorage::refusals`]).
    pub refused_docs: u64,
}

/// An operator token as operators see it: never the token or its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Its id (1, 2, ...), to revoke it by.
    pub id: u64,
    /// Who it is for.
    pub label: String,
    /// When it was created (server ms); `None` for tokens created before schema version 3.
    pub created_at: Option<i64>,
    /// When it last authenticated a request (server ms), if ever.
    pub last_used_at: Option<i64>,
    /// When it was revoked (server ms), if it was.
    pub revoked_at: Option<i64>,
}

/// A document the server refused from a device, as the HTTP layer reports it to storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalRow {
    /// The refused document.
    pub doc: RecordId,
    /// Machine-readable reason (`forged_actor`, `immutable_field`, ...).
    pub code: String,
    /// Readable reason.
    pub message: String,
}

/// A refused document as stored, for operators: one per (device, document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The device that pushed it.
    pub device: DeviceId,
    /// The document.
    pub doc: RecordId,
    /// Reason code of the latest refusal.
    pub code: String,
    /// Reason message of the latest refusal.
    pub message: String,
    /// First refusal (server ms).
    pub first_at: i64,
    /// Latest refusal (server ms).
    pub last_at: i64,
    /// How many times it was refused.
    pub count: u64,
}

/// Refusal rows kept per device (the newest by `last_at`); older ones are dropped.
pub const MAX_REFUSALS_PER_DEVICE: usize = 1_000;

/// Most refusals [`ServerStorage::refusals`] returns (the newest).
pub const MAX_REFUSALS_LISTED: usize = 1_000;

/// Longest refusal code stored, in bytes (longer ones are cut at a character boundary).
pub const MAX_REFUSAL_CODE_BYTES: usize = 64;

/// Longest refusal message stored, in bytes (longer ones are cut at a character boundary).
pub const MAX_REFUSAL_MESSAGE_BYTES: usize = 1_000;

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

/// The published catalogue's head (without its whole JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueHead {
    /// Catalogue version: the number of the last publication (1, 2, ...).
    pub version: u64,
    /// The working calendar's overrides (JSON list of `CalendarOverride`).
    pub calendar: String,
    /// The publication that last changed the calendar (0: never published one).
    pub calendar_version: u64,
}

/// A procedure code of the published catalogue: its current version (or its last one, removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueRow {
    /// The publication that last changed this code.
    pub changed: u64,
    /// Procedure code.
    pub code: String,
    /// Its current (or last) version.
    pub version: u64,
    /// Whether the procedure was taken out of the catalogue.
    pub removed: bool,
    /// That version's JSON.
    pub body: String,
}

/// One publication of the catalogue, planned against version `base_version`
/// (`crate::catalogue::plan_publication`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CataloguePublication {
    /// The catalogue version the plan was made against (0: none yet); the publication is
    /// refused ([`StorageError::Conflict`]) if another one came first.
    pub base_version: u64,
    /// The whole file (for tablets of protocols 2 and 3, and exports).
    pub json: String,
    /// The calendar's overrides (JSON), when they changed.
    pub calendar: Option<String>,
    /// Procedures added or given a new version: code, version, JSON.
    pub puts: Vec<(String, u64, String)>,
    /// Procedure codes taken out.
    pub removals: Vec<String>,
}

/// A stored change with the server's facts about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChange {
    /// The encoded change, as stored.
    pub bytes: Vec<u8>,
    /// The device that pushed it (authenticated).
    pub pushed_by: DeviceId,
    /// When the server stored it (server ms).
    pub received_at: i64,
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
    /// Its read-model row as the push path computed it from the checked document, if it did:
    /// written instead of re-reading the document's changes when still current (see
    /// [`read_model::Projected`]). `None`: storage projects from the stored changes.
    pub projection: Option<Box<read_model::Projected>>,
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

/// Filters of [`ServerStorage::records`]; every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordQuery {
    /// Only this commune's records.
    pub commune: Option<String>,
    /// Only records of this kind.
    pub kind: Option<RecordKind>,
    /// Only records with this status name.
    pub status: Option<String>,
    /// Only records of this procedure code (or request category).
    pub procedure_code: Option<String>,
    /// Records whose applicant name contains this text, compared folded (without diacritics,
    /// case-insensitive): `nguyen thi` finds "Nguyễn Thị Hương".
    pub name: Option<String>,
    /// Records with exactly this identity number.
    pub id_number: Option<String>,
    /// Records with exactly this dossier number.
    pub dossier_number: Option<String>,
    /// Only records overdue on this day (`YYYY-MM-DD`): still open with a due date before it.
    pub overdue_on: Option<String>,
    /// Records received (device time, ms) at or after this.
    pub received_from: Option<i64>,
    /// Records received before this.
    pub received_until: Option<i64>,
    /// Rows to skip (paging).
    pub offset: usize,
    /// Most rows returned, capped at [`MAX_RECORDS_LISTED`] (0 means the cap).
    pub limit: usize,
}

/// Most rows [`ServerStorage::records`] returns in one call.
pub const MAX_RECORDS_LISTED: usize = 10_000;

/// Status names whose statutory clock still runs (applications) or that are still being handled
/// (requests).
pub const OPEN_STATUSES: [&str; 3] = ["received", "in_progress", "supplement_requested"];

/// Figures of one commune for the province dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CommuneSummary {
    /// Commune code.
    pub commune: String,
    /// Records by status name (records that could not be projected are not counted here).
    pub by_status: std::collections::BTreeMap<String, u64>,
    /// Records received (device time) at or after the dashboard's week start.
    pub received_this_week: u64,
    /// Records received at or after the dashboard's month start.
    pub received_this_month: u64,
    /// Records still open ([`OPEN_STATUSES`]).
    pub open: u64,
    /// Open records with a due date before the dashboard's day.
    pub overdue: u64,
    /// Records whose result was given on or before their due date.
    pub on_time: u64,
    /// Records whose result was given after their due date.
    pub late: u64,
    /// Records whose changes could not be read as a record.
    pub unreadable: u64,
}

impl CommuneSummary {
    /// Share of results given on time, when any was given.
    pub fn on_time_rate(&self) -> Option<f64> {
        let given = self.on_time + self.late;
        (given > 0).then(|| self.on_time as f64 / given as f64)
    }
}

/// One line of the periodic report: a commune and a procedure over a date range.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ReportRow {
    /// Commune code.
    pub commune: String,
    /// Procedure code (or request category).
    pub procedure_code: String,
    /// Records received in the range (device time of intake).
    pub received: u64,
    /// Results given in the range on or before their due date.
    pub processed_on_time: u64,
    /// Results given in the range after their due date.
    pub processed_late: u64,
    /// Records received before the end of the range, still open, with a due date before the
    /// range's last day (or before today, if the range ends later).
    pub overdue: u64,
}

/// A console operator account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleOperator {
    /// Login name.
    pub username: String,
    /// Argon2 PHC string of the password.
    pub password_hash: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// A disabled account cannot log in and its sessions stop working.
    pub disabled: bool,
}

/// A live console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// Its operator.
    pub operator: ConsoleOperator,
    /// The session's CSRF token, required in every form it posts.
    pub csrf: String,
    /// When it expires (server ms).
    pub expires_at: i64,
}

/// One operator action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// When (server ms).
    pub at: i64,
    /// Who.
    pub username: String,
    /// What (`login`, `issue_code`, `revoke`, `publish_catalogue`, ...).
    pub action: String,
    /// On what, readable.
    pub detail: String,
}

/// Most audit entries [`ServerStorage::audit_log`] returns.
pub const MAX_AUDIT_LISTED: usize = 1_000;

/// A block of dossier numbers granted to a device, as stored (see `communesync_core::numbering`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberBlock {
    /// Its id (1, 2, ...): unique across the province.
    pub id: u64,
    /// The device it was granted to.
    pub device: DeviceId,
    /// The agency whose counter it was cut from.
    pub agency: String,
    /// The format its numbers are rendered with.
    pub format: String,
    /// First sequence.
    pub first: u64,
    /// Last sequence (inclusive).
    pub last: u64,
    /// When it was granted (server ms).
    pub granted_at: i64,
    /// Whether the device reported holding it (a grant not acknowledged is offered again).
    pub acknowledged: bool,
    /// How far the device reported using it: `first..next` are used by its records,
    /// `next..=last` are unused (abandoned if the device was wiped).
    pub next: u64,
}

/// Most numbers one block holds, whatever size is asked.
pub const MAX_NUMBER_BLOCK: u64 = communesync_core::numbering::MAX_BLOCK_SIZE;

/// Most blocks [`ServerStorage::number_blocks`] lists (the newest).
pub const MAX_NUMBER_BLOCKS_LISTED: usize = 10_000;

/// Most items a feed page returns whatever `max_items` asks.
pub const FEED_MAX_ITEMS: usize = 10_000;

/// Rows of the excluded device a page may step over on top of its items, so that a page of
/// one's own changes is bounded too.
const FEED_SCAN_EXTRA: usize = 2_000;

/// Why a revoked key is not registered again: what it signed after its revocation must stay
/// refused, so a device found again makes a new key.
pub const KEY_REVOKED_MESSAGE: &str =
    "this key was revoked: the device must make a new key before it is registered again";

/// The server's storage. Implemented by [`SqliteStorage`] and [`PostgresStorage`]; every
/// implementation passes the conformance suite.
#[async_trait]
pub trait ServerStorage: attachments::AttachmentStorage + Send + Sync + 'static {
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

    /// Stores a one-time re-enrollment code (its hash) bound to the existing device `device`,
    /// valid while `now < expires_at`. [`StorageError::NotFound`] if the device is unknown,
    /// [`StorageError::AlreadyExists`] if the hash is already stored.
    async fn create_reenrollment_code(
        &self,
        device: DeviceId,
        code_hash: [u8; 32],
        expires_at: i64,
    ) -> Result<()>;

    /// Consumes a code, atomically: a code enrolls exactly once even when several replicas race.
    ///
    /// - An enrollment code creates the device with the code's scope. A device id or token hash
    ///   already taken is [`StorageError::AlreadyExists`] and leaves the code unused.
    /// - A re-enrollment code requires `device` to be the device it was issued for: it replaces
    ///   that device's token (the old one stops authenticating at once), clears a revocation and
    ///   a wipe order, and keeps its scope, label and everything stored for it. A token hash
    ///   already taken is [`StorageError::AlreadyExists`] and leaves the code unused.
    /// - An unknown, used or expired code, or a re-enrollment code given with another device id,
    ///   is [`StorageError::InvalidEnrollmentCode`] (the cases are one error) and changes nothing.
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

    /// Revokes a device, immediately. Idempotent (a wipe order stays); [`StorageError::NotFound`]
    /// if unknown. Only a re-enrollment undoes it.
    async fn revoke_device(&self, id: DeviceId) -> Result<()>;

    /// Revokes a device and orders its store wiped ([`Device::wiped`]), immediately.
    /// Idempotent; [`StorageError::NotFound`] if unknown.
    async fn revoke_and_wipe_device(&self, id: DeviceId) -> Result<()>;

    /// Devices whose scope equals `scope` (`None`: every device), by enrollment time.
    async fn list_devices(&self, scope: Option<&Scope>) -> Result<Vec<DeviceInfo>>;

    /// Stores an operator token (its hash) created at `now`, and returns its id.
    /// [`StorageError::AlreadyExists`] if already stored.
    async fn create_admin_token(&self, token_hash: [u8; 32], label: &str, now: i64) -> Result<u64>;

    /// The id of the active (not revoked) operator token with this hash, if any; records `now`
    /// as its last use.
    async fn authenticate_admin(&self, token_hash: [u8; 32], now: i64) -> Result<Option<u64>>;

    /// Every operator token, revoked ones too, by id.
    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>>;

    /// Revokes an operator token at `now`: it stops authenticating at once. Idempotent;
    /// [`StorageError::NotFound`] if unknown; [`StorageError::Conflict`] if it is the last
    /// active token (nobody could operate the server over HTTP any more), decided atomically
    /// against concurrent revocations.
    async fn revoke_admin_token(&self, id: u64, now: i64) -> Result<()>;

    /// Reserves one enrollment attempt of `source` (a client address) before its code is
    /// evaluated, and returns the attempts of its current window including this one, in one
    /// atomic step: N concurrent attempts get the numbers 1..=N. Windows are fixed: the first
    /// attempt after a window ends opens a new one of `window_ms`. The counter lives in the
    /// database, so replicas share it.
    async fn reserve_enrollment_attempt(
        &self,
        source: &str,
        now: i64,
        window_ms: i64,
    ) -> Result<u32>;

    /// Gives back a reservation of `source` (its attempt succeeded), if its window is still
    /// open; never below zero.
    async fn refund_enrollment_attempt(&self, source: &str, now: i64) -> Result<()>;

    /// Attempts of `source` in its current window (0 if its window has ended).
    async fn enrollment_attempts(&self, source: &str, now: i64) -> Result<u32>;

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

    /// Records what a device reported at a sync: documents still waiting on it (values past
    /// `i64::MAX` are stored as `i64::MAX`), and the time. Unknown devices are ignored (the sync
    /// itself was refused).
    async fn record_device_status(
        &self,
        device: DeviceId,
        pending_docs: u64,
        now: i64,
    ) -> Result<()>;

    /// Records that documents pushed by `device` were refused at `now`: one row per (device,
    /// document), created with `first_at = last_at = now` and count 1, or updated with the new
    /// code and message, `last_at = now` and count + 1. Codes and messages are cut to
    /// [`MAX_REFUSAL_CODE_BYTES`] and [`MAX_REFUSAL_MESSAGE_BYTES`]; a document named twice
    /// counts once (the last entry wins). Only the newest [`MAX_REFUSALS_PER_DEVICE`] rows of
    /// the device are kept. Unknown devices are ignored.
    async fn record_refusals(
        &self,
        device: DeviceId,
        refusals: &[RefusalRow],
        now: i64,
    ) -> Result<()>;

    /// Forgets refusals of `device` for `docs` (they were accepted since). Unknown pairs are
    /// ignored.
    async fn clear_refusals(&self, device: DeviceId, docs: &[RecordId]) -> Result<()>;

    /// Refusals of one device (or of every device), newest `last_at` first, at most
    /// [`MAX_REFUSALS_LISTED`].
    async fn refusals(&self, device: Option<DeviceId>) -> Result<Vec<Refusal>>;

    /// The feed cursor last recorded with [`ServerStorage::set_cursor_issued`] for `device`; 0 if
    /// never, or if the device is unknown.
    async fn cursor_issued(&self, device: DeviceId) -> Result<u64>;

    /// Records `cursor` as the feed cursor issued to `device`, as given (not a running maximum;
    /// values past `i64::MAX` are stored as `i64::MAX`). Unknown devices are ignored.
    async fn set_cursor_issued(&self, device: DeviceId, cursor: u64) -> Result<()>;

    /// Every stored change of a document, in storage (feed) order; empty if unknown.
    async fn doc_changes(&self, doc: RecordId) -> Result<Vec<Vec<u8>>>;

    /// [`ServerStorage::doc_changes`] with who pushed each change and when it was stored.
    async fn doc_history(&self, doc: RecordId) -> Result<Vec<StoredChange>>;

    /// The commune and kind a document is registered with, if it is.
    async fn doc_registration(&self, doc: RecordId) -> Result<Option<(String, RecordKind)>>;

    /// What the server holds of each of `docs` that it knows (registration and every stored
    /// change, in storage order), in one round trip: what validating a pushed batch needs.
    /// Unknown ids are absent from the map; duplicates in `docs` are harmless.
    async fn known_docs(&self, docs: &[RecordId]) -> Result<HashMap<RecordId, KnownDoc>>;

    /// Publishes the province catalogue (a catalogue file's JSON) and returns its new version
    /// (1, 2, ...): what changed against the published one is recorded for the delta
    /// ([`crate::catalogue`]). [`StorageError::Conflict`] when the file breaks the version rule
    /// (a published version changed in place, a version going back) or does not parse.
    async fn put_catalogue(&self, json: &str) -> Result<u64> {
        crate::catalogue::publish(self, json).await
    }

    /// Records one publication in one transaction: the new catalogue version, the whole JSON,
    /// the procedure versions and entries it changes, the calendar if it changed. Returns the
    /// new version; [`StorageError::Conflict`] if the catalogue is no longer at
    /// `base_version`.
    async fn publish_catalogue(&self, publication: CataloguePublication) -> Result<u64>;

    /// The published catalogue's head, if one was ever published.
    async fn catalogue_head(&self) -> Result<Option<CatalogueHead>>;

    /// The working calendar in effect at catalogue version `version`: the last publication at
    /// or before it that changed the calendar (its version, and the overrides' JSON); `None`
    /// when none did (weekends off only). Calendars published before schema 11 are not kept,
    /// except the one in effect at the migration.
    async fn calendar_at(&self, version: u64) -> Result<Option<(u64, String)>>;

    /// Every procedure code ever published, with its current (or last) version's JSON.
    async fn catalogue_rows(&self) -> Result<Vec<CatalogueRow>>;

    /// At most `limit` entries changed after position (`publication`, `code`), in (changed,
    /// code) order: a page of the delta.
    async fn catalogue_changes(
        &self,
        publication: u64,
        code: &str,
        limit: usize,
    ) -> Result<Vec<CatalogueRow>>;

    /// At most `limit` published procedure versions that are not a current entry's (replaced,
    /// or of a removed procedure), after position (`publication`, `code`, `version`) in
    /// (published, code, version) order, as rows whose `changed` is the publication that
    /// published them: the pinned-only part of the delta.
    async fn pinned_versions_after(
        &self,
        publication: u64,
        code: &str,
        version: u64,
        limit: usize,
    ) -> Result<Vec<CatalogueRow>>;

    /// Every published version of every procedure: code, version, JSON.
    async fn procedure_versions(&self) -> Result<Vec<(String, u64, String)>>;

    /// The current catalogue and its version, if one was ever put.
    async fn catalogue(&self) -> Result<Option<(u64, String)>>;

    /// Activity of every commune, by code.
    async fn stats(&self) -> Result<Vec<CommuneStats>>;

    /// The read-model row of a record, if the server stores it (see [`read_model`]).
    async fn record_row(&self, id: RecordId) -> Result<Option<ReadModelRow>>;

    /// Read-model rows matching `query`, newest received first (then by id), at most
    /// [`MAX_RECORDS_LISTED`].
    async fn records(&self, query: &RecordQuery) -> Result<Vec<ReadModelRow>>;

    /// Dashboard figures of every commune (communes without records too), by code. `today` is
    /// the day overdue is judged on (`YYYY-MM-DD`); `week_from` and `month_from` are the starts
    /// of the current week and month (ms).
    async fn commune_summaries(
        &self,
        today: &str,
        week_from: i64,
        month_from: i64,
    ) -> Result<Vec<CommuneSummary>>;

    /// The periodic report over `[from, until)` (ms), one row per commune and procedure that
    /// has a figure, by commune then procedure; see [`ReportRow`]. `last_day` is the day overdue
    /// is judged on (`YYYY-MM-DD`).
    async fn report(&self, from: i64, until: i64, last_day: &str) -> Result<Vec<ReportRow>>;

    /// Rebuilds the read model from the stored changes, in one transaction, counting statutory
    /// time with `rules` (the server's catalogue), and returns the rows written. The result
    /// equals what ingesting wrote incrementally under the same rules.
    async fn rebuild_read_model(&self, rules: read_model::DeadlineRules) -> Result<u64>;

    /// Projects again, with `rules`, the rows of records still open ([`OPEN_STATUSES`]): what a
    /// new working calendar moves. In transactions of a few hundred records, so that pushes go
    /// on meanwhile (a row a push rewrites in between is projected by that push, under the rules
    /// it checked with). Returns the rows written.
    async fn reproject_open(&self, rules: read_model::DeadlineRules) -> Result<u64>;

    /// Creates a console operator. [`StorageError::AlreadyExists`] if the name is taken.
    async fn create_operator(
        &self,
        username: &str,
        password_hash: &str,
        role: &str,
        now: i64,
    ) -> Result<()>;

    /// The operator with this name, if any.
    async fn operator(&self, username: &str) -> Result<Option<ConsoleOperator>>;

    /// Stores a session (its token's hash) of `username`, valid while `now < expires_at`;
    /// expired sessions are deleted on the way. [`StorageError::NotFound`] for an unknown
    /// operator.
    async fn create_session(
        &self,
        token_hash: [u8; 32],
        username: &str,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()>;

    /// The live session with this token hash: not expired at `now`, its operator not disabled.
    async fn session(&self, token_hash: [u8; 32], now: i64) -> Result<Option<ConsoleSession>>;

    /// Ends a session (logout). Unknown hashes are ignored.
    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<()>;

    /// Appends an operator action to the audit log (never changed or deleted).
    async fn append_audit(
        &self,
        username: &str,
        action: &str,
        detail: &str,
        now: i64,
    ) -> Result<()>;

    /// The newest audit entries first, at most `limit` (capped at [`MAX_AUDIT_LISTED`]).
    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>>;

    /// Whether the database answers and holds exactly the schema this build writes (every
    /// migration applied, none newer): `Ok` or [`StorageError::Conflict`] saying why not.
    async fn ready(&self) -> Result<()>;

    /// Documents that have stored changes but no read-model row (0 once the read model is built:
    /// ingest projects in the same transaction).
    async fn read_model_lag(&self) -> Result<u64>;

    /// The store's epoch: a random value that only changes when the database is restored from a
    /// backup ([`ServerStorage::renew_store_epoch`]); tablets compare it between syncs.
    async fn store_epoch(&self) -> Result<String>;

    /// Gives the store a fresh epoch (after a restore: tablets then re-send what it may lack and
    /// re-read the feed) and returns it.
    async fn renew_store_epoch(&self) -> Result<String>;
    /// Grants `device` a block of `size` numbers (clamped to 1..=[`MAX_NUMBER_BLOCK`]) cut from
    /// `agency`'s counter (created at 1), rendered with `format`, at `now`, in one transaction:
    /// concurrent allocations, from any replica, never overlap. [`StorageError::NotFound`] if the
    /// device is unknown.
    async fn allocate_number_block(
        &self,
        device: DeviceId,
        agency: &str,
        format: &str,
        size: u64,
        now: i64,
    ) -> Result<NumberBlock>;

    /// Blocks of one device (or of every device), by id; at most the newest
    /// [`MAX_NUMBER_BLOCKS_LISTED`].
    async fn number_blocks(&self, device: Option<DeviceId>) -> Result<Vec<NumberBlock>>;

    /// Records what `device` reported of its blocks, `(block, next)` pairs: each named block of
    /// that device becomes acknowledged and its `next` grows to the reported value (clamped to
    /// the block; it never decreases). Blocks of other devices or unknown are ignored. The
    /// caller bounds the list.
    async fn report_number_usage(
        &self,
        device: DeviceId,
        usage: &[(u64, u64)],
        now: i64,
    ) -> Result<()>;

    /// Records the dossier numbers of documents accepted from `device`. A number already
    /// recorded stays with its first document.
    async fn record_dossier_numbers(
        &self,
        device: DeviceId,
        numbers: &[(String, RecordId)],
        now: i64,
    ) -> Result<()>;

    /// The document recorded with this dossier number, and the device that pushed it.
    async fn dossier_number(&self, number: &str) -> Result<Option<(RecordId, DeviceId)>>;
    /// Registers `key` as `device`'s signing key from `now`, in one transaction: the device's
    /// current key, if another, is closed (`valid_until = now`) and stays listed. With
    /// `only_if_none` nothing changes when the device already has a key (trust on first use for
    /// a device enrolled before keys existed) and the answer is `false`. Registering the current
    /// key again changes nothing. Every change takes the next key-list version.
    /// [`StorageError::NotFound`] if the device is not enrolled.
    async fn register_device_key(
        &self,
        device: DeviceId,
        key: PublicKey,
        now: i64,
        only_if_none: bool,
    ) -> Result<bool>;

    /// Marks `device`'s keys revoked at `now` (those not revoked yet), each at the next version.
    async fn revoke_device_keys(&self, device: DeviceId, now: i64) -> Result<()>;

    /// The key-list entries changed after `version` (at most `limit`, by version) and the
    /// list's current version.
    async fn device_keys_since(
        &self,
        version: u64,
        limit: usize,
    ) -> Result<(Vec<DeviceKeyEntry>, u64)>;

    /// Every key ever registered for `device` (a handful: one per enrollment).
    async fn device_keys_of(&self, device: DeviceId) -> Result<Vec<DeviceKeyEntry>>;

    /// Keeps a verified push signature: its signed message (device, counter, change hashes in
    /// request order) and signature, linked from each change hash not linked yet. One
    /// transaction; stored before the changes themselves, so every stored change of a signed
    /// push has its link.
    async fn record_push_signature(&self, push: &PushSignatureRow) -> Result<()>;

    /// The push signatures covering each of `hashes` that has one.
    async fn change_signatures(
        &self,
        hashes: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], Arc<PushSignatureRow>>>;

    /// Claims the external ids of imported dossiers accepted from `device`, each
    /// `(commune, external id, record)`, in one transaction: a key not yet recorded goes to its
    /// record; a key already recorded stays with its first record. Returns the records whose
    /// key another record holds (to be refused), in the order given.
    async fn claim_external_ids(
        &self,
        device: DeviceId,
        claims: &[ExternalIdClaim],
        now: i64,
    ) -> Result<Vec<RecordId>>;

    /// The record holding `external_id` in `commune`, and the device that pushed it.
    async fn external_id(
        &self,
        commune: &str,
        external_id: &str,
    ) -> Result<Option<(RecordId, DeviceId)>>;
}

/// An imported dossier's claim on its register key (see
/// [`ServerStorage::claim_external_ids`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExternalIdClaim {
    /// The commune whose register it is.
    pub commune: String,
    /// The entry's key in that register.
    pub external_id: String,
    /// The record that claims it.
    pub doc: RecordId,
}

/// A push signature as stored: enough to verify it again later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSignatureRow {
    /// The pushing device.
    pub device: DeviceId,
    /// The counter it signed.
    pub counter: u64,
    /// The hashes of the changes the push carried, in request order.
    pub hashes: Vec<[u8; 32]>,
    /// The signature.
    pub signature: [u8; 64],
    /// Server receive time.
    pub received_at: i64,
}

impl PushSignatureRow {
    fn hashes_blob(&self) -> Vec<u8> {
        self.hashes.concat()
    }

    fn from_parts(
        device: DeviceId,
        counter: i64,
        hashes: &[u8],
        signature: &[u8],
        received_at: i64,
    ) -> Result<Self> {
        if !hashes.len().is_multiple_of(32) {
            return Err(StorageError::backend(
                "stored push hashes are not 32-byte hashes",
            ));
        }
        Ok(PushSignatureRow {
            device,
            counter: to_u64(counter),
            hashes: hashes
                .chunks_exact(32)
                .filter_map(|c| <[u8; 32]>::try_from(c).ok())
                .collect(),
            signature: signature
                .try_into()
                .map_err(|_| StorageError::backend("stored signature is not 64 bytes"))?,
            received_at,
        })
    }
}

/// A fresh store epoch: 32 lowercase hex digits.
pub fn new_store_epoch() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Opens the storage named by `url`: `postgres://...`, `postgresql://...` or a libpq key=value
/// string naming a `host=` (several hosts for failover, see [`postgres`]) is PostgreSQL;
/// `sqlite:PATH`, `sqlite://PATH` or a plain path is a SQLite file (created if missing;
/// `:memory:` for a private in-memory database). Migrations are applied before it returns.
pub async fn open(url: &str) -> Result<Arc<dyn ServerStorage>> {
    if url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || postgres::is_key_value_string(url)
    {
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

/// The refusal of revoking the last active operator token.
pub(crate) fn last_admin_token() -> StorageError {
    StorageError::Conflict(
        "this is the last active operator token: create another one before revoking it".into(),
    )
}

/// Concatenated deps, as stored.
pub(crate) fn join_deps(deps: &[[u8; 32]]) -> Vec<u8> {
    deps.concat()
}

/// A string cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Refusals to store: cut to the length limits, one per document (the last entry wins), in
/// document order (a stable lock order for concurrent upserts).
pub(crate) fn refusals_to_store(refusals: &[RefusalRow]) -> Vec<(RecordId, &str, &str)> {
    let mut by_doc: std::collections::BTreeMap<RecordId, (&str, &str)> =
        std::collections::BTreeMap::new();
    for row in refusals {
        by_doc.insert(
            row.doc,
            (
                truncate_utf8(&row.code, MAX_REFUSAL_CODE_BYTES),
                truncate_utf8(&row.message, MAX_REFUSAL_MESSAGE_BYTES),
            ),
        );
    }
    by_doc
        .into_iter()
        .map(|(doc, (code, message))| (doc, code, message))
        .collect()
}

/// `text` as a SQL `LIKE` pattern matching it anywhere, with `\\` as the escape character.
pub(crate) fn like_contains(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The readiness verdict for a schema `found` where this build writes `expected`.
pub(crate) fn schema_verdict(found: i64, expected: i64) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(StorageError::Conflict(format!(
            "schema version {found}, this build needs {expected}"
        )))
    }
}

/// Registrations read from a store, by document.
pub(crate) type Registrations = HashMap<RecordId, (String, RecordKind)>;
