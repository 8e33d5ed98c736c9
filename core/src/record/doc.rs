//! [`RecordDoc`]: the Automerge document of one record.
//!
//! Every edit is one Automerge change whose message names the officer and the fields it touched
//! (`{"o":"officer","f":["status"]}`), whose actor is the device and whose time is the device
//! clock: that is the record's history. Correctness never depends on that time; history is
//! ordered causally.

use std::collections::{HashMap, HashSet};

use automerge::transaction::Transactable;
use automerge::{
    ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
};
use autosurgeon::{Reconcile, hydrate, reconcile};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::types::{Application, CitizenRequest, DeviceId, Record, RecordId, RecordKind};
use crate::{Error, Result};

/// Where remote changes come from, which decides how much of them is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Any replica, perhaps hostile (what the server receives, or a file from another device):
    /// besides decoding, applying and reading as a valid record, the changes must read back from
    /// the document as they were sent, which costs rebuilding them.
    Untrusted,
    /// The province server's feed: the server checked all that when the changes were pushed.
    Server,
}

/// One record's Automerge document.
#[derive(Debug)]
pub struct RecordDoc {
    id: RecordId,
    kind: RecordKind,
    doc: AutoCommit,
}

/// A single-valued field that holds concurrent different values after a merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// Dotted path of the field (`status`, `applicant.phone`, `fees[0].paid`).
    pub field: String,
    /// The competing values; the first is the one reads currently show.
    pub values: Vec<ConflictCandidate>,
}

/// One of the competing values of a conflict, with who wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictCandidate {
    /// The value.
    pub value: ConflictValue,
    /// Device that wrote it.
    pub device: Option<Uuid>,
    /// Officer that wrote it.
    pub officer: Option<String>,
}

/// A scalar value as it appears in a conflict or a resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConflictValue {
    /// No value (an unset optional field).
    Null,
    /// A boolean.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A text value.
    Str(String),
}

impl ConflictValue {
    fn from_scalar(s: &ScalarValue) -> Self {
        match s {
            ScalarValue::Null => ConflictValue::Null,
            ScalarValue::Boolean(b) => ConflictValue::Bool(*b),
            ScalarValue::Int(i) | ScalarValue::Timestamp(i) => ConflictValue::Int(*i),
            ScalarValue::Uint(u) => ConflictValue::Int(i64::try_from(*u).unwrap_or(i64::MAX)),
            ScalarValue::Str(s) => ConflictValue::Str(s.to_string()),
            other => ConflictValue::Str(other.to_string()),
        }
    }

    /// Written with the same scalar type as the value it replaces, so typed reads keep working.
    fn to_scalar_like(&self, like: &ScalarValue) -> ScalarValue {
        match (self, like) {
            (ConflictValue::Null, _) => ScalarValue::Null,
            (ConflictValue::Bool(b), _) => ScalarValue::Boolean(*b),
            (ConflictValue::Int(i), ScalarValue::Uint(_)) => match u64::try_from(*i) {
                Ok(u) => ScalarValue::Uint(u),
                Err(_) => ScalarValue::Int(*i),
            },
            (ConflictValue::Int(i), ScalarValue::Timestamp(_)) => ScalarValue::Timestamp(*i),
            (ConflictValue::Int(i), _) => ScalarValue::Int(*i),
            (ConflictValue::Str(s), _) => ScalarValue::Str(s.as_str().into()),
        }
    }
}

/// One change in a record's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Hex hash of the Automerge change.
    pub hash: String,
    /// Device that made it (its Automerge actor).
    pub device: Option<Uuid>,
    /// Officer signed in when it was made.
    pub officer: String,
    /// The device's clock at the time, ms since epoch (may be wrong: informative only).
    pub device_time: i64,
    /// Fields it touched (`created` for the first change).
    pub fields: Vec<String>,
    /// When the server received it (ms since epoch, server clock): the server's fact beside the
    /// device's claim. `None` while the server has not acknowledged it, and for changes this
    /// device learnt of before it kept receive times. Filled by the device store.
    #[serde(default)]
    pub server_received_at: Option<i64>,
    /// Whether this device signed the change in a push (its own changes since device keys;
    /// issue 16). Filled by the device store.
    #[serde(default)]
    pub signed_by_this_device: bool,
}

