//! Prompt management: PUT (raw tensor file or PEFT multipart), GET, list, DELETE.
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ErrorBody;
use super::openapi::TaskParam;
use super::{ApiError, AppState};
use crate::prompts::registry::PromptInfo;
use crate::prompts::store::sha256_hex;
use crate::prompts::{Prompt, PromptLimits, TaskName};

const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const ADAPTER_CONFIG: &str = "adapter_config.json";

fn task_name(path: Result<Path<String>, PathRejection>) -> Result<TaskName, ApiError> {
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
        (status = 413, description = "Over --max-prompt-bytes", body = ErrorBody),
        (status = 422, description = "Wrong width, too long, not finite, empty", body = ErrorBody),
        (status = 503, description = "Loading, shutting down, or the folder is read-only", body = ErrorBody),
        (status = 507, description = "The prompts folder's disk is full", body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let upload: Result<(TaskName, Upload), ApiError> = async {
        let task = task_name(path)?;
        state.check_serving()?;
        Ok((task, Upload::from_request(req, &state).await?))
    }
    .await;
    match store(&state, upload).await {
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

/// Validates and stores an upload, counting it in `promptd_prompt_uploads_total`; `upload`
/// is an error when reading the request already failed. Returns the stored prompt and whether
/// the task is new. Shared by HTTP and gRPC.
pub async fn store(
    state: &AppState,
    upload: Result<(TaskName, Upload), ApiError>,
) -> Result<(PromptInfo, bool), ApiError> {
    let result: Result<(PromptInfo, bool), ApiError> = async {
        let (task, upload) = upload?;
        let d_model = state.registry.d_model();
        let limits = *state.registry.limits();
        let (prompt, sha256) = tokio::task::spawn_blocking(move || upload.parse(d_model, &limits))
            .await
            .map_err(|e| ApiError::Internal(format!("parsing the upload failed: {e}")))??;
        Ok(state.registry.put(task, prompt, sha256).await?)
    }
    .await;
    let label = match &result {
        Ok((_, true)) => "created",
        Ok((_, false)) => "replaced",
        Err(e) if e.status().is_client_error() => "invalid",
        Err(_) => "error",
    };
    state
        .metrics
        .prompt_uploads
        .with_label_values(&[label])
        .inc();
    match &result {
        Ok((info, _)) => {
            tracing::info!(task = %info.task, version = info.version, sha256 = %info.sha256, "prompt stored")
        }
        Err(e) => tracing::info!(error = %e, "prompt upload refused"),
    }
    result
}

/// Body of `GET /v1/prompts`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PromptList {
    /// Every served prompt, by task name.
    pub prompts: Vec<PromptInfo>,
}

/// Every served prompt.
#[utoipa::path(get, path = "/v1/prompts", tag = "prompts", responses(
    (status = 200, description = "Served prompts by task name", body = PromptList),
    (status = 503, description = "Loading or shutting down", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(PromptList {
        prompts: all(&state)?,
    }))
}

/// Every served prompt, by task name.
pub fn all(state: &AppState) -> Result<Vec<PromptInfo>, ApiError> {
    state.check_serving()?;
    Ok(state.registry.list())
}

/// One task's prompt metadata.
#[utoipa::path(get, path = "/v1/prompts/{task}", tag = "prompts",
    params(TaskParam),
    responses(
        (status = 200, description = "The served version", body = PromptInfo),
        (status = 400, description = "Bad task name", body = ErrorBody),
        (status = 404, description = "Unknown task", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PromptInfo>, ApiError> {
    info(&state, task_name(path)?).map(Json)
}

/// One task's prompt metadata.
pub fn info(state: &AppState, task: TaskName) -> Result<PromptInfo, ApiError> {
    state.check_serving()?;
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
        (status = 404, description = "Nothing to delete", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    remove(&state, task_name(path)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a task's prompt; unknown tasks are an error.
pub async fn remove(state: &AppState, task: TaskName) -> Result<(), ApiError> {
    state.check_serving()?;
    if state.registry.delete(&task).await? {
        state
            .metrics
            .prompt_uploads
            .with_label_values(&["deleted"])
            .inc();
        tracing::info!(%task, "prompt deleted");
        Ok(())
    } else {
        Err(ApiError::UnknownTask(task.to_string()))
    }
}
