//! The incoming side: pulled documents this build cannot apply, kept with their changes within
//! the bounds, joined by their later changes, and tried again by another build.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, Transaction, params};

use super::{
    ENTRY_COLUMNS, Entry, INVALID, MAX_INCOMING_BYTES, MAX_INCOMING_DOCS, MAX_INCOMING_LISTED,
    MAX_MESSAGE, MISSING_DEPENDENCIES, RawEntry, UNREADABLE, WRONG_KIND, bounded, entry_of, pack,
    read_entry,
};
use crate::codec::DocCodec;
use crate::record::{DeviceId, RecordId, record_id_of_changes};
use crate::store::sync_state::{Built, PullDoc, PullReport, build, write_pulled};
use crate::store::{DeviceStore, rowid_in};
use crate::{Error, Result};

/// The code an incoming document is kept with, for the error that kept it out.
fn incoming_code(err: &Error) -> &'static str {
    match err {
        Error::InvalidInput { reason, .. } if reason.contains("depend on") => MISSING_DEPENDENCIES,
        Error::InvalidInput { .. } => INVALID,
        Error::WrongKind { .. } => WRONG_KIND,
        _ => UNREADABLE,
    }
}

/// An id for a document whose own cannot be read: the first 16 bytes of the SHA-256 of its
/// changes, so that the same document is kept once.
fn id_from_changes(changes: &[Vec<u8>]) -> RecordId {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for change in changes {
        hasher.update((change.len() as u64).to_le_bytes());
        hasher.update(change);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    RecordId(uuid::Uuid::from_bytes(bytes))
}

/// How much the incoming quarantine keeps (the `MAX_INCOMING_*` constants; tests lower them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) docs: u64,
    pub(crate) bytes: u64,
    pub(crate) listed: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            docs: MAX_INCOMING_DOCS,
            bytes: MAX_INCOMING_BYTES,
            listed: MAX_INCOMING_LISTED,
        }
    }
}

/// What the incoming quarantine holds: documents with changes kept, their bytes, all listed.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    docs: u64,
    bytes: u64,
    listed: u64,
}

/// What keeping pulled documents needs of the store, for one pull.
pub(in crate::store) struct Keeper<'a> {
    pub(in crate::store) now_ms: i64,
    pub(in crate::store) build: &'a str,
    pub(in crate::store) bounds: Bounds,
    /// Whether any incoming entry exists (when none, no lookup is made per pulled document).
    pub(in crate::store) any_incoming: bool,
    /// Read at the first document kept, then kept up to date: one count per pull, not per
    /// document.
    totals: std::cell::Cell<Option<Totals>>,
}

impl<'a> Keeper<'a> {
    pub(in crate::store) fn new(
        tx: &Transaction<'_>,
        now_ms: i64,
        build: &'a str,
        bounds: Bounds,
    ) -> Result<Self> {
        let any_incoming = tx
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM quarantine WHERE direction = 'incoming')")?
            .query_row([], |row| row.get(0))?;
        Ok(Keeper {
            now_ms,
            build,
            bounds,
            any_incoming,
            totals: std::cell::Cell::new(None),
        })
    }

    fn totals(&self, tx: &Transaction<'_>) -> Result<Totals> {
        if let Some(totals) = self.totals.get() {
            return Ok(totals);
        }
        let totals = tx
            .prepare_cached(
                "SELECT count(changes), coalesce(sum(bytes), 0), count(*) FROM quarantine
                 WHERE direction = 'incoming'",
            )?
            .query_row([], |row| {
                Ok(Totals {
                    docs: row.get(0)?,
                    bytes: row.get(1)?,
                    listed: row.get(2)?,
                })
            })?;
        self.totals.set(Some(totals));
        Ok(totals)
    }
}

fn incoming_entry(
    tx: &Transaction<'_>,
    codec: &mut DocCodec,
    id: RecordId,
) -> Result<Option<Entry>> {
    let raw = tx
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM quarantine WHERE record_id = ?1 AND direction = 'incoming'"
        ))?
        .query_row([id.as_bytes().as_slice()], read_entry)
        .optional()?;
    raw.map(|(rowid, raw)| entry_of(codec, rowid, raw))
        .transpose()
}

