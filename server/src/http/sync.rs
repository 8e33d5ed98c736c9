//! `POST /v1/sync`: push and pull in one round trip.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use communesync_core::catalogue::delta::CatalogueHeld;
use communesync_core::codec::DocCodec;
use communesync_core::integrity::RefusalCode;
use communesync_core::keys::wire::{DeviceKeysRequest, MAX_DELTA_ENTRIES, cut_delta};
use communesync_core::numbering::NumberState;
use communesync_core::protocol::{
    CONTENT_TYPE, CatalogueUpdate, Extensions, FeedDoc, OLDEST_PROTOCOL_VERSION, PROTOCOL_V2,
    PROTOCOL_VERSION, Refused, STORE_EPOCH_HEADER, SyncRequest, SyncResponse, WireError,
    content_type_of, protocol_of_content_type,
};
use communesync_core::record::RecordId;

use super::push::{Cancel, Cancelled, Decoded, DocVerdict, Pusher, decode_push, judge};
use super::signed_push::{self, PushAuth};
use super::{ApiError, AppState, authenticate_device, refused_body};
use crate::numbers;
use crate::storage::{RefusalRow, StorageError};

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
    // Everything blocking this request starts stops when the client goes away (axum drops this
    // future when the connection closes, and the guard with it).
    let cancel = Cancel::default();
    let guard = cancel.guard(state.abandoned.clone());
    let answer = sync_inner(state, request, cancel).await;
    guard.disarm();
    answer
}

