//! KServe's Open Inference Protocol (v2) over HTTP, so promptd runs as a KServe
//! ServingRuntime: every task is a model, its prompt version the model version.
//!
//! Inference takes one BYTES input (the texts, shape `[N]` or `[N, 1]`), an optional BYTES
//! input named `labels`, and the parameter `max_new_tokens`; it answers `text_output` (BYTES),
//! and with labels `label` (BYTES) and `scores` (FP64, `[N, labels]`). It runs through the same
//! path as `POST /v1/tasks/{task}/predict`, so limits, batching and metrics are shared.
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::JsonBody;
use super::predict::{self, PredictRequest};
use super::{readiness, ApiError, AppState};
use crate::prompts::registry::Entry;

/// Name of the texts input when a client asks for metadata.
pub const TEXT_INPUT: &str = "text_input";
/// Name of the candidate-labels input.
pub const LABELS_INPUT: &str = "labels";

/// An inference request (the protocol's `$inference_request`).
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters; `max_new_tokens` is read.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Input tensors.
    pub inputs: Vec<InferInput>,
    /// Outputs to return (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor.
#[derive(Debug, Deserialize)]
pub struct InferInput {
    /// Tensor name.
    pub name: String,
    /// Dimensions; their product must equal the number of elements.
    pub shape: Vec<i64>,
    /// Element type; only BYTES is accepted.
    pub datatype: String,
    /// Elements, flat or nested in row-major order.
    pub data: Value,
}

/// An output a client asks for.
#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
}

/// One output tensor.
#[derive(Debug, Serialize)]
pub struct InferOutput {
    /// Tensor name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Element type.
    pub datatype: &'static str,
    /// Elements in row-major order.
    pub data: Vec<Value>,
}

/// An inference response (`$inference_response`).
#[derive(Debug, Serialize)]
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

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> impl IntoResponse {
    Json(json!({
        "name": "promptd",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

/// `GET /v2/health/live`.
pub async fn live() -> impl IntoResponse {
    Json(json!({"live": true}))
}

/// `GET /v2/health/ready`: 200 once the model and prompts are loaded, else 503.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let ready = readiness(&state).1.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready})))
}

fn entry(
    state: &AppState,
    task: &str,
    version: Option<&str>,
) -> Result<std::sync::Arc<Entry>, ApiError> {
    state.check_serving()?;
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

fn path_parts(
    path: Result<Path<Vec<String>>, PathRejection>,
) -> Result<(String, Option<String>), ApiError> {
    let Path(parts) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut parts = parts.into_iter();
    let task = parts.next().unwrap_or_default();
    Ok((task, parts.next()))
}

/// `GET /v2/models/{task}[/versions/{version}]`: model metadata.
pub async fn model_metadata(
    State(state): State<AppState>,
    path: Result<Path<Vec<String>>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (task, version) = path_parts(path)?;
    let entry = entry(&state, &task, version.as_deref())?;
    Ok(Json(json!({
        "name": entry.info.task,
        "versions": [entry.info.version.to_string()],
        "platform": "promptd_t5_soft_prompt",
        "inputs": [
            {"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": LABELS_INPUT, "datatype": "BYTES", "shape": [-1], "optional": true},
        ],
        "outputs": [
            {"name": "text_output", "datatype": "BYTES", "shape": [-1]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "scores", "datatype": "FP64", "shape": [-1, -1]},
        ],
        "parameters": {
            "prompt_length": entry.info.prompt_length,
            "d_model": entry.info.d_model,
            "sha256": entry.info.sha256,
        },
    })))
}

/// `GET /v2/models/{task}[/versions/{version}]/ready`.
pub async fn model_ready(
    State(state): State<AppState>,
    path: Result<Path<Vec<String>>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (task, version) = path_parts(path)?;
    let entry = entry(&state, &task, version.as_deref())?;
    Ok(Json(json!({"name": entry.info.task, "ready": true})))
}

/// `POST /v2/models/{task}[/versions/{version}]/infer`.
pub async fn infer(
    State(state): State<AppState>,
    path: Result<Path<Vec<String>>, PathRejection>,
    body: Result<JsonBody<InferRequest>, ApiError>,
) -> Result<Json<InferResponse>, ApiError> {
    let (task, version) = path_parts(path)?;
    if version.is_some() {
        entry(&state, &task, version.as_deref())?;
    }
    // A bad body still goes through predict::run, so it is counted like any other request.
    let parsed = body.and_then(|JsonBody(req)| Ok((to_predict(&req)?, (req.id, req.outputs))));
    let (predict_req, (id, wanted)) = match parsed {
        Ok((p, meta)) => (Ok(p), meta),
        Err(e) => (Err(e), Default::default()),
    };
    let answer = predict::run(&state, &task, predict_req).await?;
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
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "parameter max_new_tokens must be a non-negative integer, got {v}"
            ))
        })? as usize),
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
