//! `/v1/admin/...`: communes, enrollment codes, devices, revocation, stats, catalogue.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use communesync_core::record::DeviceId;
use serde::{Deserialize, Serialize};

use super::{
    ApiError, ApiScope, AppState, authenticate_admin, hash_enrollment_code, new_enrollment_code,
    refused_body,
};
use crate::storage::{Scope, ServerStorage, StorageError};

// ----- admin -------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(super) struct NewCommune {
    code: String,
    name: String,
}

#[derive(Serialize)]
pub(super) struct CommuneOut {
    code: String,
    name: String,
}

fn check_code(code: &str) -> Result<(), ApiError> {
    if code.is_empty()
        || code.len() > 64
        || !code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::malformed(
            "commune code must be 1-64 letters, digits, '-' or '_'",
        ));
    }
    Ok(())
}

pub(super) async fn admin_create_commune(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<NewCommune>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let Json(new) = body.map_err(|e| refused_body(e.status(), e.body_text()))?;
    check_code(&new.code)?;
    if new.name.trim().is_empty() || new.name.len() > 200 {
        return Err(ApiError::malformed("commune name must be 1-200 bytes"));
    }
    state.storage.create_commune(&new.code, &new.name).await?;
    Ok(StatusCode::CREATED)
}

pub(super) async fn admin_list_communes(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<CommuneOut>>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let communes = state.storage.list_communes().await?;
    Ok(Json(
        communes
            .into_iter()
            .map(|c| CommuneOut {
                code: c.code,
                name: c.name,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
pub(super) struct IssueCode {
    scope: ApiScope,
    #[serde(default = "default_ttl_hours")]
    ttl_hours: u32,
}

fn default_ttl_hours() -> u32 {
    72
}

#[derive(Serialize)]
pub(super) struct IssuedCode {
    code: String,
    expires_at: i64,
}

/// Issues a one-time enrollment code; shared by the HTTP API and the CLI.
pub async fn issue_enrollment_code(
    storage: &dyn ServerStorage,
    scope: &Scope,
    ttl: Duration,
    now: i64,
) -> Result<(String, i64), StorageError> {
    let code = new_enrollment_code();
    let expires_at = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    storage
        .create_enrollment_code(scope, hash_enrollment_code(&code), expires_at)
        .await?;
    Ok((code, expires_at))
}

pub(super) async fn admin_issue_code(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<IssueCode>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<IssuedCode>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let Json(request) = body.map_err(|e| refused_body(e.status(), e.body_text()))?;
    if request.ttl_hours == 0 || request.ttl_hours > 24 * 30 {
        return Err(ApiError::malformed("ttl_hours must be 1 to 720"));
    }
    let scope = match request.scope {
        ApiScope::Commune(code) => Scope::Commune(code),
        ApiScope::Province => Scope::Province,
    };
    let ttl = Duration::from_secs(u64::from(request.ttl_hours) * 3600);
    let (code, expires_at) =
        issue_enrollment_code(state.storage.as_ref(), &scope, ttl, state.clock.now_ms()).await?;
    Ok(Json(IssuedCode { code, expires_at }))
}

#[derive(Deserialize)]
pub(super) struct DeviceFilter {
    commune: Option<String>,
}

/// A device as the admin API lists it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceOut {
    /// Device id.
    pub id: uuid::Uuid,
    /// Scope.
    pub scope: ApiScope,
    /// Label.
    pub label: String,
    /// Whether revoked.
    pub revoked: bool,
    /// Enrollment time (server ms).
    pub enrolled_at: i64,
    /// Last push (server ms).
    pub last_sync_at: Option<i64>,
    /// Changes pushed and stored.
    pub changes_pushed: u64,
    /// Documents waiting on the device at its last sync.
    pub pending_docs: Option<u64>,
    /// Last authenticated sync (server ms).
    pub last_seen_at: Option<i64>,
}

/// Devices for operators; shared by the HTTP API and the CLI.
pub async fn list_devices(
    storage: &dyn ServerStorage,
    commune: Option<String>,
) -> Result<Vec<DeviceOut>, StorageError> {
    let scope = commune.map(Scope::Commune);
    Ok(storage
        .list_devices(scope.as_ref())
        .await?
        .into_iter()
        .map(|info| DeviceOut {
            id: info.device.id.0,
            scope: ApiScope::from(&info.device.scope),
            label: info.device.label,
            revoked: info.device.revoked,
            enrolled_at: info.enrolled_at,
            last_sync_at: info.last_sync_at,
            changes_pushed: info.changes_pushed,
            pending_docs: info.pending_docs,
            last_seen_at: info.last_seen_at,
        })
        .collect())
}

pub(super) async fn admin_list_devices(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(filter): Query<DeviceFilter>,
) -> Result<Json<Vec<DeviceOut>>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    Ok(Json(
        list_devices(state.storage.as_ref(), filter.commune).await?,
    ))
}

pub(super) async fn admin_revoke(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let id = uuid::Uuid::parse_str(&id).map_err(|e| ApiError::malformed(e.to_string()))?;
    state.storage.revoke_device(DeviceId(id)).await?;
    tracing::info!(device = %id, "device revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Activity of a commune as the admin API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatsOut {
    /// Commune code.
    pub code: String,
    /// Records.
    pub documents: u64,
    /// Changes.
    pub changes: u64,
    /// Active devices.
    pub devices: u64,
    /// Latest change (server ms).
    pub last_change_at: Option<i64>,
}

/// Stats for operators; shared by the HTTP API and the CLI.
pub async fn stats(storage: &dyn ServerStorage) -> Result<Vec<StatsOut>, StorageError> {
    Ok(storage
        .stats()
        .await?
        .into_iter()
        .map(|s| StatsOut {
            code: s.code,
            documents: s.documents,
            changes: s.changes,
            devices: s.devices,
            last_change_at: s.last_change_at,
        })
        .collect())
}

pub(super) async fn admin_stats(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<StatsOut>>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    Ok(Json(stats(state.storage.as_ref()).await?))
}

#[derive(Serialize)]
pub(super) struct CatalogueVersion {
    version: u64,
}

pub(super) async fn admin_put_catalogue(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<CatalogueVersion>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let body = body.map_err(|e| refused_body(e.status(), e.body_text()))?;
    let json = std::str::from_utf8(&body).map_err(|e| ApiError::malformed(e.to_string()))?;
    validate_catalogue(json)?;
    let version = state.storage.put_catalogue(json).await?;
    Ok(Json(CatalogueVersion { version }))
}

/// Checks that a catalogue is what tablets can install, before any tablet sees it.
pub fn validate_catalogue(json: &str) -> Result<(), ApiError> {
    #[derive(Deserialize)]
    struct Catalogue {
        procedures: Vec<communesync_core::catalogue::Procedure>,
        #[serde(default)]
        #[allow(dead_code)]
        holidays: Vec<communesync_core::catalogue::CivilDate>,
    }
    let catalogue: Catalogue =
        serde_json::from_str(json).map_err(|e| ApiError::malformed(format!("catalogue: {e}")))?;
    if catalogue
        .procedures
        .iter()
        .any(|p| p.code.trim().is_empty())
    {
        return Err(ApiError::malformed("catalogue: a procedure has no code"));
    }
    Ok(())
}
