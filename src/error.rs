//! The one error type at the HTTP boundary, rendered as RFC 9457 `application/problem+json`.
//!
//! Handlers return [`ApiError`]; its response carries a [`Problem`] as an extension, and the
//! problem layer (`http::problem`) writes the body with the request id. Internal causes are
//! logged once, here, and never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::http::limits::RetryAfter;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// A stable snake_case machine code (`not_found`, `validation_failed`, ...).
    pub code: &'static str,
    pub request_id: Option<String>,
    /// For `validation_failed`: every bad field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!(
                "https://fluence-gateway.dev/problems/{}",
                code.replace('_', "-")
            ),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code,
            request_id: None,
            errors: Vec::new(),
        }
    }

    /// The problem a bare error status stands for, when a layer answered without a body
    /// (timeout, body limit, an unknown method).
    pub fn for_status(status: StatusCode) -> Problem {
        let (code, detail) = match status {
            StatusCode::NOT_FOUND => ("not_found", "No such resource."),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "This resource does not accept that method.",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => {
                ("payload_too_large", "The request body is too large.")
            }
            StatusCode::REQUEST_TIMEOUT => ("request_timeout", "The request took too long."),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "Send the body as application/json.",
            ),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "Too many requests."),
            StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "The service is unavailable."),
            s if s.is_server_error() => ("internal_error", "An internal error occurred."),
            _ => ("bad_request", "The request is not valid."),
        };
        Problem::new(status, code, detail)
    }
}

/// Collects every field problem of a request, so that one answer names them all.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was added, else `validation_failed` with every field.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

/// An error a handler returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No key, or a key that is unknown, wrong, revoked or expired: one answer for all, so that
    /// it says nothing about which keys exist.
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("rate limited")]
    RateLimited(RetryAfter),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// The body is not JSON at all (syntax, truncation, bad UTF-8, too deep).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// An `Idempotency-Key` sent again with a different request.
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// Fluence refused a change the gateway forwarded (its body is never passed through).
    #[error("upstream rejected: {0}")]
    UpstreamRejected(String),
    /// The database cannot answer now (locked past the busy timeout, full, I/O error): the
    /// request is refused whole, and may be retried.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Something the client cannot fix; the cause is logged, never returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(cause.to_string())
    }

    /// One field's problem, for the common case of a single bad field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    pub fn problem(&self) -> Problem {
        match self {
            ApiError::Unauthorized => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Send a valid API key as `Authorization: Bearer <key>`.",
            ),
            ApiError::Forbidden(detail) => Problem::new(StatusCode::FORBIDDEN, "forbidden", detail),
            ApiError::RateLimited(retry) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("Too many requests; retry in {} s.", retry.seconds()),
            ),
            ApiError::NotFound(detail) => Problem::new(StatusCode::NOT_FOUND, "not_found", detail),
            ApiError::Conflict(detail) => Problem::new(StatusCode::CONFLICT, "conflict", detail),
            ApiError::MalformedJson(detail) => Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("The body is not valid JSON: {detail}"),
            ),
            ApiError::UnsupportedMediaType => {
                Problem::for_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            }
            ApiError::PayloadTooLarge => Problem::for_status(StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::Validation(errors) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                let mut problem = Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    format!("Invalid fields: {}.", fields.join(", ")),
                );
                problem.errors.clone_from(errors);
                problem
            }
            ApiError::IdempotencyKeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request; use a new key for a new request.",
            ),
            ApiError::UpstreamRejected(detail) => {
                Problem::new(StatusCode::BAD_GATEWAY, "upstream_rejected", detail)
            }
            ApiError::UpstreamUnavailable(detail) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                detail,
            ),
            ApiError::Unavailable(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "The gateway cannot reach its database right now; nothing was changed. Retry later.",
            ),
            ApiError::Internal(_) => Problem::for_status(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => tracing::error!(%cause, "internal error"),
            ApiError::Unavailable(cause) => tracing::warn!(%cause, "database unavailable"),
            _ => {}
        }
        let mut response = self.problem().into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited(retry) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry.seconds()));
            }
            _ => {}
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    /// A database that is busy, full or failing is a 503 (fail closed, retry later); anything
    /// else is a bug, a 500.
    fn from(error: sqlx::Error) -> ApiError {
        if crate::store::unavailable(&error) {
            ApiError::Unavailable(error.to_string())
        } else {
            ApiError::internal(error)
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> ApiError {
        match error {
            crate::store::StoreError::Sqlx(error) => error.into(),
            crate::store::StoreError::Unavailable(message) => ApiError::Unavailable(message),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for Problem {
    /// The body is written by the problem layer, which knows the request id.
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}
