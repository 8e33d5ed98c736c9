//! Quarantine: documents set aside so that one bad record never stops a sync, and the audit of
//! what officers decided about them.
//!
//! Contract:
//! - **Outgoing.** A document the server refused keeps every local change in the outbox but is
//!   no longer pushed ([`DeviceStore::pending_push`] and [`DeviceStore::pending_count`] leave it
//!   out), so every other document keeps flowing, push and pull. A later local edit of it is kept
//!   and not pushed either: the app decides, with [`DeviceStore::retry_quarantined`] (back to the
//!   outbox: the reason was transient, the record was fixed, or the app was upgraded),
//!   [`DeviceStore::discard_quarantined`] or [`DeviceStore::copy_quarantined_as_new`]. Records
//!   created for another commune before the device enrolled are set aside at enrollment, before
//!   the server ever sees them (code `not_yours`).
//! - **Incoming.** A pulled document whose changes this build cannot apply or read is kept here
//!   with its raw changes, in the transaction that moves the feed cursor past it: the cursor moves
//!   on, other documents flow, and nothing is skipped. Its later changes from the feed join it and
//!   the whole is tried again at once. Every sync also tries again the entries last tried by
//!   another build ([`DeviceStore::build_id`]: an app upgrade), and `retry_quarantined` tries at
//!   once. The same changes tried again by the same build would fail the same way, so a sync does
//!   not spend time on them.
//! - **Bounded.** Changes are kept for at most [`MAX_INCOMING_DOCS`] documents and
//!   [`MAX_INCOMING_BYTES`] in all; a document beyond that is still listed, without its changes
//!   ([`QuarantinedRecord::changes_kept`] is false: a fresh store pulls it again), and at most
//!   [`MAX_INCOMING_LISTED`] incoming documents are listed (beyond, they are only logged).
//! - **Audited.** Every discard, and every copy as new, writes an [`AuditEntry`]: who, when, which
//!   record and why; [`DeviceStore::audit_log`] lists them.
//! - Times are this device's clock corrected by the offset to the server's
//!   ([`DeviceStore::now_ms`]).

mod decisions;
mod incoming;

use rusqlite::{Transaction, params};
use serde::Serialize;

use super::DeviceStore;
use crate::codec::DocCodec;
use crate::record::{RecordId, RecordKind};
use crate::{Error, Result};

pub use decisions::{AuditAction, AuditEntry};
pub(crate) use incoming::Bounds;
pub(in crate::store) use incoming::{Keeper, write_or_keep};

/// Most incoming documents whose changes are kept.
pub const MAX_INCOMING_DOCS: u64 = 1_000;
/// Most bytes of incoming changes kept, all documents together (uncompressed; on disk they are
/// compressed with the record dictionary).
pub const MAX_INCOMING_BYTES: u64 = 16 * 1024 * 1024;
/// Most incoming documents listed (with or without their changes).
pub const MAX_INCOMING_LISTED: u64 = 10_000;
/// Longest reason code and message kept (a server's text is bounded before it is stored).
const MAX_CODE: usize = 64;
const MAX_MESSAGE: usize = 1_000;
/// Longest reason an officer gives for a discard.
pub const MAX_REASON: usize = 2_000;

/// Reason code of an incoming document this build cannot decode, apply or read.
pub const UNREADABLE: &str = "unreadable";
/// Reason code of incoming changes that depend on changes this device does not have.
pub const MISSING_DEPENDENCIES: &str = "missing_dependencies";
/// Reason code of incoming changes for a record this device holds as another kind.
pub const WRONG_KIND: &str = "wrong_kind";
/// Reason code of incoming changes that leave a record breaking its rules.
pub const INVALID: &str = "invalid";

/// Which way a quarantined document was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Pushed by this device and refused by the server.
    Outgoing,
    /// Pulled from the server and not readable by this build.
    Incoming,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outgoing => "outgoing",
            Direction::Incoming => "incoming",
        }
    }

    fn parse(name: &str) -> Result<Self> {
        match name {
            "outgoing" => Ok(Direction::Outgoing),
            "incoming" => Ok(Direction::Incoming),
            other => Err(Error::invalid("direction", format!("unknown {other:?}"))),
        }
    }
}

/// A document set aside, with why and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantinedRecord {
    /// The record. For an incoming document whose id could not be read, an id made from its
    /// changes (`id_known` is false).
    pub record_id: RecordId,
    /// Whether `record_id` is the record's own id.
    pub id_known: bool,
    /// Record kind (as the server or the feed named it).
    pub kind: RecordKind,
    /// Refused on the way out, or unreadable on the way in.
    pub direction: Direction,
    /// Why, for programs: the server's refusal code (outgoing, a
    /// [`RefusalCode`](crate::integrity::RefusalCode) name) or [`UNREADABLE`],
    /// [`MISSING_DEPENDENCIES`], [`WRONG_KIND`], [`INVALID`] (incoming).
    pub code: String,
    /// Why, for people.
    pub message: String,
    /// When it was first set aside (ms since the epoch, corrected device clock).
    pub first_at: i64,
    /// When it was last refused or tried.
    pub last_at: i64,
    /// How many times it was refused (outgoing) or tried (incoming).
    pub attempts: u32,
    /// Incoming: whether its changes are kept (false beyond the bound). Outgoing: true (its
    /// changes stay in the outbox).
    pub changes_kept: bool,
    /// Incoming: bytes of changes kept.
    pub kept_bytes: u64,
}

