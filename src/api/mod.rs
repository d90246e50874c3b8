//! The HTTP API: routes, request and response types, and the error → status table.
//! No tensors here: requests become validated rows and go to the batcher.
pub mod auth;
pub mod error;
pub mod grpc;
pub mod kserve;
pub mod openapi;
pub mod predict;
pub mod prompts;
pub mod tune;
pub mod validate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};

pub use error::ApiError;
use error::ErrorBody;

use crate::batcher::Batcher;
use crate::engine::worker::{EngineHandle, EngineState};
use crate::metrics::Metrics;
use crate::model::T5Tokenizer;
use crate::prompts::registry::Registry;
use validate::RowLimits;

/// Limits on HTTP requests.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Per-input limits (tokens, max_new_tokens, labels).
    pub row: RowLimits,
    /// Inputs per predict request.
    pub max_inputs: usize,
    /// Predict body size in bytes.
    pub max_body_bytes: usize,
    /// Prompt upload body size in bytes.
    pub max_prompt_bytes: usize,
    /// Time a predict request may take before it gets 504 (zero: no limit).
    pub request_timeout: Duration,
    /// Longest URL (path and query), in bytes (414 beyond).
    pub max_uri_bytes: usize,
    /// Largest total of header names and values, in bytes (431 beyond).
    pub max_header_bytes: usize,
}

/// Lifecycle flags shared by the routes and `main`.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Model loaded and the prompts folder read.
    pub ready: AtomicBool,
    /// Shutting down: readiness fails, new work is refused.
    pub draining: AtomicBool,
}

/// Everything the routes need.
#[derive(Clone)]
pub struct AppState {
    /// Served prompts.
    pub registry: Arc<Registry>,
    /// The request queue.
    pub batcher: Arc<Batcher>,
    /// The engine thread.
    pub engine: EngineHandle,
    /// The model's tokenizer.
    pub tokenizer: Arc<T5Tokenizer>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: ApiLimits,
    /// Ready / draining flags.
    pub lifecycle: Arc<Lifecycle>,
    /// API keys, permissions and quotas (open when no tenants file).
    pub tenants: Arc<crate::tenants::Tenants>,
    /// Where prompt changes are recorded (None: not recorded).
    pub audit: Option<Arc<crate::prompts::audit::AuditLog>>,
    /// Tuning jobs.
    pub tuning: Arc<tune::TuneService>,
}

impl AppState {
    /// Fails with 503 until the server is ready, and once it drains.
    pub fn check_serving(&self) -> Result<(), ApiError> {
        if self.lifecycle.draining.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable("the server is shutting down".into()));
        }
        if !self.lifecycle.ready.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable(
                "the server is starting (loading the model and prompts)".into(),
            ));
        }
        Ok(())
    }
}

/// The router with every route.
pub fn app(state: AppState) -> Router {
    let prompt_limit = DefaultBodyLimit::max(state.limits.max_prompt_bytes);
    let body_limit = DefaultBodyLimit::max(state.limits.max_body_bytes);
    let tune_limit = DefaultBodyLimit::max(state.tuning.limits.max_body_bytes);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/prompts", get(prompts::list))
        .route(
            "/v1/prompts/{task}",
            put(prompts::put)
                .layer(prompt_limit)
                .get(prompts::get_one)
                .delete(prompts::delete),
        )
        .route(
            "/v1/tasks/{task}/predict",
            post(predict::predict).layer(body_limit),
        )
        .route("/v1/tasks/{task}/tune", post(tune::start).layer(tune_limit))
        .route("/v1/tune-jobs", get(tune::list))
        .route(
            "/v1/tune-jobs/{id}",
            get(tune::get_one).delete(tune::cancel),
        )
        .route("/v1/tune-jobs/{id}/promote", post(tune::promote))
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/health/live", get(kserve::live))
        .route("/v2/health/ready", get(kserve::ready))
        .route("/v2/models/{task}", get(kserve::model_metadata))
        .route("/v2/models/{task}/ready", get(kserve::model_ready))
        .route(
            "/v2/models/{task}/infer",
            post(kserve::infer).layer(body_limit),
        )
        .route(
            "/v2/models/{task}/versions/{version}",
            get(kserve::version_metadata),
        )
        .route(
            "/v2/models/{task}/versions/{version}/ready",
            get(kserve::version_ready),
        )
        .route(
            "/v2/models/{task}/versions/{version}/infer",
            post(kserve::version_infer).layer(body_limit),
        )
        .route("/openapi.json", get(openapi::serve))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_head,
        ))
        .with_state(state)
}

/// Refuses oversized URLs and headers before any other work, authentication included.
async fn check_head(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let limits = state.limits;
    let uri = req.uri().to_string().len();
    if uri > limits.max_uri_bytes {
        return ApiError::UriTooLong(format!(
            "the URL is {uri} bytes; the limit is {} (--max-uri-bytes)",
            limits.max_uri_bytes
        ))
        .into_response();
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers > limits.max_header_bytes {
        return ApiError::HeadTooLarge(format!(
            "the headers are {headers} bytes; the limit is {} (--max-header-bytes)",
            limits.max_header_bytes
        ))
        .into_response();
    }
    next.run(req).await
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().chars().take(200).collect())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Body of `GET /healthz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: the process is up and answering.
    pub status: &'static str,
}

/// Body of `GET /readyz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// ready | loading | draining | failed
    pub status: &'static str,
    /// Prompts served (when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompts: Option<usize>,
    /// Why the server is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `unavailable` when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<&'static str>,
}

/// Liveness: 200 as soon as the process listens, also while the model loads.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: 200 once the model and the prompts folder are loaded; 503 while loading and
/// while shutting down.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready to serve", body = Readiness),
    (status = 503, description = "Loading, draining or failed", body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    match readiness(&state) {
        (status, None) => (
            StatusCode::OK,
            Json(Readiness {
                status,
                prompts: Some(state.registry.len()),
                error: None,
                error_type: None,
            }),
        ),
        (status, Some(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status,
                prompts: None,
                error: Some(why),
                error_type: Some("unavailable"),
            }),
        ),
    }
}

/// The readiness status word and, when not ready, why.
pub(crate) fn readiness(state: &AppState) -> (&'static str, Option<String>) {
    let engine = state.engine.state();
    if state.lifecycle.draining.load(Ordering::Acquire) {
        ("draining", Some("the server is shutting down".to_string()))
    } else {
        match engine {
            EngineState::Loading => ("loading", Some("loading the model".into())),
            EngineState::Failed(e) => ("failed", Some(format!("model failed to load: {e}"))),
            EngineState::Stopped => ("failed", Some("the engine has stopped".into())),
            EngineState::Ready if !state.lifecycle.ready.load(Ordering::Acquire) => {
                ("loading", Some("loading prompts".into()))
            }
            EngineState::Ready => ("ready", None),
        }
    }
}

/// Prometheus text exposition of every metric (README: "Metrics").
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
    (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
    (status = 403, description = "Not an admin key", body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let ready = readiness(&state).1.is_none();
    state.metrics.ready.set(i64::from(ready));
    state.tuning.update_metrics(&state.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
