//! `POST /v1/enroll`: a one-time code for a device credential bound to a scope.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use communesync_core::record::DeviceId;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, hash_enrollment_code, hash_secret, new_token, refused_body};
use crate::storage::{Scope, StorageError};

// ----- enrollment --------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(super) struct EnrollRequest {
    code: String,
    device_id: uuid::Uuid,
    #[serde(default)]
    label: String,
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
}

pub(super) async fn enroll(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<EnrollRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let now = state.clock.now_ms();
    let window = i64::try_from(state.config.enroll_window.as_millis()).unwrap_or(i64::MAX);
    let source = peer.ip().to_string();
    if state
        .storage
        .enrollment_failures(&source, now, window)
        .await?
        >= state.config.enroll_failures_allowed
    {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed enrollment attempts; try again later",
        );
        err.retry_after = Some(state.config.enroll_window.as_secs());
        return Err(err);
    }
    let Json(request) = body.map_err(|e| refused_body(e.status(), e.body_text()))?;
    if request.code.len() > 64 || request.label.len() > 200 {
        return Err(ApiError::malformed("code or label too long"));
    }
    let token = new_token();
    let result = state
        .storage
        .enroll(
            hash_enrollment_code(&request.code),
            DeviceId(request.device_id),
            hash_secret(&token),
            &request.label,
            now,
        )
        .await;
    match result {
        Ok(device) => {
            tracing::info!(device = %device.id, scope = ?device.scope, "device enrolled");
            Ok(Json(EnrollResponse {
                device_id: device.id.0,
                token,
                scope: ApiScope::from(&device.scope),
            }))
        }
        Err(StorageError::InvalidEnrollmentCode) => {
            state
                .storage
                .record_enrollment_failure(&source, now, window)
                .await?;
            tracing::warn!(%source, "failed enrollment attempt");
            Err(StorageError::InvalidEnrollmentCode.into())
        }
        Err(other) => Err(other.into()),
    }
}
