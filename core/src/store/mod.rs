//! The device store: records, projections and search in one SQLite file, encrypted with SQLCipher.
//!
//! Contract:
//! - One edit is one SQLite transaction that writes the Automerge change, the query projection,
//!   the search index and the outbox mark together. A crash or kill at any instant leaves a store
//!   that opens and holds every committed edit (WAL journal).
//! - Documents load on demand into a bounded LRU cache; nothing loads every record.
//! - An edit that fails (bad input, full disk) leaves the file and the cache as they were.
//! - Each document is a snapshot plus incremental change chunks; after [`StoreConfig::compact_after`]
//!   chunks they are folded into a new snapshot in the same transaction.
//! - Edits follow the shared record rules ([`crate::integrity`]) with the commune the device
//!   enrolled in ([`DeviceStore::enrolled_commune`]): a record of another commune is refused here,
//!   before it can reach the server.
//! - Documents the server refuses or this build cannot read are set aside, never dropped
//!   ([`quarantine`]).

mod catalogue;
mod checkpoint;
mod deadlines;
mod keys;
mod numbers;
mod projection;
pub mod quarantine;
mod query;
mod register_import;
mod rekey;
pub(crate) mod schema;
mod server_epoch;
mod sync_state;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use automerge::ChangeHash;
use lru::LruCache;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use zeroize::{Zeroize, Zeroizing};

pub use catalogue::ProcedureSummary;
pub use deadlines::{DossierDeadline, MAX_VERDICT_PAGE, ReturnedDossier};
pub use numbers::{HeldBlock, NumberUse};
pub use quarantine::{AuditAction, AuditEntry, Direction, QuarantinedRecord, RefusedDoc};
pub use query::{ApplicationQuery, ApplicationSummary, Page, SearchHit, SortBy, StatusCount};
pub use schema::SCHEMA_VERSION;
pub use sync_state::{PendingDoc, PullDoc, PullReport};

use crate::catalogue::{CivilDate, WorkingCalendar};
use crate::clock::{Clock, SystemClock};
use crate::codec::DocCodec;
use crate::integrity::{RuleContext, check_creation, check_edit, check_officer};
use crate::record::{
    Application, Author, CitizenRequest, Conflict, ConflictValue, DeviceId, HistoryEntry,
    NewApplication, NewCitizenRequest, Record, RecordDoc, RecordId, RecordKind, RequestStatus,
    Source, Status,
};
use crate::{Error, Result};

/// A 256-bit key for SQLCipher, from the platform keystore. Used raw: no key derivation at open.
/// Its bytes are overwritten when it is dropped (each clone too), and the hex text handed to
/// SQLCipher is overwritten after use: the key stays in this process only inside SQLCipher's own
/// connection state (which SQLCipher scrubs when the connection closes).
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey([u8; 32]);

impl Drop for EncryptionKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl EncryptionKey {
    /// Wraps 32 key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        EncryptionKey(bytes)
    }
    /// From a slice, which must be 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::invalid("encryption key", "must be exactly 32 bytes"))?;
        Ok(EncryptionKey(bytes))
    }
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

/// How hard a commit tries to survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: survives a crash or kill of the app at any instant; a power
    /// cut may lose the last commits but never corrupts. Android's own default for WAL.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is on disk before it returns (one more fsync per edit).
    Full,
}

/// Everything needed to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Path of the SQLite file.
    pub path: PathBuf,
    /// SQLCipher key; `None` opens an unencrypted file (servers, tests).
    pub key: Option<EncryptionKey>,
    /// How many documents stay loaded in memory at most.
    pub cache_capacity: NonZeroUsize,
    /// Incremental chunks per document before they are folded into a snapshot.
    pub compact_after: u32,
    /// Durability of commits.
    pub durability: Durability,
    /// Upper bound on the file size, in bytes (a quota that leaves room for the rest of the
    /// tablet); writes beyond it fail with [`Error::StorageFull`].
    pub max_size_bytes: Option<u64>,
    /// The app's own version (Android `versionName`, iOS `CFBundleVersion`), if the app gives it.
    /// Part of [`DeviceStore::build_id`]: a new app version retries what an older one could not
    /// read and resumes syncs stopped by "upgrade required".
    pub app_version: Option<String>,
}

impl StoreConfig {
    /// Defaults for `path`: unencrypted, 256 cached documents, compaction after 4 chunks.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            key: None,
            cache_capacity: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            compact_after: 4,
            durability: Durability::Normal,
            max_size_bytes: None,
            app_version: None,
        }
    }

    /// With an encryption key.
    pub fn encrypted(mut self, key: EncryptionKey) -> Self {
        self.key = Some(key);
        self
    }
}

