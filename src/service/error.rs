//! The service's one error type. Every front door keeps exactly one table from it to its own
//! status codes (HTTP: `api::http::error`, gRPC: `api::grpc::status`); the stable snake_case
//! [`Error::error_type`] is shared by all of them, in bodies and as a metric label.
use crate::catalog::CatalogError;
use crate::prompts::PromptError;

/// Everything a capability can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The task has no prompt.
    #[error("unknown task {0:?}: upload its prompt with PUT /v1/prompts/{0}")]
    UnknownTask(String),
    /// No ensemble has this name.
    #[error("unknown ensemble {0:?}: create it with PUT /v1/ensembles/{0}")]
    UnknownEnsemble(String),
    /// No tuning job has this id.
    #[error("unknown tuning job {0:?}: see GET /v1/tune-jobs")]
    UnknownJob(String),
    /// A served model exists, but not at the version asked for.
    #[error("{0}")]
    UnknownVersion(String),
    /// Malformed input: bad JSON syntax, a bad task name, not a prompt file.
    #[error("{0}")]
    Malformed(String),
    /// Well-formed but invalid values: a limit, a prompt's shape, non-finite values.
    #[error("{0}")]
    Invalid(String),
    /// The request is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
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
    /// The batcher refused the rows: the queue is full.
    #[error("the queue is full ({queued} of {max} rows waiting); retry later")]
    QueueFull {
        /// Rows waiting.
        queued: usize,
        /// Queue capacity.
        max: usize,
    },
    /// The batcher refused the rows: one task already has its share of the queue waiting.
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
    /// The store is full.
    #[error("{0}")]
    Storage(String),
    /// A bug or an engine failure.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Stable snake_case name, used in bodies and as a metric label.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::UnknownTask(_) => "unknown_task",
            Error::UnknownJob(_) => "unknown_job",
            Error::UnknownEnsemble(_) => "unknown_ensemble",
            Error::UnknownVersion(_) => "not_found",
            Error::Malformed(_) => "bad_request",
            Error::Invalid(_) => "validation",
            Error::TooLarge(_) => "payload_too_large",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::QuotaExceeded(_) => "quota_exceeded",
            Error::RateLimited { .. } => "rate_limited",
            Error::QueueFull { .. } | Error::TaskQueueFull { .. } => "queue_full",
            Error::Timeout(_) => "timeout",
            Error::Conflict(_) => "conflict",
            Error::Unavailable(_) => "unavailable",
            Error::Storage(_) => "storage",
            Error::Internal(_) => "internal",
        }
    }

    /// Seconds after which a retry may succeed, for errors that waiting lifts.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            Error::QueueFull { .. } | Error::TaskQueueFull { .. } | Error::Unavailable(_) => {
                Some(1)
            }
            Error::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        }
    }

    /// Whether the server, not the client, is at fault (logged, counted as an error).
    pub fn is_server_fault(&self) -> bool {
        matches!(
            self,
            Error::Timeout(_) | Error::Unavailable(_) | Error::Storage(_) | Error::Internal(_)
        )
    }

    /// The one rule for the server's own storage failures: a full disk is `Storage`, a
    /// read-only or forbidden store `Unavailable` (an operator must act; another replica may
    /// work), anything else `Internal`.
    pub fn from_io(kind: std::io::ErrorKind, text: String) -> Self {
        use std::io::ErrorKind;
        match kind {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Error::Storage(text),
            ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => Error::Unavailable(text),
            _ => Error::Internal(text),
        }
    }

    /// A blocking task that panicked or was cancelled: a bug, named by what it did.
    pub fn task_failed(what: &str, e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("{what} failed: {e}"))
    }
}

impl From<PromptError> for Error {
    fn from(e: PromptError) -> Self {
        match &e {
            PromptError::Invalid(_) => Error::Invalid(e.to_string()),
            PromptError::Format(_) | PromptError::Adapter(_) | PromptError::TaskName(_) => {
                Error::Malformed(e.to_string())
            }
            PromptError::Io { source, .. } => Error::from_io(source.kind(), e.to_string()),
        }
    }
}

impl From<CatalogError> for Error {
    fn from(e: CatalogError) -> Self {
        use crate::engine::EngineError;
        match &e {
            CatalogError::Store(io) => Error::from_io(io.kind(), e.to_string()),
            // A panic is a bug in the server, not an engine that cannot take the prompt.
            CatalogError::Engine(EngineError::Panic(_)) | CatalogError::Task { .. } => {
                Error::Internal(e.to_string())
            }
            CatalogError::Engine(_) | CatalogError::Stopped(_) | CatalogError::Unavailable(_) => {
                Error::Unavailable(e.to_string())
            }
            CatalogError::Taken { .. } => Error::Conflict(e.to_string()),
        }
    }
}

impl From<crate::tenants::AuthError> for Error {
    fn from(e: crate::tenants::AuthError) -> Self {
        Error::Unauthorized(e.to_string())
    }
}

impl From<crate::tenants::quota::Refusal> for Error {
    fn from(r: crate::tenants::quota::Refusal) -> Self {
        use crate::tenants::quota::Refusal;
        match r {
            Refusal::Rate { retry_after, rate } => Error::RateLimited {
                why: format!("over the tenant's request rate ({rate}/s)"),
                retry_after_s: retry_after.as_secs_f64().ceil().max(1.0) as u64,
            },
            Refusal::InFlight { max } => Error::RateLimited {
                why: format!("the tenant already has {max} requests in flight (max_in_flight)"),
                retry_after_s: 1,
            },
        }
    }
}
