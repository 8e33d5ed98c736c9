//! The provincial server's HTTP API (axum).
//!
//! - `POST /v1/enroll` (JSON): a one-time code for a device credential bound to a scope.
//! - `POST /v1/sync` (wire v1, `docs/PROTOCOL.md`): push and pull in one round trip.
//! - `/v1/admin/...` (JSON, operator token): communes, enrollment codes, devices, revocation,
//!   stats, catalogue.
//! - `GET /v1/health`.
//!
//! Everything from the network is checked before storage sees it: body size, content type,
//! credentials, protocol version, counts, that every change decodes, that a new record is a valid
//! record of the device's commune and an existing one stays one. A refused request gets a 4xx with
//! `{"error": code, "message": text}` and changes nothing. Secrets are only ever stored hashed and
//! never logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use communesync_core::clock::{Clock, SystemClock};
use communesync_core::codec::DocCodec;
use communesync_core::protocol::{
    CONTENT_TYPE, CatalogueUpdate, FeedDoc, Limits, PROTOCOL_VERSION, PushDoc, SyncRequest,
    SyncResponse, WireError,
};
use communesync_core::record::{
    DeviceId, Record, RecordDoc, RecordId, RecordKind, Source, decode_change, decode_changes,
};
use communesync_core::store::validate_record;
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::storage::{
    Device, IncomingChange, IncomingDoc, KnownDoc, Scope, ServerStorage, StorageError,
};

/// Tunables of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Body and count limits for sync requests.
    pub limits: Limits,
    /// Upper bound on feed bytes in one response, whatever the client asks.
    pub max_pull_bytes: usize,
    /// Failed enrollments allowed per source address and window.
    pub enroll_failures_allowed: u32,
    /// Length of the enrollment rate-limit window.
    pub enroll_window: Duration,
    /// A request body that sends nothing for this long is dropped (a slow 2G link still sends
    /// something every few seconds; a client holding a connection open with nothing does not).
    pub body_idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            max_pull_bytes: 4 * 1024 * 1024,
            enroll_failures_allowed: 10,
            enroll_window: Duration::from_secs(15 * 60),
            body_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Shared state of the handlers.
pub struct AppState {
    storage: Arc<dyn ServerStorage>,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    /// The server's own Automerge actor (it never edits; it only validates).
    actor: DeviceId,
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
            config,
            clock,
            actor: DeviceId::new(),
        })
    }
}

/// The router; serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.limits.max_compressed;
    Router::new()
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/enroll", post(enroll))
        .route("/v1/sync", post(sync))
        .route(
            "/v1/admin/communes",
            get(admin_list_communes).post(admin_create_commune),
        )
        .route("/v1/admin/enrollment-codes", post(admin_issue_code))
        .route("/v1/admin/devices", get(admin_list_devices))
        .route("/v1/admin/devices/{id}/revoke", post(admin_revoke))
        .route("/v1/admin/stats", get(admin_stats))
        .route("/v1/admin/catalogue", put(admin_put_catalogue))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyTimeoutLayer::new(state.config.body_idle_timeout))
        .layer(middleware::from_fn(move |request, next| {
            refuse_declared_oversize(body_limit, request, next)
        }))
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

// ----- errors ------------------------------------------------------------------------------------

/// An error answer: status, machine-readable code, readable message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", message)
    }
    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown credential",
        )
    }
    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    fn internal(err: impl std::fmt::Display) -> Self {
        // The detail goes to the log, not to the client.
        tracing::error!(%err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.code,
                message: &self.message,
            }),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::NotFound => Self::new(StatusCode::NOT_FOUND, "not_found", "not found"),
            StorageError::AlreadyExists => {
                Self::new(StatusCode::CONFLICT, "already_exists", "already exists")
            }
            StorageError::InvalidEnrollmentCode => Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid enrollment code",
            ),
            StorageError::OutOfScope { doc } => {
                Self::forbidden(format!("record {doc} is outside this device's commune"))
            }
            StorageError::Full(detail) => {
                tracing::error!(%detail, "storage full");
                let mut err = Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "storage_full",
                    "the server's storage is full; nothing was stored, try again later",
                );
                err.retry_after = Some(300);
                err
            }
            other => Self::internal(other),
        }
    }
}

impl From<WireError> for ApiError {
    fn from(err: WireError) -> Self {
        match err {
            WireError::TooLarge(m) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            other => Self::malformed(other.to_string()),
        }
    }
}

// ----- secrets -----------------------------------------------------------------------------------

/// SHA-256 of a secret; only this is stored.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A fresh bearer token (256 random bits, hex).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTVWXYZ23456789";

