//! Prompt ensembles (paper §6) over HTTP: `PUT`/`GET`/`DELETE /v1/ensembles/{name}`,
//! `GET /v1/ensembles`, and `POST /v1/ensembles/{name}/predict` (see [`crate::service::ensembles`]).
use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::body::JsonBody;
use super::error::ApiError;
use super::error::ErrorBody;
use super::predict::PredictRequest;
use crate::prompts::ensembles::{Combine, EnsembleInfo, EnsembleSpec};
use crate::service::ensembles::EnsembleResponse;
use crate::service::Service;
use crate::tenants::Caller;

/// The `{name}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct EnsembleParam {
    /// Ensemble name: a letter or digit, then letters, digits, `.`, `_` or `-`; at most 128 bytes.
    #[param(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    name: String,
}

/// Body of `PUT /v1/ensembles/{name}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnsembleRequest {
    /// Served tasks whose prompts vote, at least 2, distinct, at most --max-batch-size.
    pub members: Vec<String>,
    /// `vote` (majority of answers) or `mean-logprob` (mean label log-likelihood; needs labels).
    pub combine: Combine,
}

/// Body of `GET /v1/ensembles`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnsembleList {
    /// Every served ensemble, by name.
    pub ensembles: Vec<EnsembleInfo>,
}

/// Creates or replaces an ensemble of served prompts. Stored atomically beside the prompts,
/// versioned and audited like them.
#[utoipa::path(put, path = "/v1/ensembles/{name}", tag = "ensembles",
    params(EnsembleParam),
    request_body = EnsembleRequest,
    responses(
        (status = 201, description = "Created (version 1 or past a deleted one)", body = EnsembleInfo),
        (status = 200, description = "Replaced (version + 1)", body = EnsembleInfo),
        (status = 400, description = "Malformed JSON or bad name", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "A name outside the tenant's patterns, a member it may not read, or over max_prompts ensembles", body = ErrorBody),
        (status = 413, description = "Body over --max-body-bytes", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "Too few or too many members, a repeated member, a member that is not served, an unknown combine", body = ErrorBody),
        (status = 503, description = "Loading, shutting down, or the folder is read-only", body = ErrorBody),
        (status = 507, description = "The prompts folder's disk is full", body = ErrorBody)))]
pub async fn put(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<EnsembleRequest>, ApiError>,
) -> Result<(StatusCode, Json<EnsembleInfo>), ApiError> {
    let name = super::prompts::task_name(path)?;
    let spec = body.map(|JsonBody(req)| EnsembleSpec {
        members: req.members,
        combine: req.combine,
    });
    let (info, created) = svc.put_ensemble(&caller, name, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

/// Every served ensemble the caller may see (all of them on an open server or for an admin).
#[utoipa::path(get, path = "/v1/ensembles", tag = "ensembles", responses(
    (status = 200, description = "Served ensembles by name", body = EnsembleList),
    (status = 401, description = "Missing or unknown API key", body = ErrorBody),
    (status = 503, description = "Loading or shutting down", body = ErrorBody)))]
pub async fn list(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<EnsembleList>, ApiError> {
    Ok(Json(EnsembleList {
        ensembles: svc.list_ensembles(&caller)?,
    }))
}

/// One ensemble: its members, combine rule and version.
#[utoipa::path(get, path = "/v1/ensembles/{name}", tag = "ensembles",
    params(EnsembleParam),
    responses(
        (status = 200, description = "The served version", body = EnsembleInfo),
        (status = 400, description = "Bad name", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Another tenant's ensemble", body = ErrorBody),
        (status = 404, description = "Unknown ensemble", body = ErrorBody),
        (status = 503, description = "Loading or shutting down", body = ErrorBody)))]
pub async fn get_one(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<EnsembleInfo>, ApiError> {
    let name = super::prompts::task_name(path)?;
    Ok(Json(svc.ensemble(&caller, &name)?))
}

/// Removes an ensemble (its members' prompts stay); requests already running finish.
#[utoipa::path(delete, path = "/v1/ensembles/{name}", tag = "ensembles",
    params(EnsembleParam),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad name", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Another tenant's ensemble", body = ErrorBody),
        (status = 404, description = "Nothing to delete", body = ErrorBody),
        (status = 503, description = "Loading, shutting down, or the folder is read-only", body = ErrorBody)))]
pub async fn delete(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = super::prompts::task_name(path)?;
    svc.delete_ensemble(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Answers every input with every member's prompt in ONE forward pass (one row per member,
/// admitted together), then combines the members' answers: `vote`, or with `labels`
/// `mean-logprob`. The response has the ensemble's answer and each member's.
#[utoipa::path(post, path = "/v1/ensembles/{name}/predict", tag = "ensembles",
    params(EnsembleParam),
    request_body = PredictRequest,
    responses(
        (status = 200, description = "One combined output per input, in order", body = EnsembleResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "Another tenant's ensemble, or a member the caller may not read", body = ErrorBody),
        (status = 404, description = "Unknown ensemble", body = ErrorBody),
        (status = 409, description = "A member's prompt was deleted after the ensemble was stored", body = ErrorBody),
        (status = 413, description = "Body over --max-body-bytes", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "A limit is violated, mean-logprob without labels, or nothing to combine", body = ErrorBody),
        (status = 429, description = "Queue full, or the tenant's request rate / in-flight quota; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "Loading or shutting down", body = ErrorBody),
        (status = 504, description = "Did not finish within --request-timeout-ms", body = ErrorBody)))]
pub async fn predict(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Result<Json<EnsembleResponse>, ApiError> {
    let name = path.map(|Path(t)| t).unwrap_or_default();
    let input = body.and_then(|JsonBody(req)| req.into_input());
    let label = svc.request_label(&name, true);
    let started = Instant::now();
    let result = svc.ensemble_predict(&caller, &name, input).await;
    super::predict::record(&svc, &label, started, &result);
    result.map(Json)
}
