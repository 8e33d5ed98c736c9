//! `GET /v1/admin/records/{id}/history`: a record's history for operators, each change with the
//! device's claims (author, officer, device clock, fields) beside the server's facts (the
//! authenticated device that pushed it, when the server stored it).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use communesync_core::record::{RecordId, decode_change, describe_change};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, authenticate_admin};
use crate::storage::{ServerStorage, StorageError};

/// One change of a record as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryOut {
    /// Change hash (hex).
    pub hash: String,
    /// The device's claims: its Automerge actor.
    pub author: Option<uuid::Uuid>,
    /// The device's claims: the officer signed in.
    pub officer: String,
    /// The device's claims: its clock (ms; may be wrong).
    pub device_time: i64,
    /// The device's claims: the fields it touched.
    pub fields: Vec<String>,
    /// The server's fact: the authenticated device that pushed it.
    pub pushed_by: uuid::Uuid,
    /// The server's fact: when it was stored (server ms).
    pub received_at: i64,
    /// Whether the author is the device that pushed it (always, for changes stored since the
    /// server checks attribution).
    pub attributed: bool,
}

/// A record's history in storage order; [`StorageError::NotFound`] for an unknown record.
/// Shared by the HTTP API and the CLI.
pub async fn record_history(
    storage: &dyn ServerStorage,
    id: RecordId,
) -> Result<Vec<HistoryOut>, StorageError> {
    let stored = storage.doc_history(id).await?;
    if stored.is_empty() {
        return Err(StorageError::NotFound);
    }
    stored
        .into_iter()
        .map(|change| {
            let decoded = decode_change(&change.bytes).map_err(StorageError::backend)?;
            let entry = describe_change(&decoded);
            Ok(HistoryOut {
                attributed: entry.device == Some(change.pushed_by.0),
                hash: entry.hash,
                author: entry.device,
                officer: entry.officer,
                device_time: entry.device_time,
                fields: entry.fields,
                pushed_by: change.pushed_by.0,
                received_at: change.received_at,
            })
        })
        .collect()
}

pub(super) async fn admin_record_history(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Vec<HistoryOut>>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let id: RecordId = id
        .parse()
        .map_err(|e: communesync_core::Error| ApiError::malformed(e.to_string()))?;
    Ok(Json(record_history(state.storage.as_ref(), id).await?))
}
