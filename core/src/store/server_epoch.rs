//! The server store's epoch as this device last saw it, and what the device does when it
//! changes: the server's database was restored from a backup, so it may lack changes it once
//! acknowledged (pushed by this device or by others and pulled here) and its feed positions after
//! the backup mean other changes now.
//!
//! Contract of [`DeviceStore::server_restored`], in one transaction: every document this device
//! holds goes (back) into the outbox, what the server acknowledged is forgotten (so this
//! device's whole part of each history is pushed again: the server stores what it lacks and
//! ignores what it has), the feed cursor goes back to the start (the whole feed is pulled again;
//! changes already here are ignored), and the new
//! epoch is remembered, so it happens once per restore. The last [`REMEMBERED_EPOCHS`] epochs
//! are remembered and only one never seen counts as a restore (every backup and every restore
//! makes a fresh one): replicas that briefly disagree after a restore, or an answer of the old
//! epoch arriving late, do not make the device start over twice. A cut before the commit leaves the old
//! epoch: the next sync sees the change again. Nothing a device holds is lost by a restore, at
//! the price of one full upload and download.
//!
//! Only a change's author can give it back: the server refuses from a device any change that
//! is not its own (ADR 0006, attribution), so changes this device pulled from others come back
//! when their authors sync. An edit of ours on top of such a change waits in the outbox
//! (the server answers "missing dependencies") until the author has synced; it is retried at
//! every sync, never set aside. A change whose author's store was lost with the server's copy is
//! gone: signatures would let another device vouch for it (not yet).

use rusqlite::{OptionalExtension, params};

use super::DeviceStore;
use crate::Result;

/// Newest first, separated by spaces.
const META_SERVER_EPOCHS: &str = "server_store_epochs";

/// Server store epochs remembered.
pub const REMEMBERED_EPOCHS: usize = 8;

impl DeviceStore {
    /// The server store epochs seen, newest first (empty before the first sync with a server
    /// that sends one).
    pub fn server_store_epochs(&self) -> Result<Vec<String>> {
        let joined: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_SERVER_EPOCHS],
                |row| row.get(0),
            )
            .optional()?;
        Ok(joined
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    /// Remembers the server's first epoch (nothing to redo: this device knows of no other).
    pub fn set_server_store_epoch(&mut self, epoch: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
            params![META_SERVER_EPOCHS, epoch],
        )?;
        Ok(())
    }

    /// The server was restored (its epoch is now `epoch`): see the module doc. Returns how many
    /// documents will be pushed again.
    pub fn server_restored(&mut self, epoch: &str) -> Result<u64> {
        let self_epochs = self.server_store_epochs()?;
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM server_heads", [])?;
        // Kept changes are only the local edits since the acknowledgement: the whole history
        // goes instead, read from the document.
        tx.execute("UPDATE outbox SET whole = 1", [])?;
        tx.execute(
            "INSERT INTO outbox(doc, local_seq, whole)
             SELECT rowid, 1, 1 FROM documents WHERE rowid NOT IN (SELECT doc FROM outbox)",
            [],
        )?;
        let requeued: i64 = tx.query_row("SELECT count(*) FROM outbox", [], |row| row.get(0))?;
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, 0)",
            [super::sync_state::META_CURSOR],
        )?;
        let mut epochs = vec![epoch.to_owned()];
        epochs.extend(
            self_epochs
                .into_iter()
                .filter(|known| known != epoch)
                .take(REMEMBERED_EPOCHS - 1),
        );
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
            params![META_SERVER_EPOCHS, epochs.join(" ")],
        )?;
        tx.commit()?;
        tracing::warn!(
            epoch,
            requeued,
            "the server was restored from a backup: pushing every document again and pulling the feed from the start"
        );
        Ok(u64::try_from(requeued).unwrap_or(0))
    }
}
