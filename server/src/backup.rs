//! Backups and restores of the server's database (`communesync admin backup FILE`,
//! `admin restore FILE`, `admin mark-restored`).
//!
//! Contract, SQLite (the embedded store):
//! - **Backup** is SQLite's online backup API copying every page in one step, that is one read
//!   transaction: a consistent snapshot of the database while the server runs and takes syncs (in
//!   WAL mode its writers go on meanwhile). The copy is written to a temporary name in the target's
//!   directory, created mode 0600, checked (`PRAGMA quick_check`), given a fresh store epoch (so
//!   that a copy put back by hand is still seen as a restore by tablets), flushed to disk and
//!   renamed over `FILE` (an existing `FILE` is replaced atomically; a failed backup leaves it
//!   as it was and no temporary file behind).
//! - **Restore** checks the backup (`quick_check`, a communesync schema not newer than this
//!   build's), copies it into the database through the same API (the database's own locking and
//!   WAL, so no stale `-wal` file can mix old pages in), then gives the database a fresh store
//!   epoch: each tablet, at its next sync, pushes again every document it holds and re-reads the
//!   feed, so what the server lost since the backup comes back from the tablets that hold it.
//!   Stop the server first: a running one would keep answering from what it had cached.
//!
//! PostgreSQL: the backup is PostgreSQL's own (`pg_dump`, or `pg_basebackup` with WAL archiving
//! for point-in-time recovery); `admin backup` and `admin restore` explain that procedure and
//! change nothing, and after any restore `admin mark-restored` gives the store its fresh epoch.
//!
//! Bounds: a step that finds the database locked is retried for at most [`LOCK_WAIT`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::storage::sqlite::SCHEMA_VERSION;
use crate::storage::{ServerStorage, new_store_epoch};

/// How long a backup or restore waits for the database's locks before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// What a backup or restore copied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopySummary {
    /// The file written.
    pub file: PathBuf,
    /// Bytes of the database copied.
    pub bytes: u64,
    /// Documents in it.
    pub documents: u64,
    /// Changes in it.
    pub changes: u64,
    /// The store epoch the written database now has.
    pub epoch: String,
}

/// What an operator does for a PostgreSQL database, which `admin backup`/`restore` leave to
/// PostgreSQL's tools.
pub const POSTGRES_PROCEDURE: &str = "\
The database is PostgreSQL: back it up with PostgreSQL's tools, which take a consistent snapshot
while the replicas run (nothing of communesync needs to stop):
  logical, one database:   pg_dump --format=custom --file=FILE 'postgres://USER@HOST/DB'
  physical, whole cluster: pg_basebackup -D DIR -X stream -c fast -h HOST -U USER
                           (with WAL archiving, for point-in-time recovery)
To restore: stop every `communesync serve` replica, restore (pg_restore --clean --if-exists -d DB
FILE, or start the restored cluster), then run `communesync admin --database URL mark-restored`
before starting the replicas again: tablets then re-send what the restored database lacks.
See docs/OPERATIONS.md, \"Backups and restore\".";

/// The SQLite path named by a `--database` value, or `None` for PostgreSQL.
pub fn sqlite_path(database: &str) -> Option<PathBuf> {
    if database.starts_with("postgres://")
        || database.starts_with("postgresql://")
        || crate::storage::postgres::is_key_value_string(database)
    {
        return None;
    }
    let path = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
        .unwrap_or(database);
    Some(PathBuf::from(path))
}

