//! `POST /v1/enroll`: a one-time code for a device credential bound to a scope.
//!
//! The device id must be random (UUID version 4 or 7, as stores create them): a chosen id would
//! decide Automerge ties on purpose. An enrollment code creates a new device; an id already
//! enrolled is refused (409) except with a re-enrollment code issued for that very device, which
//! replaces its credential. A re-enrollment code given with another id is refused exactly like
//! an unknown code. Attempts are limited per client address as [`super::enroll_limit`] says.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use communesync_core::record::DeviceId;
use serde::{Deserialize, Serialize};

use super::client_addr::{client_ip, source_key};
use super::{ApiError, AppState, hash_enrollment_code, hash_secret, new_token, refused_body};
use crate::storage::{Scope, StorageError};

// ----- enrollment --------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(super) struct EnrollRequest {
    code: String,
    device_id: uuid::Uuid,
    #[serde(default)]
    label: String,
    /// The device's Ed25519 public key (64 hex digits), registered with the credential and
    /// replacing the device's previous key at re-enrollment. Absent from clients older than
    /// device keys (they register one later on first use, `http/keys.rs`).
    #[serde(default)]
    public_key: Option<String>,
}

/// Scope as the API shows it: `{"commune":"CODE"}` or `"province"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiScope {
    /// One commune.
    Commune(String),
    /// The whole province.
    Province,
}

impl From<&Scope> for ApiScope {
    fn from(scope: &Scope) -> Self {
        match scope {
            Scope::Commune(c) => ApiScope::Commune(c.clone()),
            Scope::Province => ApiScope::Province,
        }
    }
}

#[derive(Serialize)]
pub(super) struct EnrollResponse {
    device_id: uuid::Uuid,
    token: String,
    scope: ApiScope,
    /// Whether the public key sent was registered (absent key: false).
    key_registered: bool,
}

pub(super) async fn enroll(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<EnrollRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let Json(request) = body.map_err(|e| refused_body(e.status(), e.body_text()))?;
    if request.code.len() > 64 || request.label.len() > 200 {
        return Err(ApiError::malformed("code or label too long"));
    }
    let public_key = request
        .public_key
        .as_deref()
        .map(super::keys::usable_key)
        .transpose()?;
    let device = DeviceId(request.device_id);
    if !device.is_random() {
        return Err(ApiError::malformed(
            "device_id must be a random UUID (version 4 or 7, RFC 9562 variant), as a store \
             creates it",
        ));
    }
    let config = &state.config;
    let source = source_key(client_ip(peer.ip(), &headers, &config.trusted_proxies));
    let window = i64::try_from(config.enroll_window.as_millis()).unwrap_or(i64::MAX);
    // Reserve the attempt before evaluating the code: concurrent guesses each get their own
    // number, so at most `enroll_failures_allowed` of them are evaluated at full speed.
    let attempt = state
        .storage
        .reserve_enrollment_attempt(&source, state.clock.now_ms(), window)
        .await?;
    let place;
    let _turn;
    if attempt > config.enroll_failures_allowed {
        let Some(joined) = state.enroll_throttle.join(
            &source,
            config.enroll_throttle_queue,
            config.enroll_throttle_total,
        ) else {
            let wait = config
                .enroll_throttle_delay
                .saturating_mul(u32::try_from(config.enroll_throttle_queue).unwrap_or(u32::MAX));
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many enrollment attempts from this address; try again shortly",
            );
            err.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
            tracing::warn!(%source, "enrollment attempt refused: throttle queue full");
            return Err(err);
        };
        place = joined;
        _turn = place.turn(config.enroll_throttle_delay).await;
    }
    let now = state.clock.now_ms();
    let token = new_token();
    let result = state
        .storage
        .enroll(
            hash_enrollment_code(&request.code),
            device,
            hash_secret(&token),
            &request.label,
            now,
        )
        .await;
    match result {
        Ok(device) => {
            tracing::info!(device = %device.id, scope = ?device.scope, "device enrolled");
            // The device is enrolled whatever happens next: a failed refund only leaves the
            // source's counter one higher for this window.
            if let Err(err) = state.storage.refund_enrollment_attempt(&source, now).await {
                tracing::warn!(%err, "could not refund an enrollment attempt");
            }
            let key_registered = match public_key {
                None => false,
                Some(key) => match state
                    .storage
                    .register_device_key(device.id, key, now, false)
                    .await
                {
                    Ok(registered) => registered,
                    // The credential is issued either way: a key that cannot be registered
                    // (revoked before) leaves the device without one, which the answer says.
                    Err(err) => {
                        tracing::warn!(device = %device.id, %err, "device key not registered");
                        false
                    }
                },
            };
            Ok(Json(EnrollResponse {
                device_id: device.id.0,
                token,
                scope: ApiScope::from(&device.scope),
                key_registered,
            }))
        }
        Err(StorageError::InvalidEnrollmentCode) => {
            state.metrics.enrollment_failure();
            tracing::warn!(%source, attempt, "failed enrollment attempt");
            Err(StorageError::InvalidEnrollmentCode.into())
        }
        Err(StorageError::AlreadyExists) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_exists",
            "this device id is already enrolled: an enrolled device gets a new credential \
             only with a re-enrollment code from the province",
        )),
        Err(other) => Err(other.into()),
    }
}
