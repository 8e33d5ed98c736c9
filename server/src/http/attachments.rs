//! The attachment channel: contents move in hash-checked chunks, apart from the records and
//! after them, so a cut on a 2G link costs at most the chunk in flight.
//!
//! - `GET /v1/attachments/{sha256}`: what the server holds of a content (JSON
//!   [`StatusBody`]), where an upload resumes.
//! - `PUT /v1/attachments/{sha256}/chunks/{index}`: one chunk; headers `x-content-size`,
//!   `x-chunk-size` and `x-chunk-sha256` (the chunk's own SHA-256, checked before anything is
//!   stored). Chunks are stored in order; the last one completes the content after its whole
//!   hash is checked.
//! - `GET /v1/attachments/{sha256}/chunks/{index}`: one chunk of a complete content, with its
//!   `x-chunk-sha256`.
//!
//! Scope: contents are kept per commune (a device reads and writes its commune's content of a
//! hash, never another commune's), and a device reaches one only while a live reference of a
//! record of its commune names it (recorded at push; an `x-record-id` header lets the server
//! find a reference it missed, e.g. after a crash between storing a record and recording its
//! references). Anything else is `404 not_found`, exactly as for a content that does not exist;
//! a record naming another commune's hash reaches only its own commune's (empty) content.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use communesync_core::attachment::is_content_address;
use communesync_core::record::{DeviceId, Record, RecordDoc, RecordId, Source};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::{AppState, authenticate_device};
use crate::storage::Scope;
use crate::storage::attachments::{ChunkRefusal, ChunkUpload, Referenced, chunk_shape};

/// What the server holds of a content, as JSON.
#[derive(Debug, Serialize)]
pub struct StatusBody {
    /// Size named by the record's reference.
    pub size: u64,
    /// Chunk size of the upload under way (0 before its first chunk).
    pub chunk_size: u32,
    /// Chunks stored, from 0: where an upload resumes.
    pub received: u32,
    /// Whether the content is whole.
    pub complete: bool,
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such attachment in this device's scope",
    )
}

/// The 32 bytes of a content address (64 lowercase hex digits).
pub(crate) fn address(text: &str) -> Result<[u8; 32], ()> {
    if !is_content_address(text) {
        return Err(());
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash).map_err(|_| ())?;
    Ok(hash)
}

fn parse_hash(text: &str) -> Result<[u8; 32], ApiError> {
    if !is_content_address(text) {
        return Err(ApiError::malformed(
            "the content address is 64 lowercase hex digits",
        ));
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash).map_err(|_| ApiError::malformed("bad hex"))?;
    Ok(hash)
}

fn header_number(headers: &HeaderMap, name: &str) -> Result<u64, ApiError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::malformed(format!("header {name} is required (a number)")))
}

