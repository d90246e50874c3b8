//! The HTTP front door: the router, body limits, authentication, the OpenAPI document, and the
//! routes, each turning JSON into one [`Service`] call (KServe v2's HTTP routes included).
pub mod auth;
pub mod body;
pub mod ensembles;
pub mod error;
pub mod health;
pub mod kserve;
pub mod neighbors;
pub mod openai;
pub mod openapi;
pub mod params;
pub mod predict;
pub mod prompts;
pub mod responses;
pub mod sse;
pub mod tune;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;

use error::ApiError;

use crate::service::Service;

/// The router with every route.
pub fn app(state: Service) -> Router {
    let limits = state.limits;
    let predict_limit = |route| limited(route, limits.max_body_bytes, "--max-body-bytes");
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/v1/fleet", get(health::fleet))
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
        .route("/v1/tune-jobs/{id}/curve.svg", get(tune::curve))
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
            get(kserve::model_metadata),
        )
        .route(
            "/v2/models/{task}/versions/{version}/ready",
            get(kserve::model_ready),
        )
        .route(
            "/v2/models/{task}/versions/{version}/infer",
            predict_limit(post(kserve::infer)),
        )
        .route(
            "/v1/completions",
            predict_limit(post(openai::completions::completions)),
        )
        .route(
            "/v1/chat/completions",
            predict_limit(post(openai::chat::chat_completions)),
        )
        .route("/v1/models", get(openai::models::list))
        .route("/v1/models/{model}", get(openai::models::get_one))
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
