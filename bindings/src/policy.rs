//! The background-sync policy of core, for the platform schedulers (WorkManager,
//! BGTaskScheduler): the glue asks when to run next and schedules exactly that.

use std::time::Duration;

use communesync_core::sync::{self as sync, PolicyError};

use crate::ErrorKind;

/// Tunables of the background policy, in milliseconds. [`BackgroundPolicy::default`] (and an
/// unset `EngineConfig.background_policy`) suits a commune tablet on 2G.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct BackgroundPolicy {
    /// Shortest wait after a success when changes are pending (default 5 min).
    #[uniffi(default = 300000)]
    pub min_interval_ms: u64,
    /// Longest wait in any case (default 6 h).
    #[uniffi(default = 21600000)]
    pub max_interval_ms: u64,
    /// Wait after a success when nothing is pending (default 1 h).
    #[uniffi(default = 3600000)]
    pub idle_interval_ms: u64,
    /// Wait after a success on a metered link when changes are pending (default 30 min).
    #[uniffi(default = 1800000)]
    pub metered_interval_ms: u64,
    /// Wait after a success on a metered link when nothing is pending (default 3 h).
    #[uniffi(default = 10800000)]
    pub metered_idle_interval_ms: u64,
    /// Wait after the first failure, doubled for each further one (default 5 min).
    #[uniffi(default = 300000)]
    pub failure_backoff_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Default for BackgroundPolicy {
    fn default() -> Self {
        sync::BackgroundPolicy::default().into()
    }
}

impl From<sync::BackgroundPolicy> for BackgroundPolicy {
    fn from(p: sync::BackgroundPolicy) -> Self {
        BackgroundPolicy {
            min_interval_ms: ms(p.min_interval),
            max_interval_ms: ms(p.max_interval),
            idle_interval_ms: ms(p.idle_interval),
            metered_interval_ms: ms(p.metered_interval),
            metered_idle_interval_ms: ms(p.metered_idle_interval),
            failure_backoff_ms: ms(p.failure_backoff),
        }
    }
}

impl From<BackgroundPolicy> for sync::BackgroundPolicy {
    fn from(p: BackgroundPolicy) -> Self {
        sync::BackgroundPolicy {
            min_interval: Duration::from_millis(p.min_interval_ms),
            max_interval: Duration::from_millis(p.max_interval_ms),
            idle_interval: Duration::from_millis(p.idle_interval_ms),
            metered_interval: Duration::from_millis(p.metered_interval_ms),
            metered_idle_interval: Duration::from_millis(p.metered_idle_interval_ms),
            failure_backoff: Duration::from_millis(p.failure_backoff_ms),
        }
    }
}

/// The facts the policy decides on ([`Engine::policy_input`](crate::Engine::policy_input)
/// fills them from the engine's state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct PolicyInput {
    /// Records with changes the server has not acknowledged.
    pub pending_changes: u64,
    /// When the last sync succeeded, ms since the epoch, by the same clock as `now_ms`.
    pub last_success_ms: Option<i64>,
    /// Syncs that failed since the last success.
    pub consecutive_failures: u32,
    /// Whether the current link is metered (mobile data).
    pub metered: bool,
    /// The time now, ms since the epoch.
    pub now_ms: i64,
    /// What the last sync failed with, if it failed.
    pub last_error: Option<ErrorKind>,
}

/// What the platform scheduler should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncDecision {
    /// Sync now.
    Run,
    /// Sync after this delay.
    After {
        /// The delay in milliseconds (never zero).
        delay_ms: u64,
    },
    /// Do not sync again until a person acts (enroll the device again, or upgrade the app).
    Stop,
}

/// When the next background sync should run, by `policy` (the defaults when `None`). A pure
/// function: the same facts give the same answer.
#[uniffi::export]
pub fn next_sync_after(input: PolicyInput, policy: Option<BackgroundPolicy>) -> SyncDecision {
    let policy: sync::BackgroundPolicy = policy.map(Into::into).unwrap_or_default();
    let input = sync::PolicyInput {
        pending_changes: input.pending_changes,
        last_success_ms: input.last_success_ms,
        consecutive_failures: input.consecutive_failures,
        metered: input.metered,
        now_ms: input.now_ms,
        last_error: input.last_error.map(|kind| match kind {
            ErrorKind::Unauthorized => PolicyError::Unauthorized,
            ErrorKind::Revoked => PolicyError::Revoked,
            ErrorKind::Wiped => PolicyError::Wiped,
            ErrorKind::UpgradeRequired => PolicyError::UpgradeRequired,
            ErrorKind::UntrustedServer => PolicyError::UntrustedServer,
            _ => PolicyError::Other,
        }),
    };
    match policy.next_sync_after(&input) {
        sync::SyncDecision::Run => SyncDecision::Run,
        sync::SyncDecision::After(delay) => SyncDecision::After {
            delay_ms: ms(delay).max(1),
        },
        sync::SyncDecision::Stop => SyncDecision::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PolicyInput {
        PolicyInput {
            pending_changes: 0,
            last_success_ms: None,
            consecutive_failures: 0,
            metered: false,
            now_ms: 1_700_000_000_000,
            last_error: None,
        }
    }

    #[test]
    fn forwards_to_the_core_policy() {
        assert_eq!(next_sync_after(input(), None), SyncDecision::Run);
        let revoked = PolicyInput {
            last_error: Some(ErrorKind::Revoked),
            consecutive_failures: 1,
            ..input()
        };
        assert_eq!(next_sync_after(revoked, None), SyncDecision::Stop);
        for kind in [ErrorKind::UpgradeRequired, ErrorKind::Wiped] {
            let stopped = PolicyInput {
                last_error: Some(kind),
                consecutive_failures: 1,
                pending_changes: 3,
                ..input()
            };
            assert_eq!(
                next_sync_after(stopped, None),
                SyncDecision::Stop,
                "{kind:?}"
            );
        }
        let failed = PolicyInput {
            last_error: Some(ErrorKind::Offline),
            consecutive_failures: 2,
            ..input()
        };
        assert_eq!(
            next_sync_after(failed, None),
            SyncDecision::After {
                delay_ms: 10 * 60 * 1000
            }
        );
        let synced = PolicyInput {
            last_success_ms: Some(input().now_ms - 60_000),
            pending_changes: 3,
            ..input()
        };
        let fast = BackgroundPolicy {
            min_interval_ms: 120_000,
            ..BackgroundPolicy::default()
        };
        assert_eq!(
            next_sync_after(synced, Some(fast)),
            SyncDecision::After { delay_ms: 60_000 }
        );
        assert_eq!(BackgroundPolicy::default().max_interval_ms, 6 * 3600 * 1000);
    }
}
