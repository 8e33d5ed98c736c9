//! The verdict on each pushed document: store its new changes, ask for its whole history, or
//! refuse it with a reason. One document's verdict never depends on another's.
//!
//! Every document is checked by core's `integrity::check_pushed` against what the server holds:
//! attribution to the pushing device, one root, sequence continuity, and the record rules per
//! change against the record at that change's dependencies. A record outside the device's scope
//! (another commune's, or registered as another kind) gets one refusal whatever the reason, so a
//! device learns nothing about records it may not read. Each document is decoded and checked
//! once per request (a record named twice is refused), and the work stops early when the client
//! has gone away.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use communesync_core::attachment::AttachmentRef;
use communesync_core::catalogue::WorkingCalendar;
use communesync_core::integrity::{
    ProcedureLookup, ProcedureSource, Refusal, RefusalCode, RuleContext, Verdict,
    check_pushed_keeping_doc,
};
use communesync_core::protocol::PushDoc;
use communesync_core::record::{
    Application, DeviceId, Record, RecordDoc, RecordId, RecordKind, decode_change,
};
use rayon::prelude::*;

use crate::storage::{IncomingChange, IncomingDoc, KnownDoc, Scope, read_model};

/// Set when the request that started the work is gone (its client disconnected): blocking work
/// checks it between documents and stops.
#[derive(Clone, Default)]
pub(super) struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub(super) fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard that cancels when dropped (and counts it in `abandoned`): held by the request's
    /// future, which is dropped when the connection closes.
    pub(super) fn guard(&self, abandoned: Arc<AtomicU64>) -> CancelOnDrop {
        CancelOnDrop {
            cancel: self.clone(),
            abandoned,
            armed: true,
        }
    }
}

/// Cancels its [`Cancel`] when dropped, unless disarmed.
pub(super) struct CancelOnDrop {
    cancel: Cancel,
    abandoned: Arc<AtomicU64>,
    armed: bool,
}

impl CancelOnDrop {
    /// The request finished: nothing to cancel.
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.cancel.0.store(true, Ordering::Relaxed);
            self.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The work was cancelled.
#[derive(Debug)]
pub(super) struct Cancelled;

/// What the server concluded about one pushed document.
pub(super) enum DocVerdict {
    /// Store these (new) changes; the record they leave names these attachments; with the
    /// application when it is new here and has a dossier number (which the handler checks
    /// against the device's blocks before storing) or an import marker (whose external id the
    /// handler checks is its commune's only one).
    Store(IncomingDoc, Vec<AttachmentRef>, Option<Box<Application>>),
    /// Nothing new: the server has every change already.
    Nothing,
    /// The server lacks changes they depend on: the tablet should send the whole history.
    MissingDeps,
    /// Refused.
    Refused(Refusal),
}

/// A pushed document after its changes are decoded (or found undecodable).
pub(super) struct Decoded {
    position: u32,
    /// The id sent, or read from the record when it came whole without one.
    id: Option<RecordId>,
    kind: RecordKind,
    changes: Vec<IncomingChange>,
    decoded: Result<Vec<automerge::Change>, Refusal>,
    /// For a document sent whole without an id: its verdict as a new record, computed to learn
    /// the id (reused when the server does not have the record, the usual case), with the
    /// document it built.
    fresh: Option<Checked>,
}

impl Decoded {
    /// The record this document is about, when known.
    pub(super) fn id(&self) -> Option<RecordId> {
        self.id
    }

    /// Its position in the push.
    pub(super) fn position(&self) -> u32 {
        self.position
    }
}

/// Who pushes and what the checker knows: the pieces of a [`RuleContext`].
#[derive(Clone)]
pub(super) struct Pusher {
    pub(super) device: DeviceId,
    pub(super) scope: Scope,
    /// Withdrawal rule and form by procedure code, from the province catalogue.
    pub(super) withdrawal: super::WithdrawalRules,
    /// The published calendar the tablet declared it holds, when not the current one.
    pub(super) declared_calendar: Option<Arc<WorkingCalendar>>,
}

/// The catalogue's rules with the calendar the pushing tablet declared.
struct PushRules<'a> {
    rules: &'a crate::catalogue::CatalogueRules,
    declared: Option<&'a WorkingCalendar>,
}

