//! KServe's Open Inference Protocol (v2) over HTTP, so promptd runs as a KServe
//! ServingRuntime: every task is a model, its prompt version the model version.
//!
//! Inference takes one BYTES input (the texts, shape `[N]` or `[N, 1]`), an optional BYTES
//! input named `labels`, and the parameter `max_new_tokens`; it answers `text_output` (BYTES),
//! and with labels `label` (BYTES) and `scores` (FP64, `[N, labels]`). It runs through the same
//! path as `POST /v1/tasks/{task}/predict`, so limits, batching and metrics are shared.
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{
    ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;

use super::auth::check_read;
use super::error::{ErrorBody, JsonBody};
use super::openapi::{TaskParam, TaskVersionParams};
use super::predict::{self, PredictRequest};
use super::{readiness, ApiError, AppState};
use crate::prompts::registry::{Entry, PromptInfo};
use crate::tenants::Caller;

/// Name of the texts input when a client asks for metadata.
pub const TEXT_INPUT: &str = "text_input";
/// Name of the candidate-labels input.
pub const LABELS_INPUT: &str = "labels";

/// An inference request (the protocol's `$inference_request`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters; `max_new_tokens` is read.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Input tensors: one BYTES tensor of texts, optionally one named `labels`.
    #[schema(min_items = 1, max_items = 2)]
    pub inputs: Vec<InferInput>,
    /// Outputs to return (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferInput {
    /// Tensor name.
    pub name: String,
    /// Dimensions; their product must equal the number of elements.
    pub shape: Vec<i64>,
    /// Element type; only BYTES is accepted.
    pub datatype: String,
    /// Elements, flat or nested in row-major order.
    #[schema(schema_with = input_data_schema)]
    pub data: Value,
}

/// An output a client asks for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
}

/// One output tensor.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InferOutput {
    /// Tensor name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Element type.
    pub datatype: &'static str,
    /// Elements in row-major order.
    #[schema(schema_with = output_data_schema)]
    pub data: Vec<Value>,
}

fn input_data_schema() -> impl Into<RefOr<Schema>> {
    // Strings, or arrays of them nested to the tensor's rank.
    let nested = ArrayBuilder::new().items(ObjectBuilder::new().schema_type(SchemaType::AnyValue));
    ArrayBuilder::new().items(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(nested),
    )
}

fn output_data_schema() -> impl Into<RefOr<Schema>> {
    // BYTES outputs are strings (null for a missing label), FP64 outputs numbers.
    let element = ObjectBuilder::new().schema_type(SchemaType::from_iter([
        Type::String,
        Type::Number,
        Type::Null,
    ]));
    ArrayBuilder::new().items(element)
}

/// An inference response (`$inference_response`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InferResponse {
    /// The task.
    pub model_name: String,
    /// The prompt version that answered.
    pub model_version: String,
    /// The request's id, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Output tensors.
    pub outputs: Vec<InferOutput>,
}

/// Body of `GET /v2`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerMetadata {
    /// `promptd`.
    pub name: &'static str,
    /// promptd's version.
    pub version: &'static str,
    /// Protocol extensions (none).
    pub extensions: Vec<String>,
}

/// Body of `GET /v2/health/live`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Live {
    /// Always true when answered.
    pub live: bool,
}

/// Body of `GET /v2/health/ready`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// Model and prompts loaded, not shutting down.
    pub ready: bool,
}

/// Body of `GET /v2/models/{task}/ready`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelReady {
    /// The task.
    pub name: String,
    /// True: a served task is ready.
    pub ready: bool,
}

/// One tensor in model metadata.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    /// Tensor name.
    pub name: &'static str,
    /// Element type.
    pub datatype: &'static str,
    /// Dimensions; -1 is variable.
    pub shape: Vec<i64>,
}

