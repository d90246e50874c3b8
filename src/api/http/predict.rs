//! `POST /v1/tasks/{task}/predict`: the wire request, and the route onto [`Service::predict`].
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::body::JsonBody;
use super::error::ApiError;
use super::error::ErrorBody;
use super::params::TaskParam;
use super::responses::{BodyLimit, JsonIn, Keyed, Queued, TaskRead};
use super::sse::{self, Chunks};
use crate::api::requests::counted;
use crate::service::generation::Generation;
use crate::service::predict::{PredictInput, PredictResponse};
use crate::service::stream::StreamEvent;
use crate::service::{Error, Service};
use crate::tenants::Caller;

/// Request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// One text or a list of texts.
    #[schema(schema_with = inputs_schema)]
    pub inputs: serde_json::Value,
    /// Cap on generated tokens per input (server default when absent).
    #[serde(default, deserialize_with = "crate::service::rows::count")]
    pub max_new_tokens: Option<usize>,
    /// Candidate labels to score for every input.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Sample with this temperature (absent or 0: greedy decoding, the default).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// With a temperature: sample among the most likely tokens up to this probability mass.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// With a temperature: sample among the k most likely tokens (0: all).
    #[serde(default, deserialize_with = "crate::service::rows::count")]
    pub top_k: Option<usize>,
    /// Seeds sampling: the same input, seed and parameters give the same output whatever else
    /// shares its forward pass.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Generation ends before the first of these strings (at most 4).
    #[serde(default)]
    pub stop: Option<Vec<String>>,
    /// Outputs per input, with a temperature (outputs[i × n + j] is input i's j-th).
    #[serde(default, deserialize_with = "crate::service::rows::count")]
    pub n: Option<usize>,
    /// Return each generated token's log-probability and this many most likely alternatives
    /// (0: the token's only; at most 20).
    #[serde(default, deserialize_with = "crate::service::rows::count")]
    pub logprobs: Option<usize>,
    /// Answer as server-sent events while decoding: a `{"row", "token_id", "text"}` chunk per
    /// token, a `{"row", "text", "output"}` chunk when a row finishes, then `[DONE]`.
    #[serde(default)]
    pub stream: bool,
}

fn inputs_schema() -> impl Into<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>> {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let text = || ObjectBuilder::new().schema_type(Type::String);
    OneOfBuilder::new()
        .item(text())
        .item(ArrayBuilder::new().items(text()).min_items(Some(1)))
        .description(Some(
            "One text, or a non-empty list of texts answered in order",
        ))
}

/// The request's texts: one string or a list of strings (the service checks how many).
pub(crate) fn texts(inputs: serde_json::Value) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::invalid("`inputs` must be a string or a non-empty array of strings");
    match inputs {
        serde_json::Value::String(s) => Ok(vec![s]),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

impl PredictRequest {
    /// The service's input.
    pub fn into_input(self) -> Result<PredictInput, ApiError> {
        Ok(PredictInput {
            inputs: texts(self.inputs)?,
            max_new_tokens: self.max_new_tokens,
            labels: self.labels,
            generation: Generation {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                seed: self.seed,
                top_logprobs: self.logprobs,
                stop: self.stop.unwrap_or_default(),
                n: self.n,
            },
        })
    }
}

/// Generates for every input with the task's soft prompt; rows of any tasks share forward
/// passes. With `labels`, also scores each label's log-likelihood for every input.
#[utoipa::path(post, path = "/v1/tasks/{task}/predict", tag = "predict",
    params(TaskParam),
    request_body = PredictRequest,
    responses(
        (status = 200, description = "One output per input (× n), in order; with `stream`, server-sent events", content(
            (PredictResponse = "application/json"),
            (super::sse::SseEvent = "text/event-stream"))),
        JsonIn, BodyLimit, Keyed, TaskRead, Queued,
        (status = 422, description = "A limit is violated (inputs, tokens, max_new_tokens, labels)", body = ErrorBody)))]
pub async fn predict(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let task = path.map(|Path(t)| t).unwrap_or_default();
    let stream = body.as_ref().is_ok_and(|JsonBody(req)| req.stream);
    let input = body.and_then(|JsonBody(req)| req.into_input());
    if stream {
        let rows = svc.predict_stream(&caller, &task, input);
        let rows = counted(&svc, &task, false, ApiError::outcome, rows).await?;
        return Ok(sse::respond(rows, PredictChunks));
    }
    let answer = svc.predict(&caller, &task, input);
    counted(&svc, &task, false, ApiError::outcome, answer)
        .await
        .map(|a| Json(a).into_response())
}

/// The chunks of a streaming predict.
struct PredictChunks;

impl Chunks for PredictChunks {
    fn event(&mut self, event: StreamEvent) -> Vec<serde_json::Value> {
        vec![match event {
            StreamEvent::Token {
                row,
                token_id,
                text,
                logprobs,
            } => {
                let mut chunk = json!({"row": row, "token_id": token_id, "text": text});
                if let Some(lp) = logprobs {
                    chunk["logprob"] = json!(lp.logprob);
                    chunk["top"] = json!(lp.top);
                }
                chunk
            }
            StreamEvent::Done { row, tail, output } => {
                json!({"row": row, "text": tail, "output": output})
            }
        }]
    }

    fn error(&mut self, error: Error) -> serde_json::Value {
        let e = ApiError::from(error);
        json!({"error": e.to_string(), "error_type": e.error_type()})
    }
}
