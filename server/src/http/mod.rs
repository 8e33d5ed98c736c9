//! The provincial server's HTTP API (axum).
//!
//! - `POST /v1/enroll` (JSON): a one-time code for a device credential bound to a scope, or a
//!   re-enrollment code for a new credential of an existing device.
//! - `POST /v1/sync` (wire v2, `docs/PROTOCOL.md`): push and pull in one round trip.
//! - `/v1/admin/...` (JSON, operator token): communes, enrollment and re-enrollment codes,
//!   devices, revocation (with wipe), refused documents, operator tokens, stats, catalogue.
//! - `POST /v1/device/key`, `POST /v1/device-keys`, `POST /v1/receipts/verify` (JSON): device
//!   keys (first-use registration, the province's key list as a delta) and the online check of a
//!   receipt ([`keys`]).
//! - `GET /v1/admin/records?number=`, `/v1/admin/number-blocks`: dossier numbers for operators.
//! - `/v1/admin/records/search`, `/records/{id}`, `/dashboard`, `/report`, `/export/records`,
//!   `/read-model/rebuild`: the read model for operators (`admin_read_model`).
//! - `/console/...`: the web console (`crate::console`).
//! - `GET /v1/health`, `/v1/health/live`, `/v1/health/ready`, `GET /metrics` (`observe`).
//!
//! Everything from the network is checked before storage sees it: body size, content type,
//! credentials, protocol version, counts, that every change decodes, that a new record is a valid
//! record of the device's commune and an existing one stays one. A refused request gets a 4xx with
//! `{"error": code, "message": text}` and changes nothing. Secrets are only ever stored hashed and
//! never logged. A request body slower than a floor is dropped with 408 (`body_rate`), and each
//! device has a request rate limit (`rate`).

mod admin;
mod admin_numbers;
mod admin_read_model;
mod admin_records;
mod admin_tokens;
pub mod attachments;
mod body_rate;
pub mod client_addr;
mod enroll;
pub mod enroll_limit;
mod error;
pub mod keys;
mod observe;
mod push;
mod rate;
mod secrets;
mod signed_push;
mod store_epoch;
mod sync;

pub use admin::{
    DeviceOut, RefusalOut, StatsOut, issue_enrollment_code, issue_reenrollment_code, list_devices,
    refusals, stats, validate_catalogue,
};
pub use admin_numbers::{NumberBlockOut, NumberedRecord, number_blocks, record_by_number};
pub(crate) use admin_read_model::download;
pub use admin_read_model::{DashboardLine, RecordFilters, dashboard, parse_range};
pub use admin_records::{HistoryOut, record_history};
pub use admin_tokens::{AdminTokenOut, list_admin_tokens};
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
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::storage::{Device, ServerStorage};