/// A fresh enrollment code people can read out and type: 12 characters from an alphabet
/// without look-alikes (≈ 59 bits), shown as `XXXX-XXXX-XXXX`.
pub fn new_enrollment_code() -> String {
    let mut rng = rand::rng();
    let chars: Vec<char> = (0..12)
        .map(|_| char::from(CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())]))
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The hash of an enrollment code as typed: case, spaces and dashes do not matter.
pub fn hash_enrollment_code(code: &str) -> [u8; 32] {
    let normalized: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hash_secret(&normalized)
}

/// A body its extractor refused: over the limit (413, like the early check of a declared
/// length) or malformed (400).
fn refused_body(status: StatusCode, text: String) -> ApiError {
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

async fn authenticate_device(state: &AppState, headers: &HeaderMap) -> Result<Device, ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    let device = state
        .storage
        .authenticate(hash_secret(token))
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    if device.revoked {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "revoked",
            "this device was revoked",
        ));
    }
    Ok(device)
}

async fn authenticate_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    if state.storage.authenticate_admin(hash_secret(token)).await? {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

// ----- enrollment --------------------------------------------------------------------------------

#[derive(Deserialize)]
struct EnrollRequest {
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
struct EnrollResponse {
    device_id: uuid::Uuid,
    token: String,
    scope: ApiScope,
}

async fn enroll(
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

// ----- sync --------------------------------------------------------------------------------------

thread_local! {
    static CODEC: std::cell::RefCell<Option<DocCodec>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's codec (the dictionary is loaded once per thread).
fn with_codec<T>(f: impl FnOnce(&mut DocCodec) -> Result<T, ApiError>) -> Result<T, ApiError> {
    CODEC.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(DocCodec::new().map_err(ApiError::internal)?);
        }
        match slot.as_mut() {
            Some(codec) => f(codec),
            None => Err(ApiError::internal("codec unavailable")),
        }
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

async fn sync(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    // Credentials and content type before the body: a request refused anyway is not read (an
    // unauthenticated client cannot make the server buffer megabytes, or wait for them).
    let device = authenticate_device(&state, request.headers()).await?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type != CONTENT_TYPE {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected {CONTENT_TYPE}"),
        ));
    }
    let body = Bytes::from_request(request, &state)
        .await
        .map_err(|e| refused_body(e.status(), e.body_text()))?;
    let limits = state.config.limits;
    let request =
        blocking(move || with_codec(|codec| Ok(SyncRequest::decode(codec, &body, &limits)?)))
            .await?;
    let now = state.clock.now_ms();

    // Push: validate everything, then store the batch in one transaction.
    let mut missing: Vec<u32> = Vec::new();
    if !request.push.is_empty() {
        // Decoding, and building the documents sent whole (which name no id), runs first; then
        // one storage read for what the server holds of them all; then the checks against it.
        let push = request.push;
        let actor = state.actor;
        let prepared = blocking(move || prepare_push(push, actor)).await?;
        let ids: Vec<RecordId> = prepared.iter().filter_map(|doc| doc.id).collect();
        let known = state.storage.known_docs(&ids).await?;
        let scope = device.scope.clone();
        let (incoming, unresolved) =
            blocking(move || validate_push(prepared, &scope, &known, actor)).await?;
        missing.extend(unresolved.iter().map(|(position, _)| *position));
        if !incoming.is_empty() {
            let positions: Vec<(RecordId, u32)> = incoming
                .iter()
                .map(|(position, doc)| (doc.id, *position))
                .collect();
            let outcome = state
                .storage
                .ingest(
                    &device,
                    incoming.into_iter().map(|(_, doc)| doc).collect(),
                    now,
                )
                .await
                .map_err(|e| {
                    match e {
                        // Revoked between authentication and commit.
                        StorageError::NotFound => ApiError::new(
                            StatusCode::FORBIDDEN,
                            "revoked",
                            "this device was revoked",
                        ),
                        other => other.into(),
                    }
                })?;
            missing.extend(
                positions
                    .iter()
                    .filter(|(id, _)| outcome.missing_deps.contains(id))
                    .map(|(_, position)| *position),
            );
        }
        missing.sort_unstable();
        missing.dedup();
    }
    let still_pending = request.pending_docs + missing.len() as u64;
    state
        .storage
        .record_device_status(device.id, still_pending, now)
        .await?;

    // Pull: the scope's feed after the cursor, minus this device's own changes.
    let (feed, next_cursor, more) = match request.pull {
        Some(pull) => {
            let max_bytes = usize::try_from(pull.max_bytes)
                .unwrap_or(usize::MAX)
                .clamp(1, state.config.max_pull_bytes);
            let page = state
                .storage
                .feed(
                    &device.scope,
                    pull.cursor,
                    Some(device.id),
                    max_bytes,
                    usize::MAX,
                )
                .await?;
            (group_feed(page.items), page.next_cursor, page.more)
        }
        None => (Vec::new(), 0, false),
    };
    let catalogue = match state.storage.catalogue().await? {
        Some((version, json)) if version > request.catalogue_version => {
            Some(CatalogueUpdate { version, json })
        }
        _ => None,
    };
    let response = SyncResponse {
        protocol: PROTOCOL_VERSION,
        server_time: now,
        missing_deps: missing,
        feed,
        next_cursor,
        more,
        catalogue,
    };
    let body =
        blocking(move || with_codec(|codec| response.encode(codec).map_err(ApiError::internal)))
            .await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response())
}

/// A pushed document once decoded.
struct Prepared {
    /// Position in the request's push.
    position: u32,
    /// The id sent, or read from the record when the document came whole without one (`None`
    /// when that record could not be read: `fresh` says why).
    id: Option<RecordId>,
    sent_id: bool,
    kind: RecordKind,
    changes: Vec<IncomingChange>,
    /// The decoded changes, for documents not built yet.
    decoded: Vec<automerge::Change>,
    /// For a document sent whole: the record its changes alone make.
    fresh: Option<Result<Record, communesync_core::Error>>,
}

/// Decodes every pushed document and builds those sent whole without an id (to learn it), in
/// parallel. A change that does not decode refuses the batch.
fn prepare_push(push: Vec<PushDoc>, actor: DeviceId) -> Result<Vec<Prepared>, ApiError> {
    push.into_par_iter()
        .enumerate()
        .map(|(position, doc)| {
            let position =
                u32::try_from(position).map_err(|_| ApiError::malformed("too many documents"))?;
            let mut changes = Vec::with_capacity(doc.changes.len());
            let mut decoded = Vec::with_capacity(doc.changes.len());
            for bytes in doc.changes {
                let change = decode_change(&bytes).map_err(|e| {
                    ApiError::malformed(format!(
                        "pushed document {position}: a change does not decode: {e}"
                    ))
                })?;
                changes.push(IncomingChange {
                    hash: change.hash().0,
                    deps: change.deps().iter().map(|d| d.0).collect(),
                    bytes,
                });
                decoded.push(change);
            }
            let (id, fresh, decoded) = match doc.id {
                Some(id) => (Some(id), None, decoded),
                None => {
                    let built =
                        RecordDoc::from_decoded(None, doc.kind, decoded, actor, Source::Untrusted)
                            .map(|(_, record)| record);
                    (built.as_ref().ok().map(Record::id), Some(built), Vec::new())
                }
            };
            Ok(Prepared {
                position,
                id,
                sent_id: doc.id.is_some(),
                kind: doc.kind,
                changes,
                decoded,
                fresh,
            })
        })
        .collect()
}

/// What validating one pushed document concluded.
enum Validated {
    /// Store these changes.
    Store(u32, IncomingDoc),
    /// The server lacks their dependencies: ask for the whole history.
    MissingDeps(u32, Option<RecordId>),
}

type Positioned<T> = Vec<(u32, T)>;

/// Checks prepared documents against the device's scope and what the server holds. Returns the
/// documents to store and those whose history the server lacks, with their positions.
/// Documents are independent, so they are checked in parallel; the first refusal (in batch
/// order) refuses the batch.
fn validate_push(
    prepared: Vec<Prepared>,
    scope: &Scope,
    known: &HashMap<RecordId, KnownDoc>,
    actor: DeviceId,
) -> Result<(Positioned<IncomingDoc>, Positioned<Option<RecordId>>), ApiError> {
    let validated = prepared
        .into_par_iter()
        .map(|doc| {
            let stored = doc.id.and_then(|id| known.get(&id));
            validate_doc(doc, scope, stored, actor)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut incoming = Vec::with_capacity(validated.len());
    let mut missing = Vec::new();
    for outcome in validated {
        match outcome {
            Validated::Store(position, doc) => incoming.push((position, doc)),
            Validated::MissingDeps(position, id) => missing.push((position, id)),
        }
    }
    Ok((incoming, missing))
}

fn validate_doc(
    doc: Prepared,
    scope: &Scope,
    known: Option<&KnownDoc>,
    actor: DeviceId,
) -> Result<Validated, ApiError> {
    let position = doc.position;
    let name = match doc.id {
        Some(id) => format!("record {id}"),
        None => format!("pushed document {position}"),
    };
    let commune = match known {
        Some(stored) => {
            if stored.kind != doc.kind {
                return Err(ApiError::forbidden(format!(
                    "{name} is a {}, not a {}",
                    stored.kind, doc.kind
                )));
            }
            Some(stored.commune.clone())
        }
        None => None,
    };
    if let (Some(commune), Some(own)) = (&commune, scope.commune())
        && commune != own
    {
        return Err(ApiError::forbidden(format!(
            "{name} is outside this device's commune"
        )));
    }
    // The record after these changes must be a valid record of its kind, in the commune it is
    // registered to (or, when new, in the device's commune).
    let built = match (doc.fresh, known) {
        // Sent whole and new to the server: built already.
        (Some(fresh), None) => fresh,
        (fresh, _) => {
            let id = doc.id.unwrap_or_default();
            let mut all = match known {
                Some(stored) => decode_changes(id, &stored.changes)
                    .map_err(|e| ApiError::internal(format!("stored history of {id}: {e}")))?,
                None => Vec::new(),
            };
            if fresh.is_some() {
                // Sent whole but known here: its changes go on top of the stored ones.
                let bytes: Vec<Vec<u8>> = doc.changes.iter().map(|c| c.bytes.clone()).collect();
                all.extend(
                    decode_changes(id, &bytes)
                        .map_err(|e| ApiError::malformed(format!("{name}: {e}")))?,
                );
            } else {
                all.extend(doc.decoded);
            }
            RecordDoc::from_decoded(doc.id, doc.kind, all, actor, Source::Untrusted)
                .map(|(_, record)| record)
        }
    };
    let record = match built {
        Ok(record) => record,
        Err(communesync_core::Error::InvalidInput { field, .. }) if field == "changes" => {
            // Depends on changes the server has never seen: ask for the whole history.
            return Ok(Validated::MissingDeps(position, doc.id));
        }
        Err(e) => {
            return Err(ApiError::malformed(format!("{name}: {e}")));
        }
    };
    let id = record.id();
    if doc.sent_id && doc.id != Some(id) {
        return Err(ApiError::malformed(format!(
            "{name}: the changes belong to another record"
        )));
    }
    // The field rules a tablet's own edits obey (a device that encodes records itself must not
    // get a 4 MB name or terminal escapes into every tablet of the commune).
    validate_record(&record, known.is_some())
        .map_err(|e| ApiError::malformed(format!("record {id}: {e}")))?;
    let record_commune = match &record {
        Record::Application(a) => a.commune_code.clone(),
        Record::CitizenRequest(r) => r.commune_code.clone(),
    };
    match (&commune, scope.commune()) {
        (Some(registered), _) if *registered != record_commune => {
            return Err(ApiError::forbidden(format!(
                "record {id} cannot move to another commune"
            )));
        }
        (None, Some(own)) if own != record_commune => {
            return Err(ApiError::forbidden(format!(
                "record {id} belongs to commune {record_commune}, not {own}"
            )));
        }
        _ => {}
    }
    Ok(Validated::Store(
        position,
        IncomingDoc {
            id,
            kind: doc.kind,
            commune: commune.unwrap_or(record_commune),
            changes: doc.changes,
        },
    ))
}

/// Groups feed items by document, in order of first appearance (order within a document kept).
/// A document whose changes start with its first one goes without id (the record holds it);
/// receive times go as differences from the previous document's.
fn group_feed(items: Vec<crate::storage::FeedItem>) -> Vec<FeedDoc> {
    let mut docs: Vec<(FeedDoc, i64)> = Vec::new();
    let mut index: HashMap<RecordId, usize> = HashMap::new();
    for item in items {
        match index.get(&item.doc) {
            Some(&i) => {
                docs[i].0.changes.push(item.bytes);
                docs[i].1 = docs[i].1.max(item.received_at);
            }
            None => {
                index.insert(item.doc, docs.len());
                docs.push((
                    FeedDoc {
                        id: (!item.root).then_some(item.doc),
                        kind: item.kind,
                        changes: vec![item.bytes],
                        received_delta: 0,
                    },
                    item.received_at,
                ));
            }
        }
    }
    let mut previous = 0i64;
    docs.into_iter()
        .map(|(mut doc, received_at)| {
            doc.received_delta = received_at.saturating_sub(previous);
            previous = received_at;
            doc
        })
        .collect()
}

// ----- admin -------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct NewCommune {
    code: String,
    name: String,
}

#[derive(Serialize)]
struct CommuneOut {
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

async fn admin_create_commune(
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

async fn admin_list_communes(
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
struct IssueCode {
    scope: ApiScope,
    #[serde(default = "default_ttl_hours")]
    ttl_hours: u32,
}

fn default_ttl_hours() -> u32 {
    72
}

#[derive(Serialize)]
struct IssuedCode {
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

async fn admin_issue_code(
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
struct DeviceFilter {
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

async fn admin_list_devices(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(filter): Query<DeviceFilter>,
) -> Result<Json<Vec<DeviceOut>>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    Ok(Json(
        list_devices(state.storage.as_ref(), filter.commune).await?,
    ))
}

async fn admin_revoke(
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

async fn admin_stats(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<StatsOut>>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    Ok(Json(stats(state.storage.as_ref()).await?))
}

#[derive(Serialize)]
struct CatalogueVersion {
    version: u64,
}

async fn admin_put_catalogue(
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
