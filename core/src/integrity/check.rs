//! One pushed document checked whole: its history, then each new change against the record as
//! that change found it.

use automerge::Change;

use super::history::{Admission, ChangeMeta, HistoryIndex, causal_order};
use super::rules::{self, RuleContext, check_creation, check_edit};
use super::{Refusal, RefusalCode};
use crate::record::{ConflictValue, Record, RecordDoc, RecordId, RecordKind, Source};

/// What checking a pushed document concluded.
#[derive(Debug)]
pub enum Verdict {
    /// Every change passed. `new` are the positions (in the pushed list) of the changes the
    /// record did not have, in an order where each follows its dependencies; `record` is the
    /// record after them (`None` when nothing was new).
    Accepted {
        /// Positions of the new changes, dependencies first.
        new: Vec<usize>,
        /// The record once they are applied.
        record: Option<Box<Record>>,
    },
    /// Some change depends on changes neither stored nor pushed: the whole history is needed.
    MissingDeps,
    /// Refused, with the reason.
    Refused(Refusal),
}

/// Checks the changes pushed for one record against its stored history, as the server does for
/// every push: attribution, one root, sequence continuity and op counters for every new change
/// (`integrity::history`), then the record rules for each new change against the record at the
/// change's own dependencies (creation for the root, [`check_edit`] for every other).
///
/// `stored` are the record's stored changes in storage order (each after its dependencies);
/// `id` is the record's id when known (`None` for a record pushed whole without one: it is read
/// from the record); `ctx.device` is the device that pushed.
pub fn check_pushed(
    id: Option<RecordId>,
    kind: RecordKind,
    stored: Vec<Change>,
    pushed: Vec<Change>,
    ctx: &RuleContext<'_>,
) -> Verdict {
    check_pushed_keeping_doc(id, kind, stored, pushed, ctx).0
}

/// [`check_pushed`], also handing back the document it built when the verdict is
/// [`Verdict::Accepted`] with a record: the stored history and the new changes applied, so that
/// the caller reads more from it (the server's read model: conflicts, history) without decoding
/// the changes again. `None` with every other verdict.
pub fn check_pushed_keeping_doc(
    id: Option<RecordId>,
    kind: RecordKind,
    stored: Vec<Change>,
    pushed: Vec<Change>,
    ctx: &RuleContext<'_>,
) -> (Verdict, Option<RecordDoc>) {
    let mut kept = None;
    let verdict = check(id, kind, stored, pushed, ctx, &mut kept);
    (verdict, kept)
}

fn check(
    id: Option<RecordId>,
    kind: RecordKind,
    stored: Vec<Change>,
    pushed: Vec<Change>,
    ctx: &RuleContext<'_>,
    kept: &mut Option<RecordDoc>,
) -> Verdict {
    let malformed =
        |message: String| Verdict::Refused(Refusal::new(RefusalCode::Malformed, message));
    if stored.is_empty() && pushed.is_empty() {
        return malformed("a new record without any change".to_owned());
    }
    let mut index = HistoryIndex::new();
    for change in &stored {
        index.add_stored(&ChangeMeta::of(change));
    }
    let metas: Vec<ChangeMeta> = pushed.iter().map(ChangeMeta::of).collect();
    let Some(order) = causal_order(&metas) else {
        return malformed("changes that depend on each other in a cycle".to_owned());
    };
    let mut new = Vec::new();
    for &i in &order {
        match index.admit(&metas[i], ctx.device) {
            Ok(Admission::Added) => new.push(i),
            Ok(Admission::Known) => {}
            Ok(Admission::MissingDeps) => return Verdict::MissingDeps,
            Err(refusal) => return Verdict::Refused(refusal),
        }
    }
    if new.is_empty() {
        return Verdict::Accepted { new, record: None };
    }
    // The document: what is stored (checked when it was pushed), then the new changes as any
    // untrusted replica's (they must decode, apply and read back as sent).
    let actor = ctx.device;
    let mut doc = if stored.is_empty() {
        None
    } else {
        match RecordDoc::from_decoded(id, kind, stored, actor, Source::Server) {
            Ok((doc, _)) => Some(doc),
            Err(e) => return malformed(format!("the stored history does not read: {e}")),
        }
    };
    let mut pushed: Vec<Option<Change>> = pushed.into_iter().map(Some).collect();
    let fresh: Vec<Change> = new.iter().filter_map(|&i| pushed[i].take()).collect();
    let applied = match doc.as_mut() {
        Some(doc) => doc.apply_decoded(fresh, Source::Untrusted),
        None => RecordDoc::from_decoded(id, kind, fresh, actor, Source::Untrusted).map(
            |(built, record)| {
                doc = Some(built);
                record
            },
        ),
    };
    // The index found every dependency: whatever Automerge refuses now is malformed (changes of
    // another record, an inconsistent change...).
    let record = match applied {
        Ok(record) => record,
        Err(e) => return malformed(e.to_string()),
    };
    let Some(mut doc) = doc else {
        return malformed("no document".to_owned());
    };
    let final_heads = doc.heads();
    if let Some(id) = id
        && record.id() != id
    {
        return malformed("the changes belong to another record".to_owned());
    }
    // Each new change against the record at its dependencies. Consecutive changes of one chain
    // (the usual push) reuse the record the previous one left.
    let mut last: Option<(automerge::ChangeHash, Record)> = None;
    for &i in &new {
        let meta = &metas[i];
        let before = if meta.deps.is_empty() {
            None
        } else if let (Some((hash, record)), [dep]) = (&last, meta.deps.as_slice())
            && hash == dep
        {
            Some(record.clone())
        } else {
            match doc.record_at(&meta.deps) {
                Ok(record) => Some(record),
                Err(e) => return malformed(format!("the record before a change: {e}")),
            }
        };
        // The record after the change: the document as it now reads when the change is its
        // only head (one new record, or the last of a chain), else read at that change.
        let after = if final_heads.as_slice() == [meta.hash] {
            record.clone()
        } else {
            match doc.record_at(&[meta.hash]) {
                Ok(record) => record,
                Err(e) => return malformed(format!("the record after a change: {e}")),
            }
        };
        let checked = match &before {
            None => check_creation(&after, ctx),
            Some(before) => check_edit(before, &after, ctx),
        };
        if let Err(violation) = checked {
            // Settling a conflict on the status: the change picks one of the values the status
            // held concurrently at its dependencies (each a legal step where it was made).
            let settles = violation.code == RefusalCode::IllegalTransition
                && before.as_ref().is_some_and(|before| {
                    let values = doc.values_at("status", &meta.deps);
                    values.len() > 1
                        && values.contains(&ConflictValue::Str(status_of(&after).to_owned()))
                        && rules::only_status_changed(before, &after)
                });
            if !settles {
                return Verdict::Refused(violation.refusal());
            }
        }
        last = Some((meta.hash, after));
    }
    *kept = Some(doc);
    Verdict::Accepted {
        new,
        record: Some(Box::new(record)),
    }
}

fn status_of(record: &Record) -> &'static str {
    match record {
        Record::Application(a) => a.status.as_str(),
        Record::CitizenRequest(r) => r.status.as_str(),
    }
}
