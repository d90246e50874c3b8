//! KServe's Open Inference Protocol (v2) over HTTP, so promptd runs as a KServe
//! ServingRuntime: every task is a model, its prompt version the model version.
//!
//! Inference takes one BYTES input (the texts, shape `[N]` or `[N, 1]`), an optional BYTES
//! input named `labels`, and the parameter `max_new_tokens`; it answers `text_output` (BYTES),
//! and with labels `label` (BYTES) and `scores` (FP64, `[N, labels]`). It runs through the same
//! path as `POST /v1/tasks/{task}/predict`, so limits, batching and metrics are shared. A name
//! that is not a task but an ensemble runs the ensemble ([`Service::infer`]).
pub mod grpc;
pub mod wire;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{
    ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;

use super::error::{ErrorBody, RawBody};
use super::params::{TaskParam, TaskVersionParams};
use super::ApiError;
use crate::catalog::prompts::{Entry, PromptInfo};
use crate::service::predict::{PredictInput, PredictResponse};
use crate::service::rows::as_count;
use crate::service::{Error, Service};
use crate::tenants::Caller;

/// Name of the texts input when a client asks for metadata.
pub const TEXT_INPUT: &str = "text_input";
/// Name of the candidate-labels input.
pub const LABELS_INPUT: &str = "labels";
/// The binary tensor data extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// Outputs promptd answers with.
pub const OUTPUTS: [&str; 3] = ["text_output", "label", "scores"];

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

/// A request in the binary tensor data extension: the JSON request (its length in the
/// `Inference-Header-Content-Length` header), then the inputs' raw bytes (OpenAPI only).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct BinaryInferRequest(());

/// One input tensor.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferInput {
    /// Tensor name.
    pub name: String,
    /// Dimensions; their product must equal the number of elements.
    pub shape: Vec<i64>,
    /// Element type; only BYTES is accepted.
    pub datatype: String,
    /// Elements, flat or nested in row-major order; absent when they travel as binary data.
    #[serde(default)]
    #[schema(schema_with = input_data_schema)]
    pub data: Option<Value>,
    /// `binary_data_size`: the elements are this many bytes of the body's binary part.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// An output a client asks for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// `binary_data`: answer this output as binary data.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
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
    /// Elements in row-major order; absent when they travel as binary data.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = output_data_schema)]
    pub data: Option<Vec<Value>>,
    /// `binary_data_size` when the elements travel as binary data.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// An output's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    /// BYTES: texts (a missing label is the empty string in binary form, null in JSON).
    Bytes(Vec<Option<String>>),
    /// FP64.
    Fp64(Vec<f64>),
}

impl Elements {
    /// The protocol's datatype name.
    pub fn datatype(&self) -> &'static str {
        match self {
            Elements::Bytes(_) => "BYTES",
            Elements::Fp64(_) => "FP64",
        }
    }

    /// Raw bytes (binary extension, gRPC `raw_output_contents`).
    pub fn raw(&self) -> Vec<u8> {
        match self {
            Elements::Bytes(items) => {
                wire::encode_bytes(items.iter().map(|s| s.as_deref().unwrap_or("")))
            }
            Elements::Fp64(items) => wire::encode_f64(items.iter().copied()),
        }
    }

    fn json(&self) -> Vec<Value> {
        match self {
            Elements::Bytes(items) => items
                .iter()
                .map(|s| s.clone().map(Value::from).unwrap_or(Value::Null))
                .collect(),
            Elements::Fp64(items) => items.iter().map(|&f| Value::from(f)).collect(),
        }
    }
}

/// One output of an answer, before it is put on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Tensor name.
    pub name: &'static str,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements.
    pub elements: Elements,
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
    /// Protocol extensions: `binary_tensor_data`.
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
        extensions: vec!["binary_tensor_data".into()],
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
pub async fn ready(State(svc): State<Service>) -> (StatusCode, Json<Ready>) {
    let ready = svc.readiness().1.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Ready { ready }))
}

/// `(task, version)` from either route shape.
type ModelPath = Result<Path<Vec<String>>, PathRejection>;

fn path_parts(path: ModelPath) -> Result<(String, Option<String>), ApiError> {
    let Path(parts) = path.map_err(|e| ApiError::malformed(e.body_text()))?;
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
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: ModelPath,
) -> Result<Json<ModelMetadata>, ApiError> {
    let (task, version) = path_parts(path)?;
    let entry = svc.model(&caller, &task, version.as_deref())?;
    Ok(Json(metadata(&entry)))
}

/// A served task's metadata as a model's.
pub fn metadata(entry: &Entry) -> ModelMetadata {
    {
        ModelMetadata {
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
        }
    }
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
    state: State<Service>,
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
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: ModelPath,
) -> Result<Json<ModelReady>, ApiError> {
    let (task, version) = path_parts(path)?;
    let name = svc.ready_model(&caller, &task, version.as_deref())?;
    Ok(Json(ModelReady { name, ready: true }))
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
    state: State<Service>,
    caller: Extension<Caller>,
    path: ModelPath,
) -> Result<Json<ModelReady>, ApiError> {
    model_ready(state, caller, path).await
}

