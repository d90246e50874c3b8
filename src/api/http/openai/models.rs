//! `GET /v1/models` and `GET /v1/models/{model}`: the caller's tasks and ensembles in
//! OpenAI's shape.
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Serialize;

use super::{OpenAiError, OpenAiErrorBody};
use crate::prompts::TaskName;
use crate::service::{Error, Service};
use crate::tenants::Caller;

/// A model: a task or an ensemble.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Model {
    /// The task or ensemble name (what `model` takes).
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// When its current version was loaded (Unix seconds).
    pub created: u64,
    /// `promptd`.
    pub owned_by: &'static str,
}

/// The caller's models.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// Tasks, then ensembles, each by name.
    pub data: Vec<Model>,
}

fn model(id: String, created: u64) -> Model {
    Model {
        id,
        object: "model",
        created,
        owned_by: "promptd",
    }
}

/// Every task and ensemble the caller may read.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses(
        (status = 200, description = "The caller's tasks and ensembles", body = ModelList),
        (status = 401, description = "Missing or unknown key", body = OpenAiErrorBody),
        (status = 503, description = "Not ready", body = OpenAiErrorBody)))]
pub async fn list(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ModelList>, OpenAiError> {
    let tasks = svc.list_prompts(&caller)?;
    let ensembles = svc.list_ensembles(&caller)?;
    let data = (tasks.into_iter().map(|p| model(p.task, p.loaded_at)))
        .chain(ensembles.into_iter().map(|e| model(e.name, e.loaded_at)))
        .collect();
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

/// One task or ensemble.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "openai",
    params(("model" = String, Path, description = "Task or ensemble name")),
    responses(
        (status = 200, description = "The model", body = Model),
        (status = 401, description = "Missing or unknown key", body = OpenAiErrorBody),
        (status = 403, description = "The key may not read it", body = OpenAiErrorBody),
        (status = 404, description = "No such model", body = OpenAiErrorBody)))]
pub async fn get_one(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Model>, OpenAiError> {
    let name = path.map(|Path(m)| m).unwrap_or_default();
    let unknown = || OpenAiError::from(Error::UnknownTask(name.chars().take(128).collect()));
    let task = TaskName::parse(&name).map_err(|_| unknown())?;
    match svc.prompt(&caller, &task) {
        Ok(p) => return Ok(Json(model(p.task, p.loaded_at))),
        Err(Error::UnknownTask(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match svc.ensemble(&caller, &task) {
        Ok(e) => Ok(Json(model(e.name, e.loaded_at))),
        Err(Error::UnknownEnsemble(_)) => Err(unknown()),
        Err(e) => Err(e.into()),
    }
}