async fn sync_inner(
    state: Arc<AppState>,
    request: axum::extract::Request,
    cancel: Cancel,
) -> Result<Response, ApiError> {
    // Credentials and content type before the body: a request refused anyway is not read (an
    // unauthenticated client cannot make the server buffer megabytes, or wait for them).
    let device = authenticate_device(&state, request.headers()).await?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let content_type = content_type.as_str();
    let protocol = match protocol_of_content_type(content_type) {
        Some(protocol) => protocol,
        None if is_retired_content_type(content_type) => {
            return Err(upgrade_required(content_type));
        }
        None => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected {CONTENT_TYPE}"),
            ));
        }
    };
    let body = Bytes::from_request(request, &state)
        .await
        .map_err(|e| refused_body(e.status(), e.body_text()))?;
    let limits = state.config.limits;
    // Room for what the body decodes to, reserved before decompressing and held until the
    // answer: concurrent bodies that each decode to the limit wait for each other instead of
    // all being in memory at once. A body declaring more than the limit is refused by the
    // decoder without room.
    let declared = DocCodec::declared_size(&body)
        .and_then(|size| usize::try_from(size).ok())
        .unwrap_or(0)
        .min(limits.max_body);
    // What a body decodes to is held twice at most: the decompressed bytes, then the changes
    // restored from them.
    let room = u32::try_from((2 * declared).div_ceil(super::MIB).max(1))
        .unwrap_or(u32::MAX)
        .min(u32::try_from(super::decode_room_mib(&state.config)).unwrap_or(u32::MAX));
    let _room = state
        .decode_room
        .clone()
        .acquire_many_owned(room)
        .await
        .map_err(ApiError::internal)?;
    let request = blocking(move || {
        with_codec(|codec| match SyncRequest::decode(codec, &body, &limits) {
            Err(WireError::UpgradeRequired(version)) => {
                Err(upgrade_required(&format!("protocol {version}")))
            }
            other => Ok(other?),
        })
    })
    .await?;
    if request.protocol != protocol {
        return Err(ApiError::malformed(format!(
            "a protocol {} body sent as {content_type}",
            request.protocol
        )));
    }
    // A record id sent twice was refused while decoding (`protocol::bounded`).
    let now = state.clock.now_ms();
    // Dossier numbers (extension 1): a report the feature cannot read is set aside, the sync
    // goes on, and the device gets no block this time.
    let number_state = match request.extensions.get::<NumberState>() {
        Ok(number_state) => number_state,
        Err(err) => {
            tracing::warn!(device = %device.id, %err, "dossier number state refused");
            None
        }
    };
    let keys_request = request.extensions.get::<DeviceKeysRequest>();
    // The catalogue by delta (tag 5): what the tablet holds; one that does not decode gets no
    // catalogue this time (the records go on).
    let catalogue_held = request.extensions.get::<CatalogueHeld>();
    let catalogue_head = state.storage.catalogue_head().await?;

    // Push: a verdict per document; what passes is stored in one transaction.
    let mut missing: Vec<u32> = Vec::new();
    // Records this request pushes: the device holds them (see the pull below).
    let mut pushed_ids: std::collections::HashSet<RecordId> = std::collections::HashSet::new();
    let mut refused: Vec<Refused> = Vec::new();
    let (mut stored_docs, mut stored_bytes) = (0u64, 0u64);
    if !request.push.is_empty() {
        // The calendar the tablet declared it counts with (tag 5, else the request's catalogue
        // version): a return verdict true under it is accepted too (ADR 0009).
        let declared_position = match &catalogue_held {
            Ok(Some(held)) => Some(held.calendar_version),
            Ok(None) => Some(request.catalogue_version),
            Err(_) => None,
        };
        let declared_calendar = match (&catalogue_head, declared_position) {
            (Some(head), Some(position)) => {
                crate::calendar_history::declared_calendar(
                    state.storage.as_ref(),
                    &state.calendars,
                    head,
                    position,
                )
                .await?
            }
            _ => None,
        };
        let pusher = Pusher {
            device: device.id,
            scope: device.scope.clone(),
            withdrawal: state
                .withdrawal_rules(catalogue_head.as_ref().map(|head| head.version))
                .await?,
            declared_calendar,
        };
        // Decoding (and checking the documents sent whole, which name no id) runs first; then
        // one storage read for what the server holds of them all; then the checks against it.
        let push = request.push;
        // The signature covers every change of the push: checked before anything is judged.
        let (push, hashes) = blocking(move || {
            let hashes = signed_push::change_hashes(&push);
            Ok((push, hashes))
        })
        .await?;
        let auth = signed_push::check(&state, device.id, hashes, &keys_request, now).await?;
        let push = if let PushAuth::Refused(code, message) = &auth {
            refused = (0..push.len())
                .map(|position| Refused {
                    position: u32::try_from(position).unwrap_or(u32::MAX),
                    code: code.as_str().to_owned(),
                    message: message.clone(),
                })
                .collect();
            let ids = blocking(move || Ok((signed_push::record_ids(&push), push.len()))).await?;
            let (ids, count) = ids;
            let rows: Vec<RefusalRow> = ids
                .into_iter()
                .flatten()
                .map(|doc| RefusalRow {
                    doc,
                    code: code.as_str().to_owned(),
                    message: message.clone(),
                })
                .collect();
            tracing::warn!(device = %device.id, refused = count, %message, "push refused");
            state.storage.record_refusals(device.id, &rows, now).await?;
            Vec::new()
        } else {
            push
        };
        let (decoded, pusher) = {
            let cancel = cancel.clone();
            blocking(move || {
                decode_push(push, &pusher, &cancel)
                    .map(|decoded| (decoded, pusher))
                    .map_err(|Cancelled| cancelled())
            })
            .await?
        };
        let ids: Vec<RecordId> = decoded.iter().filter_map(Decoded::id).collect();
        pushed_ids.extend(ids.iter().copied());
        let id_at: HashMap<u32, RecordId> = decoded
            .iter()
            .filter_map(|doc| Some((doc.position(), doc.id()?)))
            .collect();
        let known = state.storage.known_docs(&ids).await?;
        let verdicts = {
            let cancel = cancel.clone();
            blocking(move || {
                judge(decoded, &known, &pusher, &cancel).map_err(|Cancelled| cancelled())
            })
            .await?
        };
        let mut incoming = Vec::new();
        let mut positions: Vec<(RecordId, u32)> = Vec::new();
        let mut references: Vec<(
            RecordId,
            String,
            Vec<communesync_core::attachment::AttachmentRef>,
        )> = Vec::new();
        let mut numbered = numbers::NewNumbers::default();
        let mut imports = crate::external_ids::NewImports::default();
        for (position, verdict) in verdicts {
            match verdict {
                DocVerdict::Store(doc, attachments, app) => {
                    if let Some(app) = app {
                        // A dossier number is checked against the device's blocks first.
                        if let Err(refusal) = numbered
                            .admit(&*state.storage, &state.config.numbers, &device, &app)
                            .await?
                        {
                            refused.push(Refused {
                                position,
                                code: refusal.code.as_str().to_owned(),
                                message: refusal.message,
                            });
                            continue;
                        }
                        // An imported dossier's external id is its commune's only one.
                        if let Err(refusal) = imports.admit(&*state.storage, &app).await? {
                            refused.push(Refused {
                                position,
                                code: refusal.code.as_str().to_owned(),
                                message: refusal.message,
                            });
                            continue;
                        }
                    }
                    positions.push((doc.id, position));
                    if !attachments.is_empty() {
                        references.push((doc.id, doc.commune.clone(), attachments));
                    }
                    incoming.push(doc);
                }
                DocVerdict::Nothing => {}
                DocVerdict::MissingDeps => missing.push(position),
                DocVerdict::Refused(refusal) => refused.push(Refused {
                    position,
                    code: refusal.code.as_str().to_owned(),
                    message: refusal.message,
                }),
            }
        }
        // Operators see each device's refused documents (those whose id could be read); a
        // document accepted since is cleared.
        if !refused.is_empty() {
            tracing::warn!(device = %device.id, refused = refused.len(), first = %refused[0].message, "pushed documents refused");
            let rows: Vec<RefusalRow> = refused
                .iter()
                .filter_map(|r| {
                    Some(RefusalRow {
                        doc: *id_at.get(&r.position)?,
                        code: r.code.clone(),
                        message: r.message.clone(),
                    })
                })
                .collect();
            state.storage.record_refusals(device.id, &rows, now).await?;
        }
        // Protocol 2 has no per-document verdicts: a refusal refuses its whole request, as it
        // always did, and nothing is stored.
        if protocol == PROTOCOL_V2
            && let Some(first) = refused.first()
        {
            let status = if first.code == RefusalCode::NotYours.as_str() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_REQUEST
            };
            return Err(ApiError::new(
                status,
                if status == StatusCode::FORBIDDEN {
                    "forbidden"
                } else {
                    "malformed"
                },
                format!("pushed document {}: {}", first.position, first.message),
            ));
        }
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        for refusal in &refused {
            state.metrics.refused(&refusal.code);
        }
        // The admitted numbers are indexed before their records are stored: if storing fails,
        // the retry finds its own number (same record) and stores it; a lookup of a number
        // whose record is not stored yet answers "not found".
        numbered.record(&*state.storage, device.id, now).await?;
        // External ids are claimed likewise; one a concurrent push claimed first refuses its
        // record here (nothing of it is stored).
        let lost = imports.claim(&*state.storage, device.id, now).await?;
        if !lost.is_empty() {
            let mut rows = Vec::with_capacity(lost.len());
            for (doc, refusal) in lost {
                if let Some(at) = positions.iter().position(|(id, _)| *id == doc) {
                    let (_, position) = positions.remove(at);
                    incoming.retain(|d| d.id != doc);
                    refused.push(Refused {
                        position,
                        code: refusal.code.as_str().to_owned(),
                        message: refusal.message.clone(),
                    });
                    rows.push(RefusalRow {
                        doc,
                        code: refusal.code.as_str().to_owned(),
                        message: refusal.message,
                    });
                }
            }
            state.storage.record_refusals(device.id, &rows, now).await?;
        }
        if !incoming.is_empty() {
            stored_docs = incoming.len() as u64;
            stored_bytes = incoming
                .iter()
                .flat_map(|doc| &doc.changes)
                .map(|change| change.bytes.len() as u64)
                .sum();
            let accepted: Vec<RecordId> = positions.iter().map(|(id, _)| *id).collect();
            // Before the changes: every stored change of a signed push has its signature.
            if let PushAuth::Verified(signature) = &auth {
                state.storage.record_push_signature(signature).await?;
            }
            let outcome = state
                .storage
                .ingest(&device, incoming, now)
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
            state.storage.clear_refusals(device.id, &accepted).await?;
            // The references of the stored records open their contents to the commune's
            // devices (a crash before this is healed by the x-record-id of an upload).
            for (doc, commune, attachments) in &references {
                if outcome.missing_deps.contains(doc) {
                    continue;
                }
                for reference in attachments {
                    let Ok(hash) = crate::http::attachments::address(&reference.sha256) else {
                        continue;
                    };
                    state
                        .storage
                        .reference_attachment(
                            hash,
                            commune,
                            *doc,
                            reference.size,
                            reference.is_live(),
                            now,
                        )
                        .await?;
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
    }
    let still_pending = request
        .pending_docs
        .saturating_add(u64::try_from(missing.len() + refused.len()).unwrap_or(u64::MAX));
    state
        .storage
        .record_device_status(device.id, still_pending, now)
        .await?;

    // Pull: the scope's feed after the cursor, minus this device's own changes, unless the
    // device asks from before a cursor it was already given: a store restored from an older
    // backup then gets back its own changes of records it does not push in this request (a
    // device whose last answer was lost asks from before too, but pushes again what that
    // request pushed, so it is not sent its own changes back). Applying changes a store already
    // has changes nothing.
    let (feed, next_cursor, more) = match request.pull {
        Some(pull) => {
            let max_bytes = usize::try_from(pull.max_bytes)
                .unwrap_or(usize::MAX)
                .clamp(1, state.config.max_pull_bytes);
            let issued = state.storage.cursor_issued(device.id).await?;
            let exclude = (pull.cursor >= issued).then_some(device.id);
            let mut page = state
                .storage
                .feed(&device.scope, pull.cursor, exclude, max_bytes, usize::MAX)
                .await?;
            if exclude.is_none() {
                page.items
                    .retain(|item| item.device != device.id || !pushed_ids.contains(&item.doc));
            }
            if page.next_cursor != issued {
                state
                    .storage
                    .set_cursor_issued(device.id, page.next_cursor)
                    .await?;
            }
            // A document that starts with its first change goes without its id (the record
            // holds it), which a tablet takes for a record it does not have; its own records
            // it does have: they go with their ids.
            let ids = exclude.is_none();
            (group_feed(page.items, ids), page.next_cursor, page.more)
        }
        None => (Vec::new(), 0, false),
    };
    let mut extensions = Extensions::new();
    if let Some(number_state) = &number_state {
        let grant = numbers::exchange(
            &*state.storage,
            &state.config.numbers,
            &device,
            number_state,
            now,
        )
        .await?;
        // Nothing to offer, nothing sent: an idle sync stays a few dozen bytes.
        if !grant.blocks.is_empty() {
            extensions.insert(&grant).map_err(ApiError::internal)?;
        }
    }
    let catalogue = match (&catalogue_head, catalogue_held) {
        (None, _) => None,
        // Published by delta: a page of what changed after the tablet's position, and the
        // calendar if it moved, as extensions 5 and 6.
        (Some(head), Ok(Some(held))) if head.calendar_version > 0 => {
            let (delta, calendar) =
                crate::catalogue::delta_page(state.storage.as_ref(), head, &held).await?;
            if let Some(delta) = delta {
                extensions.insert(&delta).map_err(ApiError::internal)?;
            }
            if let Some(calendar) = calendar {
                extensions.insert(&calendar).map_err(ApiError::internal)?;
            }
            None
        }
        (Some(_), Err(err)) => {
            tracing::warn!(device = %device.id, %err, "catalogue position refused");
            None
        }
        // A tablet that does not speak tag 5 (protocols 2 and 3), or a catalogue published
        // whole before the delta: the whole catalogue when the tablet's version is older.
        (Some(head), Ok(held)) => {
            let held_version = held.map_or(request.catalogue_version, |held| held.version);
            if head.version > held_version {
                state
                    .storage
                    .catalogue()
                    .await?
                    .map(|(version, json)| CatalogueUpdate { version, json })
            } else {
                None
            }
        }
    };
    // The key list entries the tablet lacks (protocol 4; older tablets send no version).
    if let Ok(Some(held)) = &keys_request {
        let (entries, current) = state
            .storage
            .device_keys_since(held.keys_version, MAX_DELTA_ENTRIES + 1)
            .await?;
        if current > held.keys_version {
            extensions
                .insert(&cut_delta(entries, current))
                .map_err(ApiError::internal)?;
        }
    }
    let commune = device.scope.commune().unwrap_or("province");
    state.metrics.sync(commune, stored_docs, stored_bytes);
    tracing::info!(
        device = %device.id,
        commune,
        protocol,
        stored_docs,
        stored_bytes,
        refused = refused.len(),
        missing_deps = missing.len(),
        pulled_docs = feed.len(),
        more,
        "sync"
    );
    let response = SyncResponse {
        protocol,
        server_time: now,
        missing_deps: missing,
        refused,
        feed,
        next_cursor,
        more,
        catalogue,
        extensions,
    };
    let body =
        blocking(move || with_codec(|codec| response.encode(codec).map_err(ApiError::internal)))
            .await?;
    let epoch = state.store_epoch().await?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type_of(protocol)),
            (
                header::HeaderName::from_static(STORE_EPOCH_HEADER),
                epoch.as_str(),
            ),
        ],
        body,
    )
        .into_response())
}

/// Whether `content_type` is one of an older protocol (`application/x-communesync-v1`, or the
/// unversioned one before it): its tablet must upgrade.
fn is_retired_content_type(content_type: &str) -> bool {
    match content_type.strip_prefix("application/x-communesync") {
        Some("") => true,
        Some(version) => version
            .strip_prefix("-v")
            .and_then(|n| n.parse::<u16>().ok())
            .is_some_and(|n| n < OLDEST_PROTOCOL_VERSION),
        None => false,
    }
}

fn upgrade_required(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "upgrade_required",
        format!(
            "{what} is no longer accepted: this server speaks protocols {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}; upgrade the app"
        ),
    )
}

fn cancelled() -> ApiError {
    // Nobody reads this answer: the client is gone.
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "cancelled",
        "the client went away",
    )
}

/// Groups feed items by document, in order of first appearance (order within a document kept).
/// A document whose changes start with its first one goes without id (the record holds it)
/// unless `always_ids`; receive times go as differences from the previous document's.
fn group_feed(items: Vec<crate::storage::FeedItem>, always_ids: bool) -> Vec<FeedDoc> {
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
                        id: (always_ids || !item.root).then_some(item.doc),
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