#[derive(Serialize, Deserialize)]
struct ChangeMessage {
    #[serde(rename = "o")]
    officer: String,
    #[serde(rename = "f")]
    fields: Vec<String>,
}

/// The Automerge actor of a device: its 16 id bytes.
pub fn actor_for(device: DeviceId) -> ActorId {
    ActorId::from(device.0.as_bytes().as_slice())
}

/// What one change says of itself: its author (actor), the officer and the fields its message
/// names, and the device clock when it was made. All of it is the device's claim; the server's
/// facts (who pushed it, when it arrived) are kept beside it where it is stored.
pub fn describe_change(change: &automerge::Change) -> HistoryEntry {
    let message = change
        .message()
        .and_then(|m| serde_json::from_str::<ChangeMessage>(m).ok());
    let (officer, fields) = match message {
        Some(m) => (m.officer, m.fields),
        None => (String::new(), Vec::new()),
    };
    HistoryEntry {
        hash: change.hash().to_string(),
        device: Uuid::from_slice(change.actor_id().to_bytes()).ok(),
        officer,
        device_time: change.timestamp(),
        fields,
        server_received_at: None,
        signed_by_this_device: false,
    }
}

impl RecordDoc {
    /// A new document holding `record`, committed as one change by `officer`.
    pub fn create(record: &Record, device: DeviceId, officer: &str, now_ms: i64) -> Result<Self> {
        let mut doc = AutoCommit::new().with_actor(actor_for(device));
        match record {
            Record::Application(a) => reconcile(&mut doc, a)?,
            Record::CitizenRequest(r) => reconcile(&mut doc, r)?,
        }
        let mut this = RecordDoc {
            id: record.id(),
            kind: record.kind(),
            doc,
        };
        // An imported dossier's history starts with its import (in its final state).
        let first = match record {
            Record::Application(a) if a.imported.is_some() => "imported",
            _ => "created",
        };
        this.commit(officer, vec![first.to_owned()], now_ms);
        Ok(this)
    }

    /// Loads a document from saved bytes (a snapshot followed by any incremental chunks).
    pub fn load(id: RecordId, kind: RecordKind, bytes: &[u8], device: DeviceId) -> Result<Self> {
        let doc = AutoCommit::load(bytes)
            .map_err(|e| Error::Corrupt {
                id,
                reason: e.to_string(),
            })?
            .with_actor(actor_for(device));
        let this = RecordDoc { id, kind, doc };
        // A document that does not hydrate as its kind is as corrupt as one that does not decode.
        this.record().map_err(|e| Error::Corrupt {
            id,
            reason: e.to_string(),
        })?;
        Ok(this)
    }

    /// The record id.
    pub fn id(&self) -> RecordId {
        self.id
    }

    /// The record kind.
    pub fn kind(&self) -> RecordKind {
        self.kind
    }

    /// The typed record as the document currently reads.
    pub fn record(&self) -> Result<Record> {
        let bad = |e: autosurgeon::HydrateError| Error::Corrupt {
            id: self.id,
            reason: e.to_string(),
        };
        let doc = super::read::MapCached::new(&self.doc);
        Ok(match self.kind {
            RecordKind::Application => Record::Application(hydrate(&doc).map_err(bad)?),
            RecordKind::CitizenRequest => Record::CitizenRequest(hydrate(&doc).map_err(bad)?),
        })
    }