impl ProcedureSource for PushRules<'_> {
    fn lookup(&self, code: &str, version: u64) -> ProcedureLookup {
        self.rules.lookup(code, version)
    }

    fn calendar(&self) -> Option<&WorkingCalendar> {
        self.rules.calendar()
    }

    fn declared_calendar(&self) -> Option<&WorkingCalendar> {
        self.declared
    }
}

/// A verdict, with the document the checker built when it accepted a record (the stored
/// history and the new changes applied): the read model's projection is read from it.
type Checked = (Verdict, Option<RecordDoc>);

impl Pusher {
    fn check(
        &self,
        id: Option<RecordId>,
        kind: RecordKind,
        stored: Vec<automerge::Change>,
        pushed: Vec<automerge::Change>,
    ) -> Checked {
        let withdrawal = |code: &str| self.withdrawal.withdrawal_allowed(code);
        let ctx = RuleContext {
            device: self.device,
            commune: self.scope.commune(),
            withdrawal_allowed: &withdrawal,
            procedure_at: &PushRules {
                rules: &self.withdrawal,
                declared: self.declared_calendar.as_deref(),
            },
        };
        check_pushed_keeping_doc(id, kind, stored, pushed, &ctx)
    }
}

/// Decodes every pushed document (in parallel) and, for those sent whole without an id, checks
/// them as new records to learn their id. A change that does not decode refuses its document
/// only.
pub(super) fn decode_push(
    push: Vec<PushDoc>,
    pusher: &Pusher,
    cancel: &Cancel,
) -> Result<Vec<Decoded>, Cancelled> {
    push.into_par_iter()
        .enumerate()
        .map(|(position, doc)| {
            if cancel.is_cancelled() {
                return Err(Cancelled);
            }
            // Counts are bounded by the decoder's limits, far below u32::MAX.
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            let mut changes = Vec::with_capacity(doc.changes.len());
            let mut decoded = Vec::with_capacity(doc.changes.len());
            let mut failure = None;
            for bytes in doc.changes {
                match decode_change(&bytes) {
                    Ok(change) => {
                        changes.push(IncomingChange {
                            hash: change.hash().0,
                            deps: change.deps().iter().map(|d| d.0).collect(),
                            bytes,
                        });
                        decoded.push(change);
                    }
                    Err(e) => {
                        failure = Some(Refusal::new(
                            RefusalCode::Malformed,
                            format!("a change does not decode: {e}"),
                        ));
                        break;
                    }
                }
            }
            let (id, fresh, decoded) = match (failure, doc.id) {
                (Some(refusal), id) => (id, None, Err(refusal)),
                (None, Some(id)) => (Some(id), None, Ok(decoded)),
                (None, None) => {
                    let checked = pusher.check(None, doc.kind, Vec::new(), decoded.clone());
                    let id = match &checked.0 {
                        Verdict::Accepted {
                            record: Some(record),
                            ..
                        } => Some(record.id()),
                        _ => None,
                    };
                    (id, Some(checked), Ok(decoded))
                }
            };
            Ok(Decoded {
                position,
                id,
                kind: doc.kind,
                changes,
                decoded,
                fresh,
            })
        })
        .collect()
}

/// The verdict on every decoded document, with its position in the push, in push order.
pub(super) fn judge(
    docs: Vec<Decoded>,
    known: &HashMap<RecordId, KnownDoc>,
    pusher: &Pusher,
    cancel: &Cancel,
) -> Result<Vec<(u32, DocVerdict)>, Cancelled> {
    // A record named twice in one push is checked once: the later entries are refused.
    let mut seen = HashSet::new();
    let duplicate: Vec<bool> = docs
        .iter()
        .map(|doc| doc.id.is_some_and(|id| !seen.insert(id)))
        .collect();
    docs.into_par_iter()
        .zip(duplicate)
        .map(|(doc, duplicate)| {
            if cancel.is_cancelled() {
                return Err(Cancelled);
            }
            let position = doc.position;
            let verdict = if duplicate {
                DocVerdict::Refused(Refusal::new(
                    RefusalCode::Duplicate,
                    "the record appears more than once in this request",
                ))
            } else {
                judge_one(doc, known, pusher)
            };
            Ok((position, verdict))
        })
        .collect()
}

