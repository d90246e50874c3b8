//! The OpenAPI 3.1 description of the HTTP API, generated from the route annotations and the
//! request/response types, served at `/openapi.json`. tests/openapi.rs checks it against the
//! router and real responses.
use axum::Json;
use utoipa::OpenApi;

use super::{kserve, predict, prompts, tune};

/// The `{task}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct TaskParam {
    /// Task name: a letter or digit, then letters, digits, `.`, `_` or `-`; at most 128 bytes.
    #[param(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    task: String,
}

/// The `{task}` and `{version}` path parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct TaskVersionParams {
    /// Task name: a letter or digit, then letters, digits, `.`, `_` or `-`; at most 128 bytes.
    #[param(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    task: String,
    /// Prompt version (only the served one exists).
    version: String,
}

/// The whole HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "promptd",
        description = "One frozen T5 serving many tasks through soft prompts. Errors are JSON: \
                       {\"error\": \"...\", \"error_type\": \"...\"}.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::healthz,
        super::readyz,
        super::metrics,
        prompts::list,
        prompts::put,
        prompts::get_one,
        prompts::delete,
        predict::predict,
        tune::start,
        tune::list,
        tune::get_one,
        tune::cancel,
        tune::promote,
        kserve::server_metadata,
        kserve::live,
        kserve::ready,
        kserve::model_metadata,
        kserve::version_metadata,
        kserve::model_ready,
        kserve::version_ready,
        kserve::infer,
        kserve::version_infer,
        serve,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "predict", description = "Generation and label scoring"),
        (name = "prompts", description = "Soft prompts: upload, replace, list, delete"),
        (name = "tuning", description = "Prompt tuning jobs on the served model"),
        (name = "kserve", description = "KServe Open Inference Protocol v2"),
        (name = "health", description = "Probes and metrics"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer-key scheme that a tenants file turns on.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from the tenants file (--tenants); not needed on an open server \
                         or for the probes and this document",
                    ))
                    .build(),
            ),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 description of this API", body = Object)))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