    /// The concurrent values of top-level field `field` as the document read at `heads` (more
    /// than one when that field is in conflict there; one or none otherwise).
    pub fn values_at(&self, field: &str, heads: &[ChangeHash]) -> Vec<ConflictValue> {
        match self.doc.get_all_at(ROOT, field, heads) {
            Ok(values) => values
                .iter()
                .filter_map(|(value, _)| match value {
                    Value::Scalar(s) => Some(ConflictValue::from_scalar(s)),
                    Value::Object(_) => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The typed record as the document read at `heads` (which must be changes it holds): the
    /// record as one change found it, or left it.
    pub fn record_at(&self, heads: &[ChangeHash]) -> Result<Record> {
        let bad = |e: autosurgeon::HydrateError| Error::Corrupt {
            id: self.id,
            reason: e.to_string(),
        };
        let at = super::read::AtHeads::new(&self.doc, heads);
        let doc = super::read::MapCached::new(&at);
        Ok(match self.kind {
            RecordKind::Application => Record::Application(hydrate(&doc).map_err(bad)?),
            RecordKind::CitizenRequest => Record::CitizenRequest(hydrate(&doc).map_err(bad)?),
        })
    }

    /// The application, or [`Error::WrongKind`].
    pub fn application(&self) -> Result<Application> {
        match self.record()? {
            Record::Application(a) => Ok(a),
            Record::CitizenRequest(_) => Err(self.wrong_kind(RecordKind::Application)),
        }
    }

    /// The citizen request, or [`Error::WrongKind`].
    pub fn citizen_request(&self) -> Result<CitizenRequest> {
        match self.record()? {
            Record::CitizenRequest(r) => Ok(r),
            Record::Application(_) => Err(self.wrong_kind(RecordKind::CitizenRequest)),
        }
    }

    fn wrong_kind(&self, expected: RecordKind) -> Error {
        Error::WrongKind {
            id: self.id,
            expected,
            actual: self.kind,
        }
    }

    /// Writes `after` over `before` (both read from this document) as one change, recording the
    /// top-level fields that differ. Returns `false` when nothing changed (no change is made).
    pub fn edit<T: Reconcile + Serialize>(
        &mut self,
        before: &T,
        after: &T,
        officer: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let fields = changed_fields(before, after)?;
        if fields.is_empty() {
            return Ok(false);
        }
        if let Err(e) = reconcile(&mut self.doc, after) {
            self.doc.rollback();
            return Err(e.into());
        }
        self.commit(officer, fields, now_ms);
        Ok(true)
    }

    fn commit(&mut self, officer: &str, fields: Vec<String>, now_ms: i64) {
        let message = ChangeMessage {
            officer: officer.to_owned(),
            fields,
        };
        // Serialising two strings cannot fail; an empty message would only lose the author.
        let message = serde_json::to_string(&message).unwrap_or_default();
        self.doc.commit_with(
            automerge::transaction::CommitOptions::default()
                .with_message(message)
                .with_time(now_ms),
        );
    }

    /// Whether every change of the record follows the one before it (one head, no merge): no
    /// two writes were concurrent, so no field can hold a conflict. Reads each change's metadata
    /// once (no operation is read).
    pub fn history_is_linear(&mut self) -> bool {
        self.doc.get_heads().len() <= 1
            && self
                .doc
                .get_changes_meta(&[])
                .iter()
                .all(|meta| meta.deps.len() <= 1)
    }

    /// Fields with concurrent different values, in document order.
    pub fn conflicts(&mut self) -> Vec<Conflict> {
        // Most records are written by one tablet at a time: their history is a chain, and the
        // walk over every field (most of the read model's projection of a push) is skipped. (A
        // crafted change can still leave two values under one key without any concurrency: they
        // read as the winner, as everywhere, and show here once the history forks.)
        if self.history_is_linear() {
            return Vec::new();
        }
        let mut found = Vec::new();
        let mut paths = Vec::new();
        collect_conflict_paths(&self.doc, &ROOT, String::new(), 0, &mut paths);
        for (field, values) in paths {
            let mut candidates: Vec<ConflictCandidate> = values
                .into_iter()
                .map(|(value, opid)| {
                    let (device, officer) = self.author_of_op(&opid);
                    ConflictCandidate {
                        value,
                        device,
                        officer,
                    }
                })
                .collect();
            // Automerge lists concurrent values by op id; the winner (what reads show) is last.
            candidates.reverse();
            found.push(Conflict {
                field,
                values: candidates,
            });
        }
        found
    }

    fn author_of_op(&mut self, opid: &automerge::ObjId) -> (Option<Uuid>, Option<String>) {
        let Some(hash) = self.doc.hash_for_opid(opid) else {
            return (None, None);
        };
        let Some(change) = self.doc.get_change_by_hash(&hash) else {
            return (None, None);
        };
        let device = Uuid::from_slice(change.actor_id().to_bytes()).ok();
        let officer = change
            .message()
            .and_then(|m| serde_json::from_str::<ChangeMessage>(m).ok())
            .map(|m| m.officer);
        (device, officer)
    }

    /// Settles the conflict on `field` with `value`, as one change by `officer`. The value must
    /// keep the record valid (a status must be a status name, and so on).
    pub fn resolve(
        &mut self,
        field: &str,
        value: &ConflictValue,
        officer: &str,
        now_ms: i64,
    ) -> Result<()> {
        if !self.conflicts().iter().any(|c| c.field == field) {
            return Err(Error::invalid(field, "there is no conflict on this field"));
        }
        // Settling a conflict on the status chooses one of the transitions made concurrently
        // (each legal where it was made): another status is a transition, not a resolution.
        if field == "status"
            && !self
                .conflicts()
                .iter()
                .filter(|c| c.field == field)
                .any(|c| c.values.iter().any(|candidate| candidate.value == *value))
        {
            return Err(Error::invalid(
                field,
                "a conflict on the status is settled with one of its values",
            ));
        }
        let (obj, prop) = resolve_path(&self.doc, field)?;
        let current = match self.doc.get(&obj, prop.clone())? {
            Some((Value::Scalar(s), _)) => s.into_owned(),
            _ => return Err(Error::invalid(field, "not a single-valued field")),
        };
        self.doc.put(&obj, prop, value.to_scalar_like(&current))?;
        if let Err(e) = self.record() {
            self.doc.rollback();
            return Err(Error::invalid(
                field,
                format!("value does not fit the field: {e}"),
            ));
        }
        self.commit(officer, vec![field.to_owned()], now_ms);
        Ok(())
    }

    /// Every change, in causal order (parents before children).
    pub fn history(&mut self) -> Vec<HistoryEntry> {
        self.doc
            .get_changes(&[])
            .into_iter()
            .map(|change| describe_change(&change))
            .collect()
    }

    /// Current heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The whole document, compressed.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// The whole document without Automerge's own column compression (for a better compressor).
    pub fn save_uncompressed(&mut self) -> Vec<u8> {
        self.doc.save_nocompress()
    }

    /// The changes made since `heads`, as an incremental chunk for [`RecordDoc::load`].
    pub fn save_after(&mut self, heads: &[ChangeHash]) -> Vec<u8> {
        self.doc.save_after(heads)
    }

    /// Raw changes the holder of `heads` lacks (what a sync peer needs).
    pub fn changes_since(&mut self, heads: &[ChangeHash]) -> Vec<automerge::Change> {
        self.doc.get_changes(heads)
    }

    /// Applies changes from another replica. Bytes that do not decode are refused before anything
    /// is applied; the result must still be a valid record of this kind, which is returned (it
    /// was read to check that, so callers need not read it again).
    pub fn apply_changes(&mut self, changes: &[Vec<u8>], source: Source) -> Result<Record> {
        let decoded = decode_changes(self.id, changes)?;
        self.apply_decoded(decoded, source)
    }

    /// [`RecordDoc::apply_changes`] for changes already decoded.
    pub fn apply_decoded(
        &mut self,
        changes: Vec<automerge::Change>,
        source: Source,
    ) -> Result<Record> {
        let before = self.doc.get_heads();
        if source == Source::Untrusted {
            self.check_op_counters(&changes)?;
        }
        let sent: HashSet<ChangeHash> = match source {
            Source::Untrusted => changes.iter().map(automerge::Change::hash).collect(),
            Source::Server => HashSet::new(),
        };
        // Automerge 0.12 panics on some well-formed but inconsistent changes (an operation naming
        // an actor past the change's actor table, found by fuzzing): from the network that is
        // bad input, not a crash of the server or the app.
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.doc.apply_changes(changes)
        }));
        let missing_deps =
            matches!(applied, Ok(Ok(()))) && !self.doc.get_missing_deps(&[]).is_empty();
        // Automerge keeps operations, not the bytes received, and rebuilds changes from them for
        // the history and every later push. A change it accepts but rebuilds differently (a
        // non-canonical encoding, found by fuzzing) would get another hash there, which later
        // changes do not depend on: it is refused, once, where changes enter (the server checks
        // every push; its feed is then trusted). In debug builds the rebuild panics instead.
        let rebuilt_as_sent = !matches!(applied, Ok(Ok(())))
            || missing_deps
            || source == Source::Server
            || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.doc
                    .get_changes(&before)
                    .iter()
                    .all(|change| sent.contains(&change.hash()))
            }))
            .unwrap_or(false);
        // Checked before anything walks the whole document (the conflict finder, the read
        // model): see `integrity::shape`.
        // Under `catch_unwind` like the apply: the walk reads what the changes just made.
        let misshapen = (source == Source::Untrusted && matches!(applied, Ok(Ok(()))))
            .then(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::integrity::shape::check(&self.doc)
                }))
                .unwrap_or(Err(crate::integrity::shape::ShapeViolation::Unreadable))
                .err()
            })
            .flatten();
        let check = match applied {
            Ok(Ok(())) if missing_deps => Err(Error::invalid(
                "changes",
                "they depend on changes that were not received",
            )),
            Ok(Ok(())) if !rebuilt_as_sent => Err(Error::Corrupt {
                id: self.id,
                reason: "changes that do not read back as they were sent".to_owned(),
            }),
            Ok(Ok(())) if misshapen.is_some() => Err(Error::invalid(
                "document",
                misshapen.map(|v| v.to_string()).unwrap_or_default(),
            )),
            Ok(Ok(())) => self.record(),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::Corrupt {
                id: self.id,
                reason: "changes that cannot be applied".to_owned(),
            }),
        };
        match check {
            Ok(record) => Ok(record),
            Err(e) => {
                // Back to what we had: a fork at the old heads is the document without the changes
                // (and an empty document when there were none).
                let actor = self.doc.get_actor().clone();
                self.doc = if before.is_empty() {
                    AutoCommit::new().with_actor(actor)
                } else {
                    self.doc.fork_at(&before)?.with_actor(actor)
                };
                Err(e)
            }
        }
    }

    /// Refuses untrusted changes whose operation counters do not follow their dependencies'
    /// ([`crate::integrity::history::op_counters_follow`], the rule the server applies to every
    /// push). Dependencies found neither here nor in the document are left to the missing
    /// dependencies check. Cost: one lookup per dependency.
    fn check_op_counters(&mut self, changes: &[automerge::Change]) -> Result<()> {
        let in_batch: HashMap<ChangeHash, u64> =
            changes.iter().map(|c| (c.hash(), c.max_op())).collect();
        'changes: for change in changes {
            let mut deps_max_op = 0;
            for dep in change.deps() {
                let max_op = match in_batch.get(dep) {
                    Some(max_op) => Some(*max_op),
                    None => self
                        .doc
                        .get_change_meta_by_hash(dep)
                        .map(|meta| meta.max_op),
                };
                match max_op {
                    Some(max_op) => deps_max_op = deps_max_op.max(max_op),
                    None => continue 'changes,
                }
            }
            if !crate::integrity::history::op_counters_follow(
                change.start_op().get(),
                change.max_op(),
                deps_max_op,
            ) {
                return Err(Error::Corrupt {
                    id: self.id,
                    reason: "a change whose operation counters do not follow its dependencies"
                        .to_owned(),
                });
            }
        }
        Ok(())
    }

    /// A document built from another replica's changes (a record this device has not seen), with
    /// the record it holds.
    pub fn from_changes(
        id: RecordId,
        kind: RecordKind,
        changes: &[Vec<u8>],
        device: DeviceId,
        source: Source,
    ) -> Result<(Self, Record)> {
        let decoded = decode_changes(id, changes)?;
        Self::from_decoded(Some(id), kind, decoded, device, source)
    }

    /// [`RecordDoc::from_changes`] for changes already decoded. With `expected` `None`, the id
    /// is the one the record holds (a peer may leave it out when it sends a whole history).
    pub fn from_decoded(
        expected: Option<RecordId>,
        kind: RecordKind,
        changes: Vec<automerge::Change>,
        device: DeviceId,
        source: Source,
    ) -> Result<(Self, Record)> {
        let mut this = RecordDoc {
            id: expected.unwrap_or(RecordId(Uuid::nil())),
            kind,
            doc: AutoCommit::new().with_actor(actor_for(device)),
        };
        if changes.is_empty() {
            return Err(Error::invalid(
                "changes",
                "no changes given for a new record",
            ));
        }
        let record = this.apply_decoded(changes, source)?;
        match expected {
            Some(id) if record.id() != id => {
                Err(Error::invalid("changes", "they belong to another record"))
            }
            _ => {
                this.id = record.id();
                Ok((this, record))
            }
        }
    }
}