/// The commune whose content `scope` reaches under `hash`, and the size its live reference
/// gives; looks at the record named by `x-record-id` when none is recorded (and records what
/// it finds).
async fn referenced(
    state: &AppState,
    scope: &Scope,
    actor: DeviceId,
    hash: [u8; 32],
    headers: &HeaderMap,
) -> Result<Referenced, ApiError> {
    if let Some(found) = state.storage.attachment_referenced(hash, scope).await? {
        return Ok(found);
    }
    let Some(record) = headers
        .get("x-record-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<RecordId>().ok())
    else {
        return Err(not_found());
    };
    let Some((commune, kind)) = state.storage.doc_registration(record).await? else {
        return Err(not_found());
    };
    if scope.commune().is_some_and(|own| own != commune) {
        return Err(not_found());
    }
    let changes = state.storage.doc_changes(record).await?;
    let read = tokio::task::spawn_blocking(move || {
        RecordDoc::from_changes(record, kind, &changes, actor, Source::Server).map(|(_, r)| r)
    })
    .await
    .map_err(ApiError::internal)?;
    let Ok(read) = read else {
        return Err(not_found());
    };
    let refs = match read {
        Record::Application(a) => a.attachments,
        Record::CitizenRequest(r) => r.attachments,
    };
    let now = state.clock.now_ms();
    let mut found = None;
    let address = hex::encode(hash);
    for reference in refs.iter().filter(|r| r.sha256 == address) {
        state
            .storage
            .reference_attachment(
                hash,
                &commune,
                record,
                reference.size,
                reference.is_live(),
                now,
            )
            .await?;
        if reference.is_live() {
            found = Some(reference.size);
        }
    }
    found
        .map(|size| Referenced { commune, size })
        .ok_or_else(not_found)
}

/// `GET /v1/attachments/{sha256}`.
pub(super) async fn status(
    State(state): State<Arc<AppState>>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let device = authenticate_device(&state, &headers).await?;
    let hash = parse_hash(&sha256)?;
    let Referenced { commune, size } =
        referenced(&state, &device.scope, device.id, hash, &headers).await?;
    let body = match state.storage.attachment_state(&commune, hash).await? {
        Some(held) if held.size == size => StatusBody {
            size,
            chunk_size: held.chunk_size,
            received: held.received,
            complete: held.complete,
        },
        _ => StatusBody {
            size,
            chunk_size: 0,
            received: 0,
            complete: false,
        },
    };
    Ok(axum::Json(body).into_response())
}

/// `PUT /v1/attachments/{sha256}/chunks/{index}`.
pub(super) async fn put_chunk(
    State(state): State<Arc<AppState>>,
    Path((sha256, index)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let device = authenticate_device(&state, &headers).await?;
    let hash = parse_hash(&sha256)?;
    let Some(commune) = device.scope.commune().map(str::to_owned) else {
        return Err(ApiError::forbidden(
            "a province account does not upload attachments",
        ));
    };
    let size = header_number(&headers, "x-content-size")?;
    let chunk_size = u32::try_from(header_number(&headers, "x-chunk-size")?)
        .map_err(|_| ApiError::malformed("x-chunk-size is too large"))?;
    chunk_shape(size, chunk_size, index, body.len()).map_err(ApiError::malformed)?;
    let claimed = headers
        .get("x-chunk-sha256")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::malformed("header x-chunk-sha256 is required"))?;
    let actual = hex::encode(Sha256::digest(&body));
    if claimed != actual {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "chunk_hash_mismatch",
            "the chunk does not match its x-chunk-sha256: send it again",
        ));
    }
    let named = referenced(&state, &device.scope, device.id, hash, &headers).await?;
    if named.size != size {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "size_mismatch",
            format!("the record names this content with {} bytes", named.size),
        ));
    }
    let upload = ChunkUpload {
        sha256: hash,
        size,
        chunk_size,
        index,
        bytes: &body,
        device: device.id,
        commune: &commune,
    };
    let now = state.clock.now_ms();
    let outcome = state
        .storage
        .put_attachment_chunk(upload, &state.config.attachments, now)
        .await?;
    match outcome {
        Ok(held) => Ok(axum::Json(StatusBody {
            size,
            chunk_size: held.chunk_size,
            received: held.received,
            complete: held.complete,
        })
        .into_response()),
        Err(ChunkRefusal::Quota(message)) => Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
            message,
        )),
        Err(ChunkRefusal::Mismatch(message)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "chunk_out_of_order",
            message,
        )),
        Err(ChunkRefusal::HashMismatch) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "content_hash_mismatch",
            "the content does not match its address; its chunks were dropped: upload it again",
        )),
    }
}

/// `GET /v1/attachments/{sha256}/chunks/{index}`.
pub(super) async fn get_chunk(
    State(state): State<Arc<AppState>>,
    Path((sha256, index)): Path<(String, u32)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let device = authenticate_device(&state, &headers).await?;
    let hash = parse_hash(&sha256)?;
    let named = referenced(&state, &device.scope, device.id, hash, &headers).await?;
    let Some(bytes) = state
        .storage
        .attachment_chunk(&named.commune, hash, index)
        .await?
    else {
        return Err(not_found());
    };
    let digest = hex::encode(Sha256::digest(&bytes));
    let mut response = bytes.into_response();
    if let Ok(value) = HeaderValue::from_str(&digest) {
        response.headers_mut().insert("x-chunk-sha256", value);
    }
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}