/// Keeps `new_changes` of a pulled document that could not be applied (`err` says why), joined
/// to what is already kept for the record, within the bounds.
fn keep_incoming(
    tx: &Transaction<'_>,
    codec: &mut DocCodec,
    pulled: &PullDoc,
    new_changes: &[Vec<u8>],
    err: &Error,
    keeper: &Keeper<'_>,
) -> Result<RecordId> {
    let (id, id_known) = match pulled.id.or_else(|| record_id_of_changes(&pulled.changes)) {
        Some(id) => (id, true),
        None => (id_from_changes(&pulled.changes), false),
    };
    let code = incoming_code(err);
    let message = bounded(&err.to_string(), MAX_MESSAGE);
    let existing = incoming_entry(tx, codec, id)?;
    let (mut changes, was_dropped) = match &existing {
        Some(entry) => match &entry.changes {
            Some(kept) => (kept.clone(), false),
            None => (Vec::new(), true),
        },
        None => (Vec::new(), false),
    };
    if !was_dropped {
        let known: HashSet<&[u8]> = changes.iter().map(Vec::as_slice).collect();
        let fresh: Vec<Vec<u8>> = new_changes
            .iter()
            .filter(|change| !known.contains(change.as_slice()))
            .cloned()
            .collect();
        changes.extend(fresh);
    }
    let bytes: u64 = changes.iter().map(|c| c.len() as u64).sum();
    let totals = keeper.totals(tx)?;
    // What the others hold: the totals less this document's own entry.
    let (own_docs, own_bytes, own_listed) = match &existing {
        Some(entry) => (u64::from(entry.changes.is_some()), entry.bytes, 1),
        None => (0, 0, 0),
    };
    let others = totals.docs.saturating_sub(own_docs);
    let other_bytes = totals.bytes.saturating_sub(own_bytes);
    let listed = totals.listed.saturating_sub(own_listed);
    if existing.is_none() && listed >= keeper.bounds.listed {
        tracing::warn!(%id, code, %message, "pulled document not readable, quarantine full");
        return Ok(id);
    }
    let keep = !was_dropped
        && others < keeper.bounds.docs
        && other_bytes.saturating_add(bytes) <= keeper.bounds.bytes;
    let (stored, stored_bytes, message) = if keep {
        (Some(pack(codec, &changes)?), bytes, message)
    } else {
        (
            None,
            0,
            bounded(
                &format!(
                    "{message} (its changes were not kept: over the quarantine's bound; a fresh \
                     store pulls them again)"
                ),
                MAX_MESSAGE,
            ),
        )
    };
    let received_at = existing.as_ref().map_or(pulled.received_at, |e| {
        e.received_at.max(pulled.received_at)
    });
    tx.prepare_cached(
        "INSERT INTO quarantine(record_id, id_known, kind, direction, code, message, first_at,
                                last_at, attempts, changes, bytes, received_at, tried_by)
         VALUES (?1, ?2, ?3, 'incoming', ?4, ?5, ?6, ?6, 1, ?7, ?8, ?9, ?10)
         ON CONFLICT(record_id, direction) DO UPDATE SET
             code = excluded.code, message = excluded.message, last_at = excluded.last_at,
             attempts = attempts + 1, changes = excluded.changes, bytes = excluded.bytes,
             received_at = excluded.received_at, tried_by = excluded.tried_by",
    )?
    .execute(params![
        id.as_bytes().as_slice(),
        id_known,
        pulled.kind.code(),
        code,
        message,
        keeper.now_ms,
        stored,
        i64::try_from(stored_bytes).unwrap_or(i64::MAX),
        received_at,
        keeper.build,
    ])?;
    keeper.totals.set(Some(Totals {
        docs: others + u64::from(keep),
        bytes: other_bytes + stored_bytes,
        listed: listed + 1,
    }));
    Ok(id)
}

