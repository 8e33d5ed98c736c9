//! Error answers: a status, a machine-readable code and a readable message.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use communesync_core::protocol::WireError;
use serde::Serialize;

use crate::storage::StorageError;

// ----- errors ------------------------------------------------------------------------------------

/// An error answer: status, machine-readable code, readable message.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", message)
    }
    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown credential",
        )
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub(crate) fn internal(err: impl std::fmt::Display) -> Self {
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
            StorageError::Conflict(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            StorageError::Full(detail) => {
                crate::metrics::storage_error("full");
                tracing::error!(%detail, "storage full");
                let mut err = Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "storage_full",
                    "the server's storage is full; nothing was stored, try again later",
                );
                err.retry_after = Some(300);
                err
            }
            other => {
                crate::metrics::storage_error("backend");
                Self::internal(other)
            }
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