/// Decodes raw changes of record `id`; any that does not decode is [`Error::Corrupt`].
pub fn decode_changes(id: RecordId, changes: &[Vec<u8>]) -> Result<Vec<automerge::Change>> {
    changes
        .iter()
        .map(|bytes| decode_change(bytes).map_err(|reason| Error::Corrupt { id, reason }))
        .collect()
}

/// The record id written by these changes (the `id` field of the document they make), when they
/// decode and apply even though they may not read as a record this build knows: what a device
/// needs to keep a document it cannot read under its own id.
pub fn record_id_of_changes(changes: &[Vec<u8>]) -> Option<RecordId> {
    let decoded = decode_changes(RecordId(Uuid::nil()), changes).ok()?;
    let mut doc = AutoCommit::new();
    // Automerge 0.12 panics on some inconsistent changes (see `apply_decoded`).
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| doc.apply_changes(decoded)))
        .ok()?
        .ok()?;
    match doc.get(ROOT, "id").ok()?? {
        (Value::Scalar(scalar), _) => match scalar.as_ref() {
            ScalarValue::Str(text) => Uuid::parse_str(text).ok().map(RecordId),
            _ => None,
        },
        _ => None,
    }
}

/// Decodes one raw change from another replica, or says why it does not decode. Automerge 0.12
/// panics on some malformed changes (an operation counter past `u32`, found by fuzzing): from
/// the network that is bad input, not a crash.
pub fn decode_change(bytes: &[u8]) -> std::result::Result<automerge::Change, String> {
    std::panic::catch_unwind(|| automerge::Change::from_bytes(bytes.to_vec()))
        .map_err(|_| "a change Automerge cannot decode".to_owned())?
        .map_err(|e| e.to_string())
}

