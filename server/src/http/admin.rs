//! `/v1/admin/...`: communes, enrollment and re-enrollment codes, devices, revocation (with
//! wipe), refused documents, stats, catalogue. Operator tokens are in `admin_tokens`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use communesync_core::record::{DeviceId, RecordId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    ApiError, ApiScope, AppState, authenticate_admin, hash_enrollment_code, new_enrollment_code,
    refused_body,
};
use crate::storage::{Refusal, Scope, ServerStorage, StorageError};

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

fn check_ttl_hours(ttl_hours: u32) -> Result<Duration, ApiError> {
    if ttl_hours == 0 || ttl_hours > 24 * 30 {
        return Err(ApiError::malformed("ttl_hours must be 1 to 720"));
    }
    Ok(Duration::from_secs(u64::from(ttl_hours) * 3600))
}

/// An optional JSON body: empty (or only whitespace) is `T::default()`.
fn optional_json<T: DeserializeOwned + Default>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| refused_body(e.status(), e.body_text()))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::malformed(e.to_string()))
}

/// A device id from the path.
fn device_in_path(id: &str) -> Result<DeviceId, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(DeviceId)
        .map_err(|e| ApiError::malformed(format!("device id: {e}")))
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
    let ttl = check_ttl_hours(request.ttl_hours)?;
    let scope = match request.scope {
        ApiScope::Commune(code) => Scope::Commune(code),
        ApiScope::Province => Scope::Province,
    };
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
    /// Revoked with a wipe order.
    pub wiped: bool,
    /// Documents of the device currently set aside as refused.
    pub refused_docs: u64,
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
            wiped: info.device.wiped,
            refused_docs: info.refused_docs,
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

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    #[serde(default)]
    wipe: bool,
}

/// Revokes a device: no body (or `{}`) revokes, `{"wipe": true}` also orders its store wiped.
/// Unknown fields are refused, so that a misspelt `wipe` is not a plain revocation.
pub(super) async fn admin_revoke(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<StatusCode, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let id = device_in_path(&id)?;
    let request: RevokeRequest = optional_json(body)?;
    if request.wipe {
        state.storage.revoke_and_wipe_device(id).await?;
        state
            .storage
            .revoke_device_keys(id, state.clock.now_ms())
            .await?;
        tracing::info!(device = %id, "device revoked, wipe ordered");
    } else {
        state.storage.revoke_device(id).await?;
        state
            .storage
            .revoke_device_keys(id, state.clock.now_ms())
            .await?;
        tracing::info!(device = %id, "device revoked");
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReenrollRequest {
    #[serde(default = "default_ttl_hours")]
    ttl_hours: u32,
}

impl Default for ReenrollRequest {
    fn default() -> Self {
        ReenrollRequest {
            ttl_hours: default_ttl_hours(),
        }
    }
}

#[derive(Serialize)]
pub(super) struct IssuedReenrollCode {
    device_id: uuid::Uuid,
    code: String,
    expires_at: i64,
}

/// Issues a one-time re-enrollment code for an existing device; shared by the HTTP API and the
/// CLI. Enrolling with it (and that device's id) replaces the device's credential.
pub async fn issue_reenrollment_code(
    storage: &dyn ServerStorage,
    device: DeviceId,
    ttl: Duration,
    now: i64,
) -> Result<(String, i64), StorageError> {
    let code = new_enrollment_code();
    let expires_at = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    storage
        .create_reenrollment_code(device, hash_enrollment_code(&code), expires_at)
        .await?;
    Ok((code, expires_at))
}

/// `POST /v1/admin/devices/{id}/reenroll-code`, optional body `{"ttl_hours": N}` (1 to 720,
/// default 72).
pub(super) async fn admin_reenroll_code(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<IssuedReenrollCode>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let device = device_in_path(&id)?;
    let request: ReenrollRequest = optional_json(body)?;
    let ttl = check_ttl_hours(request.ttl_hours)?;
    let (code, expires_at) =
        issue_reenrollment_code(state.storage.as_ref(), device, ttl, state.clock.now_ms()).await?;
    tracing::info!(device = %device, "re-enrollment code issued");
    Ok(Json(IssuedReenrollCode {
        device_id: device.0,
        code,
        expires_at,
    }))
}

/// A refused document as the admin API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RefusalOut {
    /// The device that pushed it.
    pub device: uuid::Uuid,
    /// The document.
    pub doc: RecordId,
    /// Reason code of the latest refusal.
    pub code: String,
    /// Reason message of the latest refusal.
    pub message: String,
    /// First refusal (server ms).
    pub first_at: i64,
    /// Latest refusal (server ms).
    pub last_at: i64,
    /// Times refused.
    pub count: u64,
}

impl From<Refusal> for RefusalOut {
    fn from(r: Refusal) -> Self {
        RefusalOut {
            device: r.device.0,
            doc: r.doc,
            code: r.code,
            message: r.message,
            first_at: r.first_at,
            last_at: r.last_at,
            count: r.count,
        }
    }
}

/// Refused documents of one device (or of all), newest first, at most
/// [`MAX_REFUSALS_LISTED`](crate::storage::MAX_REFUSALS_LISTED); shared by the HTTP API and the
/// CLI. [`StorageError::NotFound`] if the device is unknown.
pub async fn refusals(
    storage: &dyn ServerStorage,
    device: Option<DeviceId>,
) -> Result<Vec<RefusalOut>, StorageError> {
    let rows = storage.refusals(device).await?;
    if let Some(device) = device
        && rows.is_empty()
        && !storage
            .list_devices(None)
            .await?
            .iter()
            .any(|info| info.device.id == device)
    {
        return Err(StorageError::NotFound);
    }
    Ok(rows.into_iter().map(RefusalOut::from).collect())
}

/// `GET /v1/admin/devices/{id}/refusals`.
pub(super) async fn admin_device_refusals(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Vec<RefusalOut>>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let device = device_in_path(&id)?;
    Ok(Json(refusals(state.storage.as_ref(), Some(device)).await?))
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
    // Version 1 or 2 (`communesync_core::catalogue::CatalogueFile`): every procedure checked,
    // codes unique, bounds kept.
    #[derive(Deserialize)]
    struct Required {
        #[allow(dead_code)]
        procedures: serde::de::IgnoredAny,
    }
    serde_json::from_str::<Required>(json)
        .map_err(|e| ApiError::malformed(format!("catalogue: {e}")))?;
    communesync_core::catalogue::CatalogueFile::parse(json)
        .map_err(|e| ApiError::malformed(e.to_string()))?;
    Ok(())
}