/// Copies the SQLite database at `database` (which must exist) to `file` (see the module doc).
pub fn backup_sqlite(database: &Path, file: &Path) -> anyhow::Result<CopySummary> {
    if !database.is_file() {
        bail!("{} does not exist", database.display());
    }
    if std::fs::canonicalize(file).ok() == Some(std::fs::canonicalize(database)?) {
        bail!("the backup would replace the database itself");
    }
    let source = Connection::open_with_flags(
        database,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", database.display()))?;
    source.busy_timeout(LOCK_WAIT)?;
    check_schema(&source, database)?;

    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", file.display()))?
        .to_string_lossy()
        .into_owned();
    let temp = dir.join(format!(
        ".{name}.tmp-{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    let written = write_backup(&source, &temp);
    let summary = match written {
        Ok(summary) => summary,
        Err(err) => {
            let _ = std::fs::remove_file(&temp);
            return Err(err);
        }
    };
    if let Err(err) = std::fs::rename(&temp, file) {
        let _ = std::fs::remove_file(&temp);
        return Err(err).with_context(|| format!("renaming the backup to {}", file.display()));
    }
    // The rename itself survives a power cut only once the directory is on disk.
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(CopySummary {
        file: file.to_owned(),
        ..summary
    })
}

fn write_backup(source: &Connection, temp: &Path) -> anyhow::Result<CopySummary> {
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(temp)
            .with_context(|| format!("creating {}", temp.display()))?;
    }
    let mut copy = Connection::open(temp)?;
    copy_all(source, &mut copy)?;
    // A single file, whatever the live database's journal mode.
    let _: String = copy.query_row("PRAGMA journal_mode = DELETE", [], |row| row.get(0))?;
    quick_check(&copy, temp)?;
    let epoch = new_store_epoch();
    copy.execute(
        "UPDATE store_identity SET epoch = ?1 WHERE singleton = 1",
        [&epoch],
    )?;
    let summary = summarize(&copy, temp, epoch)?;
    copy.close().map_err(|(_, err)| err)?;
    std::fs::File::open(temp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", temp.display()))?;
    Ok(summary)
}

/// Puts the backup `file` into the SQLite database at `database` (created if missing) and gives
/// it a fresh store epoch (see the module doc).
pub fn restore_sqlite(file: &Path, database: &Path) -> anyhow::Result<CopySummary> {
    if std::fs::canonicalize(database).ok() == Some(std::fs::canonicalize(file)?) {
        bail!("the backup is the database itself");
    }
    let backup = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening the backup {}", file.display()))?;
    quick_check(&backup, file)?;
    check_schema(&backup, file)?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(database)
            .with_context(|| format!("opening {}", database.display()))?;
    }
    let mut target = Connection::open(database)?;
    target.busy_timeout(LOCK_WAIT)?;
    copy_all(&backup, &mut target)?;
    drop(backup);
    let _: String = target.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    let epoch = new_store_epoch();
    target.execute(
        "UPDATE store_identity SET epoch = ?1 WHERE singleton = 1",
        [&epoch],
    )?;
    quick_check(&target, database)?;
    summarize(&target, database, epoch)
}

/// Gives the store a fresh epoch (after a restore by other means) and returns it.
pub async fn mark_restored(storage: &dyn ServerStorage) -> anyhow::Result<String> {
    Ok(storage.renew_store_epoch().await?)
}

/// Copies every page of `from` into `to` in one step (one read transaction of `from`), waiting
/// at most [`LOCK_WAIT`] for locks.
fn copy_all(from: &Connection, to: &mut Connection) -> anyhow::Result<()> {
    let backup = Backup::new(from, to)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::More | StepResult::Busy | StepResult::Locked => {
                if Instant::now() > deadline {
                    bail!("the database stayed locked for {LOCK_WAIT:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => bail!("unexpected backup step result"),
        }
    }
}

fn quick_check(conn: &Connection, path: &Path) -> anyhow::Result<()> {
    let verdict: String = conn.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
    if verdict != "ok" {
        bail!("{} fails SQLite's quick_check: {verdict}", path.display());
    }
    Ok(())
}

/// A communesync database of a schema this build knows, with a store epoch.
fn check_schema(conn: &Connection, path: &Path) -> anyhow::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        bail!(
            "{} has schema version {version}, newer than this build's {SCHEMA_VERSION}",
            path.display()
        );
    }
    let has_epoch: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_identity')",
        [],
        |row| row.get(0),
    )?;
    if !has_epoch {
        bail!(
            "{} is not a communesync server database of this version (start the server on it \
             once to migrate it)",
            path.display()
        );
    }
    Ok(())
}

fn summarize(conn: &Connection, path: &Path, epoch: String) -> anyhow::Result<CopySummary> {
    let count = |sql: &str| -> anyhow::Result<u64> {
        let n: i64 = conn.query_row(sql, [], |row| row.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    Ok(CopySummary {
        file: path.to_owned(),
        bytes: count("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")?,
        documents: count("SELECT count(*) FROM documents")?,
        changes: count("SELECT count(*) FROM changes")?,
        epoch,
    })
}
