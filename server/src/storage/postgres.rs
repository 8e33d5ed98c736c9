//! The PostgreSQL backend, for one or several stateless server replicas sharing one database:
//! tokio-postgres over a deadpool pool. Migrations run at connect time in one transaction under
//! an advisory lock, so replicas starting together apply them once.
//!
//! Concurrency rules (why the feed never skips a late commit: see the comment on `ingest`):
//! writes run at READ COMMITTED and take row locks in one global order — commune counter rows
//! (by code), new document registrations (by id), the device row, the province counter row — so
//! concurrent ingests never deadlock; feed pages are read in a READ ONLY REPEATABLE READ
//! transaction (one snapshot for the row scan and the byte fetch).
//!
//! Failover: the connection string may name several hosts (`host=a,b port=5432,5432
//! target_session_attrs=read-write`, or `postgres://u@a:5432,b:5432/db?target_session_attrs=...`);
//! a new connection goes to the first that accepts writes. A connection the database broke (its
//! primary died) is dropped when it comes back to the pool, and the next request opens a new one,
//! which finds the promoted standby: no restart of the server. Requests in flight at the moment
//! of the loss fail (500, retried by tablets); nothing they were not acknowledged for is assumed
//! stored. Unless the string says otherwise, connecting gives up on a host after
//! [`CONNECT_TIMEOUT`] and TCP keepalives detect a silently dead host within about a minute
//! ([`KEEPALIVE_IDLE`]), so a machine that vanishes without a reset does not hold connections.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use communesync_core::keys::{DeviceKeyEntry, PublicKey};
use communesync_core::record::{DeviceId, RecordId, RecordKind};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{IsolationLevel, Row};

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
    StoredChange, device_id, feed_limits, hash32, join_deps, last_admin_token, record_id,
    record_kind, refusals_to_store, to_i64, to_u64,
};

