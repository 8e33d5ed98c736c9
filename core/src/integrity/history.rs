//! The shape of a record's history: who wrote each change, in what order, on top of what.
//!
//! [`HistoryIndex`] holds, for every change of one record, the sequence number of each author's
//! latest change among its ancestors (a vector clock) and its highest operation counter. With it
//! a pushed change is checked in time proportional to the number of authors of the record:
//! - its author (Automerge actor) is the device that pushed it;
//! - it is the record's only root (a change without dependencies) or depends on known changes;
//! - its sequence number is its author's previous one plus one, and it builds on that previous
//!   change (an author's changes form one chain: two changes with one author and one sequence
//!   number would make Automerge refuse the second on every replica that sees both);
//! - its operation counters start right after those of everything it depends on
//!   ([`op_counters_follow`]: Automerge's op ids stay unique, and its saved documents, which
//!   store each change's last counter only, can represent the change).
//!
//! Sizes are bounded: dependencies per change, authors per record, message bytes.

use std::collections::HashMap;

use automerge::ChangeHash;

use super::{Refusal, RefusalCode};
use crate::record::DeviceId;

/// Most dependencies one change may name (an honest change names the heads it saw: a few).
pub const MAX_DEPS: usize = 256;
/// Most authors (devices) one record may have.
pub const MAX_AUTHORS: usize = 256;
/// Longest change message (officer and fields touched, as JSON).
pub const MAX_MESSAGE: usize = 4 * 1024;

/// What the checks read of one change.
#[derive(Debug, Clone)]
pub struct ChangeMeta {
    /// Its hash.
    pub hash: ChangeHash,
    /// Its Automerge actor.
    pub actor: Vec<u8>,
    /// Its sequence number among its actor's changes (from 1).
    pub seq: u64,
    /// Counter of its first operation.
    pub start_op: u64,
    /// Counter of its last operation (`start_op - 1` for a change without operations).
    pub max_op: u64,
    /// The changes it depends on.
    pub deps: Vec<ChangeHash>,
    /// Bytes of its message.
    pub message_len: usize,
}

impl ChangeMeta {
    /// The metadata of a decoded change.
    pub fn of(change: &automerge::Change) -> Self {
        ChangeMeta {
            hash: change.hash(),
            actor: change.actor_id().to_bytes().to_vec(),
            seq: change.seq(),
            start_op: change.start_op().get(),
            max_op: change.max_op(),
            deps: change.deps().to_vec(),
            message_len: change.message().map_or(0, |m| m.len()),
        }
    }
}

/// Whether a change's operation counters follow its dependencies', whose highest counter is
/// `deps_max_op` (0 for a root): its first operation is the next counter, exactly as Automerge
/// numbers a change it makes, and its last is not before its first (or just before it, for a
/// change without operations). A saved Automerge document keeps only each change's last counter
/// and derives the first from the dependencies': a change that starts elsewhere applies in
/// memory but makes a document that no longer loads (found by fuzzing, see
/// `core/tests/fuzz_regressions.rs`).
pub fn op_counters_follow(start_op: u64, max_op: u64, deps_max_op: u64) -> bool {
    start_op == deps_max_op.saturating_add(1) && max_op.saturating_add(1) >= start_op
}

/// What [`HistoryIndex::admit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new change, checked and indexed.
    Added,
    /// A change the record already has.
    Known,
    /// It depends on changes the index does not hold (the sender should send the whole history).
    MissingDeps,
}

struct Node {
    /// Sequence number of each author's latest change among this change and its ancestors, by
    /// author index (shorter when later authors are absent: their entry is 0).
    clock: Vec<u64>,
    max_op: u64,
}

/// The history of one record, as vector clocks.
#[derive(Default)]
pub struct HistoryIndex {
    authors: Vec<Vec<u8>>,
    nodes: HashMap<ChangeHash, Node>,
    /// Highest sequence number of each author, by author index.
    latest: Vec<u64>,
    root: Option<ChangeHash>,
}

impl HistoryIndex {
    /// An empty history (a record not created yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the record has this change.
    pub fn contains(&self, hash: &ChangeHash) -> bool {
        self.nodes.contains_key(hash)
    }

    /// Changes indexed.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no change is indexed.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Indexes a change accepted before (a stored one), given after its dependencies. Nothing is
    /// checked: a history stored before a rule existed must not make the record uneditable; its
    /// changes only set the clocks new changes are checked against.
    pub fn add_stored(&mut self, meta: &ChangeMeta) {
        if self.contains(&meta.hash) {
            return;
        }
        let author = match self.author_index(&meta.actor) {
            Some(index) => index,
            // Past the author limit an old history is still indexed, without this author.
            None => {
                self.insert(meta, None, self.merged_clock(&meta.deps).0);
                return;
            }
        };
        let (clock, _) = self.merged_clock(&meta.deps);
        self.insert(meta, Some(author), clock);
    }