/// Body of `GET /v2/models/{task}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    /// The task.
    pub name: String,
    /// The served prompt version.
    pub versions: Vec<String>,
    /// `promptd_t5_soft_prompt`.
    pub platform: &'static str,
    /// Inputs: the texts, and optional candidate labels.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs: text_output, and with labels label and scores.
    pub outputs: Vec<TensorMetadata>,
    /// The prompt's metadata.
    pub parameters: PromptInfo,
}

/// Server metadata.
#[utoipa::path(get, path = "/v2", tag = "kserve", responses(
    (status = 200, description = "Server metadata", body = ServerMetadata),
    (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody)))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "promptd",
        version: env!("CARGO_PKG_VERSION"),
        extensions: Vec::new(),
    })
}

/// Server liveness.
#[utoipa::path(get, path = "/v2/health/live", tag = "kserve",
    responses((status = 200, description = "The process is up", body = Live)))]
pub async fn live() -> Json<Live> {
    Json(Live { live: true })
}

/// Server readiness: 200 once the model and prompts are loaded, else 503.
#[utoipa::path(get, path = "/v2/health/ready", tag = "kserve", responses(
    (status = 200, description = "Ready", body = Ready),
    (status = 503, description = "Loading or shutting down", body = Ready)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
    let ready = readiness(&state).1.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Ready { ready }))
}

fn entry(
    state: &AppState,
    caller: &Caller,
    task: &str,
    version: Option<&str>,
) -> Result<Arc<Entry>, ApiError> {
    state.check_serving()?;
    check_read(state, caller, &state.tenants.current(), task)?;
    let entry = state
        .registry
        .get(task)
        .ok_or_else(|| ApiError::UnknownTask(task.chars().take(128).collect()))?;
    match version {
        Some(v) if v != entry.info.version.to_string() => Err(ApiError::NotFound(format!(
            "version {v:?} of model {task:?} (version {} is served)",
            entry.info.version
        ))),
        _ => Ok(entry),
    }
}

/// `(task, version)` from either route shape.
type ModelPath = Result<Path<Vec<String>>, PathRejection>;

fn path_parts(path: ModelPath) -> Result<(String, Option<String>), ApiError> {
    let Path(parts) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut parts = parts.into_iter();
    let task = parts.next().unwrap_or_default();
    Ok((task, parts.next()))
}

fn tensor(name: &'static str, datatype: &'static str, shape: &[i64]) -> TensorMetadata {
    TensorMetadata {
        name,
        datatype,
        shape: shape.to_vec(),
    }
}

/// Model (task) metadata.
#[utoipa::path(get, path = "/v2/models/{task}", tag = "kserve",
    params(TaskParam),
    responses(
        (status = 200, description = "The task's metadata", body = ModelMetadata),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "Another tenant's task, or a tenant quota (max_prompts)", body = ErrorBody),
        (status = 404, description = "Unknown task", body = ErrorBody)))]
pub async fn model_metadata(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: ModelPath,
) -> Result<Json<ModelMetadata>, ApiError> {
    let (task, version) = path_parts(path)?;
    let entry = entry(&state, &caller, &task, version.as_deref())?;
    Ok(Json(ModelMetadata {
        name: entry.info.task.clone(),
        versions: vec![entry.info.version.to_string()],
        platform: "promptd_t5_soft_prompt",
        inputs: vec![
            tensor(TEXT_INPUT, "BYTES", &[-1]),
            tensor(LABELS_INPUT, "BYTES", &[-1]),
        ],
        outputs: vec![
            tensor("text_output", "BYTES", &[-1]),
            tensor("label", "BYTES", &[-1]),
            tensor("scores", "FP64", &[-1, -1]),
        ],
        parameters: entry.info.clone(),
    }))
}

/// Metadata of one version of a task (only the served version exists).
#[utoipa::path(get, path = "/v2/models/{task}/versions/{version}", tag = "kserve",
    params(TaskVersionParams),
    responses(
        (status = 200, description = "The task's metadata", body = ModelMetadata),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "Another tenant's task, or a tenant quota (max_prompts)", body = ErrorBody),
        (status = 404, description = "Unknown task or version", body = ErrorBody)))]
