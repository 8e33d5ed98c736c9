//! `POST /v1/sync`: push and pull in one round trip.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use communesync_core::codec::DocCodec;
use communesync_core::integrity::rules::validate_fields;
use communesync_core::protocol::{
    CONTENT_TYPE, CatalogueUpdate, FeedDoc, PROTOCOL_VERSION, PushDoc, SyncRequest, SyncResponse,
};
use communesync_core::record::{
    DeviceId, Record, RecordDoc, RecordId, RecordKind, Source, decode_change, decode_changes,
};
use rayon::prelude::*;

use super::{ApiError, AppState, authenticate_device, refused_body};
use crate::storage::{IncomingChange, IncomingDoc, KnownDoc, Scope, StorageError};

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

pub(super) async fn sync(
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
        refused: Vec::new(),
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
    if known.is_none() {
        validate_fields(&record).map_err(|e| ApiError::malformed(format!("record {id}: {e}")))?;
    }
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
