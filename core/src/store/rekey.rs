//! Rotating the store's encryption key ([`DeviceStore::rekey`]).
//!
//! Contract: after `rekey(new)` returns `Ok`, the file opens with `new` and no longer with the
//! old key; after an `Err`, it still opens with the old key and this `DeviceStore` is closed
//! (every later call fails; open it again with the old key). A kill or power cut at any instant
//! leaves a file that opens with exactly one of the two keys and holds every committed change.
//!
//! Why that holds: SQLCipher's `PRAGMA rekey` reads and rewrites every page inside one write
//! transaction and commits it like any other, through the WAL: until the commit frame is on disk
//! recovery ignores the new-key frames (old key), after it the newest copy of every page is in
//! the new key. The WAL is checkpointed before (so no old-key frame of an earlier commit waits
//! in it) and after (so the main file is rewritten in the new key and the WAL is empty). On a
//! failed rekey SQLCipher rolls back but keeps the new key for later writes on that connection,
//! which would mix keys in one file: so the connection is closed at once.

use super::{DeviceStore, EncryptionKey, checkpoint, key_pragma, schema};
use crate::{Error, Result};

impl DeviceStore {
    /// Re-encrypts the store with `new_key` (SQLCipher `PRAGMA rekey`); takes a time
    /// proportional to the file's size (every page is rewritten). Fails with `InvalidInput` for
    /// an unencrypted store. On any failure the file keeps the old key and this store is closed:
    /// open it again with the old key.
    pub fn rekey(&mut self, new_key: &EncryptionKey) -> Result<()> {
        if self.wiped || self.closed_after_failed_rekey {
            return Err(Error::invalid(
                "store",
                "this store is closed (wiped, or a rekey failed): open it again",
            ));
        }
        if !self.encrypted {
            return Err(Error::invalid(
                "encryption key",
                "this store is not encrypted: it has no key to rotate",
            ));
        }
        // The checkpointer's connection holds the old key: stopped (joined) before, started
        // again with the new key after.
        self.checkpointer = checkpoint::Checkpointer::stopped();
        let rekeyed = (|| {
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            key_pragma(&self.conn, "rekey", new_key)?;
            // The first read after the rekey proves the connection reads with the new key.
            self.conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |row| {
                    row.get::<_, i64>(0)
                })?;
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok::<_, Error>(())
        })();
        match rekeyed {
            Ok(()) => {
                let config = super::StoreConfig::new(&self.path).encrypted(new_key.clone());
                self.checkpointer = checkpoint::Checkpointer::start(&config)?;
                tracing::info!("store key rotated");
                Ok(())
            }
            Err(err) => {
                tracing::warn!(%err, "store rekey failed; the store keeps its old key");
                self.close_after_failed_rekey()?;
                Err(err)
            }
        }
    }

    fn close_after_failed_rekey(&mut self) -> Result<()> {
        self.cache.clear();
        let mut empty = rusqlite::Connection::open_in_memory()?;
        schema::migrate(&mut empty)?;
        empty.pragma_update(None, "query_only", true)?;
        drop(std::mem::replace(&mut self.conn, empty));
        self.closed_after_failed_rekey = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
