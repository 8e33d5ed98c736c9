//! Migrations are data: ordered SQL files compiled in, applied in one transaction each, with
//! SQLite's `user_version` as the schema version.

use rusqlite::Connection;

use crate::{Error, Result};

/// Every migration in order; the version after applying `MIGRATIONS[i]` is `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_sync_state.sql"),
    include_str!("../../migrations/0003_outbox_changes.sql"),
    include_str!("../../migrations/0004_quarantine.sql"),
    include_str!("../../migrations/0005_dossier_numbers.sql"),
    include_str!("../../migrations/0006_device_keys.sql"),
    include_str!("../../migrations/0007_attachments.sql"),
    include_str!("../../migrations/0008_catalogue_v2.sql"),
    include_str!("../../migrations/0009_statutory_time.sql"),
    include_str!("../../migrations/0010_register_import.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`SCHEMA_VERSION`]. A newer file is refused rather than damaged.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    migrate_to(conn, SCHEMA_VERSION)
}

pub(crate) fn migrate_to(conn: &mut Connection, target: i64) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current || version > target {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}
