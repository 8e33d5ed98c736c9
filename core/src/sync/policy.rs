//! When to sync in the background: a pure function of a few facts, no I/O, no clock reads.
//!
//! Contract: [`BackgroundPolicy::next_sync_after`] takes what the platform knows (pending work,
//! the last success, failures in a row, whether the link is metered, the time now) and answers
//! [`SyncDecision::Run`], [`SyncDecision::After`] a delay, or [`SyncDecision::Stop`] when only a
//! person can help. The Android (WorkManager) and iOS (BGTaskScheduler) glue calls it whenever a
//! sync ends and when the app starts, and schedules what it says; it never decides on its own.
//!
//! The rules, in order:
//! 1. The last error was [`PolicyError::Unauthorized`] or [`PolicyError::Revoked`]: **stop**.
//!    The credential will not come back by retrying; the tablet must be enrolled again. Likewise
//!    [`PolicyError::Wiped`] (the store is gone) and [`PolicyError::UpgradeRequired`]: the server
//!    refuses this version of the app, so nothing runs until the app is upgraded. The caller
//!    keeps that across restarts for the build that got it
//!    ([`DeviceStore::upgrade_required`](crate::store::DeviceStore::upgrade_required), which the
//!    sync client sets and a successful sync clears); a store opened by a newer build of the app
//!    schedules again.
//! 2. Failures in a row (`consecutive_failures > 0`): wait
//!    `failure_backoff × 2^(failures − 1)`, at most `max_interval`, counted from now (the failure
//!    just happened). Whatever is pending, a link that keeps failing is not hammered. When the
//!    last error was [`PolicyError::UntrustedServer`] the doubling starts from `idle_interval`
//!    instead: retrying soon will not change the server's certificate, but it is no reason to
//!    stop for good (a captive Wi-Fi portal, a wrong clock or a certificate renewed late all
//!    pass without anyone re-enrolling the tablet).
//! 3. Never synced: **run**.
//! 4. Otherwise the interval since the last success depends on the work waiting:
//!    - pending changes: `min_interval` (5 min) — work made offline goes out soon;
//!    - pending changes on a metered link: `metered_interval` (30 min). The age of the oldest
//!      pending change is at most the time since the last success (anything older went out
//!      then), so pending work that has waited `metered_interval` goes even on a metered link;
//!    - nothing pending: `idle_interval` (1 h), or `metered_idle_interval` (3 h) when metered:
//!      these syncs only pull what colleagues did.
//!
//!    Due (the interval has passed): **run**; else wait for the rest of the interval.
//!
//! Every delay is at most `max_interval` (6 h). Device clocks are often wrong and can jump by
//! years: `last_success_ms` and `now_ms` must come from the same clock, and a last success "in
//! the future" (the clock went backwards) counts as a success just now. Nothing here panics or
//! returns a negative or unbounded delay, whatever the inputs. No jitter is added: the result
//! is reproducible, and the platform schedulers spread their work themselves.

use std::time::Duration;

/// Tunables of the background policy. The defaults suit a commune tablet on 2G.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackgroundPolicy {
    /// Shortest wait after a success when changes are pending (default 5 min).
    pub min_interval: Duration,
    /// Longest wait in any case (default 6 h).
    pub max_interval: Duration,
    /// Wait after a success when nothing is pending: only pulls (default 1 h).
    pub idle_interval: Duration,
    /// Wait after a success on a metered link when changes are pending (default 30 min).
    pub metered_interval: Duration,
    /// Wait after a success on a metered link when nothing is pending (default 3 h).
    pub metered_idle_interval: Duration,
    /// Wait after the first failure, doubled for each further one (default 5 min).
    pub failure_backoff: Duration,
}

impl Default for BackgroundPolicy {
    fn default() -> Self {
        BackgroundPolicy {
            min_interval: Duration::from_secs(5 * 60),
            max_interval: Duration::from_secs(6 * 3600),
            idle_interval: Duration::from_secs(3600),
            metered_interval: Duration::from_secs(30 * 60),
            metered_idle_interval: Duration::from_secs(3 * 3600),
            failure_backoff: Duration::from_secs(5 * 60),
        }
    }
}

