//! Operator queries over the read model (JSON, operator token):
//!
//! - `GET /v1/admin/records/search?commune=&kind=&status=&procedure=&name=&id_number=&dossier_number=&overdue=true&limit=&offset=`:
//!   records, newest received first; `name` matches folded (without diacritics).
//! - `GET /v1/admin/records/{id}`: one record's row.
//! - `GET /v1/admin/dashboard`: per-commune figures (this week, this month, open, overdue,
//!   on-time rate).
//! - `GET /v1/admin/report?from=YYYY-MM-DD&to=YYYY-MM-DD&format=csv|json`: the periodic report.
//! - `GET /v1/admin/export/records?format=csv|json&...`: records with the filters of the list.
//! - `POST /v1/admin/read-model/rebuild`: rebuilds the read model from the changes.
//!
//! Query parameters are checked (dates, kinds, bounds) and a bad one is a 400 that runs nothing.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use communesync_core::catalogue::CivilDate;
use communesync_core::record::{RecordId, RecordKind};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, authenticate_admin};
use crate::reports::{self, Format, Periods, ReportRange};
use crate::storage::{CommuneSummary, ReadModelRow, RecordQuery, StorageError};

/// A query string that does not parse: 400, after authentication (a caller without a token
/// learns nothing about the parameters).
fn malformed_query(rejection: QueryRejection) -> ApiError {
    ApiError::malformed(rejection.body_text())
}

/// Longest text filter accepted, in bytes.
const MAX_FILTER_BYTES: usize = 200;

/// Filters of the records list and export, as query parameters.
#[derive(Debug, Default, Deserialize)]
pub struct RecordFilters {
    /// Commune code.
    pub commune: Option<String>,
    /// `application` or `citizen_request`.
    pub kind: Option<String>,
    /// Status name.
    pub status: Option<String>,
    /// Procedure code (or request category).
    pub procedure: Option<String>,
    /// Part of the applicant's name, with or without diacritics.
    pub name: Option<String>,
    /// Identity number.
    pub id_number: Option<String>,
    /// Dossier number.
    pub dossier_number: Option<String>,
    /// Only overdue records (open, due before today).
    pub overdue: Option<bool>,
    /// Rows to skip.
    pub offset: Option<usize>,
    /// Most rows (capped).
    pub limit: Option<usize>,
    /// Export format.
    pub format: Option<Format>,
}

impl RecordFilters {
    /// The storage query, judged at `now_ms` for `overdue`; an empty text filter is no filter.
    pub fn to_query(&self, now_ms: i64) -> Result<RecordQuery, String> {
        let text = |value: &Option<String>, name: &str| -> Result<Option<String>, String> {
            match value.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(v) if v.len() > MAX_FILTER_BYTES => {
                    Err(format!("{name} is longer than {MAX_FILTER_BYTES} bytes"))
                }
                Some(v) => Ok(Some(v.to_owned())),
            }
        };
        let kind = match text(&self.kind, "kind")?.as_deref() {
            None => None,
            Some("application") => Some(RecordKind::Application),
            Some("citizen_request") => Some(RecordKind::CitizenRequest),
            Some(other) => return Err(format!("unknown kind {other:?}")),
        };
        Ok(RecordQuery {
            commune: text(&self.commune, "commune")?,
            kind,
            status: text(&self.status, "status")?,
            procedure_code: text(&self.procedure, "procedure")?,
            name: text(&self.name, "name")?,
            id_number: text(&self.id_number, "id_number")?,
            dossier_number: text(&self.dossier_number, "dossier_number")?,
            overdue_on: self
                .overdue
                .unwrap_or(false)
                .then(|| Periods::at(now_ms).today.to_string()),
            received_from: None,
            received_until: None,
            offset: self.offset.unwrap_or(0),
            limit: self.limit.unwrap_or(0),
        })
    }
}

