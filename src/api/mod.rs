//! The front doors: HTTP (routes, wire types, the error → status table), gRPC and KServe v2.
//! No application logic here: a handler turns a wire request into one [`Service`] call.
pub mod auth;
pub mod body;
pub mod ensembles;
pub mod error;
pub mod grpc;
pub mod kserve;
pub mod neighbors;
pub mod openapi;
pub mod params;
pub mod predict;
pub mod prompts;
pub mod tune;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};

pub use error::ApiError;
use error::ErrorBody;

use crate::service::Service;

/// The router with every route.
pub fn app(state: Service) -> Router {
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
    route: axum::routing::MethodRouter<Service>,
    max: usize,
    flag: &'static str,
) -> axum::routing::MethodRouter<Service> {
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
    State(state): State<Service>,
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
pub async fn readyz(State(state): State<Service>) -> (StatusCode, Json<Readiness>) {
    match state.readiness() {
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

/// Prometheus text exposition of every metric (README: "Metrics").
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
    (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
    (status = 403, description = "Not an admin key", body = ErrorBody)))]
pub async fn metrics(State(state): State<Service>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics_text(),
    )
}
