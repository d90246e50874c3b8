//! Prompt management: PUT (raw tensor file or PEFT multipart), GET, list, DELETE.
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use axum::Extension;

use super::error::ApiError;
use super::error::ErrorBody;
use super::params::TaskParam;
use super::responses::{Keyed, Serving, Stored, TaskRead};
use crate::catalog::prompts::PromptInfo;
use crate::prompts::TaskName;
use crate::service::fleet::{FleetWait, WaitQuery};
use crate::service::prompts::{Upload, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::service::Service;
use crate::store::fleet::Which;
use crate::tenants::Caller;

/// The `{task}` (or `{name}`) path segment, checked against the naming rule (400 otherwise).
pub(crate) fn task_name(path: Result<Path<String>, PathRejection>) -> Result<TaskName, ApiError> {
    let Path(task) = path.map_err(|e| ApiError::malformed(e.body_text()))?;
    TaskName::parse(&task).map_err(ApiError::from)
}

/// A write's answer: what is served now and, with `?wait=fleet`, how the wait ended.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Written<T> {
    /// What is served now.
    #[serde(flatten)]
    pub info: T,
    /// With `?wait=fleet`: the manifest generation, the time waited, the replicas behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetWait>,
}

/// `?wait=fleet[&wait_ms=N]`, checked (400 for anything else).
pub(crate) fn wait_query(
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Option<std::time::Duration>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::malformed(e.body_text()))?;
    Ok(query.deadline()?)
}

/// The answer to a write: 201 (new) or 200, or 202 when a wait for the fleet ended with
/// replicas still behind.
pub(crate) async fn written<T: serde::Serialize>(
    svc: &Service,
    info: T,
    created: bool,
    wait: Option<std::time::Duration>,
    which: Which,
) -> Response {
    let fleet = match wait {
        None => None,
        Some(wait) => match svc.wait_fleet(which, wait).await {
            Ok(w) => Some(w),
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    let status = match (&fleet, created) {
        (Some(f), _) if !f.behind.is_empty() => StatusCode::ACCEPTED,
        (_, true) => StatusCode::CREATED,
        (_, false) => StatusCode::OK,
    };
    (status, Json(Written { info, fleet })).into_response()
}

/// Reads an upload: a raw tensor file, or multipart with PEFT's two files.
async fn read_upload(req: Request, svc: &Service) -> Result<Upload, ApiError> {
    super::body::check(&req)?;
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        });
    if !multipart {
        let body = Bytes::from_request(req, svc).await?;
        return Ok(Upload::Tensor(body.into()));
    }
    let mut form = Multipart::from_request(req, svc)
        .await
        .map_err(|e| ApiError::malformed(e.body_text()))?;
    let (mut weights, mut config) = (None, None);
    while let Some(field) = form.next_field().await? {
        let names = [field.name(), field.file_name()];
        let is = |want: &str| names.iter().flatten().any(|n| *n == want);
        let (is_weights, is_config) = (is(ADAPTER_WEIGHTS), is(ADAPTER_CONFIG));
        let shown = names.iter().flatten().next().unwrap_or(&"").to_string();
        let data = field.bytes().await?;
        if is_weights {
            weights = Some(data);
        } else if is_config {
            config = Some(data);
        } else {
            return Err(ApiError::malformed(format!(
                "unexpected multipart field {shown:?}: send `{ADAPTER_WEIGHTS}` and `{ADAPTER_CONFIG}`"
            )));
        }
    }
    match (weights, config) {
        (Some(weights), Some(config)) => Ok(Upload::Peft {
            weights: weights.into(),
            config: config.into(),
        }),
        (Some(weights), None) => Ok(Upload::Tensor(weights.into())),
        (None, _) => Err(ApiError::malformed(format!(
            "multipart upload has no `{ADAPTER_WEIGHTS}` field"
        ))),
    }
}

