//! What officers decide about quarantined records: discard (this device's unacknowledged changes
//! go, and the record if the server never had it) or copy as new, each written to the audit log.

use std::collections::{HashMap, HashSet};

use automerge::ChangeHash;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use super::{Direction, Entry, MAX_REASON, entries_of};
use crate::codec::DocCodec;
use crate::integrity::check_officer;
use crate::record::{
    DeviceId, NewApplication, NewCitizenRequest, Record, RecordDoc, RecordId, RecordKind,
    RequestStatus, Source, Status, doc::actor_for,
};
use crate::store::sync_state::decode_heads;
use crate::store::{DeviceStore, load_document, projection, rowid_in};
use crate::{Error, Result};

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
pub(super) fn application_path(to: Status, withdrawal_allowed: bool) -> Option<Vec<Status>> {
    shortest_path(Status::Received, to, &Status::ALL, |a, b| {
        a.can_move_to(b, withdrawal_allowed)
    })
}

/// The shortest way through the request workflow from received to `to`.
pub(super) fn request_path(to: RequestStatus) -> Option<Vec<RequestStatus>> {
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
                        form_values: app.form_values,
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
