//! `communesync admin backup FILE` and `admin restore FILE`: the CLI side of
//! [`communesync_server::backup`] (SQLite: do it, print a JSON line; PostgreSQL: print the
//! procedure on stderr and fail, having changed nothing).

use std::path::Path;

use communesync_server::backup::{self, POSTGRES_PROCEDURE};

/// `admin backup FILE`.
pub fn backup(database: &str, file: &Path) -> anyhow::Result<()> {
    let Some(path) = backup::sqlite_path(database) else {
        eprintln!("{POSTGRES_PROCEDURE}");
        anyhow::bail!("`admin backup` writes SQLite backups only; nothing was written");
    };
    let summary = backup::backup_sqlite(&path, file)?;
    println!("{}", serde_json::json!({ "backup": summary }));
    Ok(())
}

/// `admin restore FILE`.
pub fn restore(database: &str, file: &Path) -> anyhow::Result<()> {
    let Some(path) = backup::sqlite_path(database) else {
        eprintln!("{POSTGRES_PROCEDURE}");
        anyhow::bail!("`admin restore` restores SQLite backups only; nothing was changed");
    };
    let summary = backup::restore_sqlite(file, &path)?;
    tracing::warn!(
        database = %path.display(),
        epoch = %summary.epoch,
        "database restored from a backup: tablets will re-send what it lacks"
    );
    println!("{}", serde_json::json!({ "restored": summary }));
    Ok(())
}
