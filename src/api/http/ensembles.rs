//! Prompt ensembles (paper §6) over HTTP: `PUT`/`GET`/`DELETE /v1/ensembles/{name}`,
//! `GET /v1/ensembles`, and `POST /v1/ensembles/{name}/predict` (see [`crate::service::ensembles`]).
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::body::JsonBody;
use super::error::ApiError;
use super::error::ErrorBody;
use super::params::NAME_PATTERN;
use super::predict::PredictRequest;
use super::responses::{BodyLimit, JsonIn, Keyed, Queued, Serving, Stored};
use crate::api::requests::counted;
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
    #[schema(schema_with = members_schema)]
    pub members: Vec<String>,
    /// `vote` (majority of answers) or `mean-logprob` (mean label log-likelihood; needs labels).
    pub combine: Combine,
}

fn members_schema() -> impl Into<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>> {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NAME_PATTERN)),
        )
        .description(Some(
            "Served tasks whose prompts vote, at least 2, distinct, at most --max-batch-size.",
        ))
}

/// Body of `POST /v1/ensembles/{name}/predict` (OpenAPI only; the route reads a
/// [`PredictRequest`]): an ensemble with `max_new_tokens` 0 has only `labels` to combine, so it
/// needs some.
pub struct EnsemblePredictRequest;

impl utoipa::PartialSchema for EnsemblePredictRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, SchemaType,
        };
        use utoipa::openapi::Ref;
        let any = || ObjectBuilder::new().schema_type(SchemaType::AnyValue);
        let something_to_combine = AnyOfBuilder::new()
            .item(any().property("max_new_tokens", any().minimum(Some(1))))
            .item(
                any()
                    .property("labels", ArrayBuilder::new().min_items(Some(1)))
                    .required("labels"),
            );
        AllOfBuilder::new()
            .item(Ref::from_schema_name("PredictRequest"))
            .item(something_to_combine)
            .description(Some(
                "A predict request that leaves something to combine: labels, or max_new_tokens above 0",
            ))
            .into()
    }
}

impl utoipa::ToSchema for EnsemblePredictRequest {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push((
            <PredictRequest as utoipa::ToSchema>::name().into(),
            PredictRequest::schema(),
        ));
        <PredictRequest as utoipa::ToSchema>::schemas(schemas);
    }
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
    params(EnsembleParam, crate::service::fleet::WaitQuery),
    request_body = EnsembleRequest,
    responses(
        (status = 201, description = "Created (version 1 or past a deleted one)", body = EnsembleInfo),
        (status = 200, description = "Replaced (version + 1)", body = EnsembleInfo),
        (status = 202, description = "Written, but with ?wait=fleet some live replicas did not serve it by the deadline (`fleet.behind`)", body = EnsembleInfo),
        JsonIn, BodyLimit, Keyed, Stored,
        (status = 400, description = "Malformed JSON or bad name", body = ErrorBody),
        (status = 403, description = "A name outside the tenant's patterns, a member it may not read, or over max_prompts ensembles", body = ErrorBody),
        (status = 422, description = "Too few or too many members, a repeated member, a member that is not served, an unknown combine", body = ErrorBody)))]
pub async fn put(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<crate::service::fleet::WaitQuery>, QueryRejection>,
    body: Result<JsonBody<EnsembleRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let name = super::prompts::task_name(path)?;
    let wait = super::prompts::wait_query(query)?;
    let spec = body.map(|JsonBody(req)| EnsembleSpec {
        members: req.members,
        combine: req.combine,
    });
    let (info, created) = svc.put_ensemble(&caller, name, spec).await?;
    let which = crate::store::fleet::Which::Ensembles;
    Ok(super::prompts::written(&svc, info, created, wait, which).await)
}

/// Every served ensemble the caller may see (all of them on an open server or for an admin).
#[utoipa::path(get, path = "/v1/ensembles", tag = "ensembles", responses(
    (status = 200, description = "Served ensembles by name", body = EnsembleList),
    Keyed, Serving))]
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
        Keyed, Serving,
        (status = 400, description = "Bad name", body = ErrorBody),
        (status = 403, description = "Another tenant's ensemble", body = ErrorBody),
        (status = 404, description = "Unknown ensemble", body = ErrorBody)))]
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
        Keyed,
        (status = 400, description = "Bad name", body = ErrorBody),
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
    request_body = EnsemblePredictRequest,
    responses(
        (status = 200, description = "One combined output per input, in order", body = EnsembleResponse),
        JsonIn, BodyLimit, Keyed, Queued,
        (status = 403, description = "Another tenant's ensemble, or a member the caller may not read", body = ErrorBody),
        (status = 404, description = "Unknown ensemble", body = ErrorBody),
        (status = 409, description = "A member's prompt was deleted after the ensemble was stored", body = ErrorBody),
        (status = 422, description = "A limit is violated, mean-logprob without labels, or nothing to combine (max_new_tokens 0 without labels)", body = ErrorBody)))]
pub async fn predict(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Result<Json<EnsembleResponse>, ApiError> {
    let name = path.map(|Path(t)| t).unwrap_or_default();
    let input = body.and_then(|JsonBody(req)| req.into_input());
    let answer = svc.ensemble_predict(&caller, &name, input);
    counted(&svc, &name, true, ApiError::outcome, answer)
        .await
        .map(Json)
}