/// A pushed document the server refused, as the sync client hands it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedDoc {
    /// The record.
    pub id: RecordId,
    /// Its kind.
    pub kind: RecordKind,
    /// The server's reason code.
    pub code: String,
    /// The server's explanation.
    pub message: String,
}

/// A quarantine row as read for an action.
struct Entry {
    rowid: i64,
    record_id: RecordId,
    id_known: bool,
    kind: RecordKind,
    direction: Direction,
    code: String,
    message: String,
    changes: Option<Vec<Vec<u8>>>,
    /// Bytes of `changes` as counted against the bound.
    bytes: u64,
    received_at: i64,
}

fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Length-prefixed changes, compressed with the record dictionary (the outbox's framing).
fn pack(codec: &mut DocCodec, changes: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for change in changes {
        let len = u32::try_from(change.len())
            .map_err(|_| Error::invalid("changes", "a change of more than 4 GiB"))?;
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(change);
    }
    codec.encode(&bytes)
}

fn unpack(codec: &mut DocCodec, id: RecordId, stored: &[u8]) -> Result<Vec<Vec<u8>>> {
    let corrupt = |reason: &str| Error::Corrupt {
        id,
        reason: format!("quarantined changes: {reason}"),
    };
    let mut buffer = Vec::new();
    codec
        .decode_into(stored, &mut buffer)
        .map_err(|e| corrupt(&e))?;
    let mut changes = Vec::new();
    let mut rest = buffer.as_slice();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("truncated length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(corrupt("truncated"));
        }
        let (change, tail) = tail.split_at(len);
        changes.push(change.to_vec());
        rest = tail;
    }
    Ok(changes)
}

fn read_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, RawEntry)> {
    Ok((
        row.get(0)?,
        RawEntry {
            record_id: row.get(1)?,
            id_known: row.get(2)?,
            kind: row.get(3)?,
            direction: row.get(4)?,
            code: row.get(5)?,
            message: row.get(6)?,
            changes: row.get(7)?,
            bytes: row.get(8)?,
            received_at: row.get(9)?,
        },
    ))
}

struct RawEntry {
    record_id: Vec<u8>,
    id_known: bool,
    kind: i64,
    direction: String,
    code: String,
    message: String,
    changes: Option<Vec<u8>>,
    bytes: i64,
    received_at: Option<i64>,
}

const ENTRY_COLUMNS: &str =
    "rowid, record_id, id_known, kind, direction, code, message, changes, bytes, received_at";

fn entry_of(codec: &mut DocCodec, rowid: i64, raw: RawEntry) -> Result<Entry> {
    let record_id = RecordId::from_slice(&raw.record_id)
        .ok_or_else(|| Error::invalid("quarantine", "bad record id bytes in store"))?;
    let kind = RecordKind::from_code(raw.kind)
        .ok_or_else(|| Error::invalid("quarantine", "bad kind in store"))?;
    let changes = match raw.changes {
        Some(stored) => Some(unpack(codec, record_id, &stored)?),
        None => None,
    };
    Ok(Entry {
        rowid,
        record_id,
        id_known: raw.id_known,
        kind,
        direction: Direction::parse(&raw.direction)?,
        code: raw.code,
        message: raw.message,
        changes,
        bytes: u64::try_from(raw.bytes).unwrap_or(0),
        received_at: raw.received_at.unwrap_or(0),
    })
}

fn entries_of(
    conn: &rusqlite::Connection,
    codec: &mut DocCodec,
    id: RecordId,
) -> Result<Vec<Entry>> {
    let raws: Vec<(i64, RawEntry)> = conn
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM quarantine WHERE record_id = ?1 ORDER BY direction DESC"
        ))?
        .query_map([id.as_bytes().as_slice()], read_entry)?
        .collect::<rusqlite::Result<_>>()?;
    raws.into_iter()
        .map(|(rowid, raw)| entry_of(codec, rowid, raw))
        .collect()
}

