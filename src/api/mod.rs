//! The HTTP API: routes, request and response types, and the error → status table.
//! No tensors here: requests become validated rows and go to the batcher.
pub mod auth;
pub mod body;
pub mod combine;
pub mod ensembles;
pub mod error;
pub mod grpc;
pub mod kserve;
pub mod lifecycle;
pub mod neighbors;
pub mod openapi;
pub mod params;
pub mod predict;
pub mod prompts;
pub mod tune;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};

pub use error::ApiError;
use error::ErrorBody;
pub use lifecycle::Lifecycle;

use crate::batcher::Batcher;
use crate::engine::worker::EngineHandle;
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

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            row: RowLimits::default(),
            max_inputs: 64,
            max_body_bytes: 1 << 20,
            max_prompt_bytes: 64 << 20,
            request_timeout: Duration::from_secs(60),
            max_uri_bytes: 8 << 10,
            max_header_bytes: 32 << 10,
        }
    }
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
    /// Where the server stands (the one readiness source).
    pub lifecycle: Arc<Lifecycle>,
    /// API keys, permissions and quotas (open when no tenants file).
    pub tenants: Arc<crate::tenants::Tenants>,
    /// Where prompt changes are recorded (None: not recorded).
    pub audit: Option<Arc<crate::prompts::audit::AuditLog>>,
    /// Tuning jobs.
    pub tuning: Arc<tune::TuneService>,
}

impl AppState {
    /// Fails with 503 until the server is ready, once it drains, and once it failed.
    pub fn check_serving(&self) -> Result<(), ApiError> {
        match self.lifecycle.current() {
            lifecycle::Status::Ready => Ok(()),
            lifecycle::Status::Loading(what) => Err(ApiError::Unavailable(format!(
                "the server is starting ({what})"
            ))),
            other => Err(ApiError::Unavailable(other.why_not().unwrap_or_default())),
        }
    }
}

/// The router with every route.
pub fn app(state: AppState) -> Router {
    let limits = state.limits;
    let predict_limit = |route| limited(route, limits.max_body_bytes, "--max-body-bytes");
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/prompts", get(prompts::list))
        .route(
            "/v1/prompts/{task}",
            limited(
                put(prompts::put),
                limits.max_prompt_bytes,
                "--max-prompt-bytes",
            )
            .get(prompts::get_one)
            .delete(prompts::delete),
        )
        .route("/v1/prompts/{task}/neighbors", get(neighbors::get))
        .route(
            "/v1/tasks/{task}/predict",
            predict_limit(post(predict::predict)),
        )
        .route("/v1/ensembles", get(ensembles::list))
        .route(
            "/v1/ensembles/{name}",
            predict_limit(put(ensembles::put))
                .get(ensembles::get_one)
                .delete(ensembles::delete),
        )
        .route(
            "/v1/ensembles/{name}/predict",
            predict_limit(post(ensembles::predict)),
        )
        .route(
            "/v1/tasks/{task}/tune",
            limited(
                post(tune::start),
                state.tuning.limits.max_body_bytes,
                "--tune-max-body-bytes",
            ),
        )
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
            predict_limit(post(kserve::infer)),
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
            predict_limit(post(kserve::version_infer)),
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

/// `route` with its body held to `max` bytes: 413 by declared length at once, or as it
/// streams (see [`body`]).
fn limited(
    route: axum::routing::MethodRouter<AppState>,
    max: usize,
    flag: &'static str,
) -> axum::routing::MethodRouter<AppState> {
    let limit = body::BodyLimit { max, flag };
    route
        .layer::<_, std::convert::Infallible>(axum::middleware::from_fn_with_state(
            limit,
            body::limit,
        ))
        .layer(DefaultBodyLimit::max(max))
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
    let status = state.lifecycle.current();
    (status.word(), status.why_not())
}

/// Prometheus text exposition of every metric (README: "Metrics").
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
    (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
    (status = 403, description = "Not an admin key", body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.tuning.update_metrics(&state.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
