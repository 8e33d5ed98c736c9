//! Operator tokens: `GET /v1/admin/tokens` lists them (id, label, times; never a token or its
//! hash) and `POST /v1/admin/tokens/{id}/revoke` revokes one, which stops working at once.
//!
//! Two revocations are refused with 409 `conflict`, so that nobody locks the operators out by
//! mistake: the token making the request (revoke it with another token: the one holding it is
//! evidently still in use), and the last active token (create another one first, with
//! `communesync admin new-admin-token`). The last-token check is atomic in storage, so two
//! operators revoking each other's tokens at once cannot both succeed.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, authenticate_admin};
use crate::storage::{ServerStorage, StorageError};

/// An operator token as the admin API lists it.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdminTokenOut {
    /// Id, to revoke it by.
    pub id: u64,
    /// Who it is for.
    pub label: String,
    /// Creation (server ms); absent for tokens created before this was recorded.
    pub created_at: Option<i64>,
    /// Last authenticated request (server ms).
    pub last_used_at: Option<i64>,
    /// Revocation (server ms), if revoked.
    pub revoked_at: Option<i64>,
}

/// Every operator token, by id; shared by the HTTP API and the CLI.
pub async fn list_admin_tokens(
    storage: &dyn ServerStorage,
) -> Result<Vec<AdminTokenOut>, StorageError> {
    Ok(storage
        .list_admin_tokens()
        .await?
        .into_iter()
        .map(|t| AdminTokenOut {
            id: t.id,
            label: t.label,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        })
        .collect())
}

pub(super) async fn admin_list_tokens(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<AdminTokenOut>>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    Ok(Json(list_admin_tokens(state.storage.as_ref()).await?))
}

pub(super) async fn admin_revoke_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let caller = authenticate_admin(&state, &headers).await?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::malformed("token id must be a positive integer"))?;
    if id == caller {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "this is the token making the request: revoke it with another operator token",
        ));
    }
    state
        .storage
        .revoke_admin_token(id, state.clock.now_ms())
        .await?;
    tracing::info!(token = id, by = caller, "operator token revoked");
    Ok(StatusCode::NO_CONTENT)
}
