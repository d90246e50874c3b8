//! `POST /v1/tasks/{task}/predict`: the wire request, and the route onto [`Service::predict`].
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Extension;
use axum::Json;
use serde::Deserialize;

use super::body::JsonBody;
use super::error::ApiError;
use super::error::ErrorBody;
use super::params::TaskParam;
use super::responses::{BodyLimit, JsonIn, Keyed, Queued, TaskRead};
use crate::api::requests::counted;
use crate::service::predict::{PredictInput, PredictResponse};
use crate::service::Service;
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
        })
    }
}

/// Generates for every input with the task's soft prompt; rows of any tasks share forward
/// passes. With `labels`, also scores each label's log-likelihood for every input.
#[utoipa::path(post, path = "/v1/tasks/{task}/predict", tag = "predict",
    params(TaskParam),
    request_body = PredictRequest,
    responses(
        (status = 200, description = "One output per input, in order", body = PredictResponse),
        JsonIn, BodyLimit, Keyed, TaskRead, Queued,
        (status = 422, description = "A limit is violated (inputs, tokens, max_new_tokens, labels)", body = ErrorBody)))]
pub async fn predict(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Result<Json<PredictResponse>, ApiError> {
    let task = path.map(|Path(t)| t).unwrap_or_default();
    let input = body.and_then(|JsonBody(req)| req.into_input());
    let answer = svc.predict(&caller, &task, input);
    counted(&svc, &task, false, ApiError::outcome, answer)
        .await
        .map(Json)
}
