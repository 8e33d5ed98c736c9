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

use std::collections::{HashMap, HashSet};

use automerge::ChangeHash;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use super::sync_state::{Built, PullDoc, PullReport, build, decode_heads, write_pulled};
use super::{DeviceStore, load_document, projection, rowid_in};
use crate::codec::DocCodec;
use crate::integrity::check_officer;
use crate::record::{
    DeviceId, NewApplication, NewCitizenRequest, Record, RecordDoc, RecordId, RecordKind,
    RequestStatus, Source, Status, doc::actor_for, record_id_of_changes,
};
use crate::{Error, Result};

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

/// What an officer did about a quarantined record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// Discarded: its unsynced local changes (or its kept incoming changes) are gone.
    Discarded,
    /// Replaced by a new record with the same content; the old one discarded.
    CopiedAsNew,
}

impl AuditAction {
    fn as_str(self) -> &'static str {
        match self {
            AuditAction::Discarded => "discarded",
            AuditAction::CopiedAsNew => "copied_as_new",
        }
    }

    fn parse(name: &str) -> Result<Self> {
        match name {
            "discarded" => Ok(AuditAction::Discarded),
            "copied_as_new" => Ok(AuditAction::CopiedAsNew),
            other => Err(Error::invalid("audit action", format!("unknown {other:?}"))),
        }
    }
}

/// One entry of the audit log: who did what to which quarantined record, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Order of the entries.
    pub seq: i64,
    /// When (ms since the epoch, corrected device clock).
    pub at: i64,
    /// The officer who decided.
    pub officer: String,
    /// What was done.
    pub action: AuditAction,
    /// The quarantined record.
    pub record_id: RecordId,
    /// Its kind.
    pub kind: RecordKind,
    /// Which way it had been going.
    pub direction: Direction,
    /// The reason code it was quarantined with.
    pub code: String,
    /// The message it was quarantined with.
    pub message: String,
    /// The officer's reason.
    pub reason: String,
    /// Copy as new: the record that replaces it.
    pub replacement: Option<RecordId>,
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
pub(super) struct Keeper<'a> {
    pub(super) now_ms: i64,
    pub(super) build: &'a str,
    pub(super) bounds: Bounds,
    /// Whether any incoming entry exists (when none, no lookup is made per pulled document).
    pub(super) any_incoming: bool,
    /// Read at the first document kept, then kept up to date: one count per pull, not per
    /// document.
    totals: std::cell::Cell<Option<Totals>>,
}

