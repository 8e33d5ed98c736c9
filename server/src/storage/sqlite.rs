//! The embedded backend: one SQLite file in WAL mode. Writes go through one connection behind a
//! mutex and run in `BEGIN IMMEDIATE` transactions, so they are serialized (also against another
//! process on the same file) and feed numbers are allocated in commit order trivially. Reads use
//! a small pool of read-only connections, each feed page inside one read transaction (one WAL
//! snapshot). Every call runs on tokio's blocking pool, never on a runtime thread. The file (and
//! SQLite's `-wal` and `-shm` next to it, which SQLite creates with the file's mode) is readable by
//! the server's user only: 0600, also when an existing file had a wider mode.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use communesync_core::integrity::ProcedureSource;
use communesync_core::keys::{DeviceKeyEntry, PublicKey};
use communesync_core::record::{DeviceId, RecordId, RecordKind};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

mod attachments;

use super::plan::{self, FeedRowMeta};

mod external_ids;
mod numbers;
use super::read_model::{self, ReadModelRow, SqlParam, SummaryGroup};
use super::{
    AdminToken, AuditEntry, CatalogueHead, CataloguePublication, CatalogueRow, Commune,
    CommuneStats, CommuneSummary, ConsoleOperator, ConsoleSession, Device, DeviceInfo,
    ExternalIdClaim, FeedItem, FeedPage, IncomingDoc, IngestOutcome, KEY_REVOKED_MESSAGE, KnownDoc,
    MAX_REFUSALS_LISTED, MAX_REFUSALS_PER_DEVICE, NumberBlock, PushSignatureRow, RecordQuery,
    Refusal, RefusalRow, Registrations, ReportRow, Result, Scope, ServerStorage, StorageError,
    StoredChange, device_id, feed_limits, join_deps, last_admin_token, record_id, record_kind,
    refusals_to_store, to_i64, to_u64,
};

/// Every migration in order; applying `MIGRATIONS[i]` brings `user_version` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_device_status.sql"),
    include_str!("../../migrations/sqlite/0003_operators_and_refusals.sql"),
    include_str!("../../migrations/sqlite/0004_dossier_numbers.sql"),
    include_str!("../../migrations/sqlite/0005_device_keys.sql"),
    include_str!("../../migrations/sqlite/0006_store_identity.sql"),
    include_str!("../../migrations/sqlite/0007_attachments.sql"),
    include_str!("../../migrations/sqlite/0008_read_model.sql"),
    include_str!("../../migrations/sqlite/0009_catalogue_delta.sql"),
    include_str!("../../migrations/sqlite/0010_external_ids.sql"),
    include_str!("../../migrations/sqlite/0011_calendar_history.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 4;

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl From<rusqlite::Error> for StorageError {
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StorageError::Full(format!("sqlite: {error}")),
            _ => StorageError::Backend(format!("sqlite: {error}")),
        }
    }
}

/// Server storage in one SQLite file.
#[derive(Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    /// Idle read connections; `None` for an in-memory database, whose reads share the writer.
    readers: Option<Mutex<Vec<Connection>>>,
    path: PathBuf,
}

/// A poisoned lock only means another call panicked; its transaction was rolled back when its
/// guard dropped, so the connection is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path` (`:memory:` for a private in-memory
    /// one), sets WAL mode and applies migrations. A schema newer than
    /// [`SCHEMA_VERSION`] is refused.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .map_err(StorageError::backend)?
    }

    fn open_blocking(path: PathBuf) -> Result<Self> {
        let memory = path.as_os_str() == ":memory:";
        if !memory {
            private_files(&path)?;
        }
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        if !memory {
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StorageError::backend(format!(
                    "sqlite: could not enable WAL (journal_mode = {mode})"
                )));
            }
        }
        // A change acknowledged to a tablet must survive a power cut: the tablet will never
        // send it again.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        migrate(&mut conn)?;
        Ok(SqliteStorage {
            inner: Arc::new(Inner {
                writer: Mutex::new(conn),
                readers: (!memory).then(|| Mutex::new(Vec::new())),
                path,
            }),
        })
    }

    /// Runs `f` with the writer connection on the blocking pool.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.writer)))
            .await
            .map_err(StorageError::backend)?
    }

    /// Runs `f` with a read-only connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let Some(readers) = &inner.readers else {
                return f(&mut lock(&inner.writer));
            };
            let idle = lock(readers).pop();
            let mut conn = match idle {
                Some(conn) => conn,
                None => open_reader(&inner.path)?,
            };
            let result = f(&mut conn);
            // A failed read may have left the connection mid-transaction: do not reuse it.
            if result.is_ok() && conn.is_autocommit() {
                let mut idle = lock(readers);
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(conn);
                }
            }
            result
        })
        .await
        .map_err(StorageError::backend)?
    }
}

