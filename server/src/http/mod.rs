//! The provincial server's HTTP API (axum).
//!
//! - `POST /v1/enroll` (JSON): a one-time code for a device credential bound to a scope.
//! - `POST /v1/sync` (wire v2, `docs/PROTOCOL.md`): push and pull in one round trip.
//! - `/v1/admin/...` (JSON, operator token): communes, enrollment codes, devices, revocation,
//!   stats, catalogue.
//! - `GET /v1/health`.
//!
//! Everything from the network is checked before storage sees it: body size, content type,
//! credentials, protocol version, counts, that every change decodes, that a new record is a valid
//! record of the device's commune and an existing one stays one. A refused request gets a 4xx with
//! `{"error": code, "message": text}` and changes nothing. Secrets are only ever stored hashed and
//! never logged. A request body slower than a floor is dropped with 408 (`body_rate`), and each
//! device has a request rate limit (`rate`).

mod admin;
mod body_rate;
mod enroll;
mod error;
mod rate;
mod secrets;
mod sync;

pub use admin::{
    DeviceOut, StatsOut, issue_enrollment_code, list_devices, stats, validate_catalogue,
};
pub use body_rate::MinBodyRate;
pub use enroll::ApiScope;
pub use error::ApiError;
pub use rate::DeviceRateLimit;
pub use secrets::{hash_enrollment_code, hash_secret, new_enrollment_code, new_token};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use communesync_core::clock::{Clock, SystemClock};
use communesync_core::protocol::Limits;
use communesync_core::record::DeviceId;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::storage::{Device, ServerStorage};

/// Tunables of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Body and count limits for sync requests.
    pub limits: Limits,
    /// Upper bound on feed bytes in one response, whatever the client asks.
    pub max_pull_bytes: usize,
    /// Failed enrollments allowed per source address and window.
    pub enroll_failures_allowed: u32,
    /// Length of the enrollment rate-limit window.
    pub enroll_window: Duration,
    /// A request body that sends nothing for this long is dropped with 408 (a slow 2G link still
    /// sends something every few seconds; a client holding a connection open with nothing does
    /// not). Default 30 s.
    pub body_idle_timeout: Duration,
    /// A request body slower than this is dropped with 408, even if it never stops entirely.
    /// Default 1 KiB per 15 s (about 68 bytes/s), far below the worst honest 2G link.
    pub min_body_rate: MinBodyRate,
    /// Requests each authenticated device may make; beyond it, 429 with `Retry-After`. Default
    /// a burst of 20, then 5 per second.
    pub device_rate: DeviceRateLimit,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            max_pull_bytes: 4 * 1024 * 1024,
            enroll_failures_allowed: 10,
            enroll_window: Duration::from_secs(15 * 60),
            body_idle_timeout: Duration::from_secs(30),
            min_body_rate: MinBodyRate::default(),
            device_rate: DeviceRateLimit::default(),
        }
    }
}

/// Shared state of the handlers.
pub struct AppState {
    pub(crate) storage: Arc<dyn ServerStorage>,
    pub(crate) config: ServerConfig,
    pub(crate) clock: Arc<dyn Clock>,
    /// The server's own Automerge actor (it never edits; it only validates).
    pub(crate) actor: DeviceId,
    /// Request buckets of the devices.
    pub(crate) device_limiter: rate::DeviceLimiter,
}

impl AppState {
    /// State over `storage` with the system clock.
    pub fn new(storage: Arc<dyn ServerStorage>, config: ServerConfig) -> Arc<Self> {
        Self::with_clock(storage, config, Arc::new(SystemClock))
    }

    /// State with a given clock (tests).
    pub fn with_clock(
        storage: Arc<dyn ServerStorage>,
        config: ServerConfig,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(AppState {
            storage,
            device_limiter: rate::DeviceLimiter::new(config.device_rate),
            config,
            clock,
            actor: DeviceId::new(),
        })
    }
}

/// The router; serve it with [`crate::serve::serve`] (handlers need `ConnectInfo<SocketAddr>`).
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.limits.max_compressed;
    let min_body_rate = state.config.min_body_rate;
    Router::new()
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/sync", post(sync::sync))
        .route(
            "/v1/admin/communes",
            get(admin::admin_list_communes).post(admin::admin_create_commune),
        )
        .route("/v1/admin/enrollment-codes", post(admin::admin_issue_code))
        .route("/v1/admin/devices", get(admin::admin_list_devices))
        .route("/v1/admin/devices/{id}/revoke", post(admin::admin_revoke))
        .route("/v1/admin/stats", get(admin::admin_stats))
        .route("/v1/admin/catalogue", put(admin::admin_put_catalogue))
        .layer(DefaultBodyLimit::max(body_limit))
        // Inside the idle timeout's layer, so that its body sees that timeout's error too.
        .layer(middleware::from_fn(move |request, next| {
            body_rate::enforce(min_body_rate, request, next)
        }))
        .layer(RequestBodyTimeoutLayer::new(state.config.body_idle_timeout))
        .layer(middleware::from_fn(move |request, next| {
            refuse_declared_oversize(body_limit, request, next)
        }))
        .with_state(state)
}

/// Answers 413 at once to a request that declares a body over the limit, before anything reads
/// it (otherwise the body extractor would wait for bytes that may never come).
async fn refuse_declared_oversize(
    limit: usize,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > u64::try_from(limit).unwrap_or(u64::MAX) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body of {length} bytes declared, at most {limit} accepted"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// A body its extractor refused: over the limit (413, like the early check of a declared
/// length) or malformed (400).
pub(crate) fn refused_body(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "body too large")
    } else {
        ApiError::malformed(text)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
}

pub(crate) async fn authenticate_device(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Device, ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    let device = state
        .storage
        .authenticate(hash_secret(token))
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    if device.revoked {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "revoked",
            "this device was revoked",
        ));
    }
    state
        .device_limiter
        .check(device.id, std::time::Instant::now())
        .map_err(rate::rate_limited)?;
    Ok(device)
}

pub(crate) async fn authenticate_admin(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    if state.storage.authenticate_admin(hash_secret(token)).await? {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}
