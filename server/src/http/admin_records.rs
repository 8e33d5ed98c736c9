//! `GET /v1/admin/records/{id}/history`: a record's history for operators, each change with the
//! device's claims (author, officer, device clock, fields) beside the server's facts (the
//! authenticated device that pushed it, when the server stored it, whether the device's push
//! signature covering it verifies again now).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use std::collections::HashMap;

use communesync_core::keys::push::{PushSignature, verify_push};
use communesync_core::keys::{KeyList, Signature};
use communesync_core::record::{DeviceId, RecordId, decode_change, describe_change};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, authenticate_admin};
use crate::storage::{PushSignatureRow, ServerStorage, StorageError};

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
    /// The device's signature of the push that carried the change, verified again now from the
    /// kept signed message: `verified`, `unsigned` (pushed before device keys, or by a device
    /// without one) or `invalid: REASON`.
    #[serde(default)]
    pub signature: String,
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
    let mut out = Vec::with_capacity(stored.len());
    let mut hashes = Vec::with_capacity(stored.len());
    for change in stored {
        let decoded = decode_change(&change.bytes).map_err(StorageError::backend)?;
        hashes.push(decoded.hash().0);
        let entry = describe_change(&decoded);
        out.push(HistoryOut {
            attributed: entry.device == Some(change.pushed_by.0),
            hash: entry.hash,
            author: entry.device,
            officer: entry.officer,
            device_time: entry.device_time,
            fields: entry.fields,
            pushed_by: change.pushed_by.0,
            received_at: change.received_at,
            signature: String::new(),
        });
    }
    let signatures = storage.change_signatures(&hashes).await?;
    // Each push is verified once, however many of its changes the record has.
    let mut verdicts: HashMap<usize, String> = HashMap::new();
    let mut keys: HashMap<DeviceId, KeyList> = HashMap::new();
    for (entry, hash) in out.iter_mut().zip(&hashes) {
        let Some(push) = signatures.get(hash) else {
            entry.signature = "unsigned".into();
            continue;
        };
        let verdict = match verdicts.get(&push_key(push)) {
            Some(verdict) => verdict.clone(),
            None => {
                if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(push.device) {
                    slot.insert(KeyList::new(storage.device_keys_of(push.device).await?, 0));
                }
                let list = keys.get(&push.device).cloned().unwrap_or_default();
                let verdict = match verify_push(
                    &list,
                    push.device,
                    push.received_at,
                    &push.hashes,
                    &PushSignature {
                        counter: push.counter,
                        signature: Signature(push.signature),
                    },
                ) {
                    Ok(()) => "verified".to_owned(),
                    Err(refusal) => format!("invalid: {refusal}"),
                };
                verdicts.insert(push_key(push), verdict.clone());
                verdict
            }
        };
        entry.signature = if push.device.0 != entry.pushed_by || !push.hashes.contains(hash) {
            "invalid: the signature kept for this change does not cover it".into()
        } else {
            verdict
        };
    }
    Ok(out)
}

/// Identity of a kept push (rows of one push are shared).
fn push_key(push: &Arc<PushSignatureRow>) -> usize {
    Arc::as_ptr(push) as usize
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
