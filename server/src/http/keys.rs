//! Device keys and receipts over HTTP (JSON).
//!
//! - `POST /v1/device/key` (device token), `{"public_key": HEX}`: trust on first use for a
//!   device enrolled before keys existed. Accepted only while the device has no key; a device
//!   with a key changes it only by re-enrollment (an operator's code), so a stolen token cannot
//!   swap the key that vouches for the device's past and future receipts.
//! - `POST /v1/device-keys` (device or operator token), `{"since": VERSION}`: the province's key
//!   list entries changed after `since` (at most [`MAX_KEYS_PER_ANSWER`], `more` when cut), with
//!   the list's version: what a tablet keeps to verify receipts offline.
//! - `POST /v1/receipts/verify` (device or operator token), `{"payload": TEXT}`: the server's
//!   online check of a scanned receipt with the same verifier the tablets use
//!   ([`communesync_core::receipt::verify_payload`]), against the province's full key list.
//!   A processed verification answers 200 with `{"valid": bool, ...}`; a refused receipt carries
//!   the reason's `code` and `message`, a valid one the receipt and whether the server holds
//!   the record.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use communesync_core::keys::{DeviceKeyEntry, KeyList, PublicKey};
use communesync_core::receipt::{self, Receipt};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, authenticate_admin, authenticate_device, refused_body};

/// Most key-list entries in one answer.
pub const MAX_KEYS_PER_ANSWER: usize = 5_000;
/// Most keys read to verify a receipt (every key of the province: tablets times enrollments).
const MAX_KEYS_VERIFIED_AGAINST: usize = 200_000;

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyRequest {
    public_key: String,
}

/// Parses and checks a public key sent by a client.
pub(crate) fn usable_key(hex: &str) -> Result<PublicKey, ApiError> {
    let key = PublicKey::from_hex(hex)
        .ok_or_else(|| ApiError::malformed("public_key must be 64 hex digits (Ed25519)"))?;
    if !key.is_usable() {
        return Err(ApiError::malformed(
            "public_key is not a usable Ed25519 key (small order or not on the curve)",
        ));
    }
    Ok(key)
}

pub(super) async fn register_first_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: JsonBody<KeyRequest>,
) -> Result<StatusCode, ApiError> {
    let device = authenticate_device(&state, &headers).await?;
    let Json(request) = body.map_err(|e| refused_body(e.status(), e.body_text()))?;
    let key = usable_key(&request.public_key)?;
    let registered = state
        .storage
        .register_device_key(device.id, key, state.clock.now_ms(), true)
        .await?;
    if !registered {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "key_already_registered",
            "this device already has a registered key; a new key is registered only by \
             re-enrollment with a code from the province",
        ));
    }
    tracing::info!(device = %device.id, "device key registered on first use");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeysRequest {
    #[serde(default)]
    since: u64,
}

/// The key list delta.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeysOut {
    /// The list's version now.
    pub version: u64,
    /// Entries changed after the version asked for.
    pub entries: Vec<DeviceKeyEntry>,
    /// Whether more entries wait (ask again from the last entry's version).
    pub more: bool,
}

async fn device_or_operator(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match authenticate_device(state, headers).await {
        Ok(_) => Ok(()),
        Err(device_error) => match authenticate_admin(state, headers).await {
            Ok(_) => Ok(()),
            Err(_) => Err(device_error),
        },
    }
}

pub(super) async fn device_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: JsonBody<KeysRequest>,
) -> Result<Json<KeysOut>, ApiError> {
    device_or_operator(&state, &headers).await?;
    let Json(request) = body.map_err(|e| refused_body(e.status(), e.body_text()))?;
    let (entries, version) = state
        .storage
        .device_keys_since(request.since, MAX_KEYS_PER_ANSWER + 1)
        .await?;
    Ok(Json(cut_delta(entries, version)))
}

/// At most [`MAX_KEYS_PER_ANSWER`] entries, cut between versions (one version's entries travel
/// together, so the tablet's version never claims half of one).
fn cut_delta(mut entries: Vec<DeviceKeyEntry>, version: u64) -> KeysOut {
    if entries.len() <= MAX_KEYS_PER_ANSWER {
        return KeysOut {
            version,
            entries,
            more: false,
        };
    }
    entries.truncate(MAX_KEYS_PER_ANSWER);
    let last = entries.last().map_or(0, |e| e.version);
    let first = entries.first().map_or(0, |e| e.version);
    if first != last {
        entries.retain(|e| e.version < last);
    }
    let version = entries.last().map_or(version, |e| e.version);
    KeysOut {
        version,
        entries,
        more: true,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyRequest {
    payload: String,
}

/// The server's verdict on a receipt.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyOut {
    /// Whether the receipt is genuine.
    pub valid: bool,
    /// Why not (`malformed`, `unknown_device`, `key_revoked`, `key_replaced`,
    /// `bad_signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What the genuine receipt states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    /// Whether the server holds the record (a genuine receipt of a record not yet synced is
    /// still genuine).
    #[serde(default)]
    pub record_known: bool,
}

/// Verifies `payload` against the province's key list in `state`'s storage.
pub async fn verify_receipt(state: &AppState, payload: &str) -> Result<VerifyOut, ApiError> {
    let (entries, version) = state
        .storage
        .device_keys_since(0, MAX_KEYS_VERIFIED_AGAINST)
        .await?;
    let keys = KeyList::new(entries, version);
    Ok(match receipt::verify_payload(payload, &keys) {
        Ok(receipt) => {
            let record_known = state
                .storage
                .doc_registration(receipt.record_id)
                .await?
                .is_some();
            VerifyOut {
                valid: true,
                code: None,
                message: None,
                receipt: Some(receipt),
                record_known,
            }
        }
        Err(refusal) => VerifyOut {
            valid: false,
            code: Some(refusal.code().to_owned()),
            message: Some(refusal.to_string()),
            receipt: None,
            record_known: false,
        },
    })
}

pub(super) async fn verify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: JsonBody<VerifyRequest>,
) -> Result<Json<VerifyOut>, ApiError> {
    device_or_operator(&state, &headers).await?;
    let Json(request) = body.map_err(|e| refused_body(e.status(), e.body_text()))?;
    Ok(Json(verify_receipt(&state, &request.payload).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use communesync_core::record::DeviceId;

    #[test]
    fn a_cut_delta_never_splits_a_version() {
        let entry = |version| DeviceKeyEntry {
            device: DeviceId::new(),
            commune: String::new(),
            public_key: PublicKey([version as u8; 32]),
            valid_from: 0,
            valid_until: None,
            revoked_at: None,
            version,
        };
        let mut entries: Vec<_> = (1..=MAX_KEYS_PER_ANSWER as u64).map(entry).collect();
        entries.push(entry(MAX_KEYS_PER_ANSWER as u64));
        let out = cut_delta(entries, 9_999);
        assert!(out.more);
        assert_eq!(out.entries.len(), MAX_KEYS_PER_ANSWER - 1);
        assert_eq!(out.version, MAX_KEYS_PER_ANSWER as u64 - 1);
        let small = cut_delta(vec![entry(1)], 3);
        assert!(!small.more);
        assert_eq!(small.version, 3);
    }
}
