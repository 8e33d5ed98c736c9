//! Enrollment limits: guessing codes stays slow, and a right code always gets through.
//!
//! Every attempt first reserves its place in its source's window counter in the database (one
//! atomic statement shared by all replicas, see
//! [`ServerStorage::reserve_enrollment_attempt`](crate::storage::ServerStorage)), and only then is
//! its code evaluated; a successful enrollment gives its reservation back. The first
//! `enroll_failures_allowed` attempts of a window are evaluated at once, however many arrive
//! together. Past that the source is throttled, not locked out: its attempts queue for a
//! [`Throttle`] lane of that source (at most `enroll_throttle_queue` places, the one being
//! evaluated included) and are evaluated one at a time, each after `enroll_throttle_delay`. Only
//! an attempt that finds its lane full, or every server-wide place taken
//! (`enroll_throttle_total`), gets 429 with `Retry-After`. So ten typos somewhere behind one
//! address cost the next tablet there a short wait, never a refusal; a guesser gets at most one
//! evaluation per delay per source and server replica. Lanes live in the replica's memory (the
//! counters do not): with N replicas a source gets up to N throttled evaluations per delay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Queues of throttled sources, in one replica's memory.
#[derive(Default)]
pub struct Throttle {
    state: Mutex<ThrottleState>,
}

#[derive(Default)]
struct ThrottleState {
    lanes: HashMap<String, Lane>,
    /// Places taken in every lane.
    taken: usize,
}

struct Lane {
    taken: usize,
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// A place in a source's lane, held until dropped (also when the client goes away mid-wait).
pub struct Place<'a> {
    throttle: &'a Throttle,
    source: String,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Throttle {
    fn state(&self) -> MutexGuard<'_, ThrottleState> {
        // A poisoned lock only means a panic elsewhere; the counts stay consistent because every
        // change under the lock is a complete increment or decrement.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a place in `source`'s lane, or `None` if the lane has `per_source` places taken or
    /// all lanes together `total`.
    pub fn join(&self, source: &str, per_source: usize, total: usize) -> Option<Place<'_>> {
        let mut state = self.state();
        if state.taken >= total.max(1) {
            return None;
        }
        let lane = state
            .lanes
            .entry(source.to_owned())
            .or_insert_with(|| Lane {
                taken: 0,
                turn: Arc::new(tokio::sync::Mutex::new(())),
            });
        if lane.taken >= per_source.max(1) {
            return None;
        }
        lane.taken += 1;
        let turn = lane.turn.clone();
        state.taken += 1;
        Some(Place {
            throttle: self,
            source: source.to_owned(),
            turn,
        })
    }

    /// Places taken in `source`'s lane.
    #[cfg(test)]
    fn taken(&self, source: &str) -> usize {
        self.state().lanes.get(source).map_or(0, |lane| lane.taken)
    }
}

impl Place<'_> {
    /// Waits for this source's previous attempt to finish, then `delay`; the attempt is
    /// evaluated while the returned guard is held.
    pub async fn turn(&self, delay: std::time::Duration) -> tokio::sync::MutexGuard<'_, ()> {
        let guard = self.turn.lock().await;
        tokio::time::sleep(delay).await;
        guard
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut state = self.throttle.state();
        state.taken = state.taken.saturating_sub(1);
        if let Some(lane) = state.lanes.get_mut(&self.source) {
            lane.taken = lane.taken.saturating_sub(1);
            if lane.taken == 0 {
                state.lanes.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_bounded_per_source_and_in_total_and_freed_on_drop() {
        let throttle = Throttle::default();
        let a1 = throttle.join("a", 2, 3).unwrap();
        let a2 = throttle.join("a", 2, 3).unwrap();
        assert!(throttle.join("a", 2, 3).is_none(), "lane a is full");
        let b1 = throttle.join("b", 2, 3).unwrap();
        assert!(throttle.join("c", 2, 3).is_none(), "every place is taken");
        drop(a1);
        assert_eq!(throttle.taken("a"), 1);
        let c1 = throttle.join("c", 2, 3).unwrap();
        drop((a2, b1, c1));
        assert_eq!(throttle.taken("a"), 0);
        assert!(throttle.state().lanes.is_empty());
        assert_eq!(throttle.state().taken, 0);
    }
}
