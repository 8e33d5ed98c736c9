//! Background WAL checkpoints.
//!
//! In WAL mode with `synchronous=NORMAL` a commit appends to the WAL without fsync; the cost is in
//! checkpoints, which copy pages back and fsync. Run inline they stall an edit every few hundred
//! commits; here a thread with its own connection runs a PASSIVE checkpoint (never blocks the
//! writer) after every batch of commits or after a quiet second. The thread ends with the store.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::{StoreConfig, apply_key};
use crate::Result;

/// Commits between checkpoints.
const COMMITS_PER_CHECKPOINT: u32 = 200;
/// A checkpoint also runs after this long without commits, if any are pending.
const QUIET: Duration = Duration::from_secs(1);

pub(super) struct Checkpointer {
    signal: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(config: &StoreConfig) -> Result<Self> {
        let conn = Connection::open(&config.path)?;
        if let Some(key) = &config.key {
            apply_key(&conn, key)?;
        }
        conn.busy_timeout(Duration::from_secs(5))?;
        let (signal, commits) = sync_channel(COMMITS_PER_CHECKPOINT as usize);
        let thread = std::thread::Builder::new()
            .name("communesync-checkpoint".into())
            .spawn(move || run(conn, commits))
            .map_err(|e| crate::Error::Document(format!("cannot start checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            signal: Some(signal),
            thread: Some(thread),
        })
    }

    /// A checkpointer without a thread (a wiped store has no file to checkpoint).
    pub(super) fn stopped() -> Self {
        Checkpointer {
            signal: None,
            thread: None,
        }
    }

    /// Tells the thread one more commit happened. Never blocks the writer.
    pub(super) fn committed(&self) {
        if let Some(signal) = &self.signal {
            match signal.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current checkpoint.
        self.signal.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: Connection, commits: Receiver<()>) {
    let mut pending = 0u32;
    loop {
        match commits.recv_timeout(QUIET) {
            Ok(()) => {
                pending += 1;
                if pending < COMMITS_PER_CHECKPOINT {
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) if pending == 0 => continue,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        pending = 0;
        // A failed checkpoint is retried with the next batch; the writer's autocheckpoint bounds
        // the WAL meanwhile.
        if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%err, "background checkpoint failed");
        }
    }
}