struct Loaded {
    rowid: i64,
    doc: RecordDoc,
    /// Heads of what is on disk: the next incremental chunk is everything after them.
    saved_heads: Vec<ChangeHash>,
}

/// What this build is, for what depends on it: the core library's version, the sync protocol
/// it speaks and the app's version when given (`"core 0.1.0, protocol 3, app 2.4.1"`).
pub fn build_id(app_version: Option<&str>) -> String {
    let core = format!(
        "core {}, protocol {}",
        env!("CARGO_PKG_VERSION"),
        crate::protocol::PROTOCOL_VERSION
    );
    match app_version {
        Some(app) if !app.trim().is_empty() => format!("{core}, app {}", app.trim()),
        _ => core,
    }
}

/// The durable local store of one device.
pub struct DeviceStore {
    conn: Connection,
    path: PathBuf,
    device: DeviceId,
    cache: LruCache<RecordId, Loaded>,
    calendar: WorkingCalendar,
    clock: Arc<dyn Clock>,
    compact_after: u32,
    checkpointer: checkpoint::Checkpointer,
    codec: DocCodec,
    /// What to add to the device clock to get the server's (learnt at each sync; 0 before).
    clock_offset_ms: i64,
    /// The commune this device enrolled in (`None`: not enrolled, or a province account).
    enrolled_commune: Option<String>,
    /// [`build_id`] of this build.
    build: String,
    /// Set by [`DeviceStore::wipe`]: the files are gone.
    wiped: bool,
    /// Opened with a key (only an encrypted store can be rekeyed).
    encrypted: bool,
    /// Set when a rekey failed: the connection is closed and the store must be opened again.
    closed_after_failed_rekey: bool,
    /// What the incoming quarantine keeps at most.
    quarantine_bounds: quarantine::Bounds,
}

impl std::fmt::Debug for DeviceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStore")
            .field("device", &self.device)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

const META_DEVICE_ID: &str = "device_id";
const META_CLOCK_OFFSET: &str = "clock_offset_ms";
const META_ENROLLED_COMMUNE: &str = "enrolled_commune";
const META_UPGRADE_REQUIRED: &str = "upgrade_required_by";

impl DeviceStore {
    /// Opens (creating if needed) the store at `config.path`, migrating it to the current schema.
    pub fn open(config: StoreConfig) -> Result<Self> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    /// Like [`DeviceStore::open`] with a given clock.
    pub fn open_with_clock(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let mut conn = Connection::open(&config.path)?;
        if let Some(key) = &config.key {
            apply_key(&conn, key)?;
            let cipher: Option<String> = conn
                .query_row("PRAGMA cipher_version", [], |row| row.get(0))
                .optional()?;
            if cipher.is_none_or(|v| v.is_empty()) {
                return Err(Error::EncryptionUnavailable);
            }
        }
        // The first read decrypts page 1: a wrong key (or a plain file opened with a key, or the
        // reverse) fails here with SQLITE_NOTADB, which maps to Error::WrongKey.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
            row.get::<_, i64>(0)
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match config.durability {
                Durability::Normal => "NORMAL",
                Durability::Full => "FULL",
            },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn)?;
        if let Some(bytes) = config.max_size_bytes {
            let page_size = pragma_number(&conn, "page_size")?.max(1);
            let pages = (bytes / page_size).max(16);
            conn.pragma_update(None, "max_page_count", pages)?;
        }