fn judge_one(doc: Decoded, known: &HashMap<RecordId, KnownDoc>, pusher: &Pusher) -> DocVerdict {
    let pushed = match doc.decoded {
        Ok(pushed) => pushed,
        Err(refusal) => return DocVerdict::Refused(refusal),
    };
    let stored = doc.id.and_then(|id| known.get(&id));
    if let Some(stored) = stored {
        let in_scope = pusher
            .scope
            .commune()
            .is_none_or(|own| own == stored.commune);
        if stored.kind != doc.kind || !in_scope {
            return DocVerdict::Refused(Refusal::not_yours());
        }
    }
    let (verdict, checked_doc) = match (doc.fresh, stored) {
        // Sent whole, and new here: checked already to learn its id.
        (Some(fresh), None) => fresh,
        (_, stored) => {
            let history = match stored {
                Some(stored) => match decode_stored(&stored.changes) {
                    Ok(history) => history,
                    Err(refusal) => return DocVerdict::Refused(refusal),
                },
                None => Vec::new(),
            };
            pusher.check(doc.id, doc.kind, history, pushed)
        }
    };
    match verdict {
        Verdict::Accepted { new, record } => {
            let Some(record) = record else {
                return DocVerdict::Nothing;
            };
            let base_changes = stored.map_or(0, |stored| stored.changes.len());
            let mut changes: Vec<Option<IncomingChange>> =
                doc.changes.into_iter().map(Some).collect();
            let new_changes: Vec<IncomingChange> = new
                .iter()
                .filter_map(|&i| changes.get_mut(i)?.take())
                .collect();
            let commune = match stored {
                Some(stored) => stored.commune.clone(),
                None => record_commune(&record).to_owned(),
            };
            let attachments = match *record {
                Record::Application(ref a) => a.attachments.clone(),
                Record::CitizenRequest(ref r) => r.attachments.clone(),
            };
            let numbered = match (record.as_ref(), stored) {
                (Record::Application(app), None)
                    if app.dossier_number.is_some() || app.imported.is_some() =>
                {
                    Some(Box::new(app.clone()))
                }
                _ => None,
            };
            // The row the read model will hold, read from the document just checked: storage
            // need not decode the record's changes again.
            let projection = checked_doc
                .filter(|_| read_model::ENABLED)
                .map(|mut checked| {
                    let rules: read_model::DeadlineRules = pusher.withdrawal.clone();
                    Box::new(read_model::project_checked(
                        &mut checked,
                        &record,
                        &commune,
                        base_changes,
                        &rules,
                    ))
                });
            DocVerdict::Store(
                IncomingDoc {
                    id: record.id(),
                    kind: doc.kind,
                    commune,
                    changes: new_changes,
                    projection,
                },
                attachments,
                numbered,
            )
        }
        Verdict::MissingDeps => DocVerdict::MissingDeps,
        Verdict::Refused(refusal) => DocVerdict::Refused(refusal),
    }
}

fn decode_stored(changes: &[Vec<u8>]) -> Result<Vec<automerge::Change>, Refusal> {
    changes
        .iter()
        .map(|bytes| {
            decode_change(bytes).map_err(|e| {
                tracing::error!(error = %e, "a stored change does not decode");
                Refusal::new(
                    RefusalCode::Malformed,
                    "the server's copy of this record is damaged; an operator has been told",
                )
            })
        })
        .collect()
}

fn record_commune(record: &Record) -> &str {
    match record {
        Record::Application(a) => &a.commune_code,
        Record::CitizenRequest(r) => &r.commune_code,
    }
}
