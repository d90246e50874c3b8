//! API errors: one enum, one stable `error_type` per variant, and the one table from error
//! to HTTP status. Every error body is `{"error": "...", "error_type": "..."}`.
use axum::extract::multipart::MultipartError;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::prompts::registry::RegistryError;
use crate::prompts::PromptError;

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

/// Everything a route can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The task has no prompt.
    #[error("unknown task {0:?}: upload its prompt with PUT /v1/prompts/{0}")]
    UnknownTask(String),
    /// No ensemble has this name.
    #[error("unknown ensemble {0:?}: create it with PUT /v1/ensembles/{0}")]
    UnknownEnsemble(String),
    /// No tuning job has this id.
    #[error("unknown tuning job {0:?}: see GET /v1/tune-jobs")]
    UnknownJob(String),
    /// No such route.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body or path is malformed (bad JSON syntax, bad task name, not a prompt file).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but invalid values (limits, prompt shape, non-finite values).
    #[error("{0}")]
    Unprocessable(String),
    /// The body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The body has a content type the route does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request line or headers are larger than allowed.
    #[error("{0}")]
    HeadTooLarge(String),
    /// The URL is longer than allowed.
    #[error("{0}")]
    UriTooLong(String),
    /// No valid API key.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller's tenant may not touch this task.
    #[error("{0}")]
    Forbidden(String),
    /// A tenant quota that waiting will not lift (prompts owned, prompt length).
    #[error("{0}")]
    QuotaExceeded(String),
    /// The tenant's request rate or in-flight cap; retry after the given seconds.
    #[error("{why}; retry after {retry_after_s} s")]
    RateLimited {
        /// What was exceeded.
        why: String,
        /// Seconds until a retry can succeed.
        retry_after_s: u64,
    },
    /// The queue is full; retry after the given seconds.
    #[error("the queue is full ({queued} of {max} rows waiting); retry later")]
    QueueFull {
        /// Rows waiting.
        queued: usize,
        /// Queue capacity.
        max: usize,
    },
    /// One task already has its share of the queue waiting; retry after the given seconds.
    #[error(
        "task {task} already has {queued} rows waiting, the most one task may ({max}); retry later"
    )]
    TaskQueueFull {
        /// The task.
        task: String,
        /// Its rows waiting.
        queued: usize,
        /// Rows one task may have waiting.
        max: usize,
    },
    /// The request did not finish in time.
    #[error("the request did not finish within {0} ms")]
    Timeout(u64),
    /// The request conflicts with the resource's state (e.g. cancelling an ended job).
    #[error("{0}")]
    Conflict(String),
    /// The server is not ready (loading) or is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// Writing the prompts folder failed.
    #[error("{0}")]
    Storage(String),
    /// A bug or an engine failure.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Stable snake_case name, used in bodies and as a metric label.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::UnknownTask(_) => "unknown_task",
            ApiError::UnknownJob(_) => "unknown_job",
            ApiError::UnknownEnsemble(_) => "unknown_ensemble",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unprocessable(_) => "validation",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::HeadTooLarge(_) => "headers_too_large",
            ApiError::UriTooLong(_) => "uri_too_long",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::QuotaExceeded(_) => "quota_exceeded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::QueueFull { .. } | ApiError::TaskQueueFull { .. } => "queue_full",
            ApiError::Timeout(_) => "timeout",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Storage(_) => "storage",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The HTTP status of each error: the only such table.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::UnknownTask(_)
            | ApiError::UnknownJob(_)
            | ApiError::UnknownEnsemble(_)
            | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::QuotaExceeded(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. }
            | ApiError::QueueFull { .. }
            | ApiError::TaskQueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Storage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// An error from a rejection's status and text.
    fn from_status(status: StatusCode, text: String) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(text),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(text),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
            s if s.is_client_error() => ApiError::BadRequest(text),
            _ => ApiError::Internal(text),
        }
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
        let retry_after = match &self {
            ApiError::QueueFull { .. }
            | ApiError::TaskQueueFull { .. }
            | ApiError::Unavailable(_) => Some(1),
            ApiError::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
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
        match &e {
            PromptError::Invalid(_) => ApiError::Unprocessable(e.to_string()),
            PromptError::Format(_) | PromptError::Adapter(_) | PromptError::TaskName(_) => {
                ApiError::BadRequest(e.to_string())
            }
            PromptError::Io { source, .. } => ApiError::from_io(source.kind(), e.to_string()),
        }
    }
}

impl ApiError {
    /// The one rule for the server's own file failures: a full disk is 507, a read-only or
    /// forbidden folder 503 (an operator must act; retrying elsewhere may work), else 500.
    pub fn from_io(kind: std::io::ErrorKind, text: String) -> Self {
        use std::io::ErrorKind;
        match kind {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => ApiError::Storage(text),
            ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => {
                ApiError::Unavailable(text)
            }
            _ => ApiError::Internal(text),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        use crate::engine::EngineError;
        match &e {
            RegistryError::Store(io) => ApiError::from_io(io.kind(), e.to_string()),
            // A panic is a bug in the server, not an engine that cannot take the prompt.
            RegistryError::Engine(EngineError::Panic(_)) | RegistryError::Task { .. } => {
                ApiError::Internal(e.to_string())
            }
            RegistryError::Engine(_) | RegistryError::Stopped(_) => {
                ApiError::Unavailable(e.to_string())
            }
        }
    }
}

/// A JSON body whose rejections are [`ApiError`]s, so malformed bodies get the same JSON
/// error shape as everything else (a body over the route's limit is a 413).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        super::body::check(&req)?;
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(JsonBody(value))
    }
}

/// A raw body (any content type); a body over the route's limit is a 413.
#[derive(Debug)]
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        super::body::check(&req)?;
        Ok(RawBody(axum::body::Bytes::from_request(req, state).await?))
    }
}

impl From<crate::tenants::AuthError> for ApiError {
    fn from(e: crate::tenants::AuthError) -> Self {
        ApiError::Unauthorized(e.to_string())
    }
}

impl From<crate::tenants::quota::Refusal> for ApiError {
    fn from(r: crate::tenants::quota::Refusal) -> Self {
        use crate::tenants::quota::Refusal;
        match r {
            Refusal::Rate { retry_after, rate } => ApiError::RateLimited {
                why: format!("over the tenant's request rate ({rate}/s)"),
                retry_after_s: retry_after.as_secs_f64().ceil().max(1.0) as u64,
            },
            Refusal::InFlight { max } => ApiError::RateLimited {
                why: format!("the tenant already has {max} requests in flight (max_in_flight)"),
                retry_after_s: 1,
            },
        }
    }
}
