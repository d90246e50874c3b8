//! `GET /v1/prompts/{task}/neighbors`: the query, and the route onto [`Service::neighbors`].
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;

use super::error::ApiError;
use super::error::ErrorBody;
use super::params::TaskParam;
use super::responses::{Keyed, Serving, TaskRead};
use crate::prompts::TaskName;
use crate::service::neighbors::{split_labels, NeighborsAsk, NeighborsReport, MAX_K};
use crate::service::Service;
use crate::tenants::Caller;

/// Query of `GET /v1/prompts/{task}/neighbors`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NeighborsQuery {
    /// Tokens per prompt row, 1 to 100 (default 5).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub k: Option<String>,
    /// Labels to look for among the neighbours, comma-separated (default: the task's tuning
    /// report `<prompts>/reports/<task>.json`, else the labels of the server's tuning job that
    /// installed the served version).
    pub labels: Option<String>,
}

impl NeighborsQuery {
    fn into_ask(self) -> Result<NeighborsAsk, ApiError> {
        let k = match self.k.as_deref() {
            None => None,
            Some(k) => Some(k.parse::<usize>().map_err(|_| {
                ApiError::malformed(format!(
                    "k is {k:?}; it must be a whole number, 1 to {MAX_K}"
                ))
            })?),
        };
        Ok(NeighborsAsk {
            k,
            labels: self.labels.as_deref().map(split_labels),
        })
    }
}

/// Each row of the task's prompt, with its k nearest vocabulary tokens by cosine similarity,
/// and which of the task's labels (the `labels` query, else its tuning report
/// `<prompts>/reports/<task>.json`) appear among them. Computed on the engine thread between
/// passes.
#[utoipa::path(get, path = "/v1/prompts/{task}/neighbors", tag = "prompts",
    params(TaskParam, NeighborsQuery),
    responses(
        (status = 200, description = "Each row's nearest tokens and the labels found", body = NeighborsReport),
        Keyed, TaskRead, Serving,
        (status = 400, description = "Bad task name or query", body = ErrorBody),
        (status = 422, description = "k outside 1 to 100, or too many labels", body = ErrorBody)))]
pub async fn get(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<NeighborsQuery>, QueryRejection>,
) -> Result<Json<NeighborsReport>, ApiError> {
    let Path(task) = path.map_err(|e| ApiError::malformed(e.body_text()))?;
    let task = TaskName::parse(&task)?;
    let ask = query
        .map_err(|e| ApiError::malformed(e.body_text()))
        .and_then(|Query(q)| q.into_ask());
    Ok(Json(svc.neighbors(&caller, &task, ask).await?))
}