pub(super) async fn admin_records(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    filters: Result<Query<RecordFilters>, QueryRejection>,
) -> Result<Json<Vec<ReadModelRow>>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let Query(filters) = filters.map_err(malformed_query)?;
    let query = filters
        .to_query(state.clock.now_ms())
        .map_err(ApiError::malformed)?;
    Ok(Json(state.storage.records(&query).await?))
}

pub(super) async fn admin_record(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ReadModelRow>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let id: RecordId = id
        .parse()
        .map_err(|e: communesync_core::Error| ApiError::malformed(e.to_string()))?;
    match state.storage.record_row(id).await? {
        Some(row) => Ok(Json(row)),
        None => Err(StorageError::NotFound.into()),
    }
}

/// One commune on the dashboard, as the API answers it.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardLine {
    /// The figures.
    #[serde(flatten)]
    pub summary: CommuneSummary,
    /// Share of results given on time (0..1), when any was given.
    pub on_time_rate: Option<f64>,
}

/// The dashboard at `now_ms`.
pub async fn dashboard(
    storage: &dyn crate::storage::ServerStorage,
    now_ms: i64,
) -> Result<Vec<DashboardLine>, StorageError> {
    let periods = Periods::at(now_ms);
    Ok(storage
        .commune_summaries(
            &periods.today.to_string(),
            periods.week_from,
            periods.month_from,
        )
        .await?
        .into_iter()
        .map(|summary| DashboardLine {
            on_time_rate: summary.on_time_rate(),
            summary,
        })
        .collect())
}

pub(super) async fn admin_dashboard(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<DashboardLine>>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    Ok(Json(
        dashboard(state.storage.as_ref(), state.clock.now_ms()).await?,
    ))
}

/// Parameters of the report.
#[derive(Debug, Deserialize)]
pub(super) struct ReportParams {
    from: String,
    to: String,
    format: Option<Format>,
}

/// A range from two `YYYY-MM-DD` texts.
pub fn parse_range(from: &str, to: &str) -> Result<ReportRange, String> {
    let day = |s: &str| s.trim().parse::<CivilDate>().map_err(|e| e.to_string());
    ReportRange::new(day(from)?, day(to)?)
}

/// A download: the body with its content type and file name.
pub(crate) fn download(body: String, content_type: &'static str, file_name: &str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

pub(super) async fn admin_report(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<ReportParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let Query(params) = params.map_err(malformed_query)?;
    let range = parse_range(&params.from, &params.to).map_err(ApiError::malformed)?;
    let report = reports::report(state.storage.as_ref(), range, state.clock.now_ms()).await?;
    let name = format!("report-{}-{}", report.from, report.to);
    Ok(match params.format.unwrap_or_default() {
        Format::Csv => download(
            reports::report_csv(&report),
            "text/csv; charset=utf-8",
            &format!("{name}.csv"),
        ),
        Format::Json => Json(report).into_response(),
    })
}

pub(super) async fn admin_export_records(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    filters: Result<Query<RecordFilters>, QueryRejection>,
) -> Result<Response, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let Query(filters) = filters.map_err(malformed_query)?;
    let query = filters
        .to_query(state.clock.now_ms())
        .map_err(ApiError::malformed)?;
    let rows = state.storage.records(&query).await?;
    Ok(match filters.format.unwrap_or_default() {
        Format::Csv => download(
            reports::records_csv(&rows),
            "text/csv; charset=utf-8",
            "records.csv",
        ),
        Format::Json => Json(rows).into_response(),
    })
}

#[derive(Serialize)]
pub(super) struct Rebuilt {
    rows: u64,
}

pub(super) async fn admin_rebuild_read_model(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Rebuilt>, ApiError> {
    authenticate_admin(&state, &headers).await?;
    let rules =
        crate::catalogue::CatalogueRules::load_deadline_rules(state.storage.as_ref()).await?;
    let rows = state.storage.rebuild_read_model(rules).await?;
    tracing::info!(rows, "read model rebuilt");
    Ok(Json(Rebuilt { rows }))
}
