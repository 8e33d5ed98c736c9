//! Decisions shared by both backends, without I/O: whether a batch is in scope, which of its
//! changes to store, and where a feed page ends. Backends read what these functions need,
//! call them, and write what they decide, so both behave the same by construction.

use std::collections::{HashMap, HashSet};

use communesync_core::record::{RecordId, RecordKind};

use super::{Device, IncomingDoc, Registrations, Result, Scope, StorageError};

/// Checks a batch against the device's scope, the stored registrations and itself (one document
/// twice with different commune or kind). The first offending document is the error.
pub(crate) fn check_scope(
    device: &Device,
    docs: &[IncomingDoc],
    registered: &Registrations,
) -> Result<()> {
    let mut in_batch: HashMap<RecordId, (&str, RecordKind)> = HashMap::new();
    for doc in docs {
        let out_of_scope = StorageError::OutOfScope { doc: doc.id };
        if let Scope::Commune(commune) = &device.scope
            && commune != &doc.commune
        {
            return Err(out_of_scope);
        }
        if let Some((commune, kind)) = registered.get(&doc.id)
            && (commune != &doc.commune || *kind != doc.kind)
        {
            return Err(out_of_scope);
        }
        let first = *in_batch
            .entry(doc.id)
            .or_insert((doc.commune.as_str(), doc.kind));
        if first != (doc.commune.as_str(), doc.kind) {
            return Err(out_of_scope);
        }
    }
    Ok(())
}

/// Every hash a batch names (its changes and their deps), by document: what a backend must
/// look up to plan it.
pub(crate) fn hashes_named(docs: &[IncomingDoc]) -> Vec<(RecordId, [u8; 32])> {
    let mut named = HashSet::new();
    for doc in docs {
        for change in &doc.changes {
            named.insert((doc.id, change.hash));
            for dep in &change.deps {
                named.insert((doc.id, *dep));
            }
        }
    }
    named.into_iter().collect()
}

/// The projections the push path computed, taken out of the batch by document (the plan then
/// handles the changes alone).
pub(crate) fn take_projections(
    docs: &mut [IncomingDoc],
) -> HashMap<RecordId, Box<super::read_model::Projected>> {
    docs.iter_mut()
        .filter_map(|doc| Some((doc.id, doc.projection.take()?)))
        .collect()
}

/// The documents of `changes` in first-appearance order, each with how many of its changes
/// are stored.
pub(crate) fn changes_per_doc(changes: &[PlannedChange]) -> Vec<(RecordId, i64)> {
    let mut order: Vec<(RecordId, i64)> = Vec::new();
    let mut at: HashMap<RecordId, usize> = HashMap::new();
    for change in changes {
        match at.get(&change.doc) {
            Some(&i) => order[i].1 += 1,
            None => {
                at.insert(change.doc, order.len());
                order.push((change.doc, 1));
            }
        }
    }
    order
}

/// A change to store.
pub(crate) struct PlannedChange {
    pub(crate) doc: RecordId,
    pub(crate) commune: String,
    pub(crate) hash: [u8; 32],
    pub(crate) deps: Vec<[u8; 32]>,
    pub(crate) bytes: Vec<u8>,
}

/// What to write for a batch.
#[derive(Default)]
pub(crate) struct IngestPlan {
    /// Documents to register (not registered yet and not skipped): id, commune, kind.
    pub(crate) register: Vec<(RecordId, String, RecordKind)>,
    /// Changes to store, in batch order.
    pub(crate) changes: Vec<PlannedChange>,
    pub(crate) duplicates: u64,
    pub(crate) missing_deps: Vec<RecordId>,
}

impl IngestPlan {
    /// Number of changes to store per commune, sorted by commune code (the lock order).
    pub(crate) fn counts_by_commune(&self) -> Vec<(String, u64)> {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for change in &self.changes {
            *counts.entry(change.commune.as_str()).or_default() += 1;
        }
        let mut counts: Vec<(String, u64)> = counts
            .into_iter()
            .map(|(commune, n)| (commune.to_owned(), n))
            .collect();
        counts.sort();
        counts
    }
}

/// Plans a batch already checked by [`check_scope`]. `stored` holds, per document, the stored
/// hashes among [`hashes_named`] (it may hold more). A skipped document entry contributes
/// nothing, not even its duplicates.
pub(crate) fn plan_ingest(
    docs: Vec<IncomingDoc>,
    mut stored: HashMap<RecordId, HashSet<[u8; 32]>>,
    registered: &Registrations,
) -> IngestPlan {
    let mut plan = IngestPlan::default();
    let mut registering = HashSet::new();
    for doc in docs {
        let have = stored.entry(doc.id).or_default();
        let mut added: HashSet<[u8; 32]> = HashSet::new();
        let mut fresh = Vec::new();
        let mut duplicates = 0;
        let mut missing = false;
        for change in doc.changes {
            if have.contains(&change.hash) || added.contains(&change.hash) {
                duplicates += 1;
                continue;
            }
            if change
                .deps
                .iter()
                .any(|dep| !have.contains(dep) && !added.contains(dep))
            {
                missing = true;
                break;
            }
            added.insert(change.hash);
            fresh.push(change);
        }
        if missing {
            if !plan.missing_deps.contains(&doc.id) {
                plan.missing_deps.push(doc.id);
            }
            continue;
        }
        have.extend(added);
        plan.duplicates += duplicates;
        if !registered.contains_key(&doc.id) && registering.insert(doc.id) {
            plan.register.push((doc.id, doc.commune.clone(), doc.kind));
        }
        plan.changes
            .extend(fresh.into_iter().map(|change| PlannedChange {
                doc: doc.id,
                commune: doc.commune.clone(),
                hash: change.hash,
                deps: change.deps,
                bytes: change.bytes,
            }));
    }
    plan
}