/// Tunables of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Body and count limits for sync requests.
    pub limits: Limits,
    /// Decoded sync bodies held at once, all requests together (bytes). A request reserves
    /// what its frame declares (at least 1 MiB) before decompressing and keeps it until it is
    /// answered; others wait for room. Ten 1 KB bodies that each decode to the 8 MiB limit
    /// then cost at most this, not ten times the limit (measured by `communesync-bench --
    /// hostile`). Default 16 MiB; never less than one body at the limit.
    pub decode_budget: usize,
    /// Upper bound on feed bytes in one response, whatever the client asks.
    pub max_pull_bytes: usize,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For` is believed: a request
    /// from one of them counts under the right-most forwarded address that is not a trusted
    /// proxy (see [`client_addr`]). Empty (the default): the header is ignored and every request
    /// counts under its TCP peer, so behind a proxy all tablets would share the proxy's address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Enrollment attempts per source address and window evaluated at once (a successful one is
    /// given back, so in effect: failures). Past it the source is throttled, not locked out: see
    /// [`enroll_limit`].
    pub enroll_failures_allowed: u32,
    /// Length of the enrollment attempt-counting window.
    pub enroll_window: Duration,
    /// A throttled source's attempts are evaluated one at a time, each after this delay.
    pub enroll_throttle_delay: Duration,
    /// Attempts of one throttled source that may wait (the one being evaluated included); more
    /// get 429 with `Retry-After`.
    pub enroll_throttle_queue: usize,
    /// Throttled attempts that may wait in this replica, all sources together; more get 429.
    pub enroll_throttle_total: usize,
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
    /// Quotas of attachment contents.
    pub attachments: crate::storage::attachments::AttachmentLimits,
    /// Whether operators reach the server over HTTPS (directly or through a TLS proxy): the
    /// console's session cookie is then `Secure`. Default false.
    pub secure_cookies: bool,
    /// Dossier numbers: the province's format, agency codes and block sizing.
    pub numbers: crate::numbers::NumberConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            decode_budget: 16 * 1024 * 1024,
            max_pull_bytes: 4 * 1024 * 1024,
            trusted_proxies: Vec::new(),
            enroll_failures_allowed: 10,
            enroll_window: Duration::from_secs(15 * 60),
            enroll_throttle_delay: Duration::from_secs(2),
            enroll_throttle_queue: 4,
            enroll_throttle_total: 256,
            body_idle_timeout: Duration::from_secs(30),
            min_body_rate: MinBodyRate::default(),
            device_rate: DeviceRateLimit::default(),
            attachments: Default::default(),
            secure_cookies: false,
            numbers: crate::numbers::NumberConfig::default(),
        }
    }
}

/// The decode budget in whole MiB, at least one body at the limit.
pub(crate) fn decode_room_mib(config: &ServerConfig) -> usize {
    config
        .decode_budget
        .max(config.limits.max_body)
        .div_ceil(MIB)
        .max(1)
}

/// A mebibyte: the unit of the decode budget.
pub(crate) const MIB: usize = 1024 * 1024;

/// What the record rules need of the catalogue (see [`crate::catalogue::CatalogueRules`]).
pub(crate) type WithdrawalRules = Arc<crate::catalogue::CatalogueRules>;

/// Shared state of the handlers.
pub struct AppState {
    pub(crate) storage: Arc<dyn ServerStorage>,
    pub(crate) config: ServerConfig,
    pub(crate) clock: Arc<dyn Clock>,
    /// The catalogue's withdrawal rule per procedure, parsed once per catalogue version.
    withdrawal: std::sync::Mutex<Option<(u64, WithdrawalRules)>>,
    /// Published calendars by the catalogue position tablets declare (statutory time).
    pub(crate) calendars: crate::calendar_history::CalendarCache,
    /// Syncs whose client went away before the answer (their work was stopped).
    pub(crate) abandoned: Arc<std::sync::atomic::AtomicU64>,
    /// Lanes of throttled enrollment sources.
    pub(crate) enroll_throttle: enroll_limit::Throttle,
    /// Request buckets of the devices.
    pub(crate) device_limiter: rate::DeviceLimiter,
    /// Room for decoded sync bodies, in MiB ([`ServerConfig::decode_budget`]).
    pub(crate) decode_room: Arc<tokio::sync::Semaphore>,
    /// Prometheus metrics (`GET /metrics`).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// The store epoch sent on sync answers, read at most every few seconds.
    store_epoch: store_epoch::EpochCache,
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
            decode_room: Arc::new(tokio::sync::Semaphore::new(decode_room_mib(&config))),
            config,
            clock,
            withdrawal: std::sync::Mutex::new(None),
            calendars: crate::calendar_history::CalendarCache::default(),
            abandoned: Arc::default(),
            enroll_throttle: enroll_limit::Throttle::default(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            store_epoch: store_epoch::EpochCache::default(),
        })
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Syncs abandoned by their client before the answer; their remaining work was stopped.
    pub fn abandoned_syncs(&self) -> u64 {
        self.abandoned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the record rules need of the catalogue at `version` (every published procedure
    /// version, each procedure's withdrawal rule), read from storage when the version changes.
    pub(crate) async fn withdrawal_rules(
        &self,
        version: Option<u64>,
    ) -> Result<WithdrawalRules, crate::storage::StorageError> {
        let Some(version) = version else {
            return Ok(Arc::default());
        };
        {
            let cached = self
                .withdrawal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, rules)) = cached.as_ref()
                && *at == version
            {
                return Ok(rules.clone());
            }
        }
        let rules = crate::catalogue::CatalogueRules::load(self.storage.as_ref()).await?;
        let rules = Arc::new(rules);
        *self
            .withdrawal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((version, rules.clone()));
        Ok(rules)
    }
}

/// The router; serve it with [`crate::serve::serve`] (handlers need `ConnectInfo<SocketAddr>`).
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.limits.max_compressed;
    let min_body_rate = state.config.min_body_rate;
    Router::new()
        .merge(crate::console::routes())
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/health/live", get(observe::live))
        .route("/v1/health/ready", get(observe::ready))
        .route("/metrics", get(observe::metrics))
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/sync", post(sync::sync))
        .route("/v1/attachments/{sha256}", get(attachments::status))
        .route(
            "/v1/attachments/{sha256}/chunks/{index}",
            get(attachments::get_chunk)
                .put(attachments::put_chunk)
                .layer(DefaultBodyLimit::max(
                    crate::storage::attachments::MAX_CHUNK_SIZE as usize,
                )),
        )
        .route("/v1/device/key", post(keys::register_first_key))
        .route("/v1/device-keys", post(keys::device_keys))
        .route("/v1/receipts/verify", post(keys::verify))
        .route(
            "/v1/admin/communes",
            get(admin::admin_list_communes).post(admin::admin_create_commune),
        )
        .route("/v1/admin/enrollment-codes", post(admin::admin_issue_code))
        .route("/v1/admin/devices", get(admin::admin_list_devices))
        .route("/v1/admin/devices/{id}/revoke", post(admin::admin_revoke))
        .route(
            "/v1/admin/devices/{id}/reenroll-code",
            post(admin::admin_reenroll_code),
        )
        .route(
            "/v1/admin/devices/{id}/refusals",
            get(admin::admin_device_refusals),
        )
        .route("/v1/admin/tokens", get(admin_tokens::admin_list_tokens))
        .route(
            "/v1/admin/tokens/{id}/revoke",
            post(admin_tokens::admin_revoke_token),
        )
        .route(
            "/v1/admin/records/{id}/history",
            get(admin_records::admin_record_history),
        )
        .route(
            "/v1/admin/records",
            get(admin_numbers::admin_record_by_number),
        )
        .route(
            "/v1/admin/number-blocks",
            get(admin_numbers::admin_number_blocks),
        )
        .route(
            "/v1/admin/records/search",
            get(admin_read_model::admin_records),
        )
        .route(
            "/v1/admin/records/{id}",
            get(admin_read_model::admin_record),
        )
        .route(
            "/v1/admin/dashboard",
            get(admin_read_model::admin_dashboard),
        )
        .route("/v1/admin/report", get(admin_read_model::admin_report))
        .route(
            "/v1/admin/export/records",
            get(admin_read_model::admin_export_records),
        )
        .route(
            "/v1/admin/read-model/rebuild",
            post(admin_read_model::admin_rebuild_read_model),
        )
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
        // Outermost: every request, refused early or not, gets its id, log line and latency.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
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
    if device.wiped {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wiped",
            "this device was revoked and must erase its data",
        ));
    }
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

/// Checks the operator token of a request; returns its id.
pub(crate) async fn authenticate_admin(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<u64, ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    state
        .storage
        .authenticate_admin(hash_secret(token), state.clock.now_ms())
        .await?
        .ok_or_else(ApiError::unauthorized)
}