impl<'a> Keeper<'a> {
    pub(super) fn new(
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
pub(super) fn write_or_keep(
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

/// Removes this device's changes of record `id` that the server never acknowledged, and the
/// record itself when nothing else remains (the server never had it). Changes from other
/// devices stay, and so do this device's changes they build on. Returns whether the record is
/// gone.
fn drop_unacknowledged(
    tx: &Transaction<'_>,
    codec: &mut DocCodec,
    device: DeviceId,
    id: RecordId,
) -> Result<bool> {
    let Some(rowid) = rowid_in(tx, id)? else {
        return Ok(true);
    };
    let acked: Vec<ChangeHash> = match tx
        .prepare_cached("SELECT heads FROM server_heads WHERE doc = ?1")?
        .query_row([rowid], |row| row.get::<_, Vec<u8>>(0))
        .optional()?
    {
        Some(bytes) => decode_heads(&bytes)?,
        None => Vec::new(),
    };
    let mut loaded = load_document(tx, codec, id, device)?;
    let kind = loaded.doc.kind();
    let actor = actor_for(device);
    let mut dropped: HashSet<ChangeHash> = loaded
        .doc
        .changes_since(&acked)
        .iter()
        .filter(|change| change.actor_id() == &actor)
        .map(automerge::Change::hash)
        .collect();
    let all = loaded.doc.changes_since(&[]);
    let deps: HashMap<ChangeHash, Vec<ChangeHash>> = all
        .iter()
        .map(|change| (change.hash(), change.deps().to_vec()))
        .collect();
    // What a kept change builds on is kept too (bounded: each change leaves `dropped` once).
    let mut stack: Vec<ChangeHash> = all
        .iter()
        .filter(|change| !dropped.contains(&change.hash()))
        .flat_map(|change| change.deps().to_vec())
        .collect();
    while let Some(hash) = stack.pop() {
        if dropped.remove(&hash)
            && let Some(parents) = deps.get(&hash)
        {
            stack.extend(parents.iter().copied());
        }
    }
    tx.prepare_cached("DELETE FROM outbox WHERE doc = ?1")?
        .execute([rowid])?;
    tx.prepare_cached("DELETE FROM outbox_changes WHERE doc = ?1")?
        .execute([rowid])?;
    if dropped.is_empty() {
        return Ok(false);
    }
    let kept: Vec<automerge::Change> = all
        .into_iter()
        .filter(|change| !dropped.contains(&change.hash()))
        .collect();
    if kept.is_empty() {
        tx.prepare_cached("DELETE FROM search_index WHERE rowid = ?1")?
            .execute([rowid])?;
        // Chunks, projection, outbox and server heads go with it (foreign keys cascade).
        tx.prepare_cached("DELETE FROM documents WHERE rowid = ?1")?
            .execute([rowid])?;
        return Ok(true);
    }
    let (mut doc, record) = RecordDoc::from_decoded(Some(id), kind, kept, device, Source::Server)?;
    let conflicted = !doc.conflicts().is_empty();
    let snapshot = codec.encode(&doc.save_uncompressed())?;
    tx.prepare_cached("DELETE FROM document_chunks WHERE doc = ?1")?
        .execute([rowid])?;
    tx.prepare_cached("UPDATE documents SET snapshot = ?2, chunk_count = 0 WHERE rowid = ?1")?
        .execute(params![rowid, snapshot])?;
    projection::write(tx, rowid, &record, conflicted)?;
    Ok(false)
}

fn write_audit(
    tx: &Transaction<'_>,
    at: i64,
    officer: &str,
    action: AuditAction,
    entry: &Entry,
    reason: &str,
    replacement: Option<RecordId>,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO audit_log(at, officer, action, record_id, kind, direction, code, message,
                               reason, replacement_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        at,
        officer,
        action.as_str(),
        entry.record_id.as_bytes().as_slice(),
        entry.kind.code(),
        entry.direction.as_str(),
        entry.code,
        entry.message,
        reason,
        replacement.map(|id| id.as_bytes().to_vec()),
    ])?;
    Ok(())
}

/// The shortest way through the application workflow from received to `to`.
fn application_path(to: Status, withdrawal_allowed: bool) -> Option<Vec<Status>> {
    shortest_path(Status::Received, to, &Status::ALL, |a, b| {
        a.can_move_to(b, withdrawal_allowed)
    })
}

/// The shortest way through the request workflow from received to `to`.
fn request_path(to: RequestStatus) -> Option<Vec<RequestStatus>> {
    shortest_path(RequestStatus::Received, to, &RequestStatus::ALL, |a, b| {
        a.check_transition(b).is_ok()
    })
}

/// Breadth-first over a handful of statuses.
fn shortest_path<S: Copy + Eq + std::hash::Hash>(
    from: S,
    to: S,
    all: &[S],
    step: impl Fn(S, S) -> bool,
) -> Option<Vec<S>> {
    let mut previous: HashMap<S, S> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([from]);
    let mut seen: HashSet<S> = HashSet::from([from]);
    while let Some(at) = queue.pop_front() {
        if at == to {
            let mut path = Vec::new();
            let mut cursor = to;
            while cursor != from {
                path.push(cursor);
                cursor = *previous.get(&cursor)?;
            }
            path.reverse();
            return Some(path);
        }
        for &next in all {
            if step(at, next) && seen.insert(next) {
                previous.insert(next, at);
                queue.push_back(next);
            }
        }
    }
    None
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
    fn try_incoming(&mut self, entry: Entry) -> Result<Option<PullReport>> {
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

    /// Discards quarantined record `id` as `officer` decided, for `reason`: an outgoing record
    /// loses this device's changes the server never acknowledged (and the record itself goes when
    /// the server never had it); an incoming one loses its kept changes. Writes an audit entry in
    /// the same transaction. [`Error::NotFound`] when it is not quarantined.
    pub fn discard_quarantined(&mut self, id: RecordId, officer: &str, reason: &str) -> Result<()> {
        check_officer(officer)?;
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > MAX_REASON {
            return Err(Error::invalid(
                "reason",
                format!("must be 1 to {MAX_REASON} bytes"),
            ));
        }
        self.discard(id, officer, reason, AuditAction::Discarded, None)
    }

    fn discard(
        &mut self,
        id: RecordId,
        officer: &str,
        reason: &str,
        action: AuditAction,
        replacement: Option<RecordId>,
    ) -> Result<()> {
        let entries = entries_of(&self.conn, &mut self.codec, id)?;
        if entries.is_empty() {
            return Err(Error::NotFound(id));
        }
        let now = self.now_ms();
        let device = self.device;
        self.cache.pop(&id);
        let tx = self.conn.transaction()?;
        for entry in &entries {
            if entry.direction == Direction::Outgoing {
                drop_unacknowledged(&tx, &mut self.codec, device, id)?;
            }
            tx.prepare_cached("DELETE FROM quarantine WHERE rowid = ?1")?
                .execute([entry.rowid])?;
            write_audit(&tx, now, officer, action, entry, reason, replacement)?;
        }
        tx.commit()?;
        self.checkpointer.committed();
        Ok(())
    }

    /// The fix for a refused record whose history cannot be accepted (created with another
    /// commune's code, an immutable field changed, a broken history): creates a new record with
    /// the same content through the normal create path, for the commune this device enrolled in
    /// (the original's when not enrolled), received at the same time, then moves it along the
    /// workflow to the original's status; the original is discarded with an audit entry naming
    /// the copy. Returns the new record. Only outgoing (refused) records can be copied: an
    /// incoming one cannot be read.
    pub fn copy_quarantined_as_new(&mut self, id: RecordId, officer: &str) -> Result<Record> {
        check_officer(officer)?;
        let entries = entries_of(&self.conn, &mut self.codec, id)?;
        if !entries.iter().any(|e| e.direction == Direction::Outgoing) {
            return match entries.is_empty() {
                true => Err(Error::NotFound(id)),
                false => Err(Error::invalid(
                    "record",
                    "only a record refused by the server can be copied; this one was not readable",
                )),
            };
        }
        let original = self.get(id)?;
        let commune = self
            .enrolled_commune
            .clone()
            .unwrap_or_else(|| original.commune_code().to_owned());
        let copy = match original {
            Record::Application(app) => {
                let withdrawal = self.procedure(&app.procedure_code)?.withdrawal_allowed;
                let path = application_path(app.status, withdrawal).ok_or_else(|| {
                    Error::invalid("status", format!("{} cannot be reached again", app.status))
                })?;
                let copy = self.create_application(
                    officer,
                    NewApplication {
                        commune_code: commune,
                        procedure_code: app.procedure_code,
                        applicant: app.applicant,
                        received_at: Some(app.received_at),
                        documents: app.documents,
                        fees: app.fees,
                        assignee: app.assignee,
                        notes: app.notes,
                    },
                )?;
                for status in path {
                    self.transition(copy.id, officer, status)?;
                }
                Record::Application(self.get_application(copy.id)?)
            }
            Record::CitizenRequest(request) => {
                let path = request_path(request.status).ok_or_else(|| {
                    Error::invalid(
                        "status",
                        format!("{} cannot be reached again", request.status),
                    )
                })?;
                let copy = self.create_citizen_request(
                    officer,
                    NewCitizenRequest {
                        commune_code: commune,
                        category: request.category,
                        village: request.village,
                        description: request.description,
                        reporter_name: request.reporter_name,
                        reporter_contact: request.reporter_contact,
                        received_at: Some(request.received_at),
                        assignee: request.assignee,
                        notes: request.notes,
                    },
                )?;
                for status in path {
                    self.update_citizen_request(copy.id, officer, |r| r.status = status)?;
                }
                Record::CitizenRequest(self.get_citizen_request(copy.id)?)
            }
        };
        let reason = format!("copied as new record {}", copy.id());
        self.discard(
            id,
            officer,
            &reason,
            AuditAction::CopiedAsNew,
            Some(copy.id()),
        )?;
        Ok(copy)
    }

    /// Every audit entry, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        type Row = (
            i64,
            i64,
            String,
            String,
            Vec<u8>,
            i64,
            String,
            String,
            String,
            String,
            Option<Vec<u8>>,
        );
        let rows: Vec<Row> = self
            .conn
            .prepare_cached(
                "SELECT seq, at, officer, action, record_id, kind, direction, code, message,
                        reason, replacement_id
                 FROM audit_log ORDER BY seq",
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
        let id = |bytes: &[u8]| {
            RecordId::from_slice(bytes).ok_or_else(|| Error::invalid("audit_log", "bad record id"))
        };
        rows.into_iter()
            .map(
                |(
                    seq,
                    at,
                    officer,
                    action,
                    record,
                    kind,
                    direction,
                    code,
                    message,
                    reason,
                    replacement,
                )| {
                    Ok(AuditEntry {
                        seq,
                        at,
                        officer,
                        action: AuditAction::parse(&action)?,
                        record_id: id(&record)?,
                        kind: RecordKind::from_code(kind)
                            .ok_or_else(|| Error::invalid("audit_log", "bad kind"))?,
                        direction: Direction::parse(&direction)?,
                        code,
                        message,
                        reason,
                        replacement: replacement.as_deref().map(id).transpose()?,
                    })
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests;
