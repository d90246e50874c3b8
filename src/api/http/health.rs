//! Probes and metrics: `GET /healthz`, `GET /readyz`, `GET /metrics`.
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::error::{ApiError, ErrorBody};
use super::responses::Keyed;
use crate::service::fleet::FleetView;
use crate::service::Service;

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
    Keyed,
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

/// The replicas sharing this server's object store, with the manifest generations each has
/// applied and when it last said so (an empty list for a folder store).
#[utoipa::path(get, path = "/v1/fleet", tag = "health", responses(
    (status = 200, description = "Replicas and what they serve", body = FleetView),
    Keyed,
    (status = 403, description = "Not an admin key", body = ErrorBody),
    (status = 503, description = "The object store is unreachable", body = ErrorBody)))]
pub async fn fleet(State(state): State<Service>) -> Result<Json<FleetView>, ApiError> {
    Ok(Json(state.fleet().await?))
}
