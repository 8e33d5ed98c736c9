//! Dossier numbers for operators: `GET /v1/admin/records?number=NUMBER` (the application with
//! that number, as it reads now, with who pushed it) and `GET /v1/admin/number-blocks[?device=ID]`
//! (the blocks granted, with how far each device reported using them). Shared with the CLI.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use communesync_core::record::{Application, DeviceId, Record, RecordDoc, Source};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, authenticate_admin};
use crate::storage::{NumberBlock, ServerStorage, StorageError};

/// The record a dossier number names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberedRecord {
    /// The number asked for.
    pub number: String,
    /// The record's id.
    pub record: uuid::Uuid,
    /// The device that pushed it (and gave the number).
    pub pushed_by: uuid::Uuid,
    /// The application as it reads now on the server.
    pub application: Application,
}

/// A granted block as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberBlockOut {
    /// Block id.
    pub id: u64,
    /// Device it was granted to.
    pub device: uuid::Uuid,
    /// Agency counter it was cut from.
    pub agency: String,
    /// First sequence.
    pub first: u64,
    /// Last sequence (inclusive).
    pub last: u64,
    /// When it was granted (server ms).
    pub granted_at: i64,
    /// Whether the device acknowledged it.
    pub acknowledged: bool,
    /// Numbers the device reported used (`first..first + used`).
    pub used: u64,
    /// Numbers not used: held by the device, or abandoned when it was wiped.
    pub unused: u64,
}

impl From<NumberBlock> for NumberBlockOut {
    fn from(b: NumberBlock) -> Self {
        NumberBlockOut {
            id: b.id,
            device: b.device.0,
            agency: b.agency,
            first: b.first,
            last: b.last,
            granted_at: b.granted_at,
            acknowledged: b.acknowledged,
            used: b.next.saturating_sub(b.first),
            unused: (b.last + 1).saturating_sub(b.next),
        }
    }
}

/// The application with dossier number `number`; [`StorageError::NotFound`] if none.
pub async fn record_by_number(
    storage: &dyn ServerStorage,
    number: &str,
) -> Result<NumberedRecord, StorageError> {
    let number = number.trim();
    let (id, pushed_by) = storage
        .dossier_number(number)
        .await?
        .ok_or(StorageError::NotFound)?;
    let known = storage.known_docs(&[id]).await?;
    let doc = known.get(&id).ok_or(StorageError::NotFound)?;
    // The server's own copy: checked when it was pushed.
    let (_, record) = RecordDoc::from_changes(
        id,
        doc.kind,
        &doc.changes,
        DeviceId(uuid::Uuid::nil()),
        Source::Server,
    )
    .map_err(StorageError::backend)?;
    match record {
        Record::Application(application) => Ok(NumberedRecord {
            number: number.to_owned(),
            record: id.0,
            pushed_by: pushed_by.0,
            application,
        }),
        Record::CitizenRequest(_) => Err(StorageError::NotFound),
    }
}

/// Granted blocks, of one device or all, by id.
pub async fn number_blocks(
    storage: &dyn ServerStorage,
    device: Option<DeviceId>,
) -> Result<Vec<NumberBlockOut>, StorageError> {
    Ok(storage
        .number_blocks(device)
        .await?
        .into_iter()
        .map(NumberBlockOut::from)
        .collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NumberQuery {
    /// Optional here so that a caller without a token gets 401 before being told it is missing.
    number: Option<String>,
}

pub(super) async fn admin_record_by_number(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<NumberQuery>,
) -> Result<Json<NumberedRecord>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let number = query
        .number
        .ok_or_else(|| ApiError::malformed("give the dossier number: ?number=..."))?;
    if number.len() > communesync_core::numbering::MAX_NUMBER_LEN {
        return Err(ApiError::malformed("dossier number too long"));
    }
    Ok(Json(
        record_by_number(state.storage.as_ref(), &number).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BlockQuery {
    device: Option<uuid::Uuid>,
}

pub(super) async fn admin_number_blocks(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<BlockQuery>,
) -> Result<Json<Vec<NumberBlockOut>>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    Ok(Json(
        number_blocks(state.storage.as_ref(), query.device.map(DeviceId)).await?,
    ))
}
