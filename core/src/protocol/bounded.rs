//! Counts checked while a message is decoded, before anything is allocated for what it claims.
//!
//! postcard reads a list's length from the peer and serde's `Vec` then reads that many elements:
//! a body of 1 KB can name 11 million empty documents, each of which costs a `PushDoc` (tens of
//! bytes) before any check after decoding could refuse the list. Here every list of documents
//! and of changes is read through a visitor that counts what it has read against the
//! [`Limits`] of the decode in progress and stops at the first element past them. The limits
//! travel in a thread-local set around one decode ([`with_limits`]); without one (a plain
//! `postcard::from_bytes`, in tests) the defaults apply.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, SeqAccess, Visitor};

use super::{FeedDoc, Limits, PushDoc, Refused};

thread_local! {
    static LIMITS: Cell<Option<Limits>> = const { Cell::new(None) };
    /// Changes read so far in the decode in progress, all documents together.
    static CHANGES: Cell<usize> = const { Cell::new(0) };
    /// What went over a limit, when a decode stopped because of one.
    static OVERFLOW: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Why a decode stopped on a message that breaks a rule of its own (postcard keeps no
    /// message of a custom error).
    static MALFORMED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs one decode under `limits`.
pub(super) fn with_limits<T>(limits: &Limits, decode: impl FnOnce() -> T) -> T {
    LIMITS.with(|cell| cell.set(Some(*limits)));
    CHANGES.with(|cell| cell.set(0));
    OVERFLOW.with(|cell| cell.borrow_mut().take());
    MALFORMED.with(|cell| cell.borrow_mut().take());
    let result = decode();
    LIMITS.with(|cell| cell.set(None));
    result
}

/// What went over a limit in the last decode, if that is why it stopped.
pub(super) fn take_overflow() -> Option<String> {
    OVERFLOW.with(|cell| cell.borrow_mut().take())
}

/// Why the last decode stopped, when a rule of the message (not a limit) stopped it.
pub(super) fn take_malformed() -> Option<String> {
    MALFORMED.with(|cell| cell.borrow_mut().take())
}

fn malformed<E: serde::de::Error>(why: String) -> E {
    let error = E::custom(&why);
    MALFORMED.with(|cell| *cell.borrow_mut() = Some(why));
    error
}

fn limits() -> Limits {
    LIMITS.with(Cell::get).unwrap_or_default()
}

pub(super) fn overflow<E: serde::de::Error>(what: String) -> E {
    let error = E::custom(format!("too large: {what}"));
    OVERFLOW.with(|cell| *cell.borrow_mut() = Some(what));
    error
}

/// Refuses a document whose list of changes claims more than the per-document limit.
pub(super) fn check_claimed_changes<E: serde::de::Error>(claimed: Option<usize>) -> Result<(), E> {
    let max = limits().max_changes_per_doc;
    match claimed {
        Some(claimed) if claimed > max => Err(overflow(format!(
            "{claimed} changes for one document (at most {max})"
        ))),
        _ => Ok(()),
    }
}

/// Counts one change of a document that already has `in_doc` (before this one); refuses it past
/// the per-document or per-message limit.
pub(super) fn count_change<E: serde::de::Error>(in_doc: usize) -> Result<(), E> {
    let limits = limits();
    if in_doc >= limits.max_changes_per_doc {
        return Err(overflow(format!(
            "more than {} changes for one document",
            limits.max_changes_per_doc
        )));
    }
    let total = CHANGES.with(|cell| {
        let total = cell.get().saturating_add(1);
        cell.set(total);
        total
    });
    if total > limits.max_changes {
        return Err(overflow(format!(
            "more than {} changes in one message",
            limits.max_changes
        )));
    }
    Ok(())
}

/// A list read element by element, at most `max` of them, never reserving by the peer's length.
fn bounded_list<'de, D, T>(d: D, what: &'static str, max: usize) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct List<T> {
        what: &'static str,
        max: usize,
        element: PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for List<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of {}", self.what)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            if let Some(claimed) = seq.size_hint()
                && claimed > self.max
            {
                return Err(overflow(format!("{claimed} {}", self.what)));
            }
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                if items.len() >= self.max {
                    return Err(overflow(format!("more than {} {}", self.max, self.what)));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    d.deserialize_seq(List {
        what,
        max,
        element: PhantomData,
    })
}

/// `deserialize_with` for a request's pushed documents: at most `max_docs`, and a record named
/// twice stops the decoding at its second entry (a push naming one record 20,000 times costs
/// two entries, not 20,000).
pub(super) fn push_docs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PushDoc>, D::Error> {
    struct Docs {
        max: usize,
    }
    impl<'de> Visitor<'de> for Docs {
        type Value = Vec<PushDoc>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of pushed documents")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            if let Some(claimed) = seq.size_hint()
                && claimed > self.max
            {
                return Err(overflow(format!("{claimed} documents")));
            }
            let mut docs: Vec<PushDoc> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            while let Some(doc) = seq.next_element::<PushDoc>()? {
                if docs.len() >= self.max {
                    return Err(overflow(format!("more than {} documents", self.max)));
                }
                if let Some(id) = doc.id
                    && !seen.insert(id)
                {
                    return Err(malformed(format!(
                        "record {id} appears more than once in the push"
                    )));
                }
                docs.push(doc);
            }
            Ok(docs)
        }
    }
    d.deserialize_seq(Docs {
        max: limits().max_docs,
    })
}

/// `deserialize_with` for a response's feed documents.
pub(super) fn feed_docs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FeedDoc>, D::Error> {
    bounded_list(d, "documents", limits().max_docs)
}

/// `deserialize_with` for a response's refusals (at most one per pushed document).
pub(super) fn refused<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Refused>, D::Error> {
    bounded_list(d, "refusals", limits().max_docs)
}
