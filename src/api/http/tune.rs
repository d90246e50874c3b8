//! Tuning jobs over HTTP: `POST /v1/tasks/{task}/tune` starts one on the server's own frozen
//! model, `GET /v1/tune-jobs[/{id}]` shows them, `GET .../curve.svg` draws one's curves, `DELETE`
//! cancels, `POST .../promote` installs a candidate (the lifecycle is [`crate::service::tuning`]).
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Extension;
use axum::Json;

use super::body::JsonBody;
use super::error::ApiError;
use super::error::ErrorBody;
use super::params::TaskParam;
use super::responses::{JobRead, JsonIn, Keyed, Serving};
use crate::prompts::TaskName;
use crate::service::tuning::TuneRequest;
use crate::service::Service;
use crate::tenants::Caller;
use crate::tune::jobs::JobStatus;

/// Body of `202` from `POST /v1/tasks/{task}/tune`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobCreated {
    /// The job id, for `GET /v1/tune-jobs/{id}`.
    pub job: String,
    /// Its status.
    pub status: JobStatus,
}

/// Body of `GET /v1/tune-jobs`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobList {
    /// The caller's jobs (every job for an admin), oldest first.
    pub jobs: Vec<JobStatus>,
}

/// Starts tuning `task`'s prompt on the served model (202 with the job id). Only a caller
/// allowed to write the task may tune it.
#[utoipa::path(post, path = "/v1/tasks/{task}/tune", tag = "tuning",
    params(TaskParam),
    request_body = TuneRequest,
    responses(
        (status = 202, description = "Accepted: the job runs between serving passes", body = JobCreated),
        JsonIn, Keyed, Serving,
        (status = 400, description = "Malformed JSON or task name", body = ErrorBody),
        (status = 403, description = "May not write this task", body = ErrorBody),
        (status = 413, description = "Over --tune-max-body-bytes", body = ErrorBody),
        (status = 422, description = "Out-of-range settings or too many rows or steps", body = ErrorBody),
        (status = 429, description = "The tenant already runs its most jobs", body = ErrorBody)))]
pub async fn start(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<TuneRequest>,
) -> Result<(StatusCode, Json<JobCreated>), ApiError> {
    let Path(task) = path.map_err(|e| ApiError::malformed(e.body_text()))?;
    let status = svc
        .start_tune(&caller, TaskName::parse(&task)?, req)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(JobCreated {
            job: status.id.clone(),
            status,
        }),
    ))
}

/// One tuning job: state, step, loss, dev metric, ETA.
#[utoipa::path(get, path = "/v1/tune-jobs/{id}", tag = "tuning",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        Keyed, JobRead))]
pub async fn get_one(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    Ok(Json(svc.tune_job(&caller, &id).await?))
}

/// One tuning job's curves as an SVG picture, drawn now: training loss and dev metric against
/// step, the best step marked (a running job's so far).
#[utoipa::path(get, path = "/v1/tune-jobs/{id}/curve.svg", tag = "tuning",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The curves", body = String, content_type = "image/svg+xml"),
        Keyed, JobRead))]
pub async fn curve(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let svg = svc.tune_job_curve(&caller, &id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            // Drawn live: a running job's picture changes with every step.
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    ))
}

/// The caller's tuning jobs (every job for an admin or an open server).
#[utoipa::path(get, path = "/v1/tune-jobs", tag = "tuning", responses(
    (status = 200, description = "Jobs, oldest first", body = JobList),
    Keyed,
    (status = 503, description = "The fleet's object store is unreachable", body = ErrorBody)))]
pub async fn list(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<JobList>, ApiError> {
    Ok(Json(JobList {
        jobs: svc.list_tune_jobs(&caller).await?,
    }))
}

/// Cancels a queued or running job (it stops at its next step; nothing is installed).
#[utoipa::path(delete, path = "/v1/tune-jobs/{id}", tag = "tuning",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 202, description = "Cancelling", body = JobStatus),
        Keyed, JobRead,
        (status = 409, description = "The job has already ended", body = ErrorBody)))]
pub async fn cancel(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobStatus>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(svc.cancel_tune(&caller, &id).await?),
    ))
}

/// Installs a candidate (a job whose prompt scored below the task's current one) as the
/// task's next version.
#[utoipa::path(post, path = "/v1/tune-jobs/{id}/promote", tag = "tuning",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Installed", body = JobStatus),
        Keyed, JobRead,
        (status = 403, description = "Another tenant's job, or may not write the task", body = ErrorBody),
        (status = 409, description = "The job is not a candidate", body = ErrorBody)))]
pub async fn promote(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    Ok(Json(svc.promote_tune(&caller, &id).await?))
}