/// Writes one pulled document in the pull's transaction, or keeps it in the quarantine when this
/// build cannot apply it. Changes already kept for the record are tried together with these.
#[allow(clippy::too_many_arguments)]
pub(in crate::store) fn write_or_keep(
    tx: &Transaction<'_>,
    codec: &mut DocCodec,
    device: DeviceId,
    compact_after: u32,
    pulled: &PullDoc,
    built: Option<Result<Built>>,
    report: &mut PullReport,
    keeper: &Keeper<'_>,
) -> Result<()> {
    let kept = match (keeper.any_incoming, pulled.id) {
        (true, Some(id)) => incoming_entry(tx, codec, id)?,
        _ => None,
    };
    let outcome = match &kept {
        // Earlier changes of this record are kept: these may be what they were waiting for.
        Some(Entry {
            rowid,
            changes: Some(earlier),
            received_at,
            ..
        }) => {
            let mut changes = earlier.clone();
            changes.extend(pulled.changes.iter().cloned());
            let joined = PullDoc {
                id: pulled.id,
                kind: pulled.kind,
                changes,
                received_at: pulled.received_at.max(*received_at),
            };
            let built = match joined.id {
                Some(id) if rowid_in(tx, id)?.is_some() => None,
                _ => Some(build(&joined, device)),
            };
            let outcome = write_pulled(tx, codec, device, compact_after, &joined, built, report)?;
            if outcome.is_none() {
                tx.prepare_cached("DELETE FROM quarantine WHERE rowid = ?1")?
                    .execute([rowid])?;
            }
            outcome
        }
        // Kept without its changes (over the bound): these alone cannot apply either.
        Some(Entry { changes: None, .. }) => Some(Error::invalid(
            "changes",
            "they depend on changes that were not received",
        )),
        None => write_pulled(tx, codec, device, compact_after, pulled, built, report)?,
    };
    if let Some(err) = outcome {
        let id = keep_incoming(tx, codec, pulled, &pulled.changes, &err, keeper)?;
        tracing::warn!(%id, %err, "pulled document set aside in the quarantine");
        report.rejected.push((id, err.to_string()));
        report.rejected_changes += pulled.changes.len() as u64;
    }
    Ok(())
}

impl DeviceStore {
    /// Tries again the incoming documents last tried by another build (after an app upgrade);
    /// the sync client calls it at the start of every sync. Returns what was applied.
    pub fn retry_incoming_quarantine(&mut self) -> Result<PullReport> {
        let raws: Vec<(i64, RawEntry)> = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM quarantine
                 WHERE direction = 'incoming' AND changes IS NOT NULL
                   AND (tried_by IS NULL OR tried_by != ?1)
                 ORDER BY rowid LIMIT {MAX_INCOMING_DOCS}"
            ))?
            .query_map([&self.build], read_entry)?
            .collect::<rusqlite::Result<_>>()?;
        let mut report = PullReport::default();
        for (rowid, raw) in raws {
            let entry = entry_of(&mut self.codec, rowid, raw)?;
            if let Some(applied) = self.try_incoming(entry)? {
                report.created += applied.created;
                report.updated += applied.updated;
                report.conflicted.extend(applied.conflicted);
            }
        }
        Ok(report)
    }

    /// Applies an incoming entry's kept changes in one transaction: removed from the quarantine
    /// when they apply (`Some` with what they did), one attempt more when not (`None`).
    pub(super) fn try_incoming(&mut self, entry: Entry) -> Result<Option<PullReport>> {
        let Some(changes) = entry.changes else {
            return Ok(None);
        };
        let device = self.device;
        let compact_after = self.compact_after;
        let now = self.now_ms();
        let pulled = PullDoc {
            id: entry.id_known.then_some(entry.record_id),
            kind: entry.kind,
            changes,
            received_at: entry.received_at,
        };
        self.cache.pop(&entry.record_id);
        let mut report = PullReport::default();
        let tx = self.conn.transaction()?;
        let built = match pulled.id {
            Some(id) if rowid_in(&tx, id)?.is_some() => None,
            _ => Some(build(&pulled, device)),
        };
        let outcome = write_pulled(
            &tx,
            &mut self.codec,
            device,
            compact_after,
            &pulled,
            built,
            &mut report,
        )?;
        let applied = match outcome {
            None => {
                tx.prepare_cached("DELETE FROM quarantine WHERE rowid = ?1")?
                    .execute([entry.rowid])?;
                Some(report)
            }
            Some(err) => {
                tx.prepare_cached(
                    "UPDATE quarantine SET attempts = attempts + 1, last_at = ?2, code = ?3,
                            message = ?4, tried_by = ?5
                     WHERE rowid = ?1",
                )?
                .execute(params![
                    entry.rowid,
                    now,
                    incoming_code(&err),
                    bounded(&err.to_string(), MAX_MESSAGE),
                    self.build
                ])?;
                None
            }
        };
        tx.commit()?;
        self.checkpointer.committed();
        Ok(applied)
    }
}