/// What the last sync failed with, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyError {
    /// The token is unknown to the server: enroll again.
    Unauthorized,
    /// The device was revoked by the province.
    Revoked,
    /// The province ordered the device wiped: its store is gone.
    Wiped,
    /// The server refuses this version of the app: upgrade it.
    UpgradeRequired,
    /// The server's certificate was not trusted: retry, but rarely.
    UntrustedServer,
    /// Anything else (offline, server trouble, a refused request): retry later.
    Other,
}

impl From<&super::SyncError> for PolicyError {
    fn from(err: &super::SyncError) -> Self {
        match err {
            super::SyncError::Unauthorized => PolicyError::Unauthorized,
            super::SyncError::Revoked => PolicyError::Revoked,
            super::SyncError::Wiped(_) => PolicyError::Wiped,
            super::SyncError::UpgradeRequired(_) => PolicyError::UpgradeRequired,
            super::SyncError::UntrustedServer(_) => PolicyError::UntrustedServer,
            _ => PolicyError::Other,
        }
    }
}

/// The facts the policy decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyInput {
    /// Documents with changes the server has not acknowledged
    /// ([`DeviceStore::pending_count`](crate::store::DeviceStore::pending_count)).
    pub pending_changes: u64,
    /// When the last sync succeeded (ms since the epoch, same clock as `now_ms`), if ever.
    pub last_success_ms: Option<i64>,
    /// Syncs that failed since the last success.
    pub consecutive_failures: u32,
    /// Whether the current link is metered (mobile data).
    pub metered: bool,
    /// The time now (ms since the epoch).
    pub now_ms: i64,
    /// What the last sync failed with, if it failed.
    pub last_error: Option<PolicyError>,
}

/// What the platform scheduler should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDecision {
    /// Sync now.
    Run,
    /// Sync after this delay (never zero, at most `max_interval`).
    After(Duration),
    /// Do not sync again until a person acts (enroll again, upgrade the app).
    Stop,
}

impl BackgroundPolicy {
    /// The next background sync. See the module documentation for the rules.
    pub fn next_sync_after(&self, input: &PolicyInput) -> SyncDecision {
        if matches!(
            input.last_error,
            Some(
                PolicyError::Unauthorized
                    | PolicyError::Revoked
                    | PolicyError::Wiped
                    | PolicyError::UpgradeRequired
            )
        ) {
            return SyncDecision::Stop;
        }
        if input.consecutive_failures > 0 {
            // 2^(n-1), with the exponent capped long before anything overflows.
            let doublings = (input.consecutive_failures - 1).min(32);
            let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
            let base = if input.last_error == Some(PolicyError::UntrustedServer) {
                self.idle_interval.max(self.failure_backoff)
            } else {
                self.failure_backoff
            };
            let delay = base.checked_mul(factor).unwrap_or(Duration::MAX);
            return self.after(delay);
        }
        let Some(last_success) = input.last_success_ms else {
            return SyncDecision::Run;
        };
        let interval = match (input.pending_changes > 0, input.metered) {
            (true, false) => self.min_interval,
            (true, true) => self.metered_interval,
            (false, false) => self.idle_interval,
            (false, true) => self.metered_idle_interval,
        }
        .min(self.max_interval);
        // A success "in the future" means the clock went backwards: count it as just now.
        let elapsed_ms = input.now_ms.saturating_sub(last_success).max(0);
        let elapsed = Duration::from_millis(u64::try_from(elapsed_ms).unwrap_or(0));
        match interval.checked_sub(elapsed) {
            Some(rest) if !rest.is_zero() => self.after(rest),
            _ => SyncDecision::Run,
        }
    }