/// Names of the fields that differ between two values, one level deep into nested maps.
fn changed_fields<T: Serialize>(before: &T, after: &T) -> Result<Vec<String>> {
    let to_json = |v: &T| serde_json::to_value(v).map_err(|e| Error::Document(e.to_string()));
    let (before, after) = (to_json(before)?, to_json(after)?);
    let (serde_json::Value::Object(b), serde_json::Value::Object(a)) = (before, after) else {
        return Ok(Vec::new());
    };
    let mut fields = Vec::new();
    for (key, new) in &a {
        let old = b.get(key);
        if old == Some(new) {
            continue;
        }
        match (old, new) {
            (Some(serde_json::Value::Object(o)), serde_json::Value::Object(n)) => {
                for (sub, nv) in n {
                    if o.get(sub) != Some(nv) {
                        fields.push(format!("{key}.{sub}"));
                    }
                }
            }
            _ => fields.push(key.clone()),
        }
    }
    Ok(fields)
}

/// Recursion is bounded by [`crate::integrity::shape::MAX_DEPTH`]: an untrusted document deeper
/// than that is refused when it applies, and one kept from before that rule is walked no deeper.
fn collect_conflict_paths(
    doc: &AutoCommit,
    obj: &ObjId,
    prefix: String,
    depth: usize,
    out: &mut Vec<(String, Vec<(ConflictValue, ObjId)>)>,
) {
    if depth > crate::integrity::shape::MAX_DEPTH {
        return;
    }
    let Some(obj_type) = doc.object_type(obj).ok() else {
        return;
    };
    match obj_type {
        ObjType::Map | ObjType::Table => {
            for key in doc.keys(obj) {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                visit(doc, obj, automerge::Prop::Map(key), path, depth, out);
            }
        }
        ObjType::List => {
            for index in 0..doc.length(obj) {
                let path = format!("{prefix}[{index}]");
                visit(doc, obj, automerge::Prop::Seq(index), path, depth, out);
            }
        }
        // Text merges character by character: never a conflict.
        ObjType::Text => {}
    }
}