pub async fn version_metadata(
    state: State<AppState>,
    caller: Extension<Caller>,
    path: ModelPath,
) -> Result<Json<ModelMetadata>, ApiError> {
    model_metadata(state, caller, path).await
}

/// Model (task) readiness: 200 when served.
#[utoipa::path(get, path = "/v2/models/{task}/ready", tag = "kserve",
    params(TaskParam),
    responses(
        (status = 200, description = "Served", body = ModelReady),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "Another tenant's task, or a tenant quota (max_prompts)", body = ErrorBody),
        (status = 404, description = "Unknown task", body = ErrorBody)))]
pub async fn model_ready(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: ModelPath,
) -> Result<Json<ModelReady>, ApiError> {
    let (task, version) = path_parts(path)?;
    let entry = entry(&state, &caller, &task, version.as_deref())?;
    Ok(Json(ModelReady {
        name: entry.info.task.clone(),
        ready: true,
    }))
}

/// Readiness of one version of a task.
#[utoipa::path(get, path = "/v2/models/{task}/versions/{version}/ready", tag = "kserve",
    params(TaskVersionParams),
    responses(
        (status = 200, description = "Served", body = ModelReady),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "Another tenant's task, or a tenant quota (max_prompts)", body = ErrorBody),
        (status = 404, description = "Unknown task or version", body = ErrorBody)))]
pub async fn version_ready(
    state: State<AppState>,
    caller: Extension<Caller>,
    path: ModelPath,
) -> Result<Json<ModelReady>, ApiError> {
    model_ready(state, caller, path).await
}

/// Inference: generates for every text with the task's prompt (same path as /v1 predict).
#[utoipa::path(post, path = "/v2/models/{task}/infer", tag = "kserve",
    params(TaskParam),
    request_body = InferRequest,
    responses(
        (status = 200, description = "One output element per text", body = InferResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "Another tenant's task, or a tenant quota (max_prompts)", body = ErrorBody),
        (status = 404, description = "Unknown task", body = ErrorBody),
        (status = 422, description = "A limit or parameter is violated", body = ErrorBody),
        (status = 429, description = "Queue full, or the tenant's request rate / in-flight quota; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "Loading or shutting down", body = ErrorBody),
        (status = 504, description = "Request timeout", body = ErrorBody)))]
pub async fn infer(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: ModelPath,
    body: Result<JsonBody<InferRequest>, ApiError>,
) -> Result<Json<InferResponse>, ApiError> {
    let (task, version) = path_parts(path)?;
    if version.is_some() {
        entry(&state, &caller, &task, version.as_deref())?;
    }
    // A bad body still goes through predict::run, so it is counted like any other request.
    let parsed = body.and_then(|JsonBody(req)| Ok((to_predict(&req)?, (req.id, req.outputs))));
    let (predict_req, (id, wanted)) = match parsed {
        Ok((p, meta)) => (Ok(p), meta),
        Err(e) => (Err(e), Default::default()),
    };
    let answer = predict::run(&state, &caller, &task, predict_req).await?;
    let n = answer.outputs.len();
    let mut outputs = vec![InferOutput {
        name: "text_output".into(),
        shape: vec![n],
        datatype: "BYTES",
        data: answer
            .outputs
            .iter()
            .map(|o| Value::from(o.text.clone()))
            .collect(),
    }];
    if let Some(first) = answer.outputs.first().and_then(|o| o.scores.as_ref()) {
        outputs.push(InferOutput {
            name: "label".into(),
            shape: vec![n],
            datatype: "BYTES",
            data: answer
                .outputs
                .iter()
                .map(|o| o.label.clone().map(Value::from).unwrap_or(Value::Null))
                .collect(),
        });
        outputs.push(InferOutput {
            name: "scores".into(),
            shape: vec![n, first.len()],
            datatype: "FP64",
            data: answer
                .outputs
                .iter()
                .flat_map(|o| o.scores.clone().unwrap_or_default())
                .map(Value::from)
                .collect(),
        });
    }
    if let Some(wanted) = wanted {
        outputs.retain(|o| wanted.iter().any(|w| w.name == o.name));
    }
    Ok(Json(InferResponse {
        model_name: answer.task,
        model_version: answer.prompt_version.to_string(),
        id,
        outputs,
    }))
}