/// Every migration in order; the version after applying `MIGRATIONS[i]` is `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_device_status.sql"),
    include_str!("../../migrations/postgres/0003_operators_and_refusals.sql"),
    include_str!("../../migrations/postgres/0004_dossier_numbers.sql"),
    include_str!("../../migrations/postgres/0005_device_keys.sql"),
    include_str!("../../migrations/postgres/0006_store_identity.sql"),
    include_str!("../../migrations/postgres/0007_attachments.sql"),
    include_str!("../../migrations/postgres/0008_read_model.sql"),
    include_str!("../../migrations/postgres/0009_catalogue_delta.sql"),
    include_str!("../../migrations/postgres/0010_external_ids.sql"),
    include_str!("../../migrations/postgres/0011_calendar_history.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Key of the advisory lock that serializes migrations across replicas ("cmnsync").
const MIGRATION_LOCK: i64 = 0x0063_6d6e_7379_6e63;

/// Connections per replica unless told otherwise.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How long opening a connection to one host may take, unless the string sets `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time before TCP keepalive probes start, unless the string sets `keepalives_idle`
/// (libpq's default, two hours, would leave a connection to a vanished host open that long).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Whether `database` is a libpq key=value connection string (`host=... port=... dbname=...`)
/// rather than a URL or a SQLite path.
pub fn is_key_value_string(database: &str) -> bool {
    database.split_whitespace().all(|word| word.contains('='))
        && database
            .split_whitespace()
            .any(|word| word.starts_with("host=") || word.starts_with("hostaddr="))
}

/// The driver's defaults made fit for failover (see the module doc); what the string sets wins.
fn with_failover_defaults(config: &mut tokio_postgres::Config, url: &str) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if !url.contains("keepalives_idle") {
        config.keepalives_idle(KEEPALIVE_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(10));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(error: tokio_postgres::Error) -> Self {
        match error.as_db_error() {
            // disk_full
            Some(db) if db.code().code() == "53100" => {
                StorageError::Full(format!("postgres: {}", db.message()))
            }
            Some(db) => StorageError::Backend(format!(
                "postgres: {} ({}): {}",
                db.severity(),
                db.code().code(),
                db.message()
            )),
            None => StorageError::Backend(format!("postgres: {error}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        StorageError::Backend(format!("postgres pool: {error}"))
    }
}

/// Server storage in a PostgreSQL database, shareable by several server processes.
#[derive(Clone)]
pub struct PostgresStorage {
    pool: Pool,
}

impl PostgresStorage {
    /// Connects with [`DEFAULT_POOL_SIZE`] connections and applies migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with_pool_size(url, DEFAULT_POOL_SIZE).await
    }

    /// Connects with at most `max_connections` pooled connections (`postgres://` URL or
    /// key=value string) and applies migrations. A schema newer than [`SCHEMA_VERSION`] is
    /// refused. TLS as the URL's `sslmode` and `sslrootcert` ask (libpq's meanings, see
    /// [`super::pg_tls`]).
    pub async fn connect_with_pool_size(url: &str, max_connections: usize) -> Result<Self> {
        let mut connection = super::pg_tls::parse(url)?;
        with_failover_defaults(&mut connection.config, url);
        let manager = Manager::from_config(
            connection.config,
            connection.tls,
            // Fast: a connection is checked only for being closed (a broken one is dropped then);
            // a round trip per request to check more would cost every sync.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| StorageError::backend(format!("postgres pool: {e}")))?;
        let storage = PostgresStorage { pool };
        let mut client = storage.client().await?;
        migrate(&mut client).await?;
        Ok(storage)
    }

    async fn client(&self) -> Result<Object> {
        Ok(self.pool.get().await?)
    }
}

/// Applies pending migrations in one transaction holding an advisory lock: replicas that start
/// together wait for the first and then find nothing to do.
async fn migrate(client: &mut Object) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::bigint FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(StorageError::backend(format!(
            "postgres: schema version {current} is newer than this build's {SCHEMA_VERSION}"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn kind_code(kind: RecordKind) -> i16 {
    // Codes are 1 and 2; the conversion cannot fail for a known kind.
    i16::try_from(kind.code()).unwrap_or(i16::MAX)
}

/// The columns of a [`Device`], in the order `device_from_row` reads them.
const DEVICE_COLUMNS: &str = "id, commune, label, revoked, wiped";

fn device_from_row(row: &Row) -> Result<Device> {
    let id: &[u8] = row.try_get(0)?;
    Ok(Device {
        id: device_id(id)?,
        scope: Scope::from_commune(row.try_get(1)?),
        label: row.try_get(2)?,
        revoked: row.try_get(3)?,
        wiped: row.try_get(4)?,
    })
}

fn refusal_from_row(row: &Row) -> Result<Refusal> {
    let device: &[u8] = row.try_get(0)?;
    let doc: &[u8] = row.try_get(1)?;
    Ok(Refusal {
        device: device_id(device)?,
        doc: record_id(doc)?,
        code: row.try_get(2)?,
        message: row.try_get(3)?,
        first_at: row.try_get(4)?,
        last_at: row.try_get(5)?,
        count: to_u64(row.try_get(6)?),
    })
}

const FEED_META_COMMUNE: &str =
    "SELECT seq, COALESCE(device = $3, false), octet_length(bytes)::bigint
     FROM changes WHERE commune = $1 AND seq > $2 ORDER BY seq LIMIT $4";
const FEED_ITEMS_COMMUNE: &str = "SELECT c.seq, c.doc, d.kind, c.device, c.received_at, c.bytes,
            octet_length(c.deps) = 0
     FROM changes c JOIN documents d ON d.id = c.doc
     WHERE c.commune = $1 AND c.seq > $2 AND c.seq <= $3 AND ($4::bytea IS NULL OR c.device <> $4)
     ORDER BY c.seq";
const FEED_META_PROVINCE: &str =
    "SELECT gseq, COALESCE(device = $2, false), octet_length(bytes)::bigint
     FROM changes WHERE gseq > $1 ORDER BY gseq LIMIT $3";
const FEED_ITEMS_PROVINCE: &str = "SELECT c.gseq, c.doc, d.kind, c.device, c.received_at, c.bytes,
            octet_length(c.deps) = 0
     FROM changes c JOIN documents d ON d.id = c.doc
     WHERE c.gseq > $1 AND c.gseq <= $2 AND ($3::bytea IS NULL OR c.device <> $3)
     ORDER BY c.gseq";

// Ingest statements, in the order they run (see `ingest`).
const INGEST_LOCK_COMMUNE: &str = "SELECT 1 FROM communes WHERE code = $1 FOR NO KEY UPDATE";
// Lookups by a batch of ids join the ids as a relation. `col = ANY($1)` with a parameter array is
// evaluated element by element for every row once PostgreSQL settles on its generic plan (a
// sequential scan comparing each row with all 4,000 ids of a large push: most of the database's
// CPU in the sync bench's first sync), where a join probes the primary key once per id. DISTINCT
// keeps the answer of `= ANY` when a batch names an id twice.
const INGEST_REGISTRATIONS: &str = "SELECT d.id, d.commune, d.kind
     FROM (SELECT DISTINCT id FROM UNNEST($1::bytea[]) AS u (id)) t
     JOIN documents d ON d.id = t.id";
const INGEST_STORED_HASHES: &str = "SELECT c.doc, c.hash
     FROM UNNEST($1::bytea[], $2::bytea[]) AS t (doc, hash)
     JOIN changes c ON c.doc = t.doc AND c.hash = t.hash";
const KNOWN_REGISTRATIONS: &str = INGEST_REGISTRATIONS;
const KNOWN_CHANGES: &str = "SELECT c.doc, c.bytes
     FROM (SELECT DISTINCT doc FROM UNNEST($1::bytea[]) AS u (doc)) t
     JOIN changes c ON c.doc = t.doc
     ORDER BY c.doc, c.seq";
const INGEST_REGISTER: &str = "INSERT INTO documents (id, commune, kind, registered_at)
     SELECT t.id, t.commune, t.kind, $4::bigint
     FROM UNNEST($1::bytea[], $2::text[], $3::smallint[]) AS t (id, commune, kind)
     ORDER BY t.id
     ON CONFLICT (id) DO NOTHING
     RETURNING id";
const INGEST_DEVICE: &str =
    "UPDATE devices SET last_sync_at = $2, changes_pushed = changes_pushed + $3
     WHERE id = $1 AND NOT revoked";
const INGEST_ALLOCATE_SEQ: &str =
    "UPDATE communes SET feed_seq = feed_seq + $2 WHERE code = $1 RETURNING feed_seq";
const INGEST_ALLOCATE_GSEQ: &str =
    "UPDATE feed_counter SET seq = seq + $1 WHERE id = 1 RETURNING seq";
const INGEST_CHANGES: &str =
    "INSERT INTO changes (commune, seq, gseq, doc, hash, device, received_at, deps, bytes)
     SELECT t.commune, t.seq, t.gseq, t.doc, t.hash, $1::bytea, $2::bigint, t.deps, t.bytes
     FROM UNNEST($3::text[], $4::bigint[], $5::bigint[], $6::bytea[], $7::bytea[], $8::bytea[],
                 $9::bytea[]) AS t (commune, seq, gseq, doc, hash, deps, bytes)";

/// A document's registration and its stored changes with their receive times.
type DocChanges = (RecordId, String, RecordKind, Vec<(Vec<u8>, i64)>);

/// Documents projected per round trip when the read model is rebuilt.
const REBUILD_CHUNK: usize = 500;

/// Writes the read-model rows of `docs` from their stored changes, inside `tx`. Decoding runs on
/// the blocking pool, not on a runtime thread.
async fn project_docs(
    tx: &deadpool_postgres::Transaction<'_>,
    docs: &[RecordId],
    rules: &read_model::DeadlineRules,
) -> Result<()> {
    if docs.is_empty() {
        return Ok(());
    }
    let ids: Vec<&[u8]> = docs.iter().map(|id| id.as_bytes().as_slice()).collect();
    let rows = tx
        .query(
            "SELECT c.doc, d.commune, d.kind, c.bytes, c.received_at
             FROM changes c
             JOIN unnest($1::bytea[]) AS ids (id) ON c.doc = ids.id
             JOIN documents d ON d.id = c.doc
             ORDER BY c.doc, c.seq",
            &[&ids],
        )
        .await?;
    let mut grouped: Vec<DocChanges> = Vec::new();
    for row in &rows {
        let id = record_id(row.try_get(0)?)?;
        let change = (row.try_get::<_, Vec<u8>>(3)?, row.try_get::<_, i64>(4)?);
        match grouped.last_mut() {
            Some((last, _, _, changes)) if *last == id => changes.push(change),
            _ => {
                let kind: i16 = row.try_get(2)?;
                grouped.push((id, row.try_get(1)?, record_kind(kind.into())?, vec![change]));
            }
        }
    }
    drop(rows);
    let rules = rules.clone();
    let projected = tokio::task::spawn_blocking(move || {
        grouped
            .iter()
            .map(|(id, commune, kind, changes)| {
                read_model::project_changes(*id, commune, *kind, changes, rules.as_ref())
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(StorageError::backend)?;
    write_rows(tx, &projected).await
}

/// Writes `rows` (each document once) in one statement: one round trip however many documents a
/// push or a rebuild page holds.
async fn write_rows(tx: &deadpool_postgres::Transaction<'_>, rows: &[ReadModelRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<&[u8]> = rows.iter().map(|r| r.id.as_bytes().as_slice()).collect();
    let communes: Vec<&str> = rows.iter().map(|r| r.commune.as_str()).collect();
    let kinds: Vec<i16> = rows.iter().map(|r| kind_code(r.kind)).collect();
    let text = |f: fn(&ReadModelRow) -> &Option<String>| -> Vec<Option<&str>> {
        rows.iter().map(|r| f(r).as_deref()).collect()
    };
    let int =
        |f: fn(&ReadModelRow) -> Option<i64>| -> Vec<Option<i64>> { rows.iter().map(f).collect() };
    let status = text(|r| &r.status);
    let procedure_code = text(|r| &r.procedure_code);
    let procedure_version = int(|r| r.procedure_version);
    let dossier_number = text(|r| &r.dossier_number);
    let received_at = int(|r| r.received_at);
    let due_on = text(|r| &r.due_on);
    let returned_at = int(|r| r.returned_at);
    let on_time: Vec<Option<bool>> = rows.iter().map(|r| r.on_time).collect();
    let assignee = text(|r| &r.assignee);
    let has_conflicts: Vec<bool> = rows.iter().map(|r| r.has_conflicts).collect();
    let applicant_name = text(|r| &r.applicant_name);
    let name_folded = text(|r| &r.name_folded);
    let id_number = text(|r| &r.id_number);
    let attachments = int(|r| r.attachments);
    let changes: Vec<i64> = rows.iter().map(|r| r.changes).collect();
    let first: Vec<i64> = rows.iter().map(|r| r.first_received_at).collect();
    let last: Vec<i64> = rows.iter().map(|r| r.last_received_at).collect();
    let projection_error = text(|r| &r.projection_error);
    let statement = tx.prepare_cached(&upsert_rows_sql()).await?;
    tx.execute(
        &statement,
        &[
            &ids,
            &communes,
            &kinds,
            &status,
            &procedure_code,
            &procedure_version,
            &dossier_number,
            &received_at,
            &due_on,
            &returned_at,
            &on_time,
            &assignee,
            &has_conflicts,
            &applicant_name,
            &name_folded,
            &id_number,
            &attachments,
            &changes,
            &first,
            &last,
            &projection_error,
        ],
    )
    .await?;
    Ok(())
}

/// `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT (id) DO UPDATE` of every read-model column,
/// one array parameter per column, in [`read_model::COLUMNS`] order.
fn upsert_rows_sql() -> String {
    const TYPES: [&str; read_model::COLUMN_COUNT] = [
        "bytea", "text", "smallint", "text", "text", "bigint", "text", "bigint", "text", "bigint",
        "boolean", "text", "boolean", "text", "text", "text", "bigint", "bigint", "bigint",
        "bigint", "text",
    ];
    let arrays: Vec<String> = TYPES
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("{}::{ty}[]", pg_placeholder(i + 1)))
        .collect();
    let updates: Vec<String> = read_model::COLUMNS
        .split(',')
        .map(str::trim)
        .filter(|column| *column != "id")
        .map(|column| format!("{column} = EXCLUDED.{column}"))
        .collect();
    format!(
        "INSERT INTO read_model ({}) SELECT * FROM UNNEST({}) ON CONFLICT (id) DO UPDATE SET {}",
        read_model::COLUMNS,
        arrays.join(", "),
        updates.join(", ")
    )
}

fn read_row(row: &Row) -> Result<ReadModelRow> {
    let kind: i16 = row.try_get(2)?;
    Ok(ReadModelRow {
        id: record_id(row.try_get(0)?)?,
        commune: row.try_get(1)?,
        kind: record_kind(kind.into())?,
        status: row.try_get(3)?,
        procedure_code: row.try_get(4)?,
        procedure_version: row.try_get(5)?,
        dossier_number: row.try_get(6)?,
        received_at: row.try_get(7)?,
        due_on: row.try_get(8)?,
        returned_at: row.try_get(9)?,
        on_time: row.try_get(10)?,
        assignee: row.try_get(11)?,
        has_conflicts: row.try_get(12)?,
        applicant_name: row.try_get(13)?,
        name_folded: row.try_get(14)?,
        id_number: row.try_get(15)?,
        attachments: row.try_get(16)?,
        changes: row.try_get(17)?,
        first_received_at: row.try_get(18)?,
        last_received_at: row.try_get(19)?,
        projection_error: row.try_get(20)?,
    })
}

fn pg_placeholder(n: usize) -> String {
    format!("${n}")
}

fn pg_params(params: Vec<SqlParam>) -> Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> {
    params
        .into_iter()
        .map(
            |param| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
                match param {
                    SqlParam::Text(text) => Box::new(text),
                    SqlParam::Int(n) => Box::new(n),
                    SqlParam::Kind(code) => Box::new(code),
                }
            },
        )
        .collect()
}

#[async_trait]
impl ServerStorage for PostgresStorage {
    async fn create_commune(&self, code: &str, name: &str) -> Result<()> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO communes (code, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&code, &name],
            )
            .await?;
        if inserted == 0 {
            return Err(StorageError::AlreadyExists);
        }
        Ok(())
    }

    async fn list_communes(&self) -> Result<Vec<Commune>> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT code, name FROM communes ORDER BY code", &[])
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Commune {
                    code: row.try_get(0)?,
                    name: row.try_get(1)?,
                })
            })
            .collect()
    }

    async fn create_enrollment_code(
        &self,
        scope: &Scope,
        code_hash: [u8; 32],
        expires_at: i64,
    ) -> Result<()> {
        let client = self.client().await?;
        let commune = scope.commune();
        // One statement: the commune check and the insert see the same snapshot, and the
        // foreign key guards against a commune deleted meanwhile.
        let row = client
            .query_one(
                "WITH ok AS (
                     SELECT $2::text IS NULL OR EXISTS (SELECT 1 FROM communes WHERE code = $2) AS ok
                 ), ins AS (
                     INSERT INTO enrollment_codes (code_hash, commune, expires_at)
                     SELECT $1, $2, $3 FROM ok WHERE ok.ok
                     ON CONFLICT DO NOTHING RETURNING 1
                 )
                 SELECT (SELECT ok FROM ok), (SELECT count(*) FROM ins)",
                &[&code_hash.as_slice(), &commune, &expires_at],
            )
            .await?;
        let commune_ok: bool = row.try_get(0)?;
        let inserted: i64 = row.try_get(1)?;
        if !commune_ok {
            return Err(StorageError::NotFound);
        }
        if inserted == 0 {
            return Err(StorageError::AlreadyExists);
        }
        Ok(())
    }

    async fn create_reenrollment_code(
        &self,
        device: DeviceId,
        code_hash: [u8; 32],
        expires_at: i64,
    ) -> Result<()> {
        let client = self.client().await?;
        // One statement: the device lookup and the insert see the same snapshot.
        let row = client
            .query_one(
                "WITH d AS (
                     SELECT id, commune FROM devices WHERE id = $2
                 ), ins AS (
                     INSERT INTO enrollment_codes (code_hash, commune, expires_at, device)
                     SELECT $1, d.commune, $3, d.id FROM d
                     ON CONFLICT DO NOTHING RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM ins)",
                &[
                    &code_hash.as_slice(),
                    &device.0.as_bytes().as_slice(),
                    &expires_at,
                ],
            )
            .await?;
        let found: i64 = row.try_get(0)?;
        let inserted: i64 = row.try_get(1)?;
        if found == 0 {
            return Err(StorageError::NotFound);
        }
        if inserted == 0 {
            return Err(StorageError::AlreadyExists);
        }
        Ok(())
    }

    async fn enroll(
        &self,
        code_hash: [u8; 32],
        device: DeviceId,
        token_hash: [u8; 32],
        label: &str,
        now: i64,
    ) -> Result<Device> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Consuming is one conditional UPDATE. A concurrent enroll with the same code blocks on
        // the row lock and, once the winner commits, re-evaluates `used_at IS NULL` on the new
        // row version: false, so exactly one wins. A re-enrollment code given with another
        // device id does not match.
        let row = tx
            .query_opt(
                "UPDATE enrollment_codes SET used_at = $2
                 WHERE code_hash = $1 AND used_at IS NULL AND expires_at > $2
                   AND (device IS NULL OR device = $3)
                 RETURNING commune, device",
                &[&code_hash.as_slice(), &now, &device.0.as_bytes().as_slice()],
            )
            .await?;
        let Some(row) = row else {
            return Err(StorageError::InvalidEnrollmentCode);
        };
        let commune: Option<String> = row.try_get(0)?;
        let bound: Option<&[u8]> = row.try_get(1)?;
        let enrolled = if bound.is_some() {
            // Re-enrollment: a new token for the same device; everything else stays. Dropping
            // `tx` on an error rolls back: the code stays unused.
            let taken = tx
                .query_opt(
                    "SELECT 1 FROM devices WHERE token_hash = $1",
                    &[&token_hash.as_slice()],
                )
                .await?;
            if taken.is_some() {
                return Err(StorageError::AlreadyExists);
            }
            let row = tx
                .query_opt(
                    &format!(
                        "UPDATE devices SET token_hash = $2, revoked = false, wiped = false
                         WHERE id = $1 RETURNING {DEVICE_COLUMNS}"
                    ),
                    &[&device.0.as_bytes().as_slice(), &token_hash.as_slice()],
                )
                .await?
                .ok_or(StorageError::InvalidEnrollmentCode)?;
            device_from_row(&row)?
        } else {
            let inserted = tx
                .execute(
                    "INSERT INTO devices (id, token_hash, commune, label, enrolled_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[
                        &device.0.as_bytes().as_slice(),
                        &token_hash.as_slice(),
                        &commune,
                        &label,
                        &now,
                    ],
                )
                .await?;
            if inserted == 0 {
                return Err(StorageError::AlreadyExists); // dropping tx rolls back: code unused
            }
            Device {
                id: device,
                scope: Scope::from_commune(commune),
                label: label.to_owned(),
                revoked: false,
                wiped: false,
            }
        };
        tx.commit().await?;
        Ok(enrolled)
    }

    async fn authenticate(&self, token_hash: [u8; 32]) -> Result<Option<Device>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(&format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = $1"
                    ))
                    .await?,
                &[&token_hash.as_slice()],
            )
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn revoke_device(&self, id: DeviceId) -> Result<()> {
        let client = self.client().await?;
        let updated = client
            .execute(
                "UPDATE devices SET revoked = true WHERE id = $1",
                &[&id.0.as_bytes().as_slice()],
            )
            .await?;
        if updated == 0 {
            return Err(StorageError::NotFound);
        }
        Ok(())
    }

    async fn revoke_and_wipe_device(&self, id: DeviceId) -> Result<()> {
        let client = self.client().await?;
        let updated = client
            .execute(
                "UPDATE devices SET revoked = true, wiped = true WHERE id = $1",
                &[&id.0.as_bytes().as_slice()],
            )
            .await?;
        if updated == 0 {
            return Err(StorageError::NotFound);
        }
        Ok(())
    }

    async fn list_devices(&self, scope: Option<&Scope>) -> Result<Vec<DeviceInfo>> {
        let client = self.client().await?;
        // $1: 0 every device, 1 province devices, 2 devices of commune $2.
        let (mode, commune): (i32, Option<&str>) = match scope {
            None => (0, None),
            Some(Scope::Province) => (1, None),
            Some(Scope::Commune(code)) => (2, Some(code.as_str())),
        };
        let rows = client
            .query(
                &format!(
                    "SELECT {DEVICE_COLUMNS}, enrolled_at, last_sync_at, changes_pushed,
                            pending_docs, last_seen_at,
                            (SELECT count(*) FROM refusals r WHERE r.device = devices.id)
                     FROM devices
                     WHERE $1::int = 0 OR ($1::int = 1 AND commune IS NULL) OR commune = $2
                     ORDER BY enrolled_at, id"
                ),
                &[&mode, &commune],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DeviceInfo {
                    device: device_from_row(row)?,
                    enrolled_at: row.try_get(5)?,
                    last_sync_at: row.try_get(6)?,
                    changes_pushed: to_u64(row.try_get(7)?),
                    pending_docs: row.try_get::<_, Option<i64>>(8)?.map(to_u64),
                    last_seen_at: row.try_get(9)?,
                    refused_docs: to_u64(row.try_get(10)?),
                })
            })
            .collect()
    }

    async fn record_device_status(
        &self,
        device: DeviceId,
        pending_docs: u64,
        now: i64,
    ) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE devices SET pending_docs = $2, last_seen_at = $3 WHERE id = $1",
                &[
                    &device.0.as_bytes().as_slice(),
                    &i64::try_from(pending_docs).unwrap_or(i64::MAX),
                    &now,
                ],
            )
            .await?;
        Ok(())
    }

    async fn record_refusals(
        &self,
        device: DeviceId,
        refusals: &[RefusalRow],
        now: i64,
    ) -> Result<()> {
        let rows = refusals_to_store(refusals);
        if rows.is_empty() {
            return Ok(());
        }
        let docs: Vec<&[u8]> = rows
            .iter()
            .map(|(doc, _, _)| doc.as_bytes().as_slice())
            .collect();
        let codes: Vec<&str> = rows.iter().map(|(_, code, _)| *code).collect();
        let messages: Vec<&str> = rows.iter().map(|(_, _, message)| *message).collect();
        let device = device.0.as_bytes().as_slice();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The device row's lock serializes this device's refusal writes, so that the bound below
        // sees every row of the device. Unknown device: nothing to record.
        let known = tx
            .query_opt(
                "SELECT 1 FROM devices WHERE id = $1 FOR NO KEY UPDATE",
                &[&device],
            )
            .await?;
        if known.is_none() {
            return Ok(());
        }
        // One row per document (deduplicated above), in document order.
        tx.execute(
            "INSERT INTO refusals AS r (device, doc, code, message, first_at, last_at, times)
             SELECT $1, t.doc, t.code, t.message, $5, $5, 1
             FROM UNNEST($2::bytea[], $3::text[], $4::text[]) AS t (doc, code, message)
             ORDER BY t.doc
             ON CONFLICT (device, doc) DO UPDATE SET
               code = EXCLUDED.code, message = EXCLUDED.message, last_at = EXCLUDED.last_at,
               times = r.times + 1",
            &[&device, &docs, &codes, &messages, &now],
        )
        .await?;
        tx.execute(
            "DELETE FROM refusals WHERE device = $1 AND doc NOT IN (
                 SELECT doc FROM refusals WHERE device = $1
                 ORDER BY last_at DESC, doc DESC LIMIT $2)",
            &[&device, &(MAX_REFUSALS_PER_DEVICE as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn clear_refusals(&self, device: DeviceId, docs: &[RecordId]) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let ids: Vec<&[u8]> = docs.iter().map(|doc| doc.as_bytes().as_slice()).collect();
        let client = self.client().await?;
        // A join on the ids probes the primary key once per id (see INGEST_REGISTRATIONS).
        client
            .execute(
                &client
                    .prepare_cached(
                        "DELETE FROM refusals r USING UNNEST($2::bytea[]) AS t (doc)
                         WHERE r.device = $1 AND r.doc = t.doc",
                    )
                    .await?,
                &[&device.0.as_bytes().as_slice(), &ids],
            )
            .await?;
        Ok(())
    }

    async fn refusals(&self, device: Option<DeviceId>) -> Result<Vec<Refusal>> {
        let client = self.client().await?;
        let limit = MAX_REFUSALS_LISTED as i64;
        // Two statements, so that each uses its index (`device = $1 OR $1 IS NULL` would not).
        let rows = match device {
            Some(device) => {
                client
                    .query(
                        "SELECT device, doc, code, message, first_at, last_at, times
                         FROM refusals WHERE device = $1
                         ORDER BY last_at DESC, doc LIMIT $2",
                        &[&device.0.as_bytes().as_slice(), &limit],
                    )
                    .await?
            }
            None => {
                client
                    .query(
                        "SELECT device, doc, code, message, first_at, last_at, times
                         FROM refusals ORDER BY last_at DESC, device, doc LIMIT $1",
                        &[&limit],
                    )
                    .await?
            }
        };
        rows.iter().map(refusal_from_row).collect()
    }

    async fn cursor_issued(&self, device: DeviceId) -> Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT cursor_issued FROM devices WHERE id = $1",
                &[&device.0.as_bytes().as_slice()],
            )
            .await?;
        match row {
            Some(row) => Ok(to_u64(row.try_get(0)?)),
            None => Ok(0),
        }
    }

    async fn set_cursor_issued(&self, device: DeviceId, cursor: u64) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE devices SET cursor_issued = $2 WHERE id = $1",
                &[&device.0.as_bytes().as_slice(), &to_i64(cursor)],
            )
            .await?;
        Ok(())
    }

    async fn create_admin_token(&self, token_hash: [u8; 32], label: &str, now: i64) -> Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "INSERT INTO admin_tokens (token_hash, label, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING RETURNING id",
                &[&token_hash.as_slice(), &label, &now],
            )
            .await?;
        match row {
            Some(row) => Ok(to_u64(row.try_get(0)?)),
            None => Err(StorageError::AlreadyExists),
        }
    }

    async fn authenticate_admin(&self, token_hash: [u8; 32], now: i64) -> Result<Option<u64>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE admin_tokens SET last_used_at = $2
                 WHERE token_hash = $1 AND revoked_at IS NULL RETURNING id",
                &[&token_hash.as_slice(), &now],
            )
            .await?;
        match row {
            Some(row) => Ok(Some(to_u64(row.try_get(0)?))),
            None => Ok(None),
        }
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, label, created_at, last_used_at, revoked_at FROM admin_tokens
                 ORDER BY id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AdminToken {
                    id: to_u64(row.try_get(0)?),
                    label: row.try_get(1)?,
                    created_at: row.try_get(2)?,
                    last_used_at: row.try_get(3)?,
                    revoked_at: row.try_get(4)?,
                })
            })
            .collect()
    }

    async fn revoke_admin_token(&self, id: u64, now: i64) -> Result<()> {
        let id = to_i64(id);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Lock every active token, in id order: two concurrent revocations of the last two
        // tokens serialize here, and the second then sees only one active token left (at READ
        // COMMITTED a locked row is re-checked against the WHERE once its locker commits).
        let active: Vec<i64> = tx
            .query(
                "SELECT id FROM admin_tokens WHERE revoked_at IS NULL ORDER BY id FOR UPDATE",
                &[],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        if !active.contains(&id) {
            let exists = tx
                .query_opt("SELECT 1 FROM admin_tokens WHERE id = $1", &[&id])
                .await?;
            return match exists {
                Some(_) => Ok(()), // already revoked
                None => Err(StorageError::NotFound),
            };
        }
        if active.len() == 1 {
            return Err(last_admin_token());
        }
        tx.execute(
            "UPDATE admin_tokens SET revoked_at = $2 WHERE id = $1",
            &[&id, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reserve_enrollment_attempt(
        &self,
        source: &str,
        now: i64,
        window_ms: i64,
    ) -> Result<u32> {
        let client = self.client().await?;
        // A row whose window has ended means the same as no row: prune them. Two autocommit
        // statements; each is atomic on its own, and the upsert's row lock serializes attempts
        // of one source, so concurrent attempts get distinct, consecutive counts.
        client
            .execute(
                "DELETE FROM enrollment_failures WHERE window_end <= $1",
                &[&now],
            )
            .await?;
        let row = client
            .query_one(
                "INSERT INTO enrollment_failures AS f (source, window_end, failures)
                 VALUES ($1, $3, 1)
                 ON CONFLICT (source) DO UPDATE SET
                   failures = CASE WHEN f.window_end <= $2 THEN 1 ELSE f.failures + 1 END,
                   window_end = CASE WHEN f.window_end <= $2 THEN $3 ELSE f.window_end END
                 RETURNING failures",
                &[&source, &now, &now.saturating_add(window_ms.max(1))],
            )
            .await?;
        let attempts: i64 = row.try_get(0)?;
        Ok(u32::try_from(attempts).unwrap_or(u32::MAX))
    }

    async fn refund_enrollment_attempt(&self, source: &str, now: i64) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE enrollment_failures SET failures = failures - 1
                 WHERE source = $1 AND window_end > $2 AND failures > 0",
                &[&source, &now],
            )
            .await?;
        Ok(())
    }

    async fn enrollment_attempts(&self, source: &str, now: i64) -> Result<u32> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT failures FROM enrollment_failures WHERE source = $1 AND window_end > $2",
                &[&source, &now],
            )
            .await?;
        let attempts: i64 = match row {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        Ok(u32::try_from(attempts).unwrap_or(u32::MAX))
    }

    // Why the feed never skips a change: a reader pages with "everything after the highest seq
    // I have seen". If seq numbers were handed out by a plain SEQUENCE, transaction A could take
    // seq 5, B take seq 6 and commit first; a reader would see 6, move its cursor to 6, and
    // never see 5 when A commits a moment later. Here a commune's numbers are allocated by
    // `UPDATE communes SET feed_seq = feed_seq + n`, under that row's lock, which this
    // transaction takes first (`FOR NO KEY UPDATE`: it does not block other writers' foreign-key
    // checks) and holds until commit. The next ingest into the commune cannot allocate before
    // this one has committed (or rolled back, returning the numbers), so seq order is commit
    // order, and any snapshot that shows seq n shows every seq below it. The province-wide
    // `gseq` follows the same rule with the `feed_counter` row, locked last (just before the
    // insert) so that it is held only briefly.
    async fn ingest(
        &self,
        device: &Device,
        mut docs: Vec<IncomingDoc>,
        now: i64,
    ) -> Result<IngestOutcome> {
        // Device scope and the batch's own consistency need no I/O.
        plan::check_scope(device, &docs, &Registrations::new())?;
        let mut projections = plan::take_projections(&mut docs);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;

        // 1. Lock the communes' counter rows, in code order (no deadlocks between ingests).
        //    Taking them first serializes ingests per commune, so the reads below (READ
        //    COMMITTED: each statement sees everything committed before it) see every change
        //    that earlier ingests of these communes stored.
        let mut communes: Vec<&str> = docs.iter().map(|doc| doc.commune.as_str()).collect();
        communes.sort_unstable();
        communes.dedup();
        let lock = tx.prepare_cached(INGEST_LOCK_COMMUNE).await?;
        for commune in &communes {
            if tx.query_opt(&lock, &[commune]).await?.is_none() {
                let doc = docs
                    .iter()
                    .find(|doc| doc.commune == *commune)
                    .map_or_else(RecordId::default, |doc| doc.id);
                return Err(StorageError::OutOfScope { doc });
            }
        }

        // 2. Registrations and the full scope check.
        let ids: Vec<&[u8]> = docs
            .iter()
            .map(|doc| doc.id.as_bytes().as_slice())
            .collect();
        let mut registered = Registrations::new();
        for row in tx
            .query(&tx.prepare_cached(INGEST_REGISTRATIONS).await?, &[&ids])
            .await?
        {
            let id: &[u8] = row.try_get(0)?;
            let kind: i16 = row.try_get(2)?;
            registered.insert(record_id(id)?, (row.try_get(1)?, record_kind(kind.into())?));
        }
        plan::check_scope(device, &docs, &registered)?;

        // 3. Which of the hashes the batch names are stored.
        let named = plan::hashes_named(&docs);
        let named_docs: Vec<&[u8]> = named
            .iter()
            .map(|(doc, _)| doc.as_bytes().as_slice())
            .collect();
        let named_hashes: Vec<&[u8]> = named.iter().map(|(_, hash)| hash.as_slice()).collect();
        let mut stored: HashMap<RecordId, HashSet<[u8; 32]>> = HashMap::new();
        for row in tx
            .query(
                &tx.prepare_cached(INGEST_STORED_HASHES).await?,
                &[&named_docs, &named_hashes],
            )
            .await?
        {
            let doc: &[u8] = row.try_get(0)?;
            let hash: &[u8] = row.try_get(1)?;
            stored
                .entry(record_id(doc)?)
                .or_default()
                .insert(hash32(hash)?);
        }
        let mut plan = plan::plan_ingest(docs, stored, &registered);

        // 4. Register new documents, in id order. A concurrent ingest into another commune may
        //    have registered the same id meanwhile: then it is out of scope here.
        plan.register.sort_by_key(|(id, _, _)| *id);
        let mut registered_here: HashSet<RecordId> = HashSet::new();
        if !plan.register.is_empty() {
            let ids: Vec<&[u8]> = plan
                .register
                .iter()
                .map(|(id, _, _)| id.as_bytes().as_slice())
                .collect();
            let communes: Vec<&str> = plan.register.iter().map(|(_, c, _)| c.as_str()).collect();
            let kinds: Vec<i16> = plan
                .register
                .iter()
                .map(|(_, _, k)| kind_code(*k))
                .collect();
            let inserted: HashSet<RecordId> = tx
                .query(
                    &tx.prepare_cached(INGEST_REGISTER).await?,
                    &[&ids, &communes, &kinds, &now],
                )
                .await?
                .iter()
                .map(|row| record_id(row.try_get(0)?))
                .collect::<Result<_>>()?;
            if inserted.len() < plan.register.len() {
                let raced: Vec<&[u8]> = plan
                    .register
                    .iter()
                    .filter(|(id, _, _)| !inserted.contains(id))
                    .map(|(id, _, _)| id.as_bytes().as_slice())
                    .collect();
                let mut theirs: HashMap<RecordId, (String, i16)> = HashMap::new();
                for row in tx
                    .query(&tx.prepare_cached(INGEST_REGISTRATIONS).await?, &[&raced])
                    .await?
                {
                    theirs.insert(
                        record_id(row.try_get(0)?)?,
                        (row.try_get(1)?, row.try_get(2)?),
                    );
                }
                for (id, commune, kind) in &plan.register {
                    if inserted.contains(id) {
                        continue;
                    }
                    match theirs.get(id) {
                        Some((their_commune, their_kind))
                            if their_commune == commune && *their_kind == kind_code(*kind) => {}
                        _ => return Err(StorageError::OutOfScope { doc: *id }),
                    }
                }
            }
            registered_here = inserted;
        }

        // 5. The device: unknown or revoked by now means nothing is stored.
        let total = plan.changes.len() as i64;
        let updated = tx
            .execute(
                &tx.prepare_cached(INGEST_DEVICE).await?,
                &[&device.id.0.as_bytes().as_slice(), &now, &total],
            )
            .await?;
        if updated == 0 {
            return Err(StorageError::NotFound);
        }

        // 6. Allocate feed numbers under the locks (see above) and insert.
        if total > 0 {
            let mut next_seq: HashMap<String, i64> = HashMap::new();
            for (commune, count) in plan.counts_by_commune() {
                let count = to_i64(count);
                let last: i64 = tx
                    .query_one(
                        &tx.prepare_cached(INGEST_ALLOCATE_SEQ).await?,
                        &[&commune, &count],
                    )
                    .await?
                    .try_get(0)?;
                next_seq.insert(commune, last - count + 1);
            }
            let last_gseq: i64 = tx
                .query_one(&tx.prepare_cached(INGEST_ALLOCATE_GSEQ).await?, &[&total])
                .await?
                .try_get(0)?;

            let capacity = plan.changes.len();
            let mut communes = Vec::with_capacity(capacity);
            let mut seqs = Vec::with_capacity(capacity);
            let mut gseqs = Vec::with_capacity(capacity);
            let mut docs = Vec::with_capacity(capacity);
            let mut hashes = Vec::with_capacity(capacity);
            let mut deps = Vec::with_capacity(capacity);
            let mut bytes = Vec::with_capacity(capacity);
            // Province positions follow batch order, like commune positions.
            for (gseq, change) in (last_gseq - total + 1..).zip(&plan.changes) {
                let seq = next_seq
                    .get_mut(&change.commune)
                    .ok_or_else(|| StorageError::backend("no seq allocated for a commune"))?;
                communes.push(change.commune.as_str());
                seqs.push(*seq);
                gseqs.push(gseq);
                docs.push(change.doc.as_bytes().as_slice());
                hashes.push(change.hash.as_slice());
                deps.push(join_deps(&change.deps));
                bytes.push(change.bytes.as_slice());
                *seq += 1;
            }
            tx.execute(
                &tx.prepare_cached(INGEST_CHANGES).await?,
                &[
                    &device.id.0.as_bytes().as_slice(),
                    &now,
                    &communes,
                    &seqs,
                    &gseqs,
                    &docs,
                    &hashes,
                    &deps,
                    &bytes,
                ],
            )
            .await?;
            // 7. The read model, under the same commune locks (no concurrent ingest of these
            //    documents can commit between our read of their rows or changes and our
            //    commit): the push path's projection when it is current, else from the changes.
            let mut from_changes: Vec<RecordId> = Vec::new();
            let projected_docs = if read_model::ENABLED {
                plan::changes_per_doc(&plan.changes)
            } else {
                Vec::new()
            };
            // A stale projection is projected again from the stored changes, under the rules
            // the push checked with (one push, one set of rules).
            let rules = projections
                .values()
                .next()
                .map_or_else(read_model::no_deadline_rules, |p| p.rules.0.clone());
            // The rows storage holds of the projected documents it did not register here (a
            // document this ingest registers has none), in one round trip.
            let known: Vec<&[u8]> = projected_docs
                .iter()
                .filter(|(doc, _)| projections.contains_key(doc) && !registered_here.contains(doc))
                .map(|(doc, _)| doc.as_bytes().as_slice())
                .collect();
            let mut stored_facts: HashMap<RecordId, (i64, i64, i64)> = HashMap::new();
            if !known.is_empty() {
                for row in tx
                    .query(
                        "SELECT id, changes, first_received_at, last_received_at
                         FROM read_model WHERE id = ANY($1::bytea[])",
                        &[&known],
                    )
                    .await?
                {
                    stored_facts.insert(
                        record_id(row.try_get(0)?)?,
                        (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?),
                    );
                }
            }
            let mut rows = Vec::with_capacity(projected_docs.len());
            for (doc, stored_now) in projected_docs {
                let Some(projected) = projections.remove(&doc) else {
                    from_changes.push(doc);
                    continue;
                };
                match read_model::complete_projected(
                    *projected,
                    stored_facts.get(&doc).copied(),
                    registered_here.contains(&doc),
                    stored_now,
                    now,
                ) {
                    Some(row) => rows.push(row),
                    None => from_changes.push(doc),
                }
            }
            write_rows(&tx, &rows).await?;
            from_changes.sort_unstable();
            project_docs(&tx, &from_changes, &rules).await?;
        }
        tx.commit().await?;
        Ok(IngestOutcome {
            stored: to_u64(total),
            duplicates: plan.duplicates,
            missing_deps: plan.missing_deps,
        })
    }

    async fn feed(
        &self,
        scope: &Scope,
        after: u64,
        exclude_device: Option<DeviceId>,
        max_bytes: usize,
        max_items: usize,
    ) -> Result<FeedPage> {
        let (max_items, scan_limit) = feed_limits(max_items);
        let exclude = exclude_device.map(|d| d.0.as_bytes().to_vec());
        let after_i = to_i64(after);
        let fetch = i64::try_from(scan_limit + 1).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        // One snapshot for both statements. (Rows at or below a seen seq are already committed,
        // so READ COMMITTED would return the same rows; REPEATABLE READ makes it evident.)
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let meta = match scope {
            Scope::Commune(code) => {
                tx.query(
                    &tx.prepare_cached(FEED_META_COMMUNE).await?,
                    &[code, &after_i, &exclude, &fetch],
                )
                .await?
            }
            Scope::Province => {
                tx.query(
                    &tx.prepare_cached(FEED_META_PROVINCE).await?,
                    &[&after_i, &exclude, &fetch],
                )
                .await?
            }
        };
        let rows = meta
            .iter()
            .map(|row| {
                Ok(FeedRowMeta {
                    seq: to_u64(row.try_get(0)?),
                    excluded: row.try_get(1)?,
                    size: to_u64(row.try_get(2)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let cut = plan::cut_page(&rows, after, max_bytes, max_items, scan_limit);
        let mut items = Vec::with_capacity(cut.items);
        if cut.items > 0 {
            let upto = to_i64(cut.next_cursor);
            let rows = match scope {
                Scope::Commune(code) => {
                    tx.query(
                        &tx.prepare_cached(FEED_ITEMS_COMMUNE).await?,
                        &[code, &after_i, &upto, &exclude],
                    )
                    .await?
                }
                Scope::Province => {
                    tx.query(
                        &tx.prepare_cached(FEED_ITEMS_PROVINCE).await?,
                        &[&after_i, &upto, &exclude],
                    )
                    .await?
                }
            };
            for row in rows {
                let doc: &[u8] = row.try_get(1)?;
                let kind: i16 = row.try_get(2)?;
                let device: &[u8] = row.try_get(3)?;
                items.push(FeedItem {
                    seq: to_u64(row.try_get(0)?),
                    doc: record_id(doc)?,
                    kind: record_kind(kind.into())?,
                    device: device_id(device)?,
                    received_at: row.try_get(4)?,
                    bytes: row.try_get(5)?,
                    root: row.try_get(6)?,
                });
            }
        }
        tx.commit().await?;
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

    async fn doc_changes(&self, doc: RecordId) -> Result<Vec<Vec<u8>>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached("SELECT bytes FROM changes WHERE doc = $1 ORDER BY seq")
                    .await?,
                &[&doc.as_bytes().as_slice()],
            )
            .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    async fn doc_history(&self, doc: RecordId) -> Result<Vec<StoredChange>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT device, received_at, bytes FROM changes WHERE doc = $1 ORDER BY seq",
                    )
                    .await?,
                &[&doc.as_bytes().as_slice()],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let device: Vec<u8> = row.try_get(0)?;
                Ok(StoredChange {
                    pushed_by: device_id(&device)?,
                    received_at: row.try_get(1)?,
                    bytes: row.try_get(2)?,
                })
            })
            .collect()
    }

    async fn doc_registration(&self, doc: RecordId) -> Result<Option<(String, RecordKind)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT commune, kind FROM documents WHERE id = $1")
                    .await?,
                &[&doc.as_bytes().as_slice()],
            )
            .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let kind: i16 = row.try_get(1)?;
                Ok(Some((row.try_get(0)?, record_kind(kind.into())?)))
            }
        }
    }

    async fn known_docs(&self, docs: &[RecordId]) -> Result<HashMap<RecordId, KnownDoc>> {
        let ids: Vec<&[u8]> = docs.iter().map(|doc| doc.as_bytes().as_slice()).collect();
        let mut client = self.client().await?;
        // One snapshot for both reads, so changes and registrations agree.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut known = HashMap::new();
        for row in tx
            .query(&tx.prepare_cached(KNOWN_REGISTRATIONS).await?, &[&ids])
            .await?
        {
            let id: &[u8] = row.try_get(0)?;
            let kind: i16 = row.try_get(2)?;
            known.insert(
                record_id(id)?,
                KnownDoc {
                    commune: row.try_get(1)?,
                    kind: record_kind(kind.into())?,
                    changes: Vec::new(),
                },
            );
        }
        if !known.is_empty() {
            for row in tx
                .query(&tx.prepare_cached(KNOWN_CHANGES).await?, &[&ids])
                .await?
            {
                let id: &[u8] = row.try_get(0)?;
                if let Some(doc) = known.get_mut(&record_id(id)?) {
                    doc.changes.push(row.try_get(1)?);
                }
            }
        }
        tx.commit().await?;
        Ok(known)
    }

    async fn publish_catalogue(&self, publication: CataloguePublication) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // One publication at a time: the version check below then holds until commit.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CATALOGUE_LOCK])
            .await?;
        let current: i64 = match tx
            .query_opt("SELECT version FROM catalogue WHERE id = 1", &[])
            .await?
        {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        if to_u64(current) != publication.base_version {
            return Err(StorageError::Conflict(
                "the catalogue was published meanwhile: publish again".into(),
            ));
        }
        let version = current.saturating_add(1);
        tx.execute(
            "INSERT INTO catalogue AS c (id, version, json) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, json = EXCLUDED.json",
            &[&version, &publication.json],
        )
        .await?;
        if let Some(calendar) = &publication.calendar {
            tx.execute(
                "UPDATE catalogue SET calendar = $1, calendar_version = $2 WHERE id = 1",
                &[calendar, &version],
            )
            .await?;
            tx.execute(
                "INSERT INTO calendar_versions (version, calendar) VALUES ($1, $2)",
                &[&version, calendar],
            )
            .await?;
        }
        let put_version = tx
            .prepare_cached(
                "INSERT INTO procedure_versions (code, version, body, published)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (code, version) DO NOTHING",
            )
            .await?;
        let put_entry = tx
            .prepare_cached(
                "INSERT INTO catalogue_entries (code, version, removed, changed)
                 VALUES ($1, $2, FALSE, $3)
                 ON CONFLICT (code) DO UPDATE SET version = EXCLUDED.version, removed = FALSE,
                     changed = EXCLUDED.changed",
            )
            .await?;
        for (code, procedure_version, body) in &publication.puts {
            let procedure_version = to_i64(*procedure_version);
            tx.execute(&put_version, &[code, &procedure_version, body, &version])
                .await?;
            tx.execute(&put_entry, &[code, &procedure_version, &version])
                .await?;
        }
        let remove = tx
            .prepare_cached(
                "UPDATE catalogue_entries SET removed = TRUE, changed = $2 WHERE code = $1",
            )
            .await?;
        for code in &publication.removals {
            tx.execute(&remove, &[code, &version]).await?;
        }
        tx.commit().await?;
        Ok(to_u64(version))
    }

    async fn catalogue_head(&self) -> Result<Option<CatalogueHead>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT version, calendar, calendar_version FROM catalogue WHERE id = 1",
                &[],
            )
            .await?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some(CatalogueHead {
                version: to_u64(row.try_get(0)?),
                calendar: row.try_get(1)?,
                calendar_version: to_u64(row.try_get(2)?),
            })),
        }
    }

    async fn calendar_at(&self, version: u64) -> Result<Option<(u64, String)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT version, calendar FROM calendar_versions WHERE version <= $1
                 ORDER BY version DESC LIMIT 1",
                &[&to_i64(version)],
            )
            .await?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some((to_u64(row.try_get(0)?), row.try_get(1)?))),
        }
    }

    async fn catalogue_rows(&self) -> Result<Vec<CatalogueRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT e.changed, e.code, e.version, e.removed, v.body
                 FROM catalogue_entries e
                 JOIN procedure_versions v ON v.code = e.code AND v.version = e.version
                 ORDER BY e.code",
                &[],
            )
            .await?;
        rows.iter().map(catalogue_row).collect()
    }

    async fn catalogue_changes(
        &self,
        publication: u64,
        code: &str,
        limit: usize,
    ) -> Result<Vec<CatalogueRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT e.changed, e.code, e.version, e.removed, v.body
                         FROM catalogue_entries e
                         JOIN procedure_versions v ON v.code = e.code AND v.version = e.version
                         WHERE e.changed > $1 OR (e.changed = $1 AND e.code > $2)
                         ORDER BY e.changed, e.code
                         LIMIT $3",
                    )
                    .await?,
                &[
                    &to_i64(publication),
                    &code,
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        rows.iter().map(catalogue_row).collect()
    }

    async fn pinned_versions_after(
        &self,
        publication: u64,
        code: &str,
        version: u64,
        limit: usize,
    ) -> Result<Vec<CatalogueRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT v.published, v.code, v.version, FALSE, v.body
                         FROM procedure_versions v
                         WHERE (v.published, v.code, v.version) > ($1, $2, $3)
                           AND NOT EXISTS (SELECT 1 FROM catalogue_entries e
                                           WHERE e.code = v.code AND e.version = v.version
                                             AND NOT e.removed)
                         ORDER BY v.published, v.code, v.version
                         LIMIT $4",
                    )
                    .await?,
                &[
                    &to_i64(publication),
                    &code,
                    &to_i64(version),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        rows.iter().map(catalogue_row).collect()
    }

    async fn procedure_versions(&self) -> Result<Vec<(String, u64, String)>> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT code, version, body FROM procedure_versions", &[])
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, to_u64(row.try_get(1)?), row.try_get(2)?)))
            .collect()
    }

    async fn catalogue(&self) -> Result<Option<(u64, String)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT version, json FROM catalogue WHERE id = 1")
                    .await?,
                &[],
            )
            .await?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some((to_u64(row.try_get(0)?), row.try_get(1)?))),
        }
    }

    async fn allocate_number_block(
        &self,
        device: DeviceId,
        agency: &str,
        format: &str,
        size: u64,
        now: i64,
    ) -> Result<NumberBlock> {
        self.allocate_block(device, agency, format, size, now).await
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
        self.report_usage(device, usage, now).await
    }

    async fn record_dossier_numbers(
        &self,
        device: DeviceId,
        numbers: &[(String, RecordId)],
        now: i64,
    ) -> Result<()> {
        self.record_numbers(device, numbers, now).await
    }

    async fn dossier_number(&self, number: &str) -> Result<Option<(RecordId, DeviceId)>> {
        self.lookup_number(number).await
    }

    async fn register_device_key(
        &self,
        device: DeviceId,
        key: PublicKey,
        now: i64,
        only_if_none: bool,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = device.0.as_bytes().as_slice();
        // The version row is locked first: key changes are serialized, so versions commit in
        // order and a reader never skips one.
        tx.execute(
            "SELECT version FROM device_key_version WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await?;
        let Some(row) = tx
            .query_opt("SELECT commune FROM devices WHERE id = $1", &[&id])
            .await?
        else {
            return Err(StorageError::NotFound);
        };
        let commune: Option<String> = row.try_get(0)?;
        let current: Option<Vec<u8>> = tx
            .query_opt(
                "SELECT public_key FROM device_keys
                 WHERE device = $1 AND valid_until IS NULL AND revoked_at IS NULL",
                &[&id],
            )
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        match &current {
            Some(k) if k.as_slice() == key.0.as_slice() => return Ok(true),
            Some(_) if only_if_none => return Ok(false),
            _ => {}
        }
        let revoked = tx
            .query_opt(
                "SELECT 1 FROM device_keys
                 WHERE device = $1 AND public_key = $2 AND revoked_at IS NOT NULL",
                &[&id, &key.0.as_slice()],
            )
            .await?;
        if revoked.is_some() {
            return Err(StorageError::Conflict(KEY_REVOKED_MESSAGE.into()));
        }
        const NEXT: &str = "UPDATE device_key_version SET version = version + 1 WHERE id = 1
                            RETURNING version";
        if current.is_some() {
            let version: i64 = tx.query_one(NEXT, &[]).await?.try_get(0)?;
            tx.execute(
                "UPDATE device_keys SET valid_until = $2, version = $3
                 WHERE device = $1 AND valid_until IS NULL AND revoked_at IS NULL",
                &[&id, &now, &version],
            )
            .await?;
        }
        let version: i64 = tx.query_one(NEXT, &[]).await?.try_get(0)?;
        tx.execute(
            "INSERT INTO device_keys
                 (device, public_key, commune, valid_from, valid_until, revoked_at, version)
             VALUES ($1, $2, $3, $4, NULL, NULL, $5)
             ON CONFLICT (device, public_key) DO UPDATE SET
                 commune = EXCLUDED.commune, valid_from = EXCLUDED.valid_from,
                 valid_until = NULL, revoked_at = NULL, version = EXCLUDED.version",
            &[&id, &key.0.as_slice(), &commune, &now, &version],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn revoke_device_keys(&self, device: DeviceId, now: i64) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = device.0.as_bytes().as_slice();
        tx.execute(
            "SELECT version FROM device_key_version WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await?;
        let open: i64 = tx
            .query_one(
                "SELECT count(*) FROM device_keys WHERE device = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await?
            .try_get(0)?;
        if open > 0 {
            let version: i64 = tx
                .query_one(
                    "UPDATE device_key_version SET version = version + 1 WHERE id = 1
                     RETURNING version",
                    &[],
                )
                .await?
                .try_get(0)?;
            tx.execute(
                "UPDATE device_keys SET revoked_at = $2, version = $3
                 WHERE device = $1 AND revoked_at IS NULL",
                &[&id, &now, &version],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn device_keys_since(
        &self,
        version: u64,
        limit: usize,
    ) -> Result<(Vec<DeviceKeyEntry>, u64)> {
        let client = self.client().await?;
        let current: i64 = client
            .query_one("SELECT version FROM device_key_version WHERE id = 1", &[])
            .await?
            .try_get(0)?;
        let rows = client
            .query(
                "SELECT device, public_key, commune, valid_from, valid_until, revoked_at, version
                 FROM device_keys WHERE version > $1 AND version <= $2
                 ORDER BY version, device LIMIT $3",
                &[
                    &to_i64(version),
                    &current,
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let key: Vec<u8> = row.try_get(1)?;
            entries.push(DeviceKeyEntry {
                device: device_id(row.try_get(0)?)?,
                public_key: PublicKey::from_slice(&key).ok_or_else(|| {
                    StorageError::backend(format!("stored key has {} bytes", key.len()))
                })?,
                commune: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                valid_from: row.try_get(3)?,
                valid_until: row.try_get(4)?,
                revoked_at: row.try_get(5)?,
                version: to_u64(row.try_get(6)?),
            });
        }
        Ok((entries, to_u64(current)))
    }

    async fn device_keys_of(&self, device: DeviceId) -> Result<Vec<DeviceKeyEntry>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT public_key, commune, valid_from, valid_until, revoked_at, version
                 FROM device_keys WHERE device = $1 ORDER BY version",
                &[&device.0.as_bytes().as_slice()],
            )
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let key: Vec<u8> = row.try_get(0)?;
            entries.push(DeviceKeyEntry {
                device,
                public_key: PublicKey::from_slice(&key).ok_or_else(|| {
                    StorageError::backend(format!("stored key has {} bytes", key.len()))
                })?,
                commune: row.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                valid_from: row.try_get(2)?,
                valid_until: row.try_get(3)?,
                revoked_at: row.try_get(4)?,
                version: to_u64(row.try_get(5)?),
            });
        }
        Ok(entries)
    }

    async fn record_push_signature(&self, push: &PushSignatureRow) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO push_signatures (device, counter, hashes, signature, received_at)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[
                    &push.device.0.as_bytes().as_slice(),
                    &to_i64(push.counter),
                    &push.hashes_blob(),
                    &push.signature.as_slice(),
                    &push.received_at,
                ],
            )
            .await?
            .try_get(0)?;
        let hashes: Vec<&[u8]> = push.hashes.iter().map(|h| h.as_slice()).collect();
        tx.execute(
            "INSERT INTO change_signatures (hash, push)
             SELECT h, $2 FROM unnest($1::bytea[]) AS h
             ON CONFLICT (hash) DO NOTHING",
            &[&hashes, &id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn change_signatures(
        &self,
        hashes: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], Arc<PushSignatureRow>>> {
        let client = self.client().await?;
        let wanted: Vec<&[u8]> = hashes.iter().map(|h| h.as_slice()).collect();
        let rows = client
            .query(
                "SELECT c.hash, p.id, p.device, p.counter, p.hashes, p.signature, p.received_at
                 FROM change_signatures c JOIN push_signatures p ON p.id = c.push
                 WHERE c.hash = ANY($1::bytea[])",
                &[&wanted],
            )
            .await?;
        let mut pushes: HashMap<i64, Arc<PushSignatureRow>> = HashMap::new();
        let mut out = HashMap::new();
        for row in rows {
            let hash = hash32(row.try_get(0)?)?;
            let id: i64 = row.try_get(1)?;
            if let std::collections::hash_map::Entry::Vacant(slot) = pushes.entry(id) {
                slot.insert(Arc::new(PushSignatureRow::from_parts(
                    device_id(row.try_get(2)?)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                    row.try_get(5)?,
                    row.try_get(6)?,
                )?));
            }
            if let Some(push) = pushes.get(&id) {
                out.insert(hash, push.clone());
            }
        }
        Ok(out)
    }

    async fn record_row(&self, id: RecordId) -> Result<Option<ReadModelRow>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM read_model WHERE id = $1",
            read_model::COLUMNS
        );
        let row = client.query_opt(&sql, &[&id.as_bytes().as_slice()]).await?;
        row.as_ref().map(read_row).transpose()
    }

    async fn records(&self, query: &RecordQuery) -> Result<Vec<ReadModelRow>> {
        let (tail, values) = read_model::records_tail(query, pg_placeholder);
        let client = self.client().await?;
        let sql = format!("SELECT {} FROM read_model{tail}", read_model::COLUMNS);
        let values = pg_params(values);
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            values.iter().map(|value| value.as_ref() as _).collect();
        let rows = client.query(&sql, &refs).await?;
        rows.iter().map(read_row).collect()
    }

    async fn commune_summaries(
        &self,
        today: &str,
        week_from: i64,
        month_from: i64,
    ) -> Result<Vec<CommuneSummary>> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let communes = tx
            .query("SELECT code FROM communes ORDER BY code", &[])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<Vec<String>, _>>()?;
        let groups = tx
            .query(
                &read_model::summaries_sql(pg_placeholder),
                &[&week_from, &month_from, &today],
            )
            .await?
            .iter()
            .map(|row| {
                Ok(SummaryGroup {
                    commune: row.try_get(0)?,
                    status: row.try_get(1)?,
                    count: row.try_get(2)?,
                    week: row.try_get(3)?,
                    month: row.try_get(4)?,
                    due_before_today: row.try_get(5)?,
                    on_time: row.try_get(6)?,
                    late: row.try_get(7)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(read_model::fold_summaries(communes, groups))
    }

    async fn report(&self, from: i64, until: i64, last_day: &str) -> Result<Vec<ReportRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &read_model::report_sql(pg_placeholder),
                &[&from, &until, &last_day],
            )
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    [
                        row.try_get(2)?,
                        row.try_get(3)?,
                        row.try_get(4)?,
                        row.try_get(5)?,
                    ],
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(read_model::report_rows(rows))
    }

    async fn rebuild_read_model(&self, rules: read_model::DeadlineRules) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Every commune's counter row, in code order like ingest: no ingest commits while the
        // read model is rebuilt, so none is lost between the read of changes and the commit.
        tx.query(
            "SELECT 1 FROM communes ORDER BY code FOR NO KEY UPDATE",
            &[],
        )
        .await?;
        tx.execute("DELETE FROM read_model", &[]).await?;
        let ids = tx
            .query("SELECT id FROM documents ORDER BY id", &[])
            .await?
            .iter()
            .map(|row| record_id(row.try_get(0)?))
            .collect::<Result<Vec<_>>>()?;
        for chunk in ids.chunks(REBUILD_CHUNK) {
            project_docs(&tx, chunk, &rules).await?;
        }
        let rows: i64 = tx
            .query_one("SELECT count(*) FROM read_model", &[])
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(to_u64(rows))
    }

    async fn reproject_open(&self, rules: read_model::DeadlineRules) -> Result<u64> {
        // Pages by id, each in its own transaction.
        let sql = format!(
            "SELECT id FROM read_model WHERE {} AND id > $1 ORDER BY id LIMIT $2",
            read_model::open_clause()
        );
        let mut after: Vec<u8> = Vec::new();
        let mut written = 0u64;
        loop {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let ids = tx
                .query(&sql, &[&after, &(read_model::REPROJECT_PAGE as i64)])
                .await?
                .iter()
                .map(|row| record_id(row.try_get(0)?))
                .collect::<Result<Vec<_>>>()?;
            project_docs(&tx, &ids, &rules).await?;
            tx.commit().await?;
            written += ids.len() as u64;
            match ids.last() {
                Some(last) if ids.len() == read_model::REPROJECT_PAGE => {
                    after = last.as_bytes().to_vec();
                }
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
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO console_operators (username, password_hash, role, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&username, &password_hash, &role, &now],
            )
            .await?;
        if inserted == 0 {
            return Err(StorageError::AlreadyExists);
        }
        Ok(())
    }

    async fn operator(&self, username: &str) -> Result<Option<ConsoleOperator>> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT username, password_hash, role, disabled FROM console_operators
                 WHERE username = $1",
                &[&username],
            )
            .await?
            .map(|row| {
                Ok(ConsoleOperator {
                    username: row.try_get(0)?,
                    password_hash: row.try_get(1)?,
                    role: row.try_get(2)?,
                    disabled: row.try_get(3)?,
                })
            })
            .transpose()
    }

    async fn create_session(
        &self,
        token_hash: [u8; 32],
        username: &str,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM console_sessions WHERE expires_at <= $1",
            &[&now],
        )
        .await?;
        let known = tx
            .query_opt(
                "SELECT 1 FROM console_operators WHERE username = $1",
                &[&username],
            )
            .await?
            .is_some();
        if !known {
            return Err(StorageError::NotFound);
        }
        tx.execute(
            "INSERT INTO console_sessions (token_hash, username, csrf, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&token_hash.as_slice(), &username, &csrf, &now, &expires_at],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session(&self, token_hash: [u8; 32], now: i64) -> Result<Option<ConsoleSession>> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT o.username, o.password_hash, o.role, o.disabled, s.csrf, s.expires_at
                 FROM console_sessions s JOIN console_operators o ON o.username = s.username
                 WHERE s.token_hash = $1 AND s.expires_at > $2 AND NOT o.disabled",
                &[&token_hash.as_slice(), &now],
            )
            .await?
            .map(|row| {
                Ok(ConsoleSession {
                    operator: ConsoleOperator {
                        username: row.try_get(0)?,
                        password_hash: row.try_get(1)?,
                        role: row.try_get(2)?,
                        disabled: row.try_get(3)?,
                    },
                    csrf: row.try_get(4)?,
                    expires_at: row.try_get(5)?,
                })
            })
            .transpose()
    }

    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM console_sessions WHERE token_hash = $1",
                &[&token_hash.as_slice()],
            )
            .await?;
        Ok(())
    }

    async fn append_audit(
        &self,
        username: &str,
        action: &str,
        detail: &str,
        now: i64,
    ) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO console_audit (at, username, action, detail) VALUES ($1, $2, $3, $4)",
                &[&now, &username, &action, &detail],
            )
            .await?;
        Ok(())
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let limit = limit.min(super::MAX_AUDIT_LISTED) as i64;
        let client = self.client().await?;
        client
            .query(
                "SELECT at, username, action, detail FROM console_audit ORDER BY id DESC LIMIT $1",
                &[&limit],
            )
            .await?
            .iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: row.try_get(0)?,
                    username: row.try_get(1)?,
                    action: row.try_get(2)?,
                    detail: row.try_get(3)?,
                })
            })
            .collect()
    }

    async fn ready(&self) -> Result<()> {
        let client = self.client().await?;
        let version: i64 = client
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::bigint FROM schema_migrations",
                &[],
            )
            .await?
            .try_get(0)?;
        super::schema_verdict(version, SCHEMA_VERSION)
    }

    async fn read_model_lag(&self) -> Result<u64> {
        let client = self.client().await?;
        let lag: i64 = client
            .query_one(
                "SELECT count(*) FROM documents d
                 WHERE NOT EXISTS (SELECT 1 FROM read_model r WHERE r.id = d.id)",
                &[],
            )
            .await?
            .try_get(0)?;
        Ok(to_u64(lag))
    }

    async fn stats(&self) -> Result<Vec<CommuneStats>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT c.code,
                   (SELECT count(*) FROM documents d WHERE d.commune = c.code),
                   (SELECT count(*) FROM changes x WHERE x.commune = c.code),
                   (SELECT count(*) FROM devices v WHERE v.commune = c.code AND NOT v.revoked),
                   (SELECT x.received_at FROM changes x WHERE x.commune = c.code
                    ORDER BY x.seq DESC LIMIT 1)
                 FROM communes c ORDER BY c.code",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(CommuneStats {
                    code: row.try_get(0)?,
                    documents: to_u64(row.try_get(1)?),
                    changes: to_u64(row.try_get(2)?),
                    devices: to_u64(row.try_get(3)?),
                    last_change_at: row.try_get(4)?,
                })
            })
            .collect()
    }

    async fn store_epoch(&self) -> Result<String> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT epoch FROM store_identity WHERE singleton = 1", &[])
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn renew_store_epoch(&self) -> Result<String> {
        let client = self.client().await?;
        let epoch = super::new_store_epoch();
        client
            .execute(
                "INSERT INTO store_identity (singleton, epoch) VALUES (1, $1)
                 ON CONFLICT (singleton) DO UPDATE SET epoch = EXCLUDED.epoch",
                &[&epoch],
            )
            .await?;
        Ok(epoch)
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

/// Advisory lock of catalogue publications.
const CATALOGUE_LOCK: i64 = 0x636f_6d6d_6361_7401;

fn catalogue_row(row: &tokio_postgres::Row) -> Result<CatalogueRow> {
    Ok(CatalogueRow {
        changed: to_u64(row.try_get(0)?),
        code: row.try_get(1)?,
        version: to_u64(row.try_get(2)?),
        removed: row.try_get(3)?,
        body: row.try_get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_strings_are_told_from_paths_and_urls() {
        assert!(is_key_value_string(
            "host=10.0.0.1,10.0.0.2 port=5432,5432 dbname=communesync target_session_attrs=read-write"
        ));
        assert!(is_key_value_string("hostaddr=127.0.0.1 user=cs"));
        assert!(!is_key_value_string("communesync-server.db"));
        assert!(!is_key_value_string("/var/lib/a=b/server.db"));
        assert!(!is_key_value_string("dbname=x user=y"));
        assert!(!is_key_value_string(""));
        assert!(!is_key_value_string("postgres://u@h/db"));
    }

    #[test]
    fn failover_defaults_do_not_override_the_string() {
        let url = "host=a,b port=1,2 connect_timeout=9 keepalives_idle=7";
        let mut config: tokio_postgres::Config = url.parse().unwrap();
        with_failover_defaults(&mut config, url);
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(9)));
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(7));
        let url = "host=a,b port=1,2";
        let mut config: tokio_postgres::Config = url.parse().unwrap();
        with_failover_defaults(&mut config, url);
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(config.get_hosts().len(), 2);
    }
}
