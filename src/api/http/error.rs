//! HTTP errors: the service's [`Error`] plus what only HTTP has, one stable `error_type` per
//! variant, and the one table from error to HTTP status. Every error body is
//! `{"error": "...", "error_type": "..."}`.
use axum::extract::multipart::MultipartError;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::prompts::PromptError;
use crate::service::Error;

/// The body of every error response.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the field, the limit and the value given.
    pub error: String,
    /// Stable snake_case kind: unknown_task, unknown_job, unknown_ensemble, not_found, method_not_allowed, bad_request,
    /// validation, payload_too_large, unsupported_media_type, queue_full, timeout,
    /// unavailable, storage, internal.
    pub error_type: String,
}

/// Everything a route can answer with instead of success: the service's errors, and the few
/// that only HTTP has (routes, methods, media types, oversized heads).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// What the service refused.
    #[error(transparent)]
    Service(#[from] Error),
    /// No such route.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body has a content type the route does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request line or headers are larger than allowed.
    #[error("{0}")]
    HeadTooLarge(String),
    /// The URL is longer than allowed.
    #[error("{0}")]
    UriTooLong(String),
}

impl ApiError {
    /// Stable snake_case name, used in bodies and as a metric label.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Service(e) => e.error_type(),
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::HeadTooLarge(_) => "headers_too_large",
            ApiError::UriTooLong(_) => "uri_too_long",
        }
    }

    /// The HTTP status of each error: the only such table.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Service(e) => http_status(e),
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
        }
    }

    /// The status and the service's error inside, as request metrics count a failure.
    pub fn outcome(&self) -> (StatusCode, Option<&Error>) {
        (self.status(), self.service())
    }

    /// The service's error inside, if this is one.
    pub fn service(&self) -> Option<&Error> {
        match self {
            ApiError::Service(e) => Some(e),
            _ => None,
        }
    }

    /// An error from a rejection's status and text.
    fn from_status(status: StatusCode, text: String) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge(text).into(),
            StatusCode::UNPROCESSABLE_ENTITY => Error::Invalid(text).into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
            s if s.is_client_error() => Error::Malformed(text).into(),
            _ => Error::Internal(text).into(),
        }
    }

    /// A malformed request (400).
    pub fn malformed(why: impl Into<String>) -> Self {
        Error::Malformed(why.into()).into()
    }

    /// Well-formed but invalid values (422).
    pub fn invalid(why: impl Into<String>) -> Self {
        Error::Invalid(why.into()).into()
    }
}

/// The HTTP status of each service error (the one table; [`ApiError::status`] adds HTTP's own).
pub fn http_status(e: &Error) -> StatusCode {
    match e {
        Error::UnknownTask(_)
        | Error::UnknownJob(_)
        | Error::UnknownEnsemble(_)
        | Error::UnknownVersion(_) => StatusCode::NOT_FOUND,
        Error::Malformed(_) => StatusCode::BAD_REQUEST,
        Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) | Error::QuotaExceeded(_) => StatusCode::FORBIDDEN,
        Error::RateLimited { .. } | Error::QueueFull { .. } | Error::TaskQueueFull { .. } => {
            StatusCode::TOO_MANY_REQUESTS
        }
        Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Storage(_) => StatusCode::INSUFFICIENT_STORAGE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(ErrorBody {
            error: self.to_string(),
            error_type: self.error_type().to_string(),
        });
        let mut response = (status, body).into_response();
        if let Some(secs) = self.service().and_then(Error::retry_after_s) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Service(Error::Unauthorized(_))) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"promptd\""),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::from_status(r.status(), r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        ApiError::from_status(r.status(), r.body_text())
    }
}

impl From<MultipartError> for ApiError {
    fn from(r: MultipartError) -> Self {
        ApiError::from_status(r.status(), format!("multipart body: {}", r.body_text()))
    }
}

impl From<PromptError> for ApiError {
    fn from(e: PromptError) -> Self {
        Error::from(e).into()
    }
}
