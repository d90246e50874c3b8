//! The OpenAPI 3.1 description of the HTTP API, generated from the route annotations and the
//! request/response types, served at `/openapi.json`. tests/openapi.rs checks it against the
//! router and real responses.
use axum::Json;
use utoipa::OpenApi;

use super::error::ErrorBody;
use super::kserve::Versions;
use super::openai::{chat, completions, models};
use super::{ensembles, health, kserve, neighbors, predict, prompts, tune};

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
        health::healthz,
        health::readyz,
        health::metrics,
        health::fleet,
        prompts::list,
        prompts::put,
        prompts::get_one,
        prompts::delete,
        neighbors::get,
        predict::predict,
        ensembles::list,
        ensembles::put,
        ensembles::get_one,
        ensembles::delete,
        ensembles::predict,
        tune::start,
        tune::list,
        tune::get_one,
        tune::curve,
        tune::cancel,
        tune::promote,
        kserve::server_metadata,
        kserve::live,
        kserve::ready,
        kserve::model_metadata,
        kserve::model_ready,
        kserve::infer,
        completions::completions,
        chat::chat_completions,
        models::list,
        models::get_one,
        serve,
    ),
    components(schemas(ErrorBody, super::sse::SseEvent)),
    modifiers(&BearerAuth, &Versions),
    security(("bearer" = [])),
    tags(
        (name = "predict", description = "Generation and label scoring"),
        (name = "prompts", description = "Soft prompts: upload, replace, list, delete"),
        (name = "ensembles", description = "Prompt ensembles: N prompts of one task answering in one pass"),
        (name = "tuning", description = "Prompt tuning jobs on the served model"),
        (name = "kserve", description = "KServe Open Inference Protocol v2"),
        (name = "openai", description = "OpenAI-compatible completions, chat completions and models: `model` names a task or ensemble; errors take OpenAI's shape"),
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

/// The document as `state`'s server serves it: [`document`] with this server's limits written
/// into the request schemas where a schema can say them (counts, sizes, ranges), so a client
/// or a fuzzer reading it knows what the server accepts.
pub fn served(state: &crate::service::Service) -> serde_json::Value {
    let mut doc =
        serde_json::to_value(document(state.tenants.enabled())).expect("the document serialises");
    let limits = state.limits;
    let tune = state.tuning.limits;
    let schemas = &mut doc["components"]["schemas"];
    let mut set = |schema: &str, field: &str, key: &str, value: serde_json::Value| {
        if let Some(p) = schemas[schema]["properties"][field].as_object_mut() {
            p.insert(key.into(), value);
        }
    };
    set(
        "PredictRequest",
        "max_new_tokens",
        "maximum",
        limits.row.max_new_tokens_limit.into(),
    );
    set(
        "PredictRequest",
        "labels",
        "maxItems",
        limits.row.max_labels.into(),
    );
    set("EnsembleRequest", "members", "minItems", 2.into());
    set(
        "EnsembleRequest",
        "members",
        "maxItems",
        state.batcher.max_batch_size().into(),
    );
    set("EnsembleRequest", "members", "uniqueItems", true.into());
    set("TuneRequest", "train", "minItems", 1.into());
    set("TuneRequest", "train", "maxItems", tune.max_rows.into());
    set("TuneRequest", "dev", "maxItems", tune.max_rows.into());
    set("TuneRequest", "steps", "minimum", 1.into());
    set("TuneRequest", "steps", "maximum", tune.max_steps.into());
    set("TuneRequest", "epochs", "minimum", 1.into());
    set("TuneRequest", "batch_size", "minimum", 1.into());
    set(
        "TuneRequest",
        "batch_size",
        "maximum",
        tune.max_batch_size.into(),
    );
    set("TuneRequest", "eval_every", "minimum", 1.into());
    set("TuneRequest", "prompt_length", "minimum", 1.into());
    set(
        "TuneRequest",
        "prompt_length",
        "maximum",
        state.registry.limits().max_rows.into(),
    );
    set("TuneRequest", "patience", "minimum", 1.into());
    set("TuneRequest", "lr", "exclusiveMinimum", 0.into());
    set(
        "TuneRequest",
        "clip_grad_norm",
        "exclusiveMinimum",
        0.into(),
    );
    // A u64 is `format: int64` to utoipa, which fuzzers read as "at most i64::MAX".
    set("TuneRequest", "seed", "format", "uint64".into());
    set("TuneRequest", "seed", "maximum", u64::MAX.into());
    set("TuneRequest", "weight_decay", "minimum", 0.into());
    set("TuneRequest", "dropout", "minimum", 0.into());
    set("TuneRequest", "dropout", "exclusiveMaximum", 1.into());
    set(
        "TuneRequest",
        "metric",
        "enum",
        serde_json::json!(["accuracy", "exact-match", "rank-accuracy", null]),
    );
    set(
        "TuneRequest",
        "optimizer",
        "enum",
        serde_json::json!(["adafactor", "adam", "sgd", null]),
    );
    set(
        "TuneRequest",
        "init",
        "pattern",
        "^(class-labels|sampled-vocab|random-uniform|text:.+)$".into(),
    );
    // `steps` or `epochs`, not both.
    if let Some(t) = schemas["TuneRequest"].as_object_mut() {
        t.insert(
            "not".into(),
            serde_json::json!({"required": ["steps", "epochs"], "properties": {
                "steps": {"type": "integer"}, "epochs": {"type": "integer"}}}),
        );
    }
    if let Some(inputs) =
        schemas["PredictRequest"]["properties"]["inputs"]["oneOf"][1].as_object_mut()
    {
        inputs.insert("maxItems".into(), limits.max_inputs.into());
    }
    doc
}

/// This document, as this server serves it ([`served`]).
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 description of this API", body = Object)))]
pub async fn serve(
    axum::extract::State(state): axum::extract::State<crate::service::Service>,
) -> Json<serde_json::Value> {
    Json(served(&state))
}