    /// `After(delay)` capped at `max_interval`; a zero delay is `Run`.
    fn after(&self, delay: Duration) -> SyncDecision {
        let delay = delay.min(self.max_interval);
        if delay.is_zero() {
            SyncDecision::Run
        } else {
            SyncDecision::After(delay)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const NOW: i64 = 1_795_399_200_000;

    fn mins(m: u64) -> SyncDecision {
        SyncDecision::After(Duration::from_secs(m * 60))
    }

    fn input() -> PolicyInput {
        PolicyInput {
            pending_changes: 0,
            last_success_ms: Some(NOW),
            consecutive_failures: 0,
            metered: false,
            now_ms: NOW,
            last_error: None,
        }
    }

    #[test]
    fn the_rules_in_a_table() {
        let policy = BackgroundPolicy::default();
        let cases: Vec<(&str, PolicyInput, SyncDecision)> = vec![
            (
                "never synced",
                PolicyInput {
                    last_success_ms: None,
                    ..input()
                },
                SyncDecision::Run,
            ),
            ("idle, just synced", input(), mins(60)),
            (
                "idle, 40 min ago",
                PolicyInput {
                    last_success_ms: Some(NOW - 40 * MIN),
                    ..input()
                },
                mins(20),
            ),
            (
                "idle, 2 h ago",
                PolicyInput {
                    last_success_ms: Some(NOW - 120 * MIN),
                    ..input()
                },
                SyncDecision::Run,
            ),
            (
                "pending, just synced",
                PolicyInput {
                    pending_changes: 3,
                    ..input()
                },
                mins(5),
            ),
            (
                "pending, 2 min ago",
                PolicyInput {
                    pending_changes: 3,
                    last_success_ms: Some(NOW - 2 * MIN),
                    ..input()
                },
                mins(3),
            ),
            (
                "pending, exactly due",
                PolicyInput {
                    pending_changes: 3,
                    last_success_ms: Some(NOW - 5 * MIN),
                    ..input()
                },
                SyncDecision::Run,
            ),
            (
                "pending, metered, 10 min ago",
                PolicyInput {
                    pending_changes: 1,
                    metered: true,
                    last_success_ms: Some(NOW - 10 * MIN),
                    ..input()
                },
                mins(20),
            ),
            (
                "pending, metered, waited 30 min",
                PolicyInput {
                    pending_changes: 1,
                    metered: true,
                    last_success_ms: Some(NOW - 30 * MIN),
                    ..input()
                },
                SyncDecision::Run,
            ),
            (
                "idle, metered, 1 h ago",
                PolicyInput {
                    metered: true,
                    last_success_ms: Some(NOW - 60 * MIN),
                    ..input()
                },
                mins(120),
            ),
            (
                "first failure",
                PolicyInput {
                    consecutive_failures: 1,
                    last_error: Some(PolicyError::Other),
                    pending_changes: 5,
                    ..input()
                },
                mins(5),
            ),
            (
                "third failure",
                PolicyInput {
                    consecutive_failures: 3,
                    last_error: Some(PolicyError::Other),
                    ..input()
                },
                mins(20),
            ),
            (
                "many failures are capped",
                PolicyInput {
                    consecutive_failures: 9,
                    ..input()
                },
                mins(360),
            ),
            (
                "u32::MAX failures are capped",
                PolicyInput {
                    consecutive_failures: u32::MAX,
                    ..input()
                },
                mins(360),
            ),
            (
                "failure with no success ever",
                PolicyInput {
                    consecutive_failures: 2,
                    last_success_ms: None,
                    ..input()
                },
                mins(10),
            ),
            (
                "revoked stops",
                PolicyInput {
                    last_error: Some(PolicyError::Revoked),
                    consecutive_failures: 1,
                    pending_changes: 9,
                    ..input()
                },
                SyncDecision::Stop,
            ),
            (
                "an untrusted server is retried hourly, then rarer",
                PolicyInput {
                    last_error: Some(PolicyError::UntrustedServer),
                    consecutive_failures: 1,
                    pending_changes: 9,
                    ..input()
                },
                mins(60),
            ),
            (
                "an untrusted server again: two hours",
                PolicyInput {
                    last_error: Some(PolicyError::UntrustedServer),
                    consecutive_failures: 2,
                    pending_changes: 9,
                    ..input()
                },
                mins(120),
            ),
            (
                "unauthorized stops",
                PolicyInput {
                    last_error: Some(PolicyError::Unauthorized),
                    ..input()
                },
                SyncDecision::Stop,
            ),
            (
                "upgrade required stops, whatever is pending",
                PolicyInput {
                    last_error: Some(PolicyError::UpgradeRequired),
                    consecutive_failures: 1,
                    pending_changes: 4,
                    last_success_ms: Some(NOW - 600 * MIN),
                    ..input()
                },
                SyncDecision::Stop,
            ),
            (
                "wiped stops",
                PolicyInput {
                    last_error: Some(PolicyError::Wiped),
                    consecutive_failures: 1,
                    ..input()
                },
                SyncDecision::Stop,
            ),
            (
                "clock went back 3 years: as if just synced",
                PolicyInput {
                    pending_changes: 1,
                    now_ms: NOW - 3 * 365 * 24 * 60 * MIN,
                    ..input()
                },
                mins(5),
            ),
            (
                "clock went forward 10 years: due",
                PolicyInput {
                    now_ms: NOW + 10 * 365 * 24 * 60 * MIN,
                    ..input()
                },
                SyncDecision::Run,
            ),
            (
                "clock before 1970",
                PolicyInput {
                    now_ms: -5 * MIN,
                    ..input()
                },
                mins(60),
            ),
            (
                "extreme clocks",
                PolicyInput {
                    now_ms: i64::MIN,
                    last_success_ms: Some(i64::MAX),
                    ..input()
                },
                mins(60),
            ),
            (
                "extreme clocks the other way",
                PolicyInput {
                    now_ms: i64::MAX,
                    last_success_ms: Some(i64::MIN),
                    ..input()
                },
                SyncDecision::Run,
            ),
        ];
        for (name, input, expected) in cases {
            assert_eq!(policy.next_sync_after(&input), expected, "{name}");
        }
    }

    #[test]
    fn delays_are_never_zero_or_beyond_the_cap_whatever_the_tunables() {
        let odd = BackgroundPolicy {
            min_interval: Duration::MAX,
            max_interval: Duration::from_secs(3600),
            idle_interval: Duration::ZERO,
            metered_interval: Duration::from_secs(u64::MAX),
            metered_idle_interval: Duration::from_millis(1),
            failure_backoff: Duration::MAX,
        };
        let clocks = [i64::MIN, -1, 0, 1, NOW, i64::MAX];
        for policy in [BackgroundPolicy::default(), odd] {
            for &now_ms in &clocks {
                for last in clocks.iter().map(|&c| Some(c)).chain([None]) {
                    for failures in [0, 1, 2, 31, 32, 33, u32::MAX] {
                        for (pending_changes, metered) in
                            [(0, false), (0, true), (1, false), (1, true)]
                        {
                            let input = PolicyInput {
                                pending_changes,
                                last_success_ms: last,
                                consecutive_failures: failures,
                                metered,
                                now_ms,
                                last_error: None,
                            };
                            if let SyncDecision::After(d) = policy.next_sync_after(&input) {
                                assert!(!d.is_zero() && d <= policy.max_interval, "{input:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn sync_errors_map_to_policy_errors() {
        use super::super::SyncError;
        assert_eq!(PolicyError::from(&SyncError::Revoked), PolicyError::Revoked);
        assert_eq!(
            PolicyError::from(&SyncError::Unauthorized),
            PolicyError::Unauthorized
        );
        assert_eq!(
            PolicyError::from(&SyncError::Offline("no route".into())),
            PolicyError::Other
        );
        assert_eq!(
            PolicyError::from(&SyncError::Forbidden("scope".into())),
            PolicyError::Other
        );
        assert_eq!(
            PolicyError::from(&SyncError::UntrustedServer("expired".into())),
            PolicyError::UntrustedServer
        );
        assert_eq!(
            PolicyError::from(&SyncError::UpgradeRequired("protocol 2".into())),
            PolicyError::UpgradeRequired
        );
        assert_eq!(
            PolicyError::from(&SyncError::Wiped("stolen".into())),
            PolicyError::Wiped
        );
    }
}
