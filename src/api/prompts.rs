//! Prompt management: PUT (raw tensor file or PEFT multipart), GET, list, DELETE.
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use std::sync::Arc;

use axum::Extension;

use super::auth::{check_read, forbidden, reject};
use super::error::ErrorBody;
use super::params::TaskParam;
use super::{ApiError, AppState};
use crate::metrics::{ChangeAction, Rejection, UploadResult};
use crate::prompts::audit::{now_ms, AuditEntry};
use crate::prompts::registry::PromptInfo;
use crate::prompts::store::sha256_hex;
use crate::prompts::{Prompt, PromptLimits, TaskName};
use crate::tenants::Caller;

const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The `{task}` (or `{name}`) path segment, checked against the naming rule (400 otherwise).
pub(crate) fn task_name(path: Result<Path<String>, PathRejection>) -> Result<TaskName, ApiError> {
    let Path(task) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    TaskName::parse(&task).map_err(ApiError::from)
}

/// What an upload carried.
pub enum Upload {
    /// One tensor file (safetensors or npy).
    Tensor(Bytes),
    /// A PEFT adapter: weights and config.
    Peft {
        /// adapter_model.safetensors.
        weights: Bytes,
        /// adapter_config.json.
        config: Bytes,
    },
}

impl Upload {
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
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
            let body = Bytes::from_request(req, state).await?;
            return Ok(Upload::Tensor(body));
        }
        let mut form = Multipart::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
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
                return Err(ApiError::BadRequest(format!(
                    "unexpected multipart field {shown:?}: send `{ADAPTER_WEIGHTS}` and `{ADAPTER_CONFIG}`"
                )));
            }
        }
        match (weights, config) {
            (Some(weights), Some(config)) => Ok(Upload::Peft { weights, config }),
            (Some(weights), None) => Ok(Upload::Tensor(weights)),
            (None, _) => Err(ApiError::BadRequest(format!(
                "multipart upload has no `{ADAPTER_WEIGHTS}` field"
            ))),
        }
    }

    /// Bytes received.
    pub fn len(&self) -> usize {
        match self {
            Upload::Tensor(b) => b.len(),
            Upload::Peft { weights, config } => weights.len() + config.len(),
        }
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses and validates the prompt; returns it with the SHA-256 of the weights file.
    fn parse(self, d_model: usize, limits: &PromptLimits) -> Result<(Prompt, String), ApiError> {
        match self {
            Upload::Tensor(bytes) => {
                if bytes.is_empty() {
                    return Err(ApiError::BadRequest(
                        "empty body: send a .safetensors or .npy prompt file, or multipart with adapter_model.safetensors and adapter_config.json".into(),
                    ));
                }
                let prompt = Prompt::from_tensor_file(&bytes, d_model, limits)?;
                Ok((prompt, sha256_hex(&bytes)))
            }
            Upload::Peft { weights, config } => {
                let prompt = Prompt::from_peft(&config, &weights, d_model, limits)?;
                Ok((prompt, sha256_hex(&weights)))
            }
        }
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
    params(TaskParam),
    request_body(content(
        (PromptFile = "application/octet-stream"),
        (PeftUpload = "multipart/form-data"))),
    responses(
        (status = 201, description = "Created (version 1 or past a deleted one)", body = PromptInfo),
        (status = 200, description = "Replaced (version + 1)", body = PromptInfo),
        (status = 400, description = "Not a prompt file, bad task name, bad multipart", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "Another tenant's task, or over max_prompts", body = ErrorBody),
        (status = 413, description = "Over --max-prompt-bytes", body = ErrorBody),
        (status = 422, description = "Wrong width, too long, not finite, empty", body = ErrorBody),
        (status = 503, description = "Loading, shutting down, or the folder is read-only", body = ErrorBody),
        (status = 507, description = "The prompts folder's disk is full", body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let upload: Result<(TaskName, Upload), ApiError> = async {
        let task = task_name(path)?;
        state.check_serving()?;
        authorize_write(&state, &caller, &task)?;
        Ok((task, Upload::from_request(req, &state).await?))
    }
    .await;
    match store(&state, &caller, upload).await {
        Ok((info, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(info)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Checks, before the body is read, that `caller` may write `task` and, for a new task, owns
/// fewer prompts than its quota.
pub fn authorize_write(state: &AppState, caller: &Caller, task: &TaskName) -> Result<(), ApiError> {
    let owned = || state.registry.list().into_iter().map(|p| p.task);
    let new = state.registry.get(task.as_str()).is_none();
    authorize(state, caller, task, new, owned, ("task", "prompts"))
}

/// `caller` may change `name` (it matches the tenant's task patterns) and, when `new`, owns
/// fewer of `names()` than its quota (max_prompts). `what` is the kind in messages, singular
/// and plural: ("task", "prompts") or ("ensemble", "ensembles").
pub(crate) fn authorize<I: Iterator<Item = String>>(
    state: &AppState,
    caller: &Caller,
    name: &TaskName,
    new: bool,
    names: impl FnOnce() -> I,
    what: (&str, &str),
) -> Result<(), ApiError> {
    let set = state.tenants.current();
    if !caller.may_write(&set, name.as_str()) {
        return Err(forbidden(
            state,
            caller,
            &format!(
                "may not change {} {name:?} (its name is not in the tenant's task patterns)",
                what.0
            ),
        ));
    }
    if let Caller::Tenant(t) = caller {
        if !t.admin && new {
            let owned = names()
                .filter(|n| set.owner(n).is_some_and(|o| Arc::ptr_eq(o, t)))
                .count();
            if owned >= t.max_prompts {
                reject(state, caller, Rejection::QuotaExceeded);
                return Err(ApiError::QuotaExceeded(format!(
                    "tenant {:?} owns {owned} {}; its quota is {} (max_prompts)",
                    t.name, what.1, t.max_prompts
                )));
            }
        }
    }
    Ok(())
}

/// Counts and records a prompt change in the audit log (synced before the reply).
async fn audit(
    state: &AppState,
    caller: &Caller,
    info: &PromptInfo,
    action: ChangeAction,
    bytes: usize,
) {
    state.metrics.prompt_change(caller.name(), action);
    let entry = AuditEntry {
        time_ms: now_ms(),
        tenant: caller.name().to_string(),
        task: info.task.clone(),
        kind: None,
        action: action.as_str(),
        version: info.version,
        sha256: info.sha256.clone(),
        bytes,
    };
    record(state, entry).await;
}

/// Appends `entry` to the audit log, if the server keeps one (synced before the reply); a
/// failure is logged and counted, not the client's.
pub(crate) async fn record(state: &AppState, entry: AuditEntry) {
    let Some(log) = state.audit.clone() else {
        return;
    };
    let task = entry.task.clone();
    let written = tokio::task::spawn_blocking(move || log.record(&entry)).await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::error!(%task, ?written, "writing the audit log failed");
        state.metrics.audit_errors.inc();
    }
}

/// Validates and stores an upload, counting it in `promptd_prompt_uploads_total`; `upload`
/// is an error when reading the request already failed. Returns the stored prompt and whether
/// the task is new. Shared by HTTP and gRPC.
pub async fn store(
    state: &AppState,
    caller: &Caller,
    upload: Result<(TaskName, Upload), ApiError>,
) -> Result<(PromptInfo, bool), ApiError> {
    let mut bytes = 0;
    let result: Result<(PromptInfo, bool), ApiError> = async {
        let (task, upload) = upload?;
        bytes = upload.len();
        let d_model = state.registry.d_model();
        let mut limits = *state.registry.limits();
        if let Caller::Tenant(t) = caller {
            limits.max_rows = limits.max_rows.min(t.max_prompt_length);
        }
        let (prompt, sha256) = tokio::task::spawn_blocking(move || upload.parse(d_model, &limits))
            .await
            .map_err(|e| ApiError::Internal(format!("parsing the upload failed: {e}")))??;
        Ok(state.registry.put(task, prompt, sha256).await?)
    }
    .await;
    state.metrics.prompt_upload(match &result {
        Ok((_, true)) => UploadResult::Created,
        Ok((_, false)) => UploadResult::Replaced,
        Err(e) if e.status().is_client_error() => UploadResult::Invalid,
        Err(_) => UploadResult::Error,
    });
    match &result {
        Ok((info, created)) => {
            tracing::info!(task = %info.task, version = info.version, sha256 = %info.sha256, tenant = caller.name(), "prompt stored");
            let action = if *created {
                ChangeAction::Create
            } else {
                ChangeAction::Replace
            };
            audit(state, caller, info, action, bytes).await;
        }
        Err(e) => tracing::info!(error = %e, tenant = caller.name(), "prompt upload refused"),
    }
    result
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
    (status = 401, description = "Missing or unknown API key", body = ErrorBody),
    (status = 503, description = "Loading or shutting down", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(PromptList {
        prompts: all(&state, &caller)?,
    }))
}

/// Every served prompt `caller` may see, by task name.
pub fn all(state: &AppState, caller: &Caller) -> Result<Vec<PromptInfo>, ApiError> {
    state.check_serving()?;
    let mut prompts = state.registry.list();
    if !caller.is_admin() {
        let set = state.tenants.current();
        prompts.retain(|p| caller.may_read(&set, &p.task));
    }
    Ok(prompts)
}

/// One task's prompt metadata.
#[utoipa::path(get, path = "/v1/prompts/{task}", tag = "prompts",
    params(TaskParam),
    responses(
        (status = 200, description = "The served version", body = PromptInfo),
        (status = 400, description = "Bad task name", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Another tenant's task", body = ErrorBody),
        (status = 404, description = "Unknown task", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PromptInfo>, ApiError> {
    info(&state, &caller, task_name(path)?).map(Json)
}

/// One task's prompt metadata.
pub fn info(state: &AppState, caller: &Caller, task: TaskName) -> Result<PromptInfo, ApiError> {
    state.check_serving()?;
    check_read(state, caller, &state.tenants.current(), task.as_str())?;
    state
        .registry
        .get(task.as_str())
        .map(|e| e.info.clone())
        .ok_or_else(|| ApiError::UnknownTask(task.to_string()))
}

/// Removes a task's prompt from the folder and the registry; in-flight requests finish.
#[utoipa::path(delete, path = "/v1/prompts/{task}", tag = "prompts",
    params(TaskParam),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad task name", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Another tenant's task", body = ErrorBody),
        (status = 404, description = "Nothing to delete", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    remove(&state, &caller, task_name(path)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a task's prompt; unknown tasks are an error.
pub async fn remove(state: &AppState, caller: &Caller, task: TaskName) -> Result<(), ApiError> {
    state.check_serving()?;
    authorize_write(state, caller, &task)?;
    let before = state.registry.get(task.as_str()).map(|e| e.info.clone());
    if state.registry.delete(&task).await? {
        state.metrics.prompt_upload(UploadResult::Deleted);
        tracing::info!(%task, tenant = caller.name(), "prompt deleted");
        if let Some(info) = before {
            audit(state, caller, &info, ChangeAction::Delete, 0).await;
        }
        Ok(())
    } else {
        Err(ApiError::UnknownTask(task.to_string()))
    }
}