        let device = match conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_DEVICE_ID],
                |row| row.get::<_, Vec<u8>>(0),
            )
            .optional()?
        {
            Some(bytes) => uuid::Uuid::from_slice(&bytes).map(DeviceId).map_err(|e| {
                Error::Storage(rusqlite::Error::InvalidParameterName(e.to_string()))
            })?,
            None => {
                let device = DeviceId::new();
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES (?1, ?2)",
                    params![META_DEVICE_ID, device.0.as_bytes().as_slice()],
                )?;
                device
            }
        };
        catalogue::fold_legacy_names(&conn)?;
        let calendar = catalogue::load_calendar(&conn)?;
        let clock_offset_ms: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_CLOCK_OFFSET],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let enrolled_commune: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_ENROLLED_COMMUNE],
                |row| row.get(0),
            )
            .optional()?;
        // Checkpoints move WAL pages into the database and fsync: done by a background thread so
        // that no edit pays for one. The writer's own autocheckpoint stays as a safety net.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        let checkpointer = checkpoint::Checkpointer::start(&config)?;
        Ok(DeviceStore {
            conn,
            path: config.path.clone(),
            device,
            cache: LruCache::new(config.cache_capacity),
            calendar,
            clock,
            compact_after: config.compact_after.max(1),
            checkpointer,
            codec: DocCodec::new()?,
            clock_offset_ms,
            enrolled_commune,
            build: build_id(config.app_version.as_deref()),
            wiped: false,
            encrypted: config.key.is_some(),
            closed_after_failed_rekey: false,
            quarantine_bounds: quarantine::Bounds::default(),
        })
    }

    /// This device's id (also the Automerge actor of its edits).
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    /// The clock edits are stamped with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The time now as best known (ms since the epoch): the device clock corrected by the offset
    /// to the server's clock learnt at the last sync. A tablet whose clock is years wrong still
    /// receives applications today and computes their due dates from today.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms().saturating_add(self.clock_offset_ms)
    }

    /// Today in Vietnam, as [`DeviceStore::now_ms`] knows it.
    pub fn today(&self) -> Result<CivilDate> {
        CivilDate::from_unix_millis(self.now_ms())
    }

    /// The offset from the device clock to the server's, as last learnt.
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms
    }

    /// Records the offset from the device clock to the server's (the sync client does, at each
    /// sync). Kept across restarts: a tablet offline for days keeps the correction.
    pub fn set_clock_offset(&mut self, offset_ms: i64) -> Result<()> {
        if offset_ms != self.clock_offset_ms {
            self.conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
                params![META_CLOCK_OFFSET, offset_ms],
            )?;
            self.clock_offset_ms = offset_ms;
        }
        Ok(())
    }

    /// The commune this device enrolled in, as recorded by
    /// [`DeviceStore::set_enrolled_commune`]; `None` before enrollment or for a province-wide
    /// credential. Records of other communes cannot be created or edited on this device.
    pub fn enrolled_commune(&self) -> Option<&str> {
        self.enrolled_commune.as_deref()
    }

    /// Records the scope of the credential this device enrolled with (from the enrollment
    /// response): the commune code, or `None` for the whole province. Kept across restarts.
    /// Records still to push that belong to another commune (created before enrollment) are set
    /// aside in the quarantine at once (code `not_yours`): the server would refuse them. Returns
    /// how many were set aside.
    pub fn set_enrolled_commune(&mut self, commune: Option<&str>) -> Result<usize> {
        if let Some(code) = commune
            && code.trim().is_empty()
        {
            return Err(Error::invalid("commune_code", "must not be empty"));
        }
        if commune == self.enrolled_commune.as_deref() {
            return Ok(0);
        }
        let now = self.now_ms();
        let tx = self.conn.transaction()?;
        let set_aside = match commune {
            Some(code) => {
                tx.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
                    params![META_ENROLLED_COMMUNE, code],
                )?;
                quarantine::set_aside_other_communes(&tx, code, now)?
            }
            None => {
                tx.execute("DELETE FROM meta WHERE key = ?1", [META_ENROLLED_COMMUNE])?;
                0
            }
        };
        tx.commit()?;
        self.enrolled_commune = commune.map(str::to_owned);
        Ok(set_aside)
    }

    /// [`build_id`] of this build, with the app version from [`StoreConfig::app_version`].
    pub fn build_id(&self) -> &str {
        &self.build
    }

    /// Whether the server answered "upgrade required" to this very build (see
    /// [`DeviceStore::set_upgrade_required`]). A store opened by another build (the app was
    /// upgraded) answers `false`.
    pub fn upgrade_required(&self) -> Result<bool> {
        let by: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_UPGRADE_REQUIRED],
                |row| row.get(0),
            )
            .optional()?;
        Ok(by.as_deref() == Some(self.build.as_str()))
    }

    /// Records (or clears) that the server refused this build as too old: the background policy
    /// stops until the app's version changes. The sync client sets it on "upgrade required" and
    /// clears it after any successful sync.
    pub fn set_upgrade_required(&mut self, required: bool) -> Result<()> {
        if required {
            self.conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
                params![META_UPGRADE_REQUIRED, self.build],
            )?;
        } else {
            self.conn
                .execute("DELETE FROM meta WHERE key = ?1", [META_UPGRADE_REQUIRED])?;
        }
        Ok(())
    }

    /// Destroys the store, as a wipe ordered by the province requires: closes the database
    /// (and the checkpoint thread's connection), deletes the file and its `-wal`, `-shm` and
    /// `-journal` companions, and forgets every cached document. Afterwards this value holds an
    /// empty read-only store in memory: reads find nothing and every write fails. Returns the
    /// paths that were deleted. Idempotent.
    pub fn wipe(&mut self) -> Result<Vec<PathBuf>> {
        self.cache.clear();
        // Stopping the checkpointer joins its thread, which closes its connection.
        self.checkpointer = checkpoint::Checkpointer::stopped();
        let mut empty = Connection::open_in_memory()?;
        schema::migrate(&mut empty)?;
        empty.pragma_update(None, "query_only", true)?;
        // Dropping the file's connection closes it.
        drop(std::mem::replace(&mut self.conn, empty));
        self.wiped = true;
        self.enrolled_commune = None;
        let mut deleted = Vec::new();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = self.path.as_os_str().to_owned();
            name.push(suffix);
            let path = PathBuf::from(name);
            match std::fs::remove_file(&path) {
                Ok(()) => deleted.push(path),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(Error::File {
                        path: path.display().to_string(),
                        reason: err.to_string(),
                    });
                }
            }
        }
        Ok(deleted)
    }

    /// Whether [`DeviceStore::wipe`] destroyed this store.
    pub fn is_wiped(&self) -> bool {
        self.wiped
    }

    /// Documents currently loaded in memory.
    pub fn cached_documents(&self) -> usize {
        self.cache.len()
    }

    /// `PRAGMA integrity_check`: `"ok"` for a healthy file.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))?)
    }

    /// Bytes of the database that hold data: its pages less the free ones. Rows deleted (changes
    /// the server acknowledged, folded chunks) leave free pages that later writes reuse; the file
    /// keeps its size.
    pub fn used_bytes(&self) -> Result<u64> {
        let pages = pragma_number(&self.conn, "page_count")?
            .saturating_sub(pragma_number(&self.conn, "freelist_count")?);
        Ok(pages.saturating_mul(pragma_number(&self.conn, "page_size")?))
    }

    // ----- creating ------------------------------------------------------------------------

    /// Records a new application received by `officer`; its due date follows the procedure's
    /// statutory working days.
    pub fn create_application(
        &mut self,
        officer: &str,
        new: NewApplication,
    ) -> Result<Application> {
        check_officer(officer)?;
        let procedure = self.procedure(&new.procedure_code)?;
        let now = self.clock.now_ms();
        // Receipt (and so the due date) by the corrected time: the device clock may be wrong.
        let received_at = new.received_at.unwrap_or_else(|| self.now_ms());
        let due_at = self
            .calendar
            .deadline(received_at, procedure.processing)
            .date;
        // The number is chosen here and taken in the transaction that inserts the record.
        let number = numbers::next_number(&self.conn, self.device, &new.commune_code, received_at)?;
        let app = Application {
            id: RecordId::new(),
            dossier_number: Some(number.number.clone()),
            commune_code: new.commune_code,
            procedure_code: new.procedure_code,
            applicant: new.applicant,
            received_at,
            due_at,
            documents: new.documents,
            fees: new.fees,
            status: Status::Received,
            assignee: new.assignee,
            notes: new.notes,
            created_by: Author {
                device: self.device.0,
                officer: officer.to_owned(),
            },
            attachments: Vec::new(),
            procedure_version: procedure.version,
            form_values: new.form_values,
            dossier_number_fallback: number.fallback,
            clock_events: Vec::new(),
            returned_at: None,
            returned_on_time: None,
            imported: None,
        };
        let record = Record::Application(app);
        check_creation(&record, &self.rules(&|_| None))?;
        self.insert(record.clone(), officer, now, Some(&number))?;
        match record {
            Record::Application(app) => Ok(app),
            Record::CitizenRequest(_) => Err(Error::Document("kind changed".to_owned())),
        }
    }

    /// Records a new citizen request.
    pub fn create_citizen_request(
        &mut self,
        officer: &str,
        new: NewCitizenRequest,
    ) -> Result<CitizenRequest> {
        check_officer(officer)?;
        let now = self.clock.now_ms();
        let request = CitizenRequest {
            id: RecordId::new(),
            commune_code: new.commune_code,
            category: new.category,
            village: new.village,
            description: new.description,
            reporter_name: new.reporter_name,
            reporter_contact: new.reporter_contact,
            received_at: new.received_at.unwrap_or_else(|| self.now_ms()),
            status: RequestStatus::Received,
            assignee: new.assignee,
            notes: new.notes,
            created_by: Author {
                device: self.device.0,
                officer: officer.to_owned(),
            },
            attachments: Vec::new(),
        };
        let record = Record::CitizenRequest(request);
        check_creation(&record, &self.rules(&|_| None))?;
        self.insert(record.clone(), officer, now, None)?;
        match record {
            Record::CitizenRequest(request) => Ok(request),
            Record::Application(_) => Err(Error::Document("kind changed".to_owned())),
        }
    }

    fn insert(
        &mut self,
        record: Record,
        officer: &str,
        now: i64,
        number: Option<&numbers::NextNumber>,
    ) -> Result<()> {
        let id = record.id();
        let mut doc = RecordDoc::create(&record, self.device, officer, now)?;
        let snapshot = self.codec.encode(&doc.save_uncompressed())?;
        let tx = self.conn.transaction()?;
        tx.prepare_cached(
            "INSERT INTO documents(id, kind, snapshot, chunk_count) VALUES (?1, ?2, ?3, 0)",
        )?
        .execute(params![
            id.as_bytes().as_slice(),
            record.kind().code(),
            snapshot
        ])?;
        let rowid = tx.last_insert_rowid();
        projection::write(&tx, rowid, &record, false)?;
        let created = doc.changes_since(&[]);
        mark_outbox(&tx, &mut self.codec, rowid, &created)?;
        if let Some(number) = number {
            numbers::take(
                &tx,
                number,
                id,
                self.clock.now_ms().saturating_add(self.clock_offset_ms),
            )?;
        }
        tx.commit()?;
        self.checkpointer.committed();
        let saved_heads = doc.heads();
        self.cache.put(
            id,
            Loaded {
                rowid,
                doc,
                saved_heads,
            },
        );
        Ok(())
    }

    // ----- reading ---------------------------------------------------------------------------

    /// Any record by id.
    pub fn get(&mut self, id: RecordId) -> Result<Record> {
        self.loaded(id)?.doc.record()
    }

    /// An application by id.
    pub fn get_application(&mut self, id: RecordId) -> Result<Application> {
        self.loaded(id)?.doc.application()
    }

    /// A citizen request by id.
    pub fn get_citizen_request(&mut self, id: RecordId) -> Result<CitizenRequest> {
        self.loaded(id)?.doc.citizen_request()
    }

    /// Fields of the record that hold concurrent different values.
    pub fn conflicts(&mut self, id: RecordId) -> Result<Vec<Conflict>> {
        Ok(self.loaded(id)?.doc.conflicts())
    }

    /// Every change to the record: who, when (device time), which fields, and when the server
    /// received it (for changes pulled from the feed or acknowledged after a push).
    pub fn history(&mut self, id: RecordId) -> Result<Vec<HistoryEntry>> {
        let mut history = self.loaded(id)?.doc.history();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT received_at FROM change_receipts WHERE hash = ?1")?;
        for entry in &mut history {
            let Ok(hash) = hex::decode(&entry.hash) else {
                continue;
            };
            entry.server_received_at = stmt
                .query_row([hash.as_slice()], |row| row.get(0))
                .optional()?;
            entry.signed_by_this_device = self.signed_by_this_device(&hash)?;
        }
        Ok(history)
    }

    /// Whether a record with this id exists.
    pub fn contains(&self, id: RecordId) -> Result<bool> {
        Ok(self.rowid_of(id)?.is_some())
    }

    // ----- editing ---------------------------------------------------------------------------

    /// Changes an application with `edit`, as one change by `officer`. The id, commune,
    /// creator and receipt time cannot change; a status change must follow the workflow; the due
    /// date follows a change of procedure.
    pub fn update_application(
        &mut self,
        id: RecordId,
        officer: &str,
        edit: impl FnOnce(&mut Application),
    ) -> Result<Application> {
        check_officer(officer)?;
        let before = self.get_application(id)?;
        self.check_scope(&before.commune_code)?;
        let mut after = before.clone();
        edit(&mut after);
        if after.procedure_code != before.procedure_code {
            // Another procedure: its due date and its version in force now.
            let procedure = self.procedure(&after.procedure_code)?;
            after.due_at = self
                .calendar
                .deadline(after.received_at, procedure.processing)
                .date;
            after.procedure_version = procedure.version;
        }
        self.fill_clock(&before, &mut after, officer);
        // A status change needs the procedure's withdrawal rule (an unknown procedure is an
        // error here, where the catalogue should have it).
        let withdrawal = if after.status != before.status {
            Some(self.procedure(&before.procedure_code)?.withdrawal_allowed)
        } else {
            None
        };
        check_edit(
            &Record::Application(before.clone()),
            &Record::Application(after.clone()),
            &self.rules(&|_| withdrawal),
        )?;
        let known = Record::Application(after.clone());
        self.write(id, officer, Some(&known), |doc, officer, now| {
            doc.edit(&before, &after, officer, now)
        })?;
        Ok(after)
    }

    /// Moves an application to `to`, if the workflow allows it.
    pub fn transition(&mut self, id: RecordId, officer: &str, to: Status) -> Result<Application> {
        self.update_application(id, officer, |app| app.status = to)
    }

    /// Changes a citizen request with `edit`, as one change by `officer`.
    pub fn update_citizen_request(
        &mut self,
        id: RecordId,
        officer: &str,
        edit: impl FnOnce(&mut CitizenRequest),
    ) -> Result<CitizenRequest> {
        check_officer(officer)?;
        let before = self.get_citizen_request(id)?;
        self.check_scope(&before.commune_code)?;
        let mut after = before.clone();
        edit(&mut after);
        check_edit(
            &Record::CitizenRequest(before.clone()),
            &Record::CitizenRequest(after.clone()),
            &self.rules(&|_| None),
        )?;
        let known = Record::CitizenRequest(after.clone());
        self.write(id, officer, Some(&known), |doc, officer, now| {
            doc.edit(&before, &after, officer, now)
        })?;
        Ok(after)
    }

    /// Settles a conflict on `field` with `value`.
    pub fn resolve(
        &mut self,
        id: RecordId,
        officer: &str,
        field: &str,
        value: &ConflictValue,
    ) -> Result<Record> {
        check_officer(officer)?;
        let commune = self.get(id)?.commune_code().to_owned();
        self.check_scope(&commune)?;
        self.write(id, officer, None, |doc, officer, now| {
            doc.resolve(field, value, officer, now).map(|()| true)
        })?;
        self.get(id)
    }

    /// Runs `edit` on the loaded document and persists what it changed in one transaction. On any
    /// failure the document is dropped from the cache, so memory never holds an unsaved change.
    /// `known` is the record as the edit leaves it, when the caller has it (saves a hydration).
    fn write(
        &mut self,
        id: RecordId,
        officer: &str,
        known: Option<&Record>,
        edit: impl FnOnce(&mut RecordDoc, &str, i64) -> Result<bool>,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let compact_after = self.compact_after;
        self.loaded(id)?;
        let Some(loaded) = self.cache.get_mut(&id) else {
            return Err(Error::NotFound(id));
        };
        let result = edit(&mut loaded.doc, officer, now).and_then(|changed| {
            if changed {
                persist(
                    &mut self.conn,
                    &mut self.codec,
                    loaded,
                    compact_after,
                    Origin::Local(known),
                )?;
                self.checkpointer.committed();
                Ok(())
            } else {
                Ok(())
            }
        });
        if result.is_err() {
            self.cache.pop(&id);
        }
        result
    }

    /// Current Automerge heads of a record.
    pub fn heads(&mut self, id: RecordId) -> Result<Vec<ChangeHash>> {
        Ok(self.loaded(id)?.doc.heads())
    }

    /// The record's raw Automerge changes that a replica at `heads` lacks (all of them for `&[]`).
    pub fn changes_since(&mut self, id: RecordId, heads: &[ChangeHash]) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .loaded(id)?
            .doc
            .changes_since(heads)
            .into_iter()
            // Uncompressed: the wire compresses whole batches with the record dictionary, which
            // finds far more to share across documents than Automerge's per-change deflate
            // leaves (measured: 864 → 130 bytes per new application). Same change, same hash.
            .map(|change| change.raw_bytes().to_vec())
            .collect())
    }

    // ----- changes from other replicas ------------------------------------------------------

    /// Applies changes that came from another replica (the server or a peer) to record `id`,
    /// creating it when this device has not seen it. The changes must decode, have all their
    /// dependencies and leave a valid record of `kind`; otherwise nothing is stored. Concurrent
    /// values they bring show up in [`DeviceStore::conflicts`].
    pub fn apply_remote_changes(
        &mut self,
        id: RecordId,
        kind: RecordKind,
        changes: &[Vec<u8>],
    ) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        if self.rowid_of(id)?.is_none() {
            let (mut doc, record) =
                RecordDoc::from_changes(id, kind, changes, self.device, Source::Untrusted)?;
            let snapshot = self.codec.encode(&doc.save_uncompressed())?;
            let tx = self.conn.transaction()?;
            tx.prepare_cached(
                "INSERT INTO documents(id, kind, snapshot, chunk_count) VALUES (?1, ?2, ?3, 0)",
            )?
            .execute(params![id.as_bytes().as_slice(), kind.code(), snapshot])?;
            let rowid = tx.last_insert_rowid();
            projection::write(&tx, rowid, &record, !doc.conflicts().is_empty())?;
            tx.commit()?;
            self.checkpointer.committed();
            return Ok(());
        }
        let compact_after = self.compact_after;
        self.loaded(id)?;
        let Some(loaded) = self.cache.get_mut(&id) else {
            return Err(Error::NotFound(id));
        };
        if loaded.doc.kind() != kind {
            return Err(Error::WrongKind {
                id,
                expected: kind,
                actual: loaded.doc.kind(),
            });
        }
        let before = loaded.saved_heads.clone();
        let result = loaded
            .doc
            .apply_changes(changes, Source::Untrusted)
            .and_then(|_| {
                if loaded.doc.heads() == before {
                    Ok(())
                } else {
                    persist(
                        &mut self.conn,
                        &mut self.codec,
                        loaded,
                        compact_after,
                        Origin::Remote,
                    )
                }
            });
        match result {
            Ok(()) => {
                self.checkpointer.committed();
                Ok(())
            }
            Err(err) => {
                self.cache.pop(&id);
                Err(err)
            }
        }
    }

    fn rowid_of(&self, id: RecordId) -> Result<Option<i64>> {
        rowid_in(&self.conn, id)
    }

    fn loaded(&mut self, id: RecordId) -> Result<&mut Loaded> {
        if !self.cache.contains(&id) {
            let loaded = load_document(&self.conn, &mut self.codec, id, self.device)?;
            self.cache.put(id, loaded);
        }
        self.cache.get_mut(&id).ok_or(Error::NotFound(id))
    }

    /// Refuses an edit of a record outside the commune this device enrolled in: the server would
    /// refuse it (a record created for another commune before enrollment is fixed by
    /// [`DeviceStore::copy_quarantined_as_new`]).
    /// The shared scope rule (`integrity::rules::check_scope`) for this device.
    fn check_scope(&self, commune: &str) -> Result<()> {
        Ok(crate::integrity::rules::check_scope(
            commune,
            &self.rules(&|_| None),
        )?)
    }

    /// The rule context of this device's own edits.
    fn rules<'a>(&'a self, withdrawal: &'a dyn Fn(&str) -> Option<bool>) -> RuleContext<'a> {
        RuleContext {
            device: self.device,
            commune: self.enrolled_commune.as_deref(),
            withdrawal_allowed: withdrawal,
            procedure_at: self,
        }
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The connection, for the modules that open their own transactions (attachments); the
    /// caller reports each commit with [`DeviceStore::committed`].
    pub(crate) fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Tells the background checkpointer a transaction was committed.
    pub(crate) fn committed(&self) {
        self.checkpointer.committed();
    }
}