/// A PEFT prompt-tuning adapter, as PEFT's `save_pretrained` writes it (OpenAPI only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PeftUpload {
    /// PEFT's weights file.
    #[schema(rename = "adapter_model.safetensors", value_type = String, format = Binary)]
    weights: (),
    /// PEFT's config file.
    #[schema(rename = "adapter_config.json", value_type = String, format = Binary)]
    config: (),
}

/// A `.safetensors` or `.npy` prompt file (OpenAPI only).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct PromptFile(());

/// Creates or replaces a task's prompt: a raw `.safetensors` or `.npy` file (detected by its
/// content), or multipart with PEFT's `adapter_model.safetensors` and `adapter_config.json`.
/// Validated, written atomically to the prompts folder, then served.
#[utoipa::path(put, path = "/v1/prompts/{task}", tag = "prompts",
    params(TaskParam, WaitQuery),
    request_body(content(
        (PromptFile = "application/octet-stream"),
        (PeftUpload = "multipart/form-data"))),
    responses(
        (status = 201, description = "Created (version 1 or past a deleted one)", body = PromptInfo),
        (status = 200, description = "Replaced (version + 1)", body = PromptInfo),
        (status = 202, description = "Written, but with ?wait=fleet some live replicas did not serve it by the deadline (`fleet.behind`)", body = PromptInfo),
        Keyed, Stored,
        (status = 400, description = "Not a prompt file, bad task name, bad multipart", body = ErrorBody),
        (status = 403, description = "Another tenant's task, or over max_prompts", body = ErrorBody),
        (status = 413, description = "Over --max-prompt-bytes", body = ErrorBody),
        (status = 422, description = "Wrong width, too long, not finite, empty", body = ErrorBody)))]
pub async fn put(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<WaitQuery>, QueryRejection>,
    req: Request,
) -> Response {
    let wait = match wait_query(query) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let upload: Result<(TaskName, Upload), ApiError> = async {
        let task = task_name(path)?;
        svc.check_serving()?;
        svc.authorize_prompt_write(&caller, &task)?;
        Ok((task, read_upload(req, &svc).await?))
    }
    .await;
    // What only HTTP refuses (a media type) is not the service's: answered here, uncounted.
    let upload = match upload {
        Ok(u) => Ok(u),
        Err(ApiError::Service(e)) => Err(e),
        Err(other) => return other.into_response(),
    };
    match svc.put_prompt(&caller, upload).await {
        Ok((info, created)) => written(&svc, info, created, wait, Which::Prompts).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Body of `GET /v1/prompts`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PromptList {
    /// Every served prompt, by task name.
    pub prompts: Vec<PromptInfo>,
}

/// Every served prompt the caller may see (all of them on an open server or for an admin).
#[utoipa::path(get, path = "/v1/prompts", tag = "prompts", responses(
    (status = 200, description = "Served prompts by task name", body = PromptList),
    Keyed, Serving))]
pub async fn list(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(PromptList {
        prompts: svc.list_prompts(&caller)?,
    }))
}

/// One task's prompt metadata.
#[utoipa::path(get, path = "/v1/prompts/{task}", tag = "prompts",
    params(TaskParam),
    responses(
        (status = 200, description = "The served version", body = PromptInfo),
        Keyed, TaskRead,
        (status = 400, description = "Bad task name", body = ErrorBody)))]
pub async fn get_one(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PromptInfo>, ApiError> {
    Ok(Json(svc.prompt(&caller, &task_name(path)?)?))
}

/// Removes a task's prompt from the folder and the registry; in-flight requests finish.
#[utoipa::path(delete, path = "/v1/prompts/{task}", tag = "prompts",
    params(TaskParam),
    responses(
        (status = 204, description = "Deleted"),
        Keyed, TaskRead,
        (status = 400, description = "Bad task name", body = ErrorBody),
        (status = 404, description = "Nothing to delete", body = ErrorBody)))]
pub async fn delete(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    svc.delete_prompt(&caller, &task_name(path)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
