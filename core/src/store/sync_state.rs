//! What the sync client needs from the store: the outbox in size-bounded batches, the heads the
//! server acknowledged per document, and pulled batches applied atomically with the feed cursor.
//!
//! Invariants: a document leaves the outbox only when the server has acknowledged every change
//! made up to the push (an edit during the round trip keeps it there); a pulled batch and the
//! cursor after it commit in one transaction, so a sync cut at any byte resumes from the last
//! applied batch and applies nothing twice (Automerge ignores changes it already has anyway).
//! A document the server refused stays in the outbox but is not pushed while it is quarantined;
//! a pulled document this build cannot apply is kept in the quarantine, in the same transaction
//! as the cursor, so the cursor moves on without losing it ([`super::quarantine`]). The server's
//! receive time of every change pulled or acknowledged is kept for the history.

use automerge::ChangeHash;
use rusqlite::{OptionalExtension, params};

use rayon::prelude::*;

use super::{DeviceStore, Origin, load_document, rowid_in, write_changes};
use crate::codec::DocCodec;
use crate::record::{RecordDoc, RecordId, RecordKind, Source};
use crate::{Error, Result};

pub(super) const META_CURSOR: &str = "sync_cursor";
const META_LAST_SYNC: &str = "last_sync_at";

/// A document with changes the server has not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDoc {
    /// Record id.
    pub id: RecordId,
    /// Record kind.
    pub kind: RecordKind,
    /// Raw Automerge changes after the acknowledged heads.
    pub changes: Vec<Vec<u8>>,
    /// The document's heads when the batch was taken: acknowledged as a whole.
    pub heads: Vec<ChangeHash>,
    /// Whether `changes` start with the document's first change (the whole history): the
    /// receiver then learns the id from the record itself.
    pub whole: bool,
    local_seq: i64,
    /// Hashes of `changes`, for the receive times learnt at the acknowledgement.
    hashes: Vec<ChangeHash>,
}

/// One document's changes from the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullDoc {
    /// Record id; `None` when `changes` are the whole history (the record holds its id).
    pub id: Option<RecordId>,
    /// Record kind.
    pub kind: RecordKind,
    /// Raw Automerge changes.
    pub changes: Vec<Vec<u8>>,
    /// Server receive time of the newest change (ms, server clock).
    pub received_at: i64,
}

/// What applying a pulled batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Documents created on this device.
    pub created: usize,
    /// Existing documents that changed.
    pub updated: usize,
    /// Documents whose changes could not be applied (corrupt, incomplete, another kind, not
    /// readable by this build), with the reason. The rest of the batch is applied; these are
    /// kept in the quarantine (incoming) and retried, see [`super::quarantine`].
    pub rejected: Vec<(RecordId, String)>,
    /// Documents that now hold conflicts.
    pub conflicted: Vec<RecordId>,
    /// Changes in the rejected documents.
    pub rejected_changes: u64,
}

/// Pulled documents built at a time: large enough to keep every core busy, small enough for
/// the writes of one chunk to overlap the build of the next.
pub(super) const PULL_CHUNK: usize = 256;

/// Raw changes, the heads they lead to, and whether they start with the document's first change.
type KeptChanges = (Vec<Vec<u8>>, Vec<ChangeHash>, bool);

/// A pulled document this device did not have, built off the store.
pub(super) struct Built {
    id: RecordId,
    record: crate::record::Record,
    conflicted: bool,
    heads: Vec<ChangeHash>,
    snapshot: Vec<u8>,
    /// Hashes of the pulled changes, for their receive time.
    hashes: Vec<ChangeHash>,
}

thread_local! {
    static CODEC: std::cell::RefCell<Option<DocCodec>> = const { std::cell::RefCell::new(None) };
}

/// Builds a pulled document from its changes (on any thread: touches no store).
pub(super) fn build(pulled: &PullDoc, device: crate::record::DeviceId) -> Result<Built> {
    let id = pulled.id.unwrap_or(RecordId(uuid::Uuid::nil()));
    let changes = crate::record::decode_changes(id, &pulled.changes)?;
    let hashes = changes.iter().map(automerge::Change::hash).collect();
    // A chain of changes, each on top of the one before, has no concurrent writes to conflict:
    // walking the document for conflicts is then skipped (most pulled records are one change).
    let chain = changes.iter().enumerate().all(|(i, change)| match i {
        0 => change.deps().is_empty(),
        _ => change.deps() == [changes[i - 1].hash()],
    });
    let (mut doc, record) =
        RecordDoc::from_decoded(pulled.id, pulled.kind, changes, device, Source::Server)?;
    let conflicted = !chain && !doc.conflicts().is_empty();
    let heads = doc.heads();
    let snapshot = CODEC.with(|cell| {
        let mut slot = cell.borrow_mut();
        let codec = match slot.as_mut() {
            Some(codec) => codec,
            None => slot.insert(DocCodec::new()?),
        };
        codec.encode(&doc.save_uncompressed())
    })?;
    Ok(Built {
        id: record.id(),
        record,
        conflicted,
        heads,
        snapshot,
        hashes,
    })
}