/// Sets aside the outbox's documents of a commune other than `commune` (created before the
/// device enrolled): the server would refuse them. Returns how many.
pub(super) fn set_aside_other_communes(
    tx: &Transaction<'_>,
    commune: &str,
    now_ms: i64,
) -> Result<usize> {
    let strays: Vec<(Vec<u8>, i64, String)> = tx
        .prepare(
            "SELECT d.id, d.kind, coalesce(a.commune_code, r.commune_code) FROM outbox o
             JOIN documents d ON d.rowid = o.doc
             LEFT JOIN applications a ON a.doc = o.doc
             LEFT JOIN citizen_requests r ON r.doc = o.doc
             WHERE coalesce(a.commune_code, r.commune_code) != ?1",
        )?
        .query_map([commune], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut set_aside = 0;
    for (id, kind, other) in &strays {
        let message = format!(
            "created for commune {other} before this device enrolled in commune {commune}: \
             copy it as a new record of {commune}, or discard it"
        );
        // Already set aside (by the server's refusal, say): left as it is.
        set_aside += tx
            .prepare_cached(
                "INSERT INTO quarantine(record_id, kind, direction, code, message, first_at, last_at)
                 VALUES (?1, ?2, 'outgoing', 'not_yours', ?3, ?4, ?4)
                 ON CONFLICT(record_id, direction) DO NOTHING",
            )?
            .execute(params![id, kind, bounded(&message, MAX_MESSAGE), now_ms])?;
    }
    Ok(set_aside)
}

fn upsert_outgoing(
    tx: &Transaction<'_>,
    id: &[u8],
    kind: i64,
    code: &str,
    message: &str,
    now_ms: i64,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO quarantine(record_id, kind, direction, code, message, first_at, last_at)
         VALUES (?1, ?2, 'outgoing', ?3, ?4, ?5, ?5)
         ON CONFLICT(record_id, direction) DO UPDATE SET
             code = excluded.code, message = excluded.message, last_at = excluded.last_at,
             attempts = attempts + 1",
    )?
    .execute(params![
        id,
        kind,
        bounded(code, MAX_CODE),
        bounded(message, MAX_MESSAGE),
        now_ms
    ])?;
    Ok(())
}

impl DeviceStore {
    /// Every document set aside, oldest first.
    pub fn quarantined(&self) -> Result<Vec<QuarantinedRecord>> {
        type Row = (
            Vec<u8>,
            bool,
            i64,
            String,
            String,
            String,
            i64,
            i64,
            u32,
            bool,
            i64,
        );
        let rows: Vec<Row> = self
            .conn
            .prepare_cached(
                "SELECT record_id, id_known, kind, direction, code, message, first_at, last_at,
                        attempts, direction = 'outgoing' OR changes IS NOT NULL, bytes
                 FROM quarantine ORDER BY first_at, rowid",
            )?
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                    row.get(7)?,
                    row.get(8)?,
                    row.get(9)?,
                    row.get(10)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(
                |(
                    id,
                    id_known,
                    kind,
                    direction,
                    code,
                    message,
                    first_at,
                    last_at,
                    attempts,
                    kept,
                    bytes,
                )| {
                    Ok(QuarantinedRecord {
                        record_id: RecordId::from_slice(&id)
                            .ok_or_else(|| Error::invalid("quarantine", "bad record id"))?,
                        id_known,
                        kind: RecordKind::from_code(kind)
                            .ok_or_else(|| Error::invalid("quarantine", "bad kind"))?,
                        direction: Direction::parse(&direction)?,
                        code,
                        message,
                        first_at,
                        last_at,
                        attempts,
                        changes_kept: kept,
                        kept_bytes: u64::try_from(bytes).unwrap_or(0),
                    })
                },
            )
            .collect()
    }

    /// How many documents are set aside (both directions).
    pub fn quarantined_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM quarantine", [], |row| row.get(0))?)
    }

    /// Sets aside pushed documents the server refused (the sync client calls it with the
    /// response's refusals). A document refused again counts one more attempt.
    pub fn quarantine_refused(&mut self, refused: &[RefusedDoc]) -> Result<()> {
        if refused.is_empty() {
            return Ok(());
        }
        let now = self.now_ms();
        let tx = self.conn.transaction()?;
        for doc in refused {
            upsert_outgoing(
                &tx,
                doc.id.as_bytes(),
                doc.kind.code(),
                &doc.code,
                &doc.message,
                now,
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Takes record `id` out of the quarantine when it can go: an outgoing document goes back to
    /// the outbox (the next sync pushes it, with any edit made since); an incoming one is tried at
    /// once. Returns whether the record left the quarantine (false: incoming changes that still
    /// cannot be applied, now one attempt more). [`Error::NotFound`] when it is not quarantined.
    pub fn retry_quarantined(&mut self, id: RecordId) -> Result<bool> {
        let entries = entries_of(&self.conn, &mut self.codec, id)?;
        if entries.is_empty() {
            return Err(Error::NotFound(id));
        }
        let mut all_left = true;
        for entry in entries {
            match entry.direction {
                Direction::Outgoing => {
                    self.conn
                        .execute("DELETE FROM quarantine WHERE rowid = ?1", [entry.rowid])?;
                }
                Direction::Incoming => all_left &= self.try_incoming(entry)?.is_some(),
            }
        }
        Ok(all_left)
    }
}

#[cfg(test)]
mod tests;