fn visit(
    doc: &AutoCommit,
    obj: &ObjId,
    prop: automerge::Prop,
    path: String,
    depth: usize,
    out: &mut Vec<(String, Vec<(ConflictValue, ObjId)>)>,
) {
    let Ok(values) = doc.get_all(obj, prop) else {
        return;
    };
    let scalars: Vec<(ConflictValue, ObjId)> = values
        .iter()
        .filter_map(|(v, id)| match v {
            Value::Scalar(s) => Some((ConflictValue::from_scalar(s), id.clone())),
            Value::Object(_) => None,
        })
        .collect();
    let distinct = {
        let mut seen: Vec<&ConflictValue> = Vec::new();
        for (v, _) in &scalars {
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
        seen.len()
    };
    if distinct > 1 {
        out.push((path.clone(), scalars));
    }
    // Descend into the winning object, if the winner is one.
    if let Some((Value::Object(_), child)) = values.last() {
        collect_conflict_paths(doc, child, path, depth + 1, out);
    }
}

/// Finds the object and property a dotted path (`applicant.phone`, `fees[0].paid`) points at.
fn resolve_path(doc: &AutoCommit, path: &str) -> Result<(ObjId, automerge::Prop)> {
    let bad = || Error::invalid(path, "no such field");
    let mut steps: Vec<automerge::Prop> = Vec::new();
    for part in path.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() {
            return Err(bad());
        }
        steps.push(automerge::Prop::Map(name.to_owned()));
        let mut rest = rest;
        while let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped.find(']').ok_or_else(bad)?;
            let index: usize = stripped[..end].parse().map_err(|_| bad())?;
            steps.push(automerge::Prop::Seq(index));
            rest = &stripped[end + 1..];
        }
        if !rest.is_empty() {
            return Err(bad());
        }
    }
    let (last, parents) = steps.split_last().ok_or_else(bad)?;
    let mut obj = ROOT;
    for step in parents {
        match doc.get(&obj, step.clone())? {
            Some((Value::Object(_), id)) => obj = id,
            _ => return Err(bad()),
        }
    }
    Ok((obj, last.clone()))
}

#[cfg(test)]
mod tests;