/// Keeps the server's receive time of these changes (the first learnt wins: a change pushed
/// again after a lost answer keeps the time of its first acknowledgement).
pub(super) fn write_receipts(
    tx: &rusqlite::Transaction<'_>,
    hashes: &[ChangeHash],
    received_at: i64,
) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO change_receipts(hash, received_at) VALUES (?1, ?2)",
    )?;
    for hash in hashes {
        stmt.execute(params![hash.0.as_slice(), received_at])?;
    }
    Ok(())
}

/// The hash of a change this device made, from its raw (uncompressed) chunk: the SHA-256 of
/// everything after the magic bytes and checksum. `None` for anything else.
fn own_change_hash(raw: &[u8]) -> Option<ChangeHash> {
    use sha2::{Digest, Sha256};
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    const CHANGE: u8 = 1;
    if raw.len() <= 8 || raw[..4] != MAGIC || raw[8] != CHANGE {
        return None;
    }
    ChangeHash::try_from(Sha256::digest(&raw[8..]).as_slice()).ok()
}

/// Whether a raw change is this device's (its actor is the device id). One that does not decode
/// is not: the server would refuse it anyway.
fn authored_by(raw: &[u8], device: crate::record::DeviceId) -> bool {
    automerge::Change::from_bytes(raw.to_vec())
        .is_ok_and(|change| change.actor_id().to_bytes() == device.0.as_bytes().as_slice())
}

/// Merges pulled changes into record `id` (row `rowid`), which this device has.
#[allow(clippy::too_many_arguments)]
fn merge_pulled(
    tx: &rusqlite::Transaction<'_>,
    codec: &mut DocCodec,
    device: crate::record::DeviceId,
    compact_after: u32,
    rowid: i64,
    id: RecordId,
    pulled: &PullDoc,
    report: &mut PullReport,
) -> Result<()> {
    let mut loaded = load_document(tx, codec, id, device)?;
    if loaded.doc.kind() != pulled.kind {
        return Err(Error::WrongKind {
            id,
            expected: pulled.kind,
            actual: loaded.doc.kind(),
        });
    }
    let decoded = crate::record::decode_changes(id, &pulled.changes)?;
    let hashes: Vec<ChangeHash> = decoded.iter().map(automerge::Change::hash).collect();
    loaded.doc.apply_decoded(decoded, Source::Server)?;
    if loaded.doc.heads() == loaded.saved_heads {
        return Ok(());
    }
    write_changes(tx, codec, &mut loaded, compact_after, Origin::Remote)?;
    write_receipts(tx, &hashes, pulled.received_at)?;
    tx.prepare_cached("UPDATE documents SET last_pulled_at = ?2 WHERE rowid = ?1")?
        .execute(params![rowid, pulled.received_at])?;
    // Without local edits pending, the server now has exactly what we have.
    let pending: bool = tx
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM outbox WHERE doc = ?1)")?
        .query_row([rowid], |row| row.get(0))?;
    if !pending {
        tx.prepare_cached("INSERT OR REPLACE INTO server_heads(doc, heads) VALUES (?1, ?2)")?
            .execute(params![rowid, encode_heads(&loaded.doc.heads())])?;
    }
    report.updated += 1;
    if !loaded.doc.conflicts().is_empty() {
        report.conflicted.push(id);
    }
    Ok(())
}

