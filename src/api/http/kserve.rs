//! KServe's Open Inference Protocol (v2) over HTTP: the `/v2` routes, the JSON body and the
//! binary tensor data extension, onto [`Service::infer`] with the tensor rules of
//! [`crate::api::kserve`].
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;

use super::body::RawBody;
use super::error::{ApiError, ErrorBody};
use super::params::{TaskParam, TaskVersionParams};
use super::responses::{BodyLimit, Keyed, Queued, TaskRead};
use crate::api::kserve::{
    check_datatype, check_shape, metadata, outputs, param, to_input, wire, InferRequest,
    ModelMetadata, Output, ServerMetadata,
};
use crate::api::requests::counted;
use crate::service::predict::PredictResponse;
use crate::service::{Error, Service};
use crate::tenants::Caller;

/// The binary tensor data extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A request in the binary tensor data extension: the JSON request (its length in the
/// `Inference-Header-Content-Length` header), then the inputs' raw bytes (OpenAPI only).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct BinaryInferRequest(());

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

/// Server metadata.
#[utoipa::path(get, path = "/v2", tag = "kserve", responses(
    (status = 200, description = "Server metadata", body = ServerMetadata),
    Keyed))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(crate::api::kserve::server_metadata())
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

/// `(task, version)` from either route shape: every model route also answers under
/// `/v2/models/{task}/versions/{version}` (documented by [`Versions`]).
type ModelPath = Result<Path<Vec<String>>, PathRejection>;

fn path_parts(path: ModelPath) -> Result<(String, Option<String>), ApiError> {
    let Path(parts) = path.map_err(|e| ApiError::malformed(e.body_text()))?;
    let mut parts = parts.into_iter();
    let task = parts.next().unwrap_or_default();
    Ok((task, parts.next()))
}

/// Model (task) metadata.
#[utoipa::path(get, path = "/v2/models/{task}", tag = "kserve",
    params(TaskParam),
    responses(
        (status = 200, description = "The task's metadata", body = ModelMetadata),
        Keyed, TaskRead))]
pub async fn model_metadata(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: ModelPath,
) -> Result<Json<ModelMetadata>, ApiError> {
    let (task, version) = path_parts(path)?;
    let entry = svc.model(&caller, &task, version.as_deref())?;
    Ok(Json(metadata(&entry)))
}

/// Model (task) readiness: 200 when served.
#[utoipa::path(get, path = "/v2/models/{task}/ready", tag = "kserve",
    params(TaskParam),
    responses(
        (status = 200, description = "Served", body = ModelReady),
        Keyed, TaskRead))]
pub async fn model_ready(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: ModelPath,
) -> Result<Json<ModelReady>, ApiError> {
    let (task, version) = path_parts(path)?;
    let name = svc.ready_model(&caller, &task, version.as_deref())?;
    Ok(Json(ModelReady { name, ready: true }))
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
        BodyLimit, Keyed, TaskRead, Queued,
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 422, description = "A limit or parameter is violated", body = ErrorBody)))]
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
    let ensemble = svc.is_ensemble_model(&task);
    let run = svc.infer(&caller, &task, input);
    let answer = counted(&svc, &task, ensemble, ApiError::outcome, run).await?;
    let Some(req) = meta else {
        return Err(Error::Internal("an undecoded inference request ran".into()).into());
    };
    let outputs = outputs(&answer, req.outputs.as_deref());
    Ok(respond(answer, req, outputs))
}

/// Documents the routes of one version of a model: `/v2/models/{task}/versions/{version}`,
/// `.../ready` and `.../infer` are the unversioned routes' handlers, and only the served version
/// exists (404 otherwise).
pub struct Versions;

impl utoipa::Modify for Versions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::IntoParams;
        let routes = [
            ("", "version_metadata", "Metadata of one version of a task"),
            (
                "/ready",
                "version_ready",
                "Readiness of one version of a task",
            ),
            (
                "/infer",
                "version_infer",
                "Inference on one version of a task",
            ),
        ];
        for (suffix, id, summary) in routes {
            let paths = &mut openapi.paths.paths;
            let Some(mut item) = paths.get(&format!("/v2/models/{{task}}{suffix}")).cloned() else {
                continue;
            };
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                op.operation_id = Some(id.into());
                op.summary = Some(format!("{summary} (only the served version exists)."));
                op.parameters = Some(TaskVersionParams::into_params(|| Some(ParameterIn::Path)));
                if let Some(RefOr::T(missing)) = op.responses.responses.get_mut("404") {
                    missing.description = "Unknown task or version".into();
                }
            }
            paths.insert(
                format!("/v2/models/{{task}}/versions/{{version}}{suffix}"),
                item,
            );
        }
    }
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
        check_datatype(&input.name, &input.datatype)?;
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