/// Gives SQLCipher the raw key (no key derivation: the key comes from the platform keystore).
pub(crate) fn apply_key(conn: &Connection, key: &EncryptionKey) -> Result<()> {
    key_pragma(conn, "key", key)
}

/// `PRAGMA key` or `PRAGMA rekey` with a raw key; the texts holding the key are overwritten.
fn key_pragma(conn: &Connection, pragma: &str, key: &EncryptionKey) -> Result<()> {
    let hex = Zeroizing::new(hex::encode(key.0));
    let sql = Zeroizing::new(format!("PRAGMA {pragma} = \"x'{}'\";", hex.as_str()));
    conn.execute_batch(&sql)?;
    Ok(())
}

/// The row of record `id` in `documents`, if this store has it (on a connection or inside a
/// transaction).
fn rowid_in(conn: &Connection, id: RecordId) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT rowid FROM documents WHERE id = ?1")?
        .query_row([id.as_bytes().as_slice()], |row| row.get(0))
        .optional()?)
}

fn load_document(
    conn: &Connection,
    codec: &mut DocCodec,
    id: RecordId,
    device: DeviceId,
) -> Result<Loaded> {
    let (rowid, kind, snapshot): (i64, i64, Vec<u8>) = conn
        .query_row(
            "SELECT rowid, kind, snapshot FROM documents WHERE id = ?1",
            [id.as_bytes().as_slice()],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?
        .ok_or(Error::NotFound(id))?;
    let kind = RecordKind::from_code(kind).ok_or_else(|| Error::Corrupt {
        id,
        reason: format!("unknown record kind {kind}"),
    })?;
    let mut stmt =
        conn.prepare_cached("SELECT bytes FROM document_chunks WHERE doc = ?1 ORDER BY seq")?;
    let corrupt = |reason: String| Error::Corrupt { id, reason };
    let mut bytes = Vec::with_capacity(snapshot.len() * 3);
    codec.decode_into(&snapshot, &mut bytes).map_err(corrupt)?;
    let chunks = stmt.query_map([rowid], |row| row.get::<_, Vec<u8>>(0))?;
    for chunk in chunks {
        codec.decode_into(&chunk?, &mut bytes).map_err(corrupt)?;
    }
    let mut doc = RecordDoc::load(id, kind, &bytes, device)?;
    let saved_heads = doc.heads();
    Ok(Loaded {
        rowid,
        doc,
        saved_heads,
    })
}

/// Where the changes being persisted come from.
pub(crate) enum Origin<'a> {
    /// An edit on this device; the record as it now reads, if the caller has it.
    Local(Option<&'a Record>),
    /// Changes from another replica (they may bring conflicts).
    Remote,
}

/// Writes what changed in `loaded` since its saved heads, with projection, search and (for
/// local edits) the outbox mark, in one transaction.
fn persist(
    conn: &mut Connection,
    codec: &mut DocCodec,
    loaded: &mut Loaded,
    compact_after: u32,
    origin: Origin<'_>,
) -> Result<()> {
    let tx = conn.transaction()?;
    write_changes(&tx, codec, loaded, compact_after, origin)?;
    tx.commit()?;
    loaded.saved_heads = loaded.doc.heads();
    Ok(())
}

/// The body of [`persist`], inside the caller's transaction. The caller sets `saved_heads` once
/// the transaction has committed.
fn write_changes(
    tx: &Transaction<'_>,
    codec: &mut DocCodec,
    loaded: &mut Loaded,
    compact_after: u32,
    origin: Origin<'_>,
) -> Result<()> {
    let hydrated;
    let record = match origin {
        Origin::Local(Some(record)) => record,
        Origin::Local(None) | Origin::Remote => {
            hydrated = loaded.doc.record()?;
            &hydrated
        }
    };
    // A local edit cannot create a conflict, only settle one: walk the document only when the
    // projection says it had conflicts, or when the changes come from elsewhere.
    let has_conflicts = match origin {
        Origin::Local(_) => {
            projection::has_conflicts(tx, loaded.rowid, record)?
                && !loaded.doc.conflicts().is_empty()
        }
        Origin::Remote => !loaded.doc.conflicts().is_empty(),
    };
    let chunk_count: u32 = tx
        .prepare_cached("SELECT chunk_count FROM documents WHERE rowid = ?1")?
        .query_row([loaded.rowid], |row| row.get(0))?;
    if chunk_count + 1 >= compact_after {
        let snapshot = codec.encode(&loaded.doc.save_uncompressed())?;
        tx.prepare_cached("DELETE FROM document_chunks WHERE doc = ?1")?
            .execute([loaded.rowid])?;
        tx.prepare_cached("UPDATE documents SET snapshot = ?2, chunk_count = 0 WHERE rowid = ?1")?
            .execute(params![loaded.rowid, snapshot])?;
    } else {
        let chunk = codec.encode(&loaded.doc.save_after(&loaded.saved_heads))?;
        tx.prepare_cached("INSERT INTO document_chunks(doc, seq, bytes) VALUES (?1, ?2, ?3)")?
            .execute(params![loaded.rowid, chunk_count + 1, chunk])?;
        tx.prepare_cached("UPDATE documents SET chunk_count = ?2 WHERE rowid = ?1")?
            .execute(params![loaded.rowid, chunk_count + 1])?;
    }
    projection::write(tx, loaded.rowid, record, has_conflicts)?;
    if matches!(origin, Origin::Local(_)) {
        let edit = loaded.doc.changes_since(&loaded.saved_heads);
        mark_outbox(tx, codec, loaded.rowid, &edit)?;
    }
    Ok(())
}

/// Counts a local edit of document `rowid` in the outbox and keeps its changes for the push.
fn mark_outbox(
    tx: &Transaction<'_>,
    codec: &mut DocCodec,
    rowid: i64,
    changes: &[automerge::Change],
) -> Result<()> {
    let local_seq: i64 = tx
        .prepare_cached(
            "INSERT INTO outbox(doc, local_seq) VALUES (?1, 1)
             ON CONFLICT(doc) DO UPDATE SET local_seq = local_seq + 1
             RETURNING local_seq",
        )?
        .query_row([rowid], |row| row.get(0))?;
    // One edit is one change; should an edit ever make several, they share its outbox number
    // and are kept as one entry in causal order.
    let mut bytes = Vec::new();
    let mut last = None;
    for change in changes {
        let raw = change.raw_bytes();
        let len = u32::try_from(raw.len())
            .map_err(|_| Error::invalid("changes", "a change of more than 4 GiB"))?;
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(raw);
        last = Some(change.hash());
    }
    let root = changes
        .first()
        .is_some_and(|change| change.deps().is_empty());
    if let Some(hash) = last {
        tx.prepare_cached(
            "INSERT INTO outbox_changes(doc, local_seq, hash, root, change)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            rowid,
            local_seq,
            hash.0.as_slice(),
            root,
            codec.encode(&bytes)?
        ])?;
    }
    Ok(())
}

/// A numeric pragma's value. SQLCipher answers `page_size` as text (its `cipher_page_size`),
/// SQLite as an integer.
fn pragma_number(conn: &Connection, name: &str) -> Result<u64> {
    let value: rusqlite::types::Value =
        conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))?;
    match value {
        rusqlite::types::Value::Integer(n) => {
            u64::try_from(n).map_err(|_| Error::invalid(name, format!("negative: {n}")))
        }
        rusqlite::types::Value::Text(text) => text
            .trim()
            .parse()
            .map_err(|_| Error::invalid(name, format!("not a number: {text}"))),
        other => Err(Error::invalid(name, format!("not a number: {other:?}"))),
    }
}

#[cfg(test)]
mod tests;