/// Inference: generates for every text with the task's prompt (same path as /v1 predict).
///
/// The body is JSON (with any content type, or none), or the binary tensor data extension: the
/// JSON request, its length in `Inference-Header-Content-Length`, then the inputs' raw bytes
/// (each BYTES element a little-endian u32 length and the bytes). Outputs asked for with
/// `binary_data` (or the request's `binary_data_output`) come back the same way.
#[utoipa::path(post, path = "/v2/models/{task}/infer", tag = "kserve",
    params(TaskParam),
    request_body(content(
        (InferRequest = "application/json"),
        (BinaryInferRequest = "application/octet-stream")
    )),
    responses(
        (status = 200, description = "One output element per text; with binary outputs asked for, the JSON response (its length in Inference-Header-Content-Length) then the outputs' raw bytes", body = InferResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "Another tenant's task, or a tenant quota (max_prompts)", body = ErrorBody),
        (status = 404, description = "Unknown task", body = ErrorBody),
        (status = 422, description = "A limit or parameter is violated", body = ErrorBody),
        (status = 429, description = "Queue full, or the tenant's request rate / in-flight quota; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "Loading or shutting down", body = ErrorBody),
        (status = 504, description = "Request timeout", body = ErrorBody)))]
pub async fn infer(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: ModelPath,
    headers: HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<Response, ApiError> {
    let (task, version) = path_parts(path)?;
    if version.is_some() {
        svc.ready_model(&caller, &task, version.as_deref())?;
    }
    // A bad body still goes through the service, so it is counted like any other request.
    let decoded = body.and_then(|RawBody(body)| Ok(decode(&headers, &body)?));
    let (input, meta) = match decoded {
        Ok((req, elements)) => match to_input(&req, elements) {
            Ok(p) => (Ok(p), Some(req)),
            Err(e) => (Err(e.into()), None),
        },
        Err(e) => (Err(e), None),
    };
    let label = svc.request_label(&task, svc.is_ensemble_model(&task));
    let started = std::time::Instant::now();
    let result = svc.infer(&caller, &task, input).await;
    super::predict::record(&svc, &label, started, &result);
    let answer = result?;
    let Some(req) = meta else {
        return Err(Error::Internal("an undecoded inference request ran".into()).into());
    };
    let outputs = outputs(&answer, req.outputs.as_deref());
    Ok(respond(answer, req, outputs))
}

/// Inference on one version of a task (only the served version exists).
#[utoipa::path(post, path = "/v2/models/{task}/versions/{version}/infer", tag = "kserve",
    params(TaskVersionParams),
    request_body(content(
        (InferRequest = "application/json"),
        (BinaryInferRequest = "application/octet-stream")
    )),
    responses(
        (status = 200, description = "One output element per text", body = InferResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "Another tenant's task, or a tenant quota (max_prompts)", body = ErrorBody),
        (status = 404, description = "Unknown task or version", body = ErrorBody),
        (status = 422, description = "A limit or parameter is violated", body = ErrorBody)))]
pub async fn version_infer(
    state: State<Service>,
    caller: Extension<Caller>,
    path: ModelPath,
    headers: HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<Response, ApiError> {
    infer(state, caller, path, headers, body).await
}

/// Parses a body (JSON, or the binary tensor data extension) into the request and each
/// input's texts. Syntax errors are 400, JSON of the wrong shape 422, like other JSON routes;
/// any content type is taken, since the protocol's clients do not all send one.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Result<(InferRequest, Vec<Vec<String>>), Error> {
    let bad = Error::Malformed;
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| {
                bad(format!(
                    "{HEADER_LENGTH} must be the length of the JSON part of the body, at most {} bytes",
                    body.len()
                ))
            })?,
    };
    let (json, mut binary) = body.split_at(json_len);
    let req: InferRequest = serde_json::from_slice(json).map_err(|e| {
        use serde_json::error::Category;
        let why = format!("the inference request: {e}");
        match e.classify() {
            Category::Data => Error::Invalid(why),
            _ => bad(why),
        }
    })?;
    let mut elements = Vec::with_capacity(req.inputs.len());
    for input in &req.inputs {
        if input.datatype != "BYTES" {
            return Err(bad(format!(
                "input {:?} has datatype {:?}; promptd takes BYTES (text)",
                input.name, input.datatype
            )));
        }
        let size = param(&input.parameters, "binary_data_size")
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    bad(format!(
                        "input {:?}: binary_data_size must be a non-negative integer, got {v}",
                        input.name
                    ))
                })
            })
            .transpose()?;
        let items = match (size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "input {:?} has both data and binary_data_size; send one",
                    input.name
                )))
            }
            (Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(bad(format!(
                        "input {:?}: binary_data_size {size} is more than the {} bytes of binary data left",
                        input.name,
                        binary.len()
                    )));
                }
                let (raw, rest) = binary.split_at(size);
                binary = rest;
                wire::decode_bytes(raw)
                    .map_err(|why| bad(format!("input {:?}: {why}", input.name)))?
            }
            (None, Some(data)) => {
                let mut out = Vec::new();
                flatten(data, &mut out, 0)
                    .map_err(|why| bad(format!("input {:?}: {why}", input.name)))?;
                out
            }
            (None, None) => {
                return Err(bad(format!(
                    "input {:?} has neither data nor binary_data_size",
                    input.name
                )))
            }
        };
        check_shape(input, items.len())?;
        elements.push(items);
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data belong to no input (binary_data_size)",
            binary.len()
        )));
    }
    Ok((req, elements))
}