/// Inference on one version of a task (only the served version exists).
#[utoipa::path(post, path = "/v2/models/{task}/versions/{version}/infer", tag = "kserve",
    params(TaskVersionParams),
    request_body = InferRequest,
    responses(
        (status = 200, description = "One output element per text", body = InferResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "Another tenant's task, or a tenant quota (max_prompts)", body = ErrorBody),
        (status = 404, description = "Unknown task or version", body = ErrorBody),
        (status = 422, description = "A limit or parameter is violated", body = ErrorBody)))]
pub async fn version_infer(
    state: State<AppState>,
    caller: Extension<Caller>,
    path: ModelPath,
    body: Result<JsonBody<InferRequest>, ApiError>,
) -> Result<Json<InferResponse>, ApiError> {
    infer(state, caller, path, body).await
}

/// Maps an inference request onto a predict request; every mistake is a 400 naming the field.
fn to_predict(req: &InferRequest) -> Result<PredictRequest, ApiError> {
    let bad = |why: String| ApiError::BadRequest(why);
    let mut texts = None;
    let mut labels = None;
    for input in &req.inputs {
        if input.datatype != "BYTES" {
            return Err(bad(format!(
                "input {:?} has datatype {:?}; promptd takes BYTES (text)",
                input.name, input.datatype
            )));
        }
        let data = strings(input)?;
        let slot = if input.name == LABELS_INPUT {
            &mut labels
        } else {
            &mut texts
        };
        if slot.replace(data).is_some() {
            return Err(bad(format!(
                "more than one text input (second: {:?}); send one BYTES input of texts and optionally `{LABELS_INPUT}`",
                input.name
            )));
        }
    }
    let texts = texts.ok_or_else(|| bad("no BYTES input with the texts".into()))?;
    let max_new_tokens = match req
        .parameters
        .as_ref()
        .and_then(|p| p.get("max_new_tokens"))
    {
        None => None,
        Some(v) => Some(v.as_number().and_then(predict::as_count).ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "parameter max_new_tokens must be a non-negative integer, got {v}"
            ))
        })?),
    };
    if let Some(outputs) = &req.outputs {
        for o in outputs {
            if !["text_output", "label", "scores"].contains(&o.name.as_str()) {
                return Err(bad(format!(
                    "unknown output {:?}; outputs are text_output, label, scores",
                    o.name
                )));
            }
        }
    }
    Ok(PredictRequest {
        inputs: Value::Array(texts.into_iter().map(Value::from).collect()),
        max_new_tokens,
        labels,
    })
}

/// The strings of a BYTES tensor, checked against its shape.
fn strings(input: &InferInput) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    flatten(&input.data, &mut out, 0)
        .map_err(|why| ApiError::BadRequest(format!("input {:?}: {why}", input.name)))?;
    let elements = input.shape.iter().try_fold(
        1i64,
        |acc, &d| if d < 0 { None } else { acc.checked_mul(d) },
    );
    if elements != Some(out.len() as i64) {
        return Err(ApiError::BadRequest(format!(
            "input {:?}: shape {:?} does not hold its {} elements",
            input.name,
            input.shape,
            out.len()
        )));
    }
    Ok(out)
}

fn flatten(v: &Value, out: &mut Vec<String>, depth: usize) -> Result<(), String> {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) if depth < 8 => {
            for item in items {
                flatten(item, out, depth + 1)?;
            }
        }
        Value::Array(_) => return Err("data nested too deeply".into()),
        other => return Err(format!("BYTES elements must be strings, got {other}")),
    }
    Ok(())
}