/// Creates the database file with mode 0600 if it is missing (SQLite would create it 0644, and
/// its `-wal` and `-shm` files with the same mode), and brings an existing file and its
/// companions down to 0600: the file holds every commune's records.
fn private_files(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |what: &str, file: &Path, err: std::io::Error| {
        StorageError::backend(format!("sqlite: {what} {}: {err}", file.display()))
    };
    // A URI filename names its file after parameters; SQLite creates that one itself.
    if path.to_string_lossy().starts_with("file:") {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("creating", path, e))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| io("restricting", &file, e))?;
            }
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io("inspecting", &file, err)),
        }
    }
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Brings the file up to [`SCHEMA_VERSION`], one transaction per migration.
fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StorageError::backend(format!(
            "sqlite: schema version {current} is newer than this build's {SCHEMA_VERSION}"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the write lock.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if now < version {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// The columns of a [`Device`], in the order `device_parts` reads them.
const DEVICE_COLUMNS: &str = "id, commune, label, revoked, wiped";

type DeviceParts = (Vec<u8>, Option<String>, String, bool, bool);

fn device_parts(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceParts> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn device_from_parts(parts: DeviceParts) -> Result<Device> {
    let (id, commune, label, revoked, wiped) = parts;
    Ok(Device {
        id: device_id(&id)?,
        scope: Scope::from_commune(commune),
        label,
        revoked,
        wiped,
    })
}

fn enroll_blocking(
    conn: &mut Connection,
    code_hash: [u8; 32],
    device: DeviceId,
    token_hash: [u8; 32],
    label: String,
    now: i64,
) -> Result<Device> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Consuming is one conditional UPDATE: used or expired codes, and a re-enrollment code
    // given with another device id, do not match.
    let code: Option<(Option<String>, Option<Vec<u8>>)> = tx
        .query_row(
            "UPDATE enrollment_codes SET used_at = ?2
             WHERE code_hash = ?1 AND used_at IS NULL AND expires_at > ?2
               AND (device IS NULL OR device = ?3)
             RETURNING commune, device",
            params![code_hash, now, device.0.as_bytes().as_slice()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let Some((commune, bound)) = code else {
        return Err(StorageError::InvalidEnrollmentCode);
    };
    let enrolled = if bound.is_some() {
        // Re-enrollment: a new token for the same device; everything else stays.
        let token_taken = tx
            .prepare_cached("SELECT 1 FROM devices WHERE token_hash = ?1")?
            .exists(params![token_hash])?;
        if token_taken {
            return Err(StorageError::AlreadyExists); // rolls back: the code stays unused
        }
        let parts = tx
            .query_row(
                &format!(
                    "UPDATE devices SET token_hash = ?2, revoked = 0, wiped = 0 WHERE id = ?1
                     RETURNING {DEVICE_COLUMNS}"
                ),
                params![device.0.as_bytes().as_slice(), token_hash],
                device_parts,
            )
            .optional()?
            .ok_or(StorageError::InvalidEnrollmentCode)?;
        device_from_parts(parts)?
    } else {
        let inserted = tx.execute(
            "INSERT INTO devices (id, token_hash, commune, label, enrolled_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            params![device.0.as_bytes(), token_hash, commune, label, now],
        )?;
        if inserted == 0 {
            return Err(StorageError::AlreadyExists); // rolls back: the code stays unused
        }
        Device {
            id: device,
            scope: Scope::from_commune(commune),
            label,
            revoked: false,
            wiped: false,
        }
    };
    tx.commit()?;
    Ok(enrolled)
}

fn record_refusals_blocking(
    conn: &mut Connection,
    device: DeviceId,
    refusals: &[RefusalRow],
    now: i64,
) -> Result<()> {
    let rows = refusals_to_store(refusals);
    if rows.is_empty() {
        return Ok(());
    }
    let device = device.0.as_bytes().as_slice();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let known = tx
        .prepare_cached("SELECT 1 FROM devices WHERE id = ?1")?
        .exists(params![device])?;
    if !known {
        return Ok(());
    }
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO refusals (device, doc, code, message, first_at, last_at, times)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1)
             ON CONFLICT (device, doc) DO UPDATE SET
               code = excluded.code, message = excluded.message, last_at = excluded.last_at,
               times = times + 1",
        )?;
        for (doc, code, message) in &rows {
            upsert.execute(params![
                device,
                doc.as_bytes().as_slice(),
                code,
                message,
                now
            ])?;
        }
    }
    // Keep the newest rows of the device only.
    tx.execute(
        "DELETE FROM refusals WHERE device = ?1 AND doc NOT IN (
             SELECT doc FROM refusals WHERE device = ?1
             ORDER BY last_at DESC, doc DESC LIMIT ?2)",
        params![device, MAX_REFUSALS_PER_DEVICE as i64],
    )?;
    tx.commit()?;
    Ok(())
}

fn refusal_from_row(row: &rusqlite::Row<'_>) -> Result<Refusal> {
    let device: Vec<u8> = row.get(0)?;
    let doc: Vec<u8> = row.get(1)?;
    Ok(Refusal {
        device: device_id(&device)?,
        doc: record_id(&doc)?,
        code: row.get(2)?,
        message: row.get(3)?,
        first_at: row.get(4)?,
        last_at: row.get(5)?,
        count: to_u64(row.get(6)?),
    })
}

fn ingest_blocking(
    conn: &mut Connection,
    device: &Device,
    mut docs: Vec<IncomingDoc>,
    now: i64,
) -> Result<IngestOutcome> {
    // Device scope and the batch's own consistency need no I/O.
    plan::check_scope(device, &docs, &Registrations::new())?;
    let mut projections = plan::take_projections(&mut docs);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;

    let mut communes_checked = HashSet::new();
    for doc in &docs {
        if communes_checked.insert(doc.commune.as_str()) {
            let exists = tx
                .prepare_cached("SELECT 1 FROM communes WHERE code = ?1")?
                .exists(params![doc.commune])?;
            if !exists {
                return Err(StorageError::OutOfScope { doc: doc.id });
            }
        }
    }

    let mut registered = Registrations::new();
    {
        let mut select = tx.prepare_cached("SELECT commune, kind FROM documents WHERE id = ?1")?;
        for doc in &docs {
            if registered.contains_key(&doc.id) {
                continue;
            }
            let row: Option<(String, i64)> = select
                .query_row(params![doc.id.as_bytes()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            if let Some((commune, kind)) = row {
                registered.insert(doc.id, (commune, record_kind(kind)?));
            }
        }
    }
    plan::check_scope(device, &docs, &registered)?;

    let mut stored: HashMap<RecordId, HashSet<[u8; 32]>> = HashMap::new();
    {
        let mut exists = tx.prepare_cached("SELECT 1 FROM changes WHERE doc = ?1 AND hash = ?2")?;
        for (doc, hash) in plan::hashes_named(&docs) {
            if exists.exists(params![doc.as_bytes(), hash])? {
                stored.entry(doc).or_default().insert(hash);
            }
        }
    }
    let plan = plan::plan_ingest(docs, stored, &registered);

    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO documents (id, commune, kind, registered_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (id, commune, kind) in &plan.register {
            insert.execute(params![id.as_bytes(), commune, kind.code(), now])?;
        }
    }

    // Single writer: allocation order is commit order without further care.
    let mut next_seq: HashMap<String, i64> = HashMap::new();
    for (commune, count) in plan.counts_by_commune() {
        let count = to_i64(count);
        let last: i64 = tx.query_row(
            "UPDATE communes SET feed_seq = feed_seq + ?2 WHERE code = ?1 RETURNING feed_seq",
            params![commune, count],
            |row| row.get(0),
        )?;
        next_seq.insert(commune, last - count + 1);
    }
    let total = plan.changes.len() as i64;
    let first_gseq = if total > 0 {
        let last: i64 = tx.query_row(
            "UPDATE feed_counter SET seq = seq + ?1 WHERE id = 1 RETURNING seq",
            params![total],
            |row| row.get(0),
        )?;
        last - total + 1
    } else {
        0
    };
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO changes (commune, seq, gseq, doc, hash, device, received_at, deps, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for (gseq, change) in (first_gseq..).zip(&plan.changes) {
            let seq = next_seq
                .get_mut(&change.commune)
                .ok_or_else(|| StorageError::backend("no seq allocated for a commune"))?;
            insert.execute(params![
                change.commune,
                *seq,
                gseq,
                change.doc.as_bytes(),
                change.hash,
                device.id.0.as_bytes(),
                now,
                join_deps(&change.deps),
                change.bytes,
            ])?;
            *seq += 1;
        }
    }

    let registered_here: HashSet<RecordId> = plan.register.iter().map(|(id, _, _)| *id).collect();
    let projected_docs = if read_model::ENABLED {
        plan::changes_per_doc(&plan.changes)
    } else {
        Vec::new()
    };
    // A stale projection is projected again from the stored changes, under the rules the push
    // checked with (one push, one set of rules).
    let rules = projections
        .values()
        .next()
        .map_or_else(read_model::no_deadline_rules, |p| p.rules.0.clone());
    for (doc, stored_now) in projected_docs {
        let written = match projections.remove(&doc) {
            Some(projected) => {
                // A document this ingest registers has no row yet: nothing to read.
                let before: read_model::StoredFacts = if registered_here.contains(&doc) {
                    None
                } else {
                    tx.prepare_cached(
                        "SELECT changes, first_received_at, last_received_at
                         FROM read_model WHERE id = ?1",
                    )?
                    .query_row(params![doc.as_bytes()], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .optional()?
                };
                match read_model::complete_projected(
                    *projected,
                    before,
                    registered_here.contains(&doc),
                    stored_now,
                    now,
                ) {
                    Some(row) => {
                        write_row(&tx, &row)?;
                        true
                    }
                    None => false,
                }
            }
            None => false,
        };
        if !written {
            project_doc(&tx, doc, rules.as_ref())?;
        }
    }

    let updated = tx.execute(
        "UPDATE devices SET last_sync_at = ?2, changes_pushed = changes_pushed + ?3
         WHERE id = ?1 AND revoked = 0",
        params![device.id.0.as_bytes(), now, total],
    )?;
    if updated == 0 {
        return Err(StorageError::NotFound);
    }
    tx.commit()?;
    Ok(IngestOutcome {
        stored: to_u64(total),
        duplicates: plan.duplicates,
        missing_deps: plan.missing_deps,
    })
}

/// Writes the read-model row of `doc` from its stored changes (inside the caller's transaction).
fn project_doc(conn: &Connection, doc: RecordId, rules: &dyn ProcedureSource) -> Result<()> {
    let (commune, kind): (String, i64) = conn
        .prepare_cached("SELECT commune, kind FROM documents WHERE id = ?1")?
        .query_row(params![doc.as_bytes()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    let changes = conn
        .prepare_cached("SELECT bytes, received_at FROM changes WHERE doc = ?1 ORDER BY seq")?
        .query_map(params![doc.as_bytes()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<Vec<(Vec<u8>, i64)>>>()?;
    if changes.is_empty() {
        return Ok(());
    }
    let row = read_model::project_changes(doc, &commune, record_kind(kind)?, &changes, rules);
    write_row(conn, &row)
}

fn write_row(conn: &Connection, row: &ReadModelRow) -> Result<()> {
    let placeholders: Vec<String> = (1..=read_model::COLUMN_COUNT)
        .map(|n| format!("?{n}"))
        .collect();
    // An upsert, not INSERT OR REPLACE: a replaced row would not fire the delete trigger that
    // keeps `read_model_counts` (migration 7).
    let updates: Vec<String> = read_model::COLUMNS
        .split(',')
        .map(str::trim)
        .filter(|column| *column != "id")
        .map(|column| format!("{column} = excluded.{column}"))
        .collect();
    let sql = format!(
        "INSERT INTO read_model ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
        read_model::COLUMNS,
        placeholders.join(", "),
        updates.join(", ")
    );
    conn.prepare_cached(&sql)?.execute(params![
        row.id.as_bytes(),
        row.commune,
        row.kind.code(),
        row.status,
        row.procedure_code,
        row.procedure_version,
        row.dossier_number,
        row.received_at,
        row.due_on,
        row.returned_at,
        row.on_time,
        row.assignee,
        row.has_conflicts,
        row.applicant_name,
        row.name_folded,
        row.id_number,
        row.attachments,
        row.changes,
        row.first_received_at,
        row.last_received_at,
        row.projection_error,
    ])?;
    Ok(())
}

fn read_row(row: &rusqlite::Row<'_>) -> Result<ReadModelRow> {
    let id: Vec<u8> = row.get(0)?;
    Ok(ReadModelRow {
        id: record_id(&id)?,
        commune: row.get(1)?,
        kind: record_kind(row.get(2)?)?,
        status: row.get(3)?,
        procedure_code: row.get(4)?,
        procedure_version: row.get(5)?,
        dossier_number: row.get(6)?,
        received_at: row.get(7)?,
        due_on: row.get(8)?,
        returned_at: row.get(9)?,
        on_time: row.get(10)?,
        assignee: row.get(11)?,
        has_conflicts: row.get(12)?,
        applicant_name: row.get(13)?,
        name_folded: row.get(14)?,
        id_number: row.get(15)?,
        attachments: row.get(16)?,
        changes: row.get(17)?,
        first_received_at: row.get(18)?,
        last_received_at: row.get(19)?,
        projection_error: row.get(20)?,
    })
}

fn sqlite_placeholder(n: usize) -> String {
    format!("?{n}")
}

fn sqlite_params(params: Vec<SqlParam>) -> Vec<rusqlite::types::Value> {
    params
        .into_iter()
        .map(|param| match param {
            SqlParam::Text(text) => rusqlite::types::Value::Text(text),
            SqlParam::Int(n) => rusqlite::types::Value::Integer(n),
            SqlParam::Kind(code) => rusqlite::types::Value::Integer(code.into()),
        })
        .collect()
}

fn rebuild_blocking(conn: &mut Connection, rules: &dyn ProcedureSource) -> Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM read_model", [])?;
    let docs = tx
        .prepare("SELECT id FROM documents ORDER BY id")?
        .query_map([], |row| row.get::<_, Vec<u8>>(0))?
        .collect::<rusqlite::Result<Vec<Vec<u8>>>>()?;
    for id in &docs {
        project_doc(&tx, record_id(id)?, rules)?;
    }
    let rows: i64 = tx.query_row("SELECT COUNT(*) FROM read_model", [], |row| row.get(0))?;
    tx.commit()?;
    Ok(to_u64(rows))
}

fn feed_blocking(
    conn: &mut Connection,
    scope: &Scope,
    after: u64,
    exclude: Option<DeviceId>,
    max_bytes: usize,
    max_items: usize,
) -> Result<FeedPage> {
    let (max_items, scan_limit) = feed_limits(max_items);
    let exclude = exclude.map(|d| d.0.as_bytes().to_vec());
    // `?1` is the commune, NULL for the province feed; the province feed pages by gseq.
    let (commune, position, filter) = match scope {
        Scope::Commune(code) => (Some(code.as_str()), "c.seq", "c.commune = ?1"),
        Scope::Province => (None, "c.gseq", "?1 IS NULL"),
    };
    // One read transaction: both queries see the same WAL snapshot.
    let tx = conn.transaction()?;
    let rows: Vec<FeedRowMeta> = {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {position}, COALESCE(c.device = ?3, 0), length(c.bytes) FROM changes c
             WHERE {filter} AND {position} > ?2 ORDER BY {position} LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![commune, to_i64(after), exclude, (scan_limit + 1) as i64],
            |row| {
                Ok(FeedRowMeta {
                    seq: to_u64(row.get(0)?),
                    excluded: row.get(1)?,
                    size: to_u64(row.get(2)?),
                })
            },
        )?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let cut = plan::cut_page(&rows, after, max_bytes, max_items, scan_limit);
    let mut items = Vec::with_capacity(cut.items);
    if cut.items > 0 {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {position}, c.doc, d.kind, c.device, c.received_at, c.bytes,
                    length(c.deps) = 0
             FROM changes c JOIN documents d ON d.id = c.doc
             WHERE {filter} AND {position} > ?2 AND {position} <= ?3
               AND (?4 IS NULL OR c.device <> ?4)
             ORDER BY {position}"
        ))?;
        let mut rows = stmt.query(params![
            commune,
            to_i64(after),
            to_i64(cut.next_cursor),
            exclude
        ])?;
        while let Some(row) = rows.next()? {
            let doc: Vec<u8> = row.get(1)?;
            let device: Vec<u8> = row.get(3)?;
            items.push(FeedItem {
                seq: to_u64(row.get(0)?),
                doc: record_id(&doc)?,
                kind: record_kind(row.get(2)?)?,
                device: device_id(&device)?,
                received_at: row.get(4)?,
                bytes: row.get(5)?,
                root: row.get(6)?,
            });
        }
    }
    tx.commit()?;
    if items.len() != cut.items {
        return Err(StorageError::backend(
            "feed page changed within one snapshot",
        ));
    }
    Ok(FeedPage {
        items,
        next_cursor: cut.next_cursor,
        more: cut.more,
    })
}

#[async_trait]
impl ServerStorage for SqliteStorage {
    async fn create_commune(&self, code: &str, name: &str) -> Result<()> {
        let (code, name) = (code.to_owned(), name.to_owned());
        self.write(move |conn| {
            let inserted = conn.execute(
                "INSERT INTO communes (code, name) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![code, name],
            )?;
            if inserted == 0 {
                return Err(StorageError::AlreadyExists);
            }
            Ok(())
        })
        .await
    }

    async fn list_communes(&self) -> Result<Vec<Commune>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT code, name FROM communes ORDER BY code")?;
            let rows = stmt.query_map([], |row| {
                Ok(Commune {
                    code: row.get(0)?,
                    name: row.get(1)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn create_enrollment_code(
        &self,
        scope: &Scope,
        code_hash: [u8; 32],
        expires_at: i64,
    ) -> Result<()> {
        let commune = scope.commune().map(str::to_owned);
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(commune) = &commune {
                let exists = tx
                    .prepare_cached("SELECT 1 FROM communes WHERE code = ?1")?
                    .exists(params![commune])?;
                if !exists {
                    return Err(StorageError::NotFound);
                }
            }
            let inserted = tx.execute(
                "INSERT INTO enrollment_codes (code_hash, commune, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
                params![code_hash, commune, expires_at],
            )?;
            if inserted == 0 {
                return Err(StorageError::AlreadyExists);
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn create_reenrollment_code(
        &self,
        device: DeviceId,
        code_hash: [u8; 32],
        expires_at: i64,
    ) -> Result<()> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let commune: Option<Option<String>> = tx
                .query_row(
                    "SELECT commune FROM devices WHERE id = ?1",
                    params![device.0.as_bytes().as_slice()],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(commune) = commune else {
                return Err(StorageError::NotFound);
            };
            let inserted = tx.execute(
                "INSERT INTO enrollment_codes (code_hash, commune, expires_at, device)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![
                    code_hash,
                    commune,
                    expires_at,
                    device.0.as_bytes().as_slice()
                ],
            )?;
            if inserted == 0 {
                return Err(StorageError::AlreadyExists);
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn enroll(
        &self,
        code_hash: [u8; 32],
        device: DeviceId,
        token_hash: [u8; 32],
        label: &str,
        now: i64,
    ) -> Result<Device> {
        let label = label.to_owned();
        self.write(move |conn| enroll_blocking(conn, code_hash, device, token_hash, label, now))
            .await
    }

    async fn authenticate(&self, token_hash: [u8; 32]) -> Result<Option<Device>> {
        self.read(move |conn| {
            let parts = conn
                .prepare_cached(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = ?1"
                ))?
                .query_row(params![token_hash], device_parts)
                .optional()?;
            parts.map(device_from_parts).transpose()
        })
        .await
    }

    async fn revoke_device(&self, id: DeviceId) -> Result<()> {
        self.write(move |conn| {
            let updated = conn.execute(
                "UPDATE devices SET revoked = 1 WHERE id = ?1",
                params![id.0.as_bytes()],
            )?;
            if updated == 0 {
                return Err(StorageError::NotFound);
            }
            Ok(())
        })
        .await
    }

    async fn revoke_and_wipe_device(&self, id: DeviceId) -> Result<()> {
        self.write(move |conn| {
            let updated = conn.execute(
                "UPDATE devices SET revoked = 1, wiped = 1 WHERE id = ?1",
                params![id.0.as_bytes()],
            )?;
            if updated == 0 {
                return Err(StorageError::NotFound);
            }
            Ok(())
        })
        .await
    }

    async fn list_devices(&self, scope: Option<&Scope>) -> Result<Vec<DeviceInfo>> {
        let scope = scope.cloned();
        self.read(move |conn| {
            // ?1: 0 every device, 1 province devices, 2 devices of commune ?2.
            let (mode, commune) = match &scope {
                None => (0, None),
                Some(Scope::Province) => (1, None),
                Some(Scope::Commune(code)) => (2, Some(code.as_str())),
            };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS}, enrolled_at, last_sync_at, changes_pushed,
                        pending_docs, last_seen_at,
                        (SELECT count(*) FROM refusals r WHERE r.device = devices.id)
                 FROM devices WHERE ?1 = 0 OR (?1 = 1 AND commune IS NULL) OR commune = ?2
                 ORDER BY enrolled_at, id"
            ))?;
            let mut rows = stmt.query(params![mode, commune])?;
            let mut devices = Vec::new();
            while let Some(row) = rows.next()? {
                devices.push(DeviceInfo {
                    device: device_from_parts(device_parts(row)?)?,
                    enrolled_at: row.get(5)?,
                    last_sync_at: row.get(6)?,
                    changes_pushed: to_u64(row.get(7)?),
                    pending_docs: row.get::<_, Option<i64>>(8)?.map(to_u64),
                    last_seen_at: row.get(9)?,
                    refused_docs: to_u64(row.get(10)?),
                });
            }
            Ok(devices)
        })
        .await
    }

    async fn record_device_status(
        &self,
        device: DeviceId,
        pending_docs: u64,
        now: i64,
    ) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE devices SET pending_docs = ?2, last_seen_at = ?3 WHERE id = ?1",
                params![
                    device.0.as_bytes().as_slice(),
                    i64::try_from(pending_docs).unwrap_or(i64::MAX),
                    now
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn record_refusals(
        &self,
        device: DeviceId,
        refusals: &[RefusalRow],
        now: i64,
    ) -> Result<()> {
        if refusals.is_empty() {
            return Ok(());
        }
        let refusals = refusals.to_vec();
        self.write(move |conn| record_refusals_blocking(conn, device, &refusals, now))
            .await
    }

    async fn clear_refusals(&self, device: DeviceId, docs: &[RecordId]) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        // Most devices have nothing set aside: find out with a read before taking the writer.
        let any = self
            .read(move |conn| {
                Ok(conn
                    .prepare_cached("SELECT 1 FROM refusals WHERE device = ?1 LIMIT 1")?
                    .exists(params![device.0.as_bytes().as_slice()])?)
            })
            .await?;
        if !any {
            return Ok(());
        }
        let docs = docs.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut delete =
                    tx.prepare_cached("DELETE FROM refusals WHERE device = ?1 AND doc = ?2")?;
                for doc in &docs {
                    delete.execute(params![
                        device.0.as_bytes().as_slice(),
                        doc.as_bytes().as_slice()
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn refusals(&self, device: Option<DeviceId>) -> Result<Vec<Refusal>> {
        self.read(move |conn| {
            // Two statements, so that each uses its index (`device = ?1 OR ?1 IS NULL` would not).
            let limit = MAX_REFUSALS_LISTED as i64;
            let mut stmt;
            let mut rows = match device {
                Some(device) => {
                    stmt = conn.prepare_cached(
                        "SELECT device, doc, code, message, first_at, last_at, times
                         FROM refusals WHERE device = ?1
                         ORDER BY last_at DESC, doc LIMIT ?2",
                    )?;
                    stmt.query(params![device.0.as_bytes().as_slice(), limit])?
                }
                None => {
                    stmt = conn.prepare_cached(
                        "SELECT device, doc, code, message, first_at, last_at, times
                         FROM refusals ORDER BY last_at DESC, device, doc LIMIT ?1",
                    )?;
                    stmt.query(params![limit])?
                }
            };
            let mut refusals = Vec::new();
            while let Some(row) = rows.next()? {
                refusals.push(refusal_from_row(row)?);
            }
            Ok(refusals)
        })
        .await
    }

    async fn cursor_issued(&self, device: DeviceId) -> Result<u64> {
        self.read(move |conn| {
            let cursor: Option<i64> = conn
                .prepare_cached("SELECT cursor_issued FROM devices WHERE id = ?1")?
                .query_row(params![device.0.as_bytes().as_slice()], |row| row.get(0))
                .optional()?;
            Ok(cursor.map_or(0, to_u64))
        })
        .await
    }

    async fn set_cursor_issued(&self, device: DeviceId, cursor: u64) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE devices SET cursor_issued = ?2 WHERE id = ?1",
                params![device.0.as_bytes().as_slice(), to_i64(cursor)],
            )?;
            Ok(())
        })
        .await
    }

    async fn create_admin_token(&self, token_hash: [u8; 32], label: &str, now: i64) -> Result<u64> {
        let label = label.to_owned();
        self.write(move |conn| {
            let id: Option<i64> = conn
                .query_row(
                    "INSERT INTO admin_tokens (token_hash, label, created_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING RETURNING id",
                    params![token_hash, label, now],
                    |row| row.get(0),
                )
                .optional()?;
            id.map(to_u64).ok_or(StorageError::AlreadyExists)
        })
        .await
    }

    async fn authenticate_admin(&self, token_hash: [u8; 32], now: i64) -> Result<Option<u64>> {
        self.write(move |conn| {
            let id: Option<i64> = conn
                .prepare_cached(
                    "UPDATE admin_tokens SET last_used_at = ?2
                     WHERE token_hash = ?1 AND revoked_at IS NULL RETURNING id",
                )?
                .query_row(params![token_hash, now], |row| row.get(0))
                .optional()?;
            Ok(id.map(to_u64))
        })
        .await
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, label, created_at, last_used_at, revoked_at FROM admin_tokens
                 ORDER BY id",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(AdminToken {
                    id: to_u64(row.get(0)?),
                    label: row.get(1)?,
                    created_at: row.get(2)?,
                    last_used_at: row.get(3)?,
                    revoked_at: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn revoke_admin_token(&self, id: u64, now: i64) -> Result<()> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let revoked: Option<bool> = tx
                .query_row(
                    "SELECT revoked_at IS NOT NULL FROM admin_tokens WHERE id = ?1",
                    params![to_i64(id)],
                    |row| row.get(0),
                )
                .optional()?;
            match revoked {
                None => return Err(StorageError::NotFound),
                Some(true) => return Ok(()),
                Some(false) => {}
            }
            let others: i64 = tx.query_row(
                "SELECT count(*) FROM admin_tokens WHERE revoked_at IS NULL AND id <> ?1",
                params![to_i64(id)],
                |row| row.get(0),
            )?;
            if others == 0 {
                return Err(last_admin_token());
            }
            tx.execute(
                "UPDATE admin_tokens SET revoked_at = ?2 WHERE id = ?1",
                params![to_i64(id), now],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn reserve_enrollment_attempt(
        &self,
        source: &str,
        now: i64,
        window_ms: i64,
    ) -> Result<u32> {
        let source = source.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // A row whose window has ended means the same as no row: prune them all.
            tx.execute(
                "DELETE FROM enrollment_failures WHERE window_end <= ?1",
                params![now],
            )?;
            let attempts: i64 = tx.query_row(
                "INSERT INTO enrollment_failures (source, window_end, failures)
                 VALUES (?1, ?3, 1)
                 ON CONFLICT (source) DO UPDATE SET
                   failures = CASE WHEN window_end <= ?2 THEN 1 ELSE failures + 1 END,
                   window_end = CASE WHEN window_end <= ?2 THEN ?3 ELSE window_end END
                 RETURNING failures",
                params![source, now, now.saturating_add(window_ms.max(1))],
                |row| row.get(0),
            )?;
            tx.commit()?;
            Ok(u32::try_from(attempts).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn refund_enrollment_attempt(&self, source: &str, now: i64) -> Result<()> {
        let source = source.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE enrollment_failures SET failures = failures - 1
                 WHERE source = ?1 AND window_end > ?2 AND failures > 0",
                params![source, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn enrollment_attempts(&self, source: &str, now: i64) -> Result<u32> {
        let source = source.to_owned();
        self.read(move |conn| {
            let attempts: Option<i64> = conn
                .prepare_cached(
                    "SELECT failures FROM enrollment_failures WHERE source = ?1 AND window_end > ?2",
                )?
                .query_row(params![source, now], |row| row.get(0))
                .optional()?;
            Ok(u32::try_from(attempts.unwrap_or(0)).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn ingest(
        &self,
        device: &Device,
        docs: Vec<IncomingDoc>,
        now: i64,
    ) -> Result<IngestOutcome> {
        let device = device.clone();
        self.write(move |conn| ingest_blocking(conn, &device, docs, now))
            .await
    }

    async fn feed(
        &self,
        scope: &Scope,
        after: u64,
        exclude_device: Option<DeviceId>,
        max_bytes: usize,
        max_items: usize,
    ) -> Result<FeedPage> {
        let scope = scope.clone();
        self.read(move |conn| {
            feed_blocking(conn, &scope, after, exclude_device, max_bytes, max_items)
        })
        .await
    }

    async fn doc_changes(&self, doc: RecordId) -> Result<Vec<Vec<u8>>> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT bytes FROM changes WHERE doc = ?1 ORDER BY seq")?;
            let rows = stmt.query_map(params![doc.as_bytes()], |row| row.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn doc_history(&self, doc: RecordId) -> Result<Vec<StoredChange>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT device, received_at, bytes FROM changes WHERE doc = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![doc.as_bytes()], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            rows.map(|row| {
                let (device, received_at, bytes) = row?;
                Ok(StoredChange {
                    bytes,
                    pushed_by: device_id(&device)?,
                    received_at,
                })
            })
            .collect()
        })
        .await
    }

    async fn doc_registration(&self, doc: RecordId) -> Result<Option<(String, RecordKind)>> {
        self.read(move |conn| {
            let row: Option<(String, i64)> = conn
                .prepare_cached("SELECT commune, kind FROM documents WHERE id = ?1")?
                .query_row(params![doc.as_bytes()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            row.map(|(commune, kind)| Ok((commune, record_kind(kind)?)))
                .transpose()
        })
        .await
    }

    async fn known_docs(&self, docs: &[RecordId]) -> Result<HashMap<RecordId, KnownDoc>> {
        let docs = docs.to_vec();
        self.read(move |conn| {
            // One snapshot for the whole batch: in-process lookups are cheap one by one.
            let tx = conn.transaction()?;
            let mut known = HashMap::new();
            {
                let mut registration =
                    tx.prepare_cached("SELECT commune, kind FROM documents WHERE id = ?1")?;
                let mut changes =
                    tx.prepare_cached("SELECT bytes FROM changes WHERE doc = ?1 ORDER BY seq")?;
                for doc in docs {
                    if known.contains_key(&doc) {
                        continue;
                    }
                    let row: Option<(String, i64)> = registration
                        .query_row(params![doc.as_bytes()], |row| {
                            Ok((row.get(0)?, row.get(1)?))
                        })
                        .optional()?;
                    let Some((commune, kind)) = row else {
                        continue;
                    };
                    let changes = changes
                        .query_map(params![doc.as_bytes()], |row| row.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    known.insert(
                        doc,
                        KnownDoc {
                            commune,
                            kind: record_kind(kind)?,
                            changes,
                        },
                    );
                }
            }
            tx.finish()?;
            Ok(known)
        })
        .await
    }

    async fn publish_catalogue(&self, publication: CataloguePublication) -> Result<u64> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let current: i64 = tx
                .query_row("SELECT version FROM catalogue WHERE id = 1", [], |row| {
                    row.get(0)
                })
                .optional()?
                .unwrap_or(0);
            if to_u64(current) != publication.base_version {
                return Err(StorageError::Conflict(
                    "the catalogue was published meanwhile: publish again".into(),
                ));
            }
            let version = current.saturating_add(1);
            tx.execute(
                "INSERT INTO catalogue (id, version, json) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, json = excluded.json",
                params![version, publication.json],
            )?;
            if let Some(calendar) = &publication.calendar {
                tx.execute(
                    "UPDATE catalogue SET calendar = ?1, calendar_version = ?2 WHERE id = 1",
                    params![calendar, version],
                )?;
                tx.execute(
                    "INSERT INTO calendar_versions (version, calendar) VALUES (?1, ?2)",
                    params![version, calendar],
                )?;
            }
            {
                let mut put_version = tx.prepare_cached(
                    "INSERT INTO procedure_versions (code, version, body, published)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (code, version) DO NOTHING",
                )?;
                let mut put_entry = tx.prepare_cached(
                    "INSERT INTO catalogue_entries (code, version, removed, changed)
                     VALUES (?1, ?2, 0, ?3)
                     ON CONFLICT (code) DO UPDATE SET version = excluded.version, removed = 0,
                         changed = excluded.changed",
                )?;
                for (code, procedure_version, body) in &publication.puts {
                    let procedure_version = to_i64(*procedure_version);
                    put_version.execute(params![code, procedure_version, body, version])?;
                    put_entry.execute(params![code, procedure_version, version])?;
                }
                let mut remove = tx.prepare_cached(
                    "UPDATE catalogue_entries SET removed = 1, changed = ?2 WHERE code = ?1",
                )?;
                for code in &publication.removals {
                    remove.execute(params![code, version])?;
                }
            }
            tx.commit()?;
            Ok(to_u64(version))
        })
        .await
    }

    async fn catalogue_head(&self) -> Result<Option<CatalogueHead>> {
        self.read(|conn| {
            let row: Option<(i64, String, i64)> = conn
                .prepare_cached(
                    "SELECT version, calendar, calendar_version FROM catalogue WHERE id = 1",
                )?
                .query_row([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .optional()?;
            Ok(
                row.map(|(version, calendar, calendar_version)| CatalogueHead {
                    version: to_u64(version),
                    calendar,
                    calendar_version: to_u64(calendar_version),
                }),
            )
        })
        .await
    }

    async fn calendar_at(&self, version: u64) -> Result<Option<(u64, String)>> {
        let version = to_i64(version);
        self.read(move |conn| {
            let row: Option<(i64, String)> = conn
                .prepare_cached(
                    "SELECT version, calendar FROM calendar_versions WHERE version <= ?1
                     ORDER BY version DESC LIMIT 1",
                )?
                .query_row(params![version], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            Ok(row.map(|(version, calendar)| (to_u64(version), calendar)))
        })
        .await
    }

    async fn catalogue_rows(&self) -> Result<Vec<CatalogueRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.changed, e.code, e.version, e.removed, v.body
                 FROM catalogue_entries e
                 JOIN procedure_versions v ON v.code = e.code AND v.version = e.version
                 ORDER BY e.code",
            )?;
            let rows = stmt
                .query_map([], catalogue_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn catalogue_changes(
        &self,
        publication: u64,
        code: &str,
        limit: usize,
    ) -> Result<Vec<CatalogueRow>> {
        let code = code.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.changed, e.code, e.version, e.removed, v.body
                 FROM catalogue_entries e
                 JOIN procedure_versions v ON v.code = e.code AND v.version = e.version
                 WHERE e.changed > ?1 OR (e.changed = ?1 AND e.code > ?2)
                 ORDER BY e.changed, e.code
                 LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(
                    params![
                        to_i64(publication),
                        code,
                        i64::try_from(limit).unwrap_or(i64::MAX)
                    ],
                    catalogue_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn pinned_versions_after(
        &self,
        publication: u64,
        code: &str,
        version: u64,
        limit: usize,
    ) -> Result<Vec<CatalogueRow>> {
        let code = code.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT v.published, v.code, v.version, 0, v.body
                 FROM procedure_versions v
                 WHERE (v.published, v.code, v.version) > (?1, ?2, ?3)
                   AND NOT EXISTS (SELECT 1 FROM catalogue_entries e
                                   WHERE e.code = v.code AND e.version = v.version
                                     AND e.removed = 0)
                 ORDER BY v.published, v.code, v.version
                 LIMIT ?4",
            )?;
            let rows = stmt
                .query_map(
                    params![
                        to_i64(publication),
                        code,
                        to_i64(version),
                        i64::try_from(limit).unwrap_or(i64::MAX)
                    ],
                    catalogue_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn procedure_versions(&self) -> Result<Vec<(String, u64, String)>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT code, version, body FROM procedure_versions")?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((row.get(0)?, to_u64(row.get(1)?), row.get(2)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn catalogue(&self) -> Result<Option<(u64, String)>> {
        self.read(|conn| {
            let row: Option<(i64, String)> = conn
                .prepare_cached("SELECT version, json FROM catalogue WHERE id = 1")?
                .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            Ok(row.map(|(version, json)| (to_u64(version), json)))
        })
        .await
    }

    async fn allocate_number_block(
        &self,
        device: DeviceId,
        agency: &str,
        format: &str,
        size: u64,
        now: i64,
    ) -> Result<NumberBlock> {
        self.allocate_block(device, agency.to_owned(), format.to_owned(), size, now)
            .await
    }

    async fn number_blocks(&self, device: Option<DeviceId>) -> Result<Vec<NumberBlock>> {
        self.blocks(device).await
    }

    async fn report_number_usage(
        &self,
        device: DeviceId,
        usage: &[(u64, u64)],
        now: i64,
    ) -> Result<()> {
        self.report_usage(device, usage.to_vec(), now).await
    }

    async fn record_dossier_numbers(
        &self,
        device: DeviceId,
        numbers: &[(String, RecordId)],
        now: i64,
    ) -> Result<()> {
        self.record_numbers(device, numbers.to_vec(), now).await
    }

    async fn dossier_number(&self, number: &str) -> Result<Option<(RecordId, DeviceId)>> {
        self.lookup_number(number.to_owned()).await
    }

    async fn register_device_key(
        &self,
        device: DeviceId,
        key: PublicKey,
        now: i64,
        only_if_none: bool,
    ) -> Result<bool> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let commune: Option<Option<String>> = tx
                .query_row(
                    "SELECT commune FROM devices WHERE id = ?1",
                    params![device.0.as_bytes()],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(commune) = commune else {
                return Err(StorageError::NotFound);
            };
            let current: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT public_key FROM device_keys
                     WHERE device = ?1 AND valid_until IS NULL AND revoked_at IS NULL",
                    params![device.0.as_bytes()],
                    |row| row.get(0),
                )
                .optional()?;
            match &current {
                Some(k) if k.as_slice() == key.0.as_slice() => return Ok(true),
                Some(_) if only_if_none => return Ok(false),
                _ => {}
            }
            let revoked: Option<i64> = tx
                .query_row(
                    "SELECT revoked_at FROM device_keys
                     WHERE device = ?1 AND public_key = ?2 AND revoked_at IS NOT NULL",
                    params![device.0.as_bytes(), key.0.as_slice()],
                    |row| row.get(0),
                )
                .optional()?;
            if revoked.is_some() {
                return Err(StorageError::Conflict(KEY_REVOKED_MESSAGE.into()));
            }
            let next = |tx: &rusqlite::Transaction<'_>| -> Result<i64> {
                Ok(tx.query_row(
                    "UPDATE device_key_version SET version = version + 1 WHERE id = 1
                     RETURNING version",
                    [],
                    |row| row.get(0),
                )?)
            };
            if current.is_some() {
                let version = next(&tx)?;
                tx.execute(
                    "UPDATE device_keys SET valid_until = ?2, version = ?3
                     WHERE device = ?1 AND valid_until IS NULL AND revoked_at IS NULL",
                    params![device.0.as_bytes(), now, version],
                )?;
            }
            let version = next(&tx)?;
            // The same key registered again after it was replaced starts a new validity.
            tx.execute(
                "INSERT INTO device_keys
                     (device, public_key, commune, valid_from, valid_until, revoked_at, version)
                 VALUES (?1, ?2, ?3, ?4, NULL, NULL, ?5)
                 ON CONFLICT (device, public_key) DO UPDATE SET
                     commune = excluded.commune, valid_from = excluded.valid_from,
                     valid_until = NULL, revoked_at = NULL, version = excluded.version",
                params![device.0.as_bytes(), key.0.as_slice(), commune, now, version],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn revoke_device_keys(&self, device: DeviceId, now: i64) -> Result<()> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let open: i64 = tx.query_row(
                "SELECT count(*) FROM device_keys WHERE device = ?1 AND revoked_at IS NULL",
                params![device.0.as_bytes()],
                |row| row.get(0),
            )?;
            if open > 0 {
                let version: i64 = tx.query_row(
                    "UPDATE device_key_version SET version = version + 1 WHERE id = 1
                     RETURNING version",
                    [],
                    |row| row.get(0),
                )?;
                tx.execute(
                    "UPDATE device_keys SET revoked_at = ?2, version = ?3
                     WHERE device = ?1 AND revoked_at IS NULL",
                    params![device.0.as_bytes(), now, version],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn device_keys_since(
        &self,
        version: u64,
        limit: usize,
    ) -> Result<(Vec<DeviceKeyEntry>, u64)> {
        self.read(move |conn| {
            let current: i64 =
                conn.query_row("SELECT version FROM device_key_version", [], |row| {
                    row.get(0)
                })?;
            let mut stmt = conn.prepare_cached(
                "SELECT device, public_key, commune, valid_from, valid_until, revoked_at, version
                 FROM device_keys WHERE version > ?1 ORDER BY version, device LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![
                to_i64(version),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ])?;
            let mut entries = Vec::new();
            while let Some(row) = rows.next()? {
                let key: Vec<u8> = row.get(1)?;
                entries.push(DeviceKeyEntry {
                    device: device_id(&row.get::<_, Vec<u8>>(0)?)?,
                    public_key: PublicKey::from_slice(&key).ok_or_else(|| {
                        StorageError::backend(format!("stored key has {} bytes", key.len()))
                    })?,
                    commune: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    valid_from: row.get(3)?,
                    valid_until: row.get(4)?,
                    revoked_at: row.get(5)?,
                    version: to_u64(row.get(6)?),
                });
            }
            Ok((entries, to_u64(current)))
        })
        .await
    }

    async fn device_keys_of(&self, device: DeviceId) -> Result<Vec<DeviceKeyEntry>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT public_key, commune, valid_from, valid_until, revoked_at, version
                 FROM device_keys WHERE device = ?1 ORDER BY version",
            )?;
            let mut rows = stmt.query(params![device.0.as_bytes()])?;
            let mut entries = Vec::new();
            while let Some(row) = rows.next()? {
                let key: Vec<u8> = row.get(0)?;
                entries.push(DeviceKeyEntry {
                    device,
                    public_key: PublicKey::from_slice(&key).ok_or_else(|| {
                        StorageError::backend(format!("stored key has {} bytes", key.len()))
                    })?,
                    commune: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    valid_from: row.get(2)?,
                    valid_until: row.get(3)?,
                    revoked_at: row.get(4)?,
                    version: to_u64(row.get(5)?),
                });
            }
            Ok(entries)
        })
        .await
    }

    async fn record_push_signature(&self, push: &PushSignatureRow) -> Result<()> {
        let push = push.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let id: i64 = tx.query_row(
                "INSERT INTO push_signatures (device, counter, hashes, signature, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                params![
                    push.device.0.as_bytes(),
                    to_i64(push.counter),
                    push.hashes_blob(),
                    push.signature.as_slice(),
                    push.received_at
                ],
                |row| row.get(0),
            )?;
            {
                let mut link = tx.prepare_cached(
                    "INSERT OR IGNORE INTO change_signatures (hash, push) VALUES (?1, ?2)",
                )?;
                for hash in &push.hashes {
                    link.execute(params![hash.as_slice(), id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn change_signatures(
        &self,
        hashes: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], Arc<PushSignatureRow>>> {
        let hashes = hashes.to_vec();
        self.read(move |conn| {
            let mut link =
                conn.prepare_cached("SELECT push FROM change_signatures WHERE hash = ?1")?;
            let mut push_row = conn.prepare_cached(
                "SELECT device, counter, hashes, signature, received_at
                 FROM push_signatures WHERE id = ?1",
            )?;
            let mut pushes: HashMap<i64, Arc<PushSignatureRow>> = HashMap::new();
            let mut out = HashMap::new();
            for hash in hashes {
                let Some(push) = link
                    .query_row(params![hash.as_slice()], |row| row.get::<_, i64>(0))
                    .optional()?
                else {
                    continue;
                };
                if let std::collections::hash_map::Entry::Vacant(slot) = pushes.entry(push) {
                    let (device, counter, blob, signature, received_at): (
                        Vec<u8>,
                        i64,
                        Vec<u8>,
                        Vec<u8>,
                        i64,
                    ) = push_row.query_row(params![push], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                        ))
                    })?;
                    slot.insert(Arc::new(PushSignatureRow::from_parts(
                        device_id(&device)?,
                        counter,
                        &blob,
                        &signature,
                        received_at,
                    )?));
                }
                if let Some(row) = pushes.get(&push) {
                    out.insert(hash, row.clone());
                }
            }
            Ok(out)
        })
        .await
    }

    async fn record_row(&self, id: RecordId) -> Result<Option<ReadModelRow>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {} FROM read_model WHERE id = ?1",
                read_model::COLUMNS
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let mut rows = statement.query(params![id.as_bytes()])?;
            match rows.next()? {
                Some(row) => Ok(Some(read_row(row)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn records(&self, query: &RecordQuery) -> Result<Vec<ReadModelRow>> {
        let (tail, values) = read_model::records_tail(query, sqlite_placeholder);
        self.read(move |conn| {
            let sql = format!("SELECT {} FROM read_model{tail}", read_model::COLUMNS);
            let mut statement = conn.prepare_cached(&sql)?;
            let mut rows = statement.query(rusqlite::params_from_iter(sqlite_params(values)))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(read_row(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn commune_summaries(
        &self,
        today: &str,
        week_from: i64,
        month_from: i64,
    ) -> Result<Vec<CommuneSummary>> {
        let today = today.to_owned();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let communes = tx
                .prepare_cached("SELECT code FROM communes ORDER BY code")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            let groups = tx
                .prepare_cached(&read_model::summaries_sql(sqlite_placeholder))?
                .query_map(params![week_from, month_from, today], |row| {
                    Ok(SummaryGroup {
                        commune: row.get(0)?,
                        status: row.get(1)?,
                        count: row.get(2)?,
                        week: row.get(3)?,
                        month: row.get(4)?,
                        due_before_today: row.get(5)?,
                        on_time: row.get(6)?,
                        late: row.get(7)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(read_model::fold_summaries(communes, groups))
        })
        .await
    }

    async fn report(&self, from: i64, until: i64, last_day: &str) -> Result<Vec<ReportRow>> {
        let last_day = last_day.to_owned();
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(&read_model::report_sql(sqlite_placeholder))?
                .query_map(params![from, until, last_day], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        [row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?],
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(read_model::report_rows(rows))
        })
        .await
    }

    async fn rebuild_read_model(&self, rules: read_model::DeadlineRules) -> Result<u64> {
        self.write(move |conn| rebuild_blocking(conn, rules.as_ref()))
            .await
    }

    async fn reproject_open(&self, rules: read_model::DeadlineRules) -> Result<u64> {
        // Pages by id, each in its own short write transaction.
        let mut after: Vec<u8> = Vec::new();
        let mut written = 0u64;
        loop {
            let rules = rules.clone();
            let from = after.clone();
            let (page, last) = self
                .write(move |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let ids = tx
                        .prepare_cached(&format!(
                            "SELECT id FROM read_model WHERE {} AND id > ?1 ORDER BY id LIMIT ?2",
                            read_model::open_clause()
                        ))?
                        .query_map(params![from, read_model::REPROJECT_PAGE as i64], |row| {
                            row.get::<_, Vec<u8>>(0)
                        })?
                        .collect::<rusqlite::Result<Vec<Vec<u8>>>>()?;
                    for id in &ids {
                        project_doc(&tx, record_id(id)?, rules.as_ref())?;
                    }
                    tx.commit()?;
                    Ok((ids.len() as u64, ids.last().cloned()))
                })
                .await?;
            written += page;
            match last {
                Some(last) if page == read_model::REPROJECT_PAGE as u64 => after = last,
                _ => return Ok(written),
            }
        }
    }

    async fn create_operator(
        &self,
        username: &str,
        password_hash: &str,
        role: &str,
        now: i64,
    ) -> Result<()> {
        let (username, password_hash, role) = (
            username.to_owned(),
            password_hash.to_owned(),
            role.to_owned(),
        );
        self.write(move |conn| {
            let inserted = conn.execute(
                "INSERT INTO console_operators (username, password_hash, role, created_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![username, password_hash, role, now],
            )?;
            if inserted == 0 {
                return Err(StorageError::AlreadyExists);
            }
            Ok(())
        })
        .await
    }

    async fn operator(&self, username: &str) -> Result<Option<ConsoleOperator>> {
        let username = username.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT username, password_hash, role, disabled FROM console_operators
                     WHERE username = ?1",
                )?
                .query_row(params![username], |row| {
                    Ok(ConsoleOperator {
                        username: row.get(0)?,
                        password_hash: row.get(1)?,
                        role: row.get(2)?,
                        disabled: row.get(3)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn create_session(
        &self,
        token_hash: [u8; 32],
        username: &str,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        let (username, csrf) = (username.to_owned(), csrf.to_owned());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM console_sessions WHERE expires_at <= ?1",
                params![now],
            )?;
            let known = tx
                .prepare_cached("SELECT 1 FROM console_operators WHERE username = ?1")?
                .exists(params![username])?;
            if !known {
                return Err(StorageError::NotFound);
            }
            tx.execute(
                "INSERT INTO console_sessions (token_hash, username, csrf, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![token_hash, username, csrf, now, expires_at],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn session(&self, token_hash: [u8; 32], now: i64) -> Result<Option<ConsoleSession>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT o.username, o.password_hash, o.role, o.disabled, s.csrf, s.expires_at
                     FROM console_sessions s JOIN console_operators o ON o.username = s.username
                     WHERE s.token_hash = ?1 AND s.expires_at > ?2 AND o.disabled = 0",
                )?
                .query_row(params![token_hash, now], |row| {
                    Ok(ConsoleSession {
                        operator: ConsoleOperator {
                            username: row.get(0)?,
                            password_hash: row.get(1)?,
                            role: row.get(2)?,
                            disabled: row.get(3)?,
                        },
                        csrf: row.get(4)?,
                        expires_at: row.get(5)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM console_sessions WHERE token_hash = ?1",
                params![token_hash],
            )?;
            Ok(())
        })
        .await
    }

    async fn append_audit(
        &self,
        username: &str,
        action: &str,
        detail: &str,
        now: i64,
    ) -> Result<()> {
        let (username, action, detail) =
            (username.to_owned(), action.to_owned(), detail.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO console_audit (at, username, action, detail) VALUES (?1, ?2, ?3, ?4)",
                params![now, username, action, detail],
            )?;
            Ok(())
        })
        .await
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let limit = limit.min(super::MAX_AUDIT_LISTED) as i64;
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT at, username, action, detail FROM console_audit
                     ORDER BY id DESC LIMIT ?1",
                )?
                .query_map(params![limit], |row| {
                    Ok(AuditEntry {
                        at: row.get(0)?,
                        username: row.get(1)?,
                        action: row.get(2)?,
                        detail: row.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn ready(&self) -> Result<()> {
        self.read(|conn| {
            let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            super::schema_verdict(version, SCHEMA_VERSION)
        })
        .await
    }

    async fn read_model_lag(&self) -> Result<u64> {
        self.read(|conn| {
            let lag: i64 = conn.query_row(
                "SELECT COUNT(*) FROM documents d
                 WHERE NOT EXISTS (SELECT 1 FROM read_model r WHERE r.id = d.id)",
                [],
                |row| row.get(0),
            )?;
            Ok(to_u64(lag))
        })
        .await
    }

    async fn stats(&self) -> Result<Vec<CommuneStats>> {
        self.read(|conn| {
            let tx = conn.transaction()?;
            let stats = {
                let mut stmt = tx.prepare_cached(
                    "SELECT c.code,
                       (SELECT count(*) FROM documents d WHERE d.commune = c.code),
                       (SELECT count(*) FROM changes x WHERE x.commune = c.code),
                       (SELECT count(*) FROM devices v WHERE v.commune = c.code AND v.revoked = 0),
                       (SELECT x.received_at FROM changes x WHERE x.commune = c.code
                        ORDER BY x.seq DESC LIMIT 1)
                     FROM communes c ORDER BY c.code",
                )?;
                let rows = stmt.query_map([], |row| {
                    Ok(CommuneStats {
                        code: row.get(0)?,
                        documents: to_u64(row.get(1)?),
                        changes: to_u64(row.get(2)?),
                        devices: to_u64(row.get(3)?),
                        last_change_at: row.get(4)?,
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.commit()?;
            Ok(stats)
        })
        .await
    }

    async fn store_epoch(&self) -> Result<String> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT epoch FROM store_identity WHERE singleton = 1")?
                .query_row([], |row| row.get(0))?)
        })
        .await
    }

    async fn renew_store_epoch(&self) -> Result<String> {
        self.write(|conn| {
            let epoch = super::new_store_epoch();
            conn.execute(
                "INSERT INTO store_identity (singleton, epoch) VALUES (1, ?1)
                 ON CONFLICT (singleton) DO UPDATE SET epoch = excluded.epoch",
                params![epoch],
            )?;
            Ok(epoch)
        })
        .await
    }

    async fn claim_external_ids(
        &self,
        device: DeviceId,
        claims: &[ExternalIdClaim],
        now: i64,
    ) -> Result<Vec<RecordId>> {
        self.claim_keys(device, claims.to_vec(), now).await
    }

    async fn external_id(
        &self,
        commune: &str,
        external_id: &str,
    ) -> Result<Option<(RecordId, DeviceId)>> {
        self.lookup_key(commune.to_owned(), external_id.to_owned())
            .await
    }
}

fn catalogue_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CatalogueRow> {
    Ok(CatalogueRow {
        changed: to_u64(row.get(0)?),
        code: row.get(1)?,
        version: to_u64(row.get(2)?),
        removed: row.get(3)?,
        body: row.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path, suffix: &str) -> u32 {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::fs::metadata(PathBuf::from(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[tokio::test]
    async fn database_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let storage = SqliteStorage::open(&path).await.unwrap();
        // A write and a read, so that the WAL and the shared-memory file exist.
        storage.create_commune("c1", "c1").await.unwrap();
        assert_eq!(storage.list_communes().await.unwrap().len(), 1);
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(&path, suffix), 0o600, "new database{suffix}");
        }
        drop(storage);
        // A file created by an older build (0644) is made private at open.
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let _ = std::fs::set_permissions(
                PathBuf::from(name),
                std::fs::Permissions::from_mode(0o644),
            );
        }
        let storage = SqliteStorage::open(&path).await.unwrap();
        storage.create_commune("c2", "c2").await.unwrap();
        assert_eq!(storage.list_communes().await.unwrap().len(), 2);
        assert_eq!(mode(&path, ""), 0o600);
        for suffix in ["-wal", "-shm"] {
            if std::fs::metadata(format!("{}{suffix}", path.display())).is_ok() {
                assert_eq!(mode(&path, suffix), 0o600, "existing database{suffix}");
            }
        }
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        drop(SqliteStorage::open(&path).await.unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = SqliteStorage::open(&path).await.err().unwrap();
        assert!(matches!(err, StorageError::Backend(m) if m.contains("newer")));
    }
}