fn param<'a>(params: &'a Option<serde_json::Map<String, Value>>, name: &str) -> Option<&'a Value> {
    params.as_ref().and_then(|p| p.get(name))
}

/// Maps a decoded inference request onto a predict request; every mistake is a 400 naming
/// the field. `elements` are the inputs' texts, in input order.
pub fn to_input(req: &InferRequest, elements: Vec<Vec<String>>) -> Result<PredictInput, Error> {
    let bad = Error::Malformed;
    let mut texts = None;
    let mut labels = None;
    for (input, data) in req.inputs.iter().zip(elements) {
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
    if let Some(outputs) = &req.outputs {
        for o in outputs {
            if !OUTPUTS.contains(&o.name.as_str()) {
                return Err(bad(format!(
                    "unknown output {:?}; outputs are text_output, label, scores",
                    o.name
                )));
            }
        }
    }
    let max_new_tokens = match param(&req.parameters, "max_new_tokens") {
        None => None,
        Some(v) => Some(v.as_number().and_then(as_count).ok_or_else(|| {
            Error::Invalid(format!(
                "parameter max_new_tokens must be a non-negative integer, got {v}"
            ))
        })?),
    };
    Ok(PredictInput {
        inputs: texts,
        max_new_tokens,
        labels,
    })
}

/// The outputs of an answer (`text_output`, and with labels `label` and `scores`), only those
/// asked for when `wanted` is given.
pub fn outputs(answer: &PredictResponse, wanted: Option<&[RequestedOutput]>) -> Vec<Output> {
    let n = answer.outputs.len();
    let mut outputs = vec![Output {
        name: "text_output",
        shape: vec![n],
        elements: Elements::Bytes(
            answer
                .outputs
                .iter()
                .map(|o| Some(o.text.clone()))
                .collect(),
        ),
    }];
    if let Some(first) = answer.outputs.first().and_then(|o| o.scores.as_ref()) {
        outputs.push(Output {
            name: "label",
            shape: vec![n],
            elements: Elements::Bytes(answer.outputs.iter().map(|o| o.label.clone()).collect()),
        });
        outputs.push(Output {
            name: "scores",
            shape: vec![n, first.len()],
            elements: Elements::Fp64(
                answer
                    .outputs
                    .iter()
                    .flat_map(|o| o.scores.clone().unwrap_or_default())
                    .collect(),
            ),
        });
    }
    if let Some(wanted) = wanted {
        outputs.retain(|o| wanted.iter().any(|w| w.name == o.name));
    }
    outputs
}

/// The HTTP response: JSON, or with binary outputs asked for (the request's
/// `binary_data_output`, or an output's `binary_data`) the JSON header then the raw bytes.
fn respond(answer: PredictResponse, req: InferRequest, outputs: Vec<Output>) -> Response {
    let all_binary =
        param(&req.parameters, "binary_data_output").and_then(Value::as_bool) == Some(true);
    let binary_asked = |name: &str| {
        req.outputs
            .iter()
            .flatten()
            .find(|w| w.name == name)
            .and_then(|w| param(&w.parameters, "binary_data"))
            .and_then(Value::as_bool)
            .unwrap_or(all_binary)
    };
    let mut raw = Vec::new();
    let outputs = outputs
        .into_iter()
        .map(|o| {
            let (data, parameters) = if binary_asked(o.name) {
                let bytes = o.elements.raw();
                let size = bytes.len();
                raw.extend_from_slice(&bytes);
                let mut p = serde_json::Map::new();
                p.insert("binary_data_size".into(), Value::from(size));
                (None, Some(p))
            } else {
                (Some(o.elements.json()), None)
            };
            InferOutput {
                name: o.name.into(),
                shape: o.shape,
                datatype: o.elements.datatype(),
                data,
                parameters,
            }
        })
        .collect();
    let response = InferResponse {
        model_name: answer.task,
        model_version: answer.prompt_version.to_string(),
        id: req.id,
        outputs,
    };
    if raw.is_empty() {
        return Json(response).into_response();
    }
    let mut body = serde_json::to_vec(&response).expect("a response serialises");
    let json_len = body.len();
    body.extend_from_slice(&raw);
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(HEADER_LENGTH, HeaderValue::from(json_len));
    response
}

/// Checks that `input`'s shape holds exactly its `n` elements.
fn check_shape(input: &InferInput, n: usize) -> Result<(), Error> {
    let elements = input.shape.iter().try_fold(
        1i64,
        |acc, &d| if d < 0 { None } else { acc.checked_mul(d) },
    );
    if elements != Some(n as i64) {
        return Err(Error::Malformed(format!(
            "input {:?}: shape {:?} does not hold its {n} elements",
            input.name, input.shape,
        )));
    }
    Ok(())
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
