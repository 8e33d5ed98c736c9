//! Per-device request rate limit: a token bucket per authenticated device, in memory.
//!
//! Contract: each device may make [`DeviceRateLimit::burst`] requests at once and
//! [`DeviceRateLimit::per_second`] on average; a request beyond that is refused with 429
//! `rate_limited` and a `Retry-After` (whole seconds, at least 1) saying when the next one will
//! be accepted. A refused request costs nothing more than its authentication, and one device's
//! requests never use up another's. Memory holds only devices seen within about one refill
//! period: a bucket that has refilled completely carries no information and is evicted by a sweep
//! at most once per refill period (so the map is bounded by the devices active in the last two
//! periods, themselves bounded by the enrolled devices). Each server process (replica) counts
//! on its own.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use communesync_core::record::DeviceId;

use super::ApiError;

/// How many requests a device may make.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceRateLimit {
    /// Requests allowed at once, after a quiet period.
    pub burst: u32,
    /// Requests allowed per second on average.
    pub per_second: f64,
}

impl Default for DeviceRateLimit {
    /// 20 at once, 5 per second: a tablet's sync is a few requests (its batches grow to take
    /// seconds each on 2G), so only a client in a loop meets it.
    fn default() -> Self {
        DeviceRateLimit {
            burst: 20,
            per_second: 5.0,
        }
    }
}

/// The buckets of every recently active device.
pub(crate) struct DeviceLimiter {
    limit: DeviceRateLimit,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    by_device: HashMap<DeviceId, Bucket>,
    last_sweep: Instant,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl DeviceLimiter {
    pub(crate) fn new(limit: DeviceRateLimit) -> Self {
        DeviceLimiter {
            limit,
            buckets: Mutex::new(Buckets {
                by_device: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    fn burst(&self) -> f64 {
        f64::from(self.limit.burst.max(1))
    }

    fn rate(&self) -> f64 {
        // A zero or invalid rate would never refill: treat it as one request per hour.
        if self.limit.per_second.is_finite() && self.limit.per_second > 0.0 {
            self.limit.per_second
        } else {
            1.0 / 3600.0
        }
    }

    /// Tokens of `bucket` at `now`.
    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.rate()).min(self.burst())
    }

    /// Takes one request from `device`'s bucket, or says how long until one is available.
    pub(crate) fn check(&self, device: DeviceId, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let refill_period = Duration::from_secs_f64((self.burst() / self.rate()).min(3600.0));
        if now.saturating_duration_since(buckets.last_sweep) >= refill_period {
            let burst = self.burst();
            buckets
                .by_device
                .retain(|_, bucket| self.refilled(*bucket, now) < burst);
            buckets.last_sweep = now;
        }
        let tokens = match buckets.by_device.get(&device) {
            Some(bucket) => self.refilled(*bucket, now),
            None => self.burst(),
        };
        if tokens >= 1.0 {
            buckets.by_device.insert(
                device,
                Bucket {
                    tokens: tokens - 1.0,
                    at: now,
                },
            );
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate()))
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_device
            .len()
    }
}

/// The answer to a device over its rate, `wait` being when its next request is accepted.
pub(crate) fn rate_limited(wait: Duration) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests from this device; try again later",
    );
    // Whole seconds, rounded up: a client that waits as told is accepted.
    err.retry_after = Some((wait.as_secs_f64().ceil() as u64).max(1));
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> DeviceLimiter {
        DeviceLimiter::new(DeviceRateLimit {
            burst: 3,
            per_second: 2.0,
        })
    }

    #[test]
    fn a_burst_passes_then_the_device_waits_for_its_refill() {
        let limiter = limiter();
        let device = DeviceId::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(device, t0), Ok(()));
        }
        let wait = limiter.check(device, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Refused requests take nothing: just before the refill still refused, then accepted.
        assert!(
            limiter
                .check(device, t0 + Duration::from_millis(499))
                .is_err()
        );
        assert_eq!(
            limiter.check(device, t0 + Duration::from_millis(500)),
            Ok(())
        );
        assert!(
            limiter
                .check(device, t0 + Duration::from_millis(500))
                .is_err()
        );
    }

    #[test]
    fn one_device_over_its_rate_leaves_others_alone() {
        let limiter = limiter();
        let (greedy, other) = (DeviceId::new(), DeviceId::new());
        let t0 = Instant::now();
        while limiter.check(greedy, t0).is_ok() {}
        for _ in 0..3 {
            assert_eq!(limiter.check(other, t0), Ok(()));
        }
    }

    #[test]
    fn refilled_buckets_are_evicted() {
        let limiter = limiter();
        let t0 = Instant::now();
        for _ in 0..1000 {
            limiter.check(DeviceId::new(), t0).unwrap();
        }
        assert_eq!(limiter.tracked(), 1000);
        // A refill period (3 / 2 per s) later every bucket is full again: one sweep drops them.
        let later = t0 + Duration::from_secs(2);
        let active = DeviceId::new();
        limiter.check(active, later).unwrap();
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(
            rate_limited(Duration::from_millis(200)).retry_after,
            Some(1)
        );
        assert_eq!(
            rate_limited(Duration::from_millis(1200)).retry_after,
            Some(2)
        );
    }
}