/// What the feed needs to know of a row before fetching its bytes.
pub(crate) struct FeedRowMeta {
    pub(crate) seq: u64,
    pub(crate) excluded: bool,
    pub(crate) size: u64,
}

/// Where a feed page ends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PageCut {
    /// The last position examined (`after` if none).
    pub(crate) next_cursor: u64,
    /// Items in the page: every row not excluded in `(after, next_cursor]`.
    pub(crate) items: usize,
    /// Whether rows remain after `next_cursor`.
    pub(crate) more: bool,
}

/// Cuts a page from `rows`, the rows after `after` in feed order, fetched with a limit of
/// `scan_limit + 1` so that "more" is known. Excluded rows are examined (they advance the
/// cursor) but cost nothing; the page stops before a row that would pass `max_items` or
/// `max_bytes` (unless it would be the first item), or after `scan_limit` rows.
pub(crate) fn cut_page(
    rows: &[FeedRowMeta],
    after: u64,
    max_bytes: usize,
    max_items: usize,
    scan_limit: usize,
) -> PageCut {
    let max_bytes = u64::try_from(max_bytes).unwrap_or(u64::MAX);
    let mut next_cursor = after;
    let mut items = 0;
    let mut bytes = 0u64;
    let mut examined = 0;
    for row in rows.iter().take(scan_limit) {
        if !row.excluded {
            if items >= max_items || (items > 0 && bytes.saturating_add(row.size) > max_bytes) {
                break;
            }
            items += 1;
            bytes = bytes.saturating_add(row.size);
        }
        next_cursor = row.seq;
        examined += 1;
    }
    PageCut {
        next_cursor,
        items,
        more: rows.len() > examined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::IncomingChange;
    use communesync_core::record::DeviceId;

    fn row(seq: u64, excluded: bool, size: u64) -> FeedRowMeta {
        FeedRowMeta {
            seq,
            excluded,
            size,
        }
    }

    #[test]
    fn page_always_has_one_item_and_respects_bytes() {
        let rows = [row(1, false, 500), row(2, false, 10)];
        let cut = cut_page(&rows, 0, 100, 10, 100);
        assert_eq!(
            cut,
            PageCut {
                next_cursor: 1,
                items: 1,
                more: true
            }
        );
        let rows = [row(3, false, 40), row(4, false, 60), row(5, false, 1)];
        assert_eq!(cut_page(&rows, 2, 100, 10, 100).next_cursor, 4);
    }

    #[test]
    fn excluded_rows_advance_the_cursor_for_free() {
        let rows = [row(1, true, 1000), row(2, true, 1000), row(3, false, 5)];
        let cut = cut_page(&rows, 0, 10, 1, 100);
        assert_eq!(
            cut,
            PageCut {
                next_cursor: 3,
                items: 1,
                more: false
            }
        );
        // Only excluded rows, more than the scan limit: advance by the scan limit.
        let rows: Vec<_> = (1..=4).map(|s| row(s, true, 1)).collect();
        let cut = cut_page(&rows, 0, 10, 1, 3);
        assert_eq!(
            cut,
            PageCut {
                next_cursor: 3,
                items: 0,
                more: true
            }
        );
    }

    #[test]
    fn empty_feed_keeps_the_cursor() {
        assert_eq!(
            cut_page(&[], 7, 10, 1, 3),
            PageCut {
                next_cursor: 7,
                items: 0,
                more: false
            }
        );
    }

    fn change(n: u8, deps: &[u8]) -> IncomingChange {
        IncomingChange {
            hash: [n; 32],
            deps: deps.iter().map(|d| [*d; 32]).collect(),
            bytes: vec![n],
        }
    }

    #[test]
    fn plan_skips_docs_with_missing_deps_and_counts_duplicates() {
        let a = RecordId::new();
        let b = RecordId::new();
        let docs = vec![
            IncomingDoc {
                id: a,
                kind: RecordKind::Application,
                commune: "c1".into(),
                changes: vec![change(1, &[]), change(1, &[]), change(2, &[1])],
                projection: None,
            },
            IncomingDoc {
                id: b,
                kind: RecordKind::Application,
                commune: "c1".into(),
                changes: vec![change(3, &[]), change(4, &[9])],
                projection: None,
            },
        ];
        let device = Device {
            id: DeviceId::new(),
            scope: Scope::Commune("c1".into()),
            label: String::new(),
            revoked: false,
            wiped: false,
        };
        check_scope(&device, &docs, &Registrations::new()).unwrap();
        let plan = plan_ingest(docs, HashMap::new(), &Registrations::new());
        assert_eq!(plan.changes.len(), 2);
        assert_eq!(plan.duplicates, 1);
        assert_eq!(plan.missing_deps, vec![b]);
        assert_eq!(plan.register.len(), 1);
        assert_eq!(plan.counts_by_commune(), vec![("c1".to_owned(), 2)]);
    }
}