    /// Checks a change pushed by `pusher` against the history and indexes it if it passes.
    pub fn admit(&mut self, meta: &ChangeMeta, pusher: DeviceId) -> Result<Admission, Refusal> {
        if self.contains(&meta.hash) {
            return Ok(Admission::Known);
        }
        if meta.actor.as_slice() != pusher.0.as_bytes().as_slice() {
            return Err(Refusal::new(
                RefusalCode::NotAttributed,
                "a change is signed with another device's identity (its author must be the device that pushes it)",
            ));
        }
        if meta.message_len > MAX_MESSAGE {
            return Err(Refusal::new(
                RefusalCode::TooLarge,
                format!("a change message over {MAX_MESSAGE} bytes"),
            ));
        }
        if meta.deps.is_empty() && self.root.is_some() {
            return Err(Refusal::new(
                RefusalCode::SecondRoot,
                "a second first change (one without dependencies) in a record that has one",
            ));
        }
        self.index(meta)
    }

    /// Checks the order of `meta` against its dependencies and indexes it.
    fn index(&mut self, meta: &ChangeMeta) -> Result<Admission, Refusal> {
        if meta.deps.len() > MAX_DEPS {
            return Err(Refusal::new(
                RefusalCode::TooLarge,
                format!("a change with more than {MAX_DEPS} dependencies"),
            ));
        }
        if meta.deps.iter().any(|dep| !self.nodes.contains_key(dep)) {
            return Ok(Admission::MissingDeps);
        }
        let Some(author) = self.author_index(&meta.actor) else {
            return Err(Refusal::new(
                RefusalCode::TooLarge,
                format!("a record with more than {MAX_AUTHORS} authors"),
            ));
        };
        let (clock, deps_max_op) = self.merged_clock(&meta.deps);
        let previous = self.latest.get(author).copied().unwrap_or(0);
        if meta.seq != previous.saturating_add(1) || clock.get(author).copied() != Some(previous) {
            return Err(Refusal::new(
                RefusalCode::Sequence,
                format!(
                    "change {} of its author does not follow its author's change {previous}",
                    meta.seq
                ),
            ));
        }
        if !op_counters_follow(meta.start_op, meta.max_op, deps_max_op) {
            return Err(Refusal::new(
                RefusalCode::Sequence,
                "a change whose operation counters do not follow its dependencies",
            ));
        }
        self.insert(meta, Some(author), clock);
        Ok(Admission::Added)
    }

    /// The index of `actor` among the record's authors, added if new; `None` past
    /// [`MAX_AUTHORS`].
    fn author_index(&mut self, actor: &[u8]) -> Option<usize> {
        if let Some(index) = self.authors.iter().position(|a| a == actor) {
            return Some(index);
        }
        if self.authors.len() >= MAX_AUTHORS {
            return None;
        }
        self.authors.push(actor.to_vec());
        self.latest.push(0);
        Some(self.authors.len() - 1)
    }

    /// The clock of a change with these dependencies before its own entry (known ones only),
    /// and the highest operation counter among them.
    fn merged_clock(&self, deps: &[ChangeHash]) -> (Vec<u64>, u64) {
        let mut clock = vec![0u64; self.authors.len()];
        let mut max_op = 0;
        for node in deps.iter().filter_map(|dep| self.nodes.get(dep)) {
            for (entry, seq) in clock.iter_mut().zip(&node.clock) {
                *entry = (*entry).max(*seq);
            }
            max_op = max_op.max(node.max_op);
        }
        (clock, max_op)
    }

    fn insert(&mut self, meta: &ChangeMeta, author: Option<usize>, mut clock: Vec<u64>) {
        if let Some(author) = author {
            if let Some(entry) = clock.get_mut(author) {
                *entry = (*entry).max(meta.seq);
            }
            if let Some(latest) = self.latest.get_mut(author) {
                *latest = (*latest).max(meta.seq);
            }
        }
        if meta.deps.is_empty() && self.root.is_none() {
            self.root = Some(meta.hash);
        }
        self.nodes.insert(
            meta.hash,
            Node {
                clock,
                max_op: meta.max_op,
            },
        );
    }
}

/// The changes of `metas` in an order where each comes after those of its dependencies that are
/// among them (their order otherwise kept); `None` if they depend on each other in a cycle,
/// which hashes make impossible for real changes.
pub fn causal_order(metas: &[ChangeMeta]) -> Option<Vec<usize>> {
    let position: HashMap<ChangeHash, usize> =
        metas.iter().enumerate().map(|(i, m)| (m.hash, i)).collect();
    let mut waiting_on = vec![0usize; metas.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); metas.len()];
    for (i, meta) in metas.iter().enumerate() {
        for dep in &meta.deps {
            if let Some(&d) = position.get(dep)
                && d != i
            {
                waiting_on[i] += 1;
                dependents[d].push(i);
            }
        }
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..metas.len()).filter(|&i| waiting_on[i] == 0).collect();
    let mut order = Vec::with_capacity(metas.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &next in &dependents[i] {
            waiting_on[next] -= 1;
            if waiting_on[next] == 0 {
                ready.push_back(next);
            }
        }
    }
    (order.len() == metas.len()).then_some(order)
}
