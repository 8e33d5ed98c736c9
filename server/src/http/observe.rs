//! Observability of the HTTP layer: a request id and one structured log line per request, the
//! request latency metric, `GET /metrics`, and the health endpoints.
//!
//! - Every request gets a fresh id (`X-Request-Id` in the answer; a client's own header is not
//!   trusted as an id) and runs inside a `request` span carrying it, so every line it logs (the
//!   `sync` line included) carries the id. The line logged at its end has method, route, status
//!   and latency; never a header, a query string or a body, where secrets travel.
//! - `GET /v1/health/live`: the process answers (200). `GET /v1/health/ready`: the database
//!   answers and its schema is this build's (200 `{"status":"ready"}`, else 503 with the reason):
//!   what a load balancer asks before sending traffic to a replica.
//! - `GET /metrics`: see [`crate::metrics`]. Open like the health endpoints (no secret in it);
//!   restrict it at the proxy when the server faces the Internet.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::AppState;

/// A fresh request id: 16 hex digits.
fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub(super) async fn observe(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request_id();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics
        .request(&route, &method, status, elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

pub(super) async fn live() -> &'static str {
    "ok"
}

pub(super) async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.storage.ready().await {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(error) => {
            tracing::warn!(%error, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "not_ready", "reason": error.to_string() })),
            )
                .into_response()
        }
    }
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let lag = match state.storage.read_model_lag().await {
        Ok(lag) => lag,
        Err(error) => {
            tracing::warn!(%error, "read-model lag unknown");
            crate::metrics::storage_error("backend");
            0
        }
    };
    let body = state.metrics.encode(lag);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
