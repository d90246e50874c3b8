//! The OpenAPI 3.1 description of the HTTP API, generated from the route annotations and the
//! request/response types, served at `/openapi.json`. tests/openapi.rs checks it against the
//! router and real responses.
use axum::Json;
use utoipa::OpenApi;

use super::{kserve, predict, prompts, tune};

/// The whole HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "promptd",
        description = "One frozen T5 serving many tasks through soft prompts. Errors are JSON: \
                       {\"error\": \"...\", \"error_type\": \"...\"}. API keys are needed \
                       only when the server has a tenants file (--tenants); this document, as \
                       served, declares them exactly then.",
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

/// The document as a server serves it: with a tenants file (`secured`), every route but the
/// probes and this document requires a bearer key (`/metrics` an admin's); an open server
/// requires none, and says so.
pub fn document(secured: bool) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = super::auth::is_public(path);
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            // `security: []` overrides the document's requirement: no key.
            if public || !secured {
                op.security = Some(Vec::new());
            }
        }
    }
    if !secured {
        doc.security = None;
        if let Some(components) = doc.components.as_mut() {
            components.security_schemes.clear();
        }
    }
    doc
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 description of this API", body = Object)))]
pub async fn serve(
    axum::extract::State(state): axum::extract::State<super::AppState>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(document(state.tenants.enabled()))
}