/// Writes one pulled document in the pull's transaction: inserts it when built off the store
/// and new here, merges it otherwise. Bad data from the network (changes that do not decode,
/// apply or read as a record with this build) is returned as `Ok(Some(error))`, with nothing
/// written for the document; storage failures are errors.
pub(super) fn write_pulled(
    tx: &rusqlite::Transaction<'_>,
    codec: &mut DocCodec,
    device: crate::record::DeviceId,
    compact_after: u32,
    pulled: &PullDoc,
    built: Option<Result<Built>>,
    report: &mut PullReport,
) -> Result<Option<Error>> {
    let outcome = match built {
        Some(Ok(built)) => {
            match rowid_in(tx, built.id)? {
                None => {
                    insert_pulled(tx, &built, pulled)?;
                    report.created += 1;
                    if built.conflicted {
                        report.conflicted.push(built.id);
                    }
                    Ok(())
                }
                // A whole history for a record this device has: merge it.
                Some(rowid) => merge_pulled(
                    tx,
                    codec,
                    device,
                    compact_after,
                    rowid,
                    built.id,
                    pulled,
                    report,
                ),
            }
        }
        Some(Err(err)) => Err(err),
        None => match pulled.id {
            Some(id) => match rowid_in(tx, id)? {
                Some(rowid) => {
                    merge_pulled(tx, codec, device, compact_after, rowid, id, pulled, report)
                }
                None => Err(Error::NotFound(id)),
            },
            None => Err(Error::invalid("id", "a pulled document without id")),
        },
    };
    match outcome {
        Ok(()) => Ok(None),
        // Bad data from the network is the caller's to keep; storage failures abort.
        Err(
            err @ (Error::Corrupt { .. }
            | Error::InvalidInput { .. }
            | Error::WrongKind { .. }
            | Error::Document(_)),
        ) => Ok(Some(err)),
        Err(err) => Err(err),
    }
}

fn insert_pulled(tx: &rusqlite::Transaction<'_>, built: &Built, pulled: &PullDoc) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO documents(id, kind, snapshot, chunk_count, last_pulled_at)
         VALUES (?1, ?2, ?3, 0, ?4)",
    )?
    .execute(params![
        built.id.as_bytes().as_slice(),
        pulled.kind.code(),
        built.snapshot,
        pulled.received_at
    ])?;
    let rowid = tx.last_insert_rowid();
    super::projection::write(tx, rowid, &built.record, built.conflicted)?;
    tx.prepare_cached("INSERT OR REPLACE INTO server_heads(doc, heads) VALUES (?1, ?2)")?
        .execute(params![rowid, encode_heads(&built.heads)])?;
    write_receipts(tx, &built.hashes, pulled.received_at)?;
    Ok(())
}

fn encode_heads(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

pub(super) fn decode_heads(bytes: &[u8]) -> Result<Vec<ChangeHash>> {
    if !bytes.len().is_multiple_of(32) {
        return Err(Error::invalid(
            "server_heads",
            "not a list of 32-byte hashes",
        ));
    }
    bytes
        .chunks_exact(32)
        .map(|chunk| {
            ChangeHash::try_from(chunk).map_err(|e| Error::invalid("server_heads", e.to_string()))
        })
        .collect()
}

impl DeviceStore {
    /// Documents with unacknowledged changes, oldest first, up to about `max_bytes` of changes
    /// (always at least one document when any is pending).
    ///
    /// The changes of local edits are read as they were kept at edit time; a document is loaded
    /// only when the server asked for its whole history (or the store predates that bookkeeping,
    /// or the server was restored), and then only this device's changes are sent: a document
    /// with none leaves the outbox unsent.
    pub fn pending_push(&mut self, max_bytes: usize) -> Result<Vec<PendingDoc>> {
        type Row = (i64, Vec<u8>, i64, i64, bool, Option<Vec<u8>>);
        let rows: Vec<Row> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT o.doc, d.id, d.kind, o.local_seq, o.whole, s.heads FROM outbox o
                 JOIN documents d ON d.rowid = o.doc
                 LEFT JOIN server_heads s ON s.doc = o.doc
                 WHERE NOT EXISTS (SELECT 1 FROM quarantine q
                                   WHERE q.record_id = d.id AND q.direction = 'outgoing')
                 ORDER BY o.doc LIMIT 5000",
            )?;
            stmt.query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for (rowid, id, kind, local_seq, whole, acked) in rows {
            let id = RecordId::from_slice(&id)
                .ok_or_else(|| Error::invalid("id", "bad id bytes in store"))?;
            let kind = RecordKind::from_code(kind)
                .ok_or_else(|| Error::invalid("kind", "bad kind in store"))?;
            let kept = if whole {
                None
            } else {
                self.kept_changes(id, rowid, local_seq)?
            };
            let (changes, heads, whole) = match kept {
                Some(kept) => kept,
                None => {
                    let acked = match acked {
                        Some(bytes) => decode_heads(&bytes)?,
                        None => Vec::new(),
                    };
                    let all = self.changes_since(id, &acked)?;
                    let total = all.len();
                    // Only this device's changes: the server refuses a change of another
                    // author from it (attribution), and has every such change it ever gave us,
                    // unless it was restored from a backup; then their author sends them again.
                    let own: Vec<Vec<u8>> = all
                        .into_iter()
                        .filter(|raw| authored_by(raw, self.device))
                        .collect();
                    if own.is_empty() {
                        // Nothing of ours to send (a restore re-queued a record only pulled).
                        self.conn
                            .prepare_cached("DELETE FROM outbox WHERE doc = ?1 AND local_seq = ?2")?
                            .execute(params![rowid, local_seq])?;
                        continue;
                    }
                    let whole = acked.is_empty() && own.len() == total;
                    (own, self.heads(id)?, whole)
                }
            };
            let size: usize = changes.iter().map(Vec::len).sum();
            if !batch.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            let hashes = changes
                .iter()
                .filter_map(|raw| own_change_hash(raw))
                .collect();
            batch.push(PendingDoc {
                id,
                kind,
                changes,
                heads,
                whole,
                local_seq,
                hashes,
            });
        }
        Ok(batch)
    }

    /// The changes kept for a document's local edits up to `local_seq`, and the hash of the
    /// newest (every earlier local edit is among its ancestors: a device's edits are
    /// sequential). `None` when none are kept.
    fn kept_changes(
        &mut self,
        id: RecordId,
        rowid: i64,
        local_seq: i64,
    ) -> Result<Option<KeptChanges>> {
        let rows: Vec<(Vec<u8>, bool, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT hash, root, change FROM outbox_changes WHERE doc = ?1 AND local_seq <= ?2
                 ORDER BY local_seq",
            )?
            .query_map(params![rowid, local_seq], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let (Some((_, whole, _)), Some((last, _, _))) = (rows.first(), rows.last()) else {
            return Ok(None);
        };
        let whole = *whole;
        let corrupt = |reason: String| Error::Corrupt { id, reason };
        let head = ChangeHash::try_from(last.as_slice())
            .map_err(|e| corrupt(format!("outbox hash: {e}")))?;
        let mut changes = Vec::new();
        let mut buffer = Vec::new();
        for (_, _, stored) in &rows {
            buffer.clear();
            self.codec
                .decode_into(stored, &mut buffer)
                .map_err(|e| corrupt(format!("outbox change: {e}")))?;
            let mut rest = buffer.as_slice();
            while !rest.is_empty() {
                let (len, tail) = rest
                    .split_first_chunk::<4>()
                    .ok_or_else(|| corrupt("outbox change: truncated length".into()))?;
                let len = u32::from_le_bytes(*len) as usize;
                if tail.len() < len {
                    return Err(corrupt("outbox change: truncated".into()));
                }
                let (change, tail) = tail.split_at(len);
                changes.push(change.to_vec());
                rest = tail;
            }
        }
        Ok(Some((changes, vec![head], whole)))
    }

    /// How many documents have changes the server has not acknowledged and that go out with the
    /// next sync (documents set aside in the quarantine are not counted: they wait for the app).
    pub fn pending_count(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM outbox o JOIN documents d ON d.rowid = o.doc
             WHERE NOT EXISTS (SELECT 1 FROM quarantine q
                               WHERE q.record_id = d.id AND q.direction = 'outgoing')",
            [],
            |row| row.get(0),
        )?)
    }

    /// Records that the server stored these documents' changes up to the heads they were taken
    /// at, and received them at `server_time` (its clock). A document edited since stays in the
    /// outbox.
    pub fn acknowledge_push(&mut self, acked: &[PendingDoc], server_time: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        for doc in acked {
            let Some(rowid) = rowid_in(&tx, doc.id)? else {
                continue;
            };
            write_receipts(&tx, &doc.hashes, server_time)?;
            tx.prepare_cached("INSERT OR REPLACE INTO server_heads(doc, heads) VALUES (?1, ?2)")?
                .execute(params![rowid, encode_heads(&doc.heads)])?;
            tx.prepare_cached("DELETE FROM outbox WHERE doc = ?1 AND local_seq = ?2")?
                .execute(params![rowid, doc.local_seq])?;
            // Edited since the batch was taken: the newer edits stay, on top of what the server
            // now has.
            tx.prepare_cached("UPDATE outbox SET whole = 0 WHERE doc = ?1")?
                .execute([rowid])?;
            tx.prepare_cached("DELETE FROM outbox_changes WHERE doc = ?1 AND local_seq <= ?2")?
                .execute(params![rowid, doc.local_seq])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets what the server acknowledged for these documents (the server said it lacks
    /// their dependencies): the next push sends their whole history.
    pub fn forget_server_heads(&mut self, ids: &[RecordId]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for id in ids {
            tx.prepare_cached(
                "DELETE FROM server_heads WHERE doc = (SELECT rowid FROM documents WHERE id = ?1)",
            )?
            .execute([id.as_bytes().as_slice()])?;
            tx.prepare_cached(
                "UPDATE outbox SET whole = 1 WHERE doc = (SELECT rowid FROM documents WHERE id = ?1)",
            )?
            .execute([id.as_bytes().as_slice()])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The feed position up to which pulled changes are applied.
    pub fn sync_cursor(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_CURSOR],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    }

    /// Server time of the last completed sync, if any.
    pub fn last_sync_at(&self) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_LAST_SYNC],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Records a completed sync (server time).
    pub fn set_last_sync_at(&mut self, server_time: i64) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
            params![META_LAST_SYNC, server_time],
        )?;
        Ok(())
    }

    /// Applies one pulled batch and moves the cursor to `next_cursor`, in one transaction.
    pub fn apply_pull(&mut self, docs: &[PullDoc], next_cursor: u64) -> Result<PullReport> {
        let mut report = PullReport::default();
        let device = self.device;
        let compact_after = self.compact_after;
        // Pulled documents are written through the transaction, not the cache: drop any cached
        // copy first so that a failed batch leaves nothing stale in memory.
        for id in docs.iter().filter_map(|doc| doc.id) {
            self.cache.pop(&id);
        }
        // Documents this device does not have are built from their changes in parallel (the
        // costly part: decoding, applying and reading the record, then the snapshot); documents
        // it has are merged one by one in the transaction below.
        let mut known = Vec::with_capacity(docs.len());
        for doc in docs {
            known.push(match doc.id {
                Some(id) => self.rowid_of(id)?.is_some(),
                None => false,
            });
        }
        // Built in chunks: the next chunk is built (on the rayon pool) while this thread writes
        // the current one, so the serial writes overlap the parallel builds.
        let chunks: Vec<(&[PullDoc], &[bool])> = docs
            .chunks(PULL_CHUNK)
            .zip(known.chunks(PULL_CHUNK))
            .collect();
        let build_chunk = |(docs, known): (&[PullDoc], &[bool])| -> Vec<Option<Result<Built>>> {
            docs.par_iter()
                .zip(known)
                .map(|(pulled, known)| (!known).then(|| build(pulled, device)))
                .collect()
        };
        let mut next = chunks.first().map(|chunk| build_chunk(*chunk));

        let now_ms = self.now_ms();
        let build_id = self.build.clone();
        let tx = self.conn.transaction()?;
        let keeper =
            super::quarantine::Keeper::new(&tx, now_ms, &build_id, self.quarantine_bounds)?;
        for (index, (chunk, _)) in chunks.iter().enumerate() {
            let built = next.take().unwrap_or_default();
            // A document sent whole without its id may be one this device has (its own
            // records, sent back to a store restored from a backup): it is merged below, so no
            // cached copy may outlive the write.
            for built in built.iter().flatten().flatten() {
                self.cache.pop(&built.id);
            }
            let following = chunks.get(index + 1).copied();
            let (written, following) = std::thread::scope(|scope| {
                let builder = following.map(|chunk| scope.spawn(move || build_chunk(chunk)));
                let written = chunk.iter().zip(built).try_for_each(|(pulled, built)| {
                    super::quarantine::write_or_keep(
                        &tx,
                        &mut self.codec,
                        device,
                        compact_after,
                        pulled,
                        built,
                        &mut report,
                        &keeper,
                    )
                });
                (written, builder.map(std::thread::ScopedJoinHandle::join))
            });
            next = match following {
                Some(Ok(built)) => Some(built),
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                None => None,
            };
            written?;
        }
        tx.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?
            .execute(params![
                META_CURSOR,
                i64::try_from(next_cursor).unwrap_or(i64::MAX)
            ])?;
        tx.commit()?;
        self.checkpointer.committed();
        Ok(report)
    }
}
