//! Prompt ensembles (paper §6): `PUT`/`GET`/`DELETE /v1/ensembles/{name}`, `GET /v1/ensembles`,
//! and `POST /v1/ensembles/{name}/predict`, where each input becomes one batcher unit of one
//! row per member: the rows join one forward pass together, and their answers combine.
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::auth::check_read;
use super::combine::{combine, MemberAnswer};
use super::error::{ErrorBody, JsonBody};
use super::predict::{admit, run_units, PredictRequest};
use super::validate::build_row;
use super::{ApiError, AppState};
use crate::batcher::Unit;
use crate::metrics::{ChangeAction, UNKNOWN_TASK};
use crate::prompts::audit::{now_ms, AuditEntry};
use crate::prompts::ensembles::{Combine, EnsembleInfo, EnsembleSpec};
use crate::prompts::registry::Entry;
use crate::prompts::TaskName;
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

/// One member's answer to one input.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberOutput {
    /// The member task.
    pub task: String,
    /// Its prompt version that answered.
    pub prompt_version: u64,
    /// Its own answer: its best label with `labels`, else its generated text.
    pub answer: String,
    /// Log-probability of its answer (the label's, or the generated tokens' summed).
    pub score: f64,
    /// Its generated text (absent when max_new_tokens is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Log-likelihood of each label, in the order given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f64>>,
}

/// The ensemble's answer to one input.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnsembleOutput {
    /// The combined answer: a label with `labels`, else a generated text.
    pub answer: String,
    /// Members whose own answer is `answer`.
    pub votes: usize,
    /// With `labels`: each label's log-likelihood averaged over the members.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f64>>,
    /// Each member's answer, in member order.
    pub members: Vec<MemberOutput>,
}

/// Body of `POST /v1/ensembles/{name}/predict`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnsembleResponse {
    /// Ensemble name.
    pub ensemble: String,
    /// The ensemble version that answered.
    pub version: u64,
    /// How the answers were combined.
    pub combine: Combine,
    /// One per input, in input order.
    pub outputs: Vec<EnsembleOutput>,
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
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<EnsembleRequest>, ApiError>,
) -> Response {
    let result = async {
        let name = super::prompts::task_name(path)?;
        state.check_serving()?;
        authorize_write(&state, &caller, &name)?;
        let JsonBody(req) = body?;
        let spec = check_spec(&state, &caller, req)?;
        let stored = state.registry.ensembles().put(name, spec).await?;
        Ok::<_, ApiError>(stored)
    }
    .await;
    match result {
        Ok((info, created)) => {
            tracing::info!(ensemble = %info.name, version = info.version, tenant = caller.name(), "ensemble stored");
            let action = if created {
                ChangeAction::Create
            } else {
                ChangeAction::Replace
            };
            audit(&state, &caller, &info, action).await;
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

/// `caller` may name an ensemble `name` (its tenant's task patterns) and, for a new one, owns
/// fewer ensembles than its quota (max_prompts, counted apart from prompts).
fn authorize_write(state: &AppState, caller: &Caller, name: &TaskName) -> Result<(), ApiError> {
    let ensembles = state.registry.ensembles();
    let owned = || ensembles.list().into_iter().map(|e| e.name);
    let new = ensembles.get(name.as_str()).is_none();
    super::prompts::authorize(state, caller, name, new, owned, ("ensemble", "ensembles"))
}

/// The members are 2 to --max-batch-size distinct served tasks that `caller` may read.
fn check_spec(
    state: &AppState,
    caller: &Caller,
    req: EnsembleRequest,
) -> Result<EnsembleSpec, ApiError> {
    let max = state.batcher.max_batch_size();
    let n = req.members.len();
    if n < 2 || n > max {
        return Err(ApiError::Unprocessable(format!(
            "`members` has {n} tasks; an ensemble needs 2 to {max} (--max-batch-size: its rows share one forward pass)"
        )));
    }
    let set = state.tenants.current();
    for (i, member) in req.members.iter().enumerate() {
        let task = TaskName::parse(member)
            .map_err(|e| ApiError::Unprocessable(format!("members[{i}]: {e}")))?;
        if req.members[..i].contains(member) {
            return Err(ApiError::Unprocessable(format!(
                "members[{i}]: task {member:?} is listed twice"
            )));
        }
        check_read(state, caller, &set, task.as_str())?;
        if state.registry.get(task.as_str()).is_none() {
            return Err(ApiError::Unprocessable(format!(
                "members[{i}]: task {member:?} has no prompt; upload it with PUT /v1/prompts/{member} first"
            )));
        }
    }
    Ok(EnsembleSpec {
        members: req.members,
        combine: req.combine,
    })
}

async fn audit(state: &AppState, caller: &Caller, info: &EnsembleInfo, action: ChangeAction) {
    let entry = AuditEntry {
        time_ms: now_ms(),
        tenant: caller.name().to_string(),
        task: info.name.clone(),
        kind: Some("ensemble"),
        action: action.as_str(),
        version: info.version,
        sha256: info.sha256.clone(),
        bytes: 0,
    };
    super::prompts::record(state, entry).await;
}

/// Every served ensemble the caller may see (all of them on an open server or for an admin).
#[utoipa::path(get, path = "/v1/ensembles", tag = "ensembles", responses(
    (status = 200, description = "Served ensembles by name", body = EnsembleList),
    (status = 401, description = "Missing or unknown API key", body = ErrorBody),
    (status = 503, description = "Loading or shutting down", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<EnsembleList>, ApiError> {
    state.check_serving()?;
    let mut ensembles = state.registry.ensembles().list();
    if !caller.is_admin() {
        let set = state.tenants.current();
        ensembles.retain(|e| caller.may_read(&set, &e.name));
    }
    Ok(Json(EnsembleList { ensembles }))
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
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<EnsembleInfo>, ApiError> {
    let name = super::prompts::task_name(path)?;
    state.check_serving()?;
    check_read(&state, &caller, &state.tenants.current(), name.as_str())?;
    state
        .registry
        .ensembles()
        .get(name.as_str())
        .map(|e| Json((*e).clone()))
        .ok_or_else(|| ApiError::UnknownEnsemble(name.to_string()))
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
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = super::prompts::task_name(path)?;
    state.check_serving()?;
    authorize_write(&state, &caller, &name)?;
    let ensembles = state.registry.ensembles();
    let before = ensembles.get(name.as_str());
    if !ensembles.delete(&name).await? {
        return Err(ApiError::UnknownEnsemble(name.to_string()));
    }
    tracing::info!(ensemble = %name, tenant = caller.name(), "ensemble deleted");
    if let Some(info) = before {
        audit(&state, &caller, &info, ChangeAction::Delete).await;
    }
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
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Result<Json<EnsembleResponse>, ApiError> {
    let name = path.map(|Path(t)| t).unwrap_or_default();
    run(&state, &caller, &name, body.map(|JsonBody(req)| req))
        .await
        .map(Json)
}

/// Runs one ensemble request and records its metrics under the `ensemble:<name>` task label.
/// Every front door calls this: HTTP, KServe v2 and gRPC.
pub async fn run(
    state: &AppState,
    caller: &Caller,
    name: &str,
    body: Result<PredictRequest, ApiError>,
) -> Result<EnsembleResponse, ApiError> {
    let started = Instant::now();
    let ensemble = state.registry.ensembles().get(name);
    let label = match &ensemble {
        Some(e) => state.metrics.task_label(&format!("ensemble:{}", e.name)),
        None => UNKNOWN_TASK.to_string(),
    };
    let result = run_inner(state, caller, name, ensemble, body).await;
    super::predict::record(state, &label, started, &result);
    result
}

async fn run_inner(
    state: &AppState,
    caller: &Caller,
    name: &str,
    ensemble: Option<Arc<EnsembleInfo>>,
    body: Result<PredictRequest, ApiError>,
) -> Result<EnsembleResponse, ApiError> {
    state.check_serving()?;
    let set = state.tenants.current();
    check_read(state, caller, &set, name)?;
    let (_in_flight, share) = admit(state, caller)?;
    let ensemble =
        ensemble.ok_or_else(|| ApiError::UnknownEnsemble(name.chars().take(128).collect()))?;
    // Each member's entry is looked up once: every input uses these versions' rows.
    let mut members: Vec<Arc<Entry>> = Vec::with_capacity(ensemble.members.len());
    for task in &ensemble.members {
        check_read(state, caller, &set, task)?;
        let entry = state.registry.get(task).ok_or_else(|| {
            ApiError::Conflict(format!(
                "ensemble {:?} has member {task:?}, which no longer has a prompt: upload it with PUT /v1/prompts/{task}, or PUT the ensemble without it",
                ensemble.name
            ))
        })?;
        members.push(entry);
    }
    let req = body?;
    let labels = req.labels.clone().unwrap_or_default();
    if ensemble.combine == Combine::MeanLogprob && labels.is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "ensemble {:?} combines by mean-logprob, which ranks `labels`: send labels",
            ensemble.name
        )));
    }
    if labels.is_empty() && req.max_new_tokens == Some(0) {
        return Err(ApiError::Unprocessable(
            "nothing to combine: send `labels`, or max_new_tokens above 0".into(),
        ));
    }
    let max = state.batcher.max_batch_size();
    if members.len() > max {
        return Err(ApiError::Unprocessable(format!(
            "ensemble {:?} has {} members; one forward pass holds {max} rows (--max-batch-size)",
            ensemble.name,
            members.len()
        )));
    }
    let (st, ms) = (state.clone(), members.clone());
    let units = tokio::task::spawn_blocking(move || units(&st, &ms, req))
        .await
        .map_err(|e| ApiError::Internal(format!("validation task failed: {e}")))??;
    let key = format!("ensemble:{}", ensemble.name);
    let units = units
        .into_iter()
        .map(|rows| Unit {
            key: key.clone(),
            rows,
        })
        .collect();
    let answers = run_units(state, units, &share).await?;
    let mut outputs = Vec::with_capacity(answers.len());
    for rows in answers {
        let mut answers = Vec::with_capacity(rows.len());
        let mut texts = Vec::with_capacity(rows.len());
        for out in &rows {
            let text = if out.token_ids.is_empty() {
                None
            } else {
                Some(
                    state
                        .tokenizer
                        .decode(&out.token_ids)
                        .map_err(|e| ApiError::Internal(e.to_string()))?,
                )
            };
            texts.push(text.clone());
            answers.push(MemberAnswer {
                text,
                logprob: out.logprob,
                scores: out.scores.clone(),
            });
        }
        let combined = combine(ensemble.combine, &labels, &answers)
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        let members = members
            .iter()
            .zip(rows)
            .zip(texts)
            .zip(combined.members)
            .map(|(((entry, out), text), (answer, score))| MemberOutput {
                task: entry.info.task.clone(),
                prompt_version: entry.info.version,
                answer,
                score,
                text,
                scores: out.scores,
            })
            .collect();
        outputs.push(EnsembleOutput {
            answer: combined.answer,
            votes: combined.votes,
            scores: combined.mean_scores,
            members,
        });
    }
    Ok(EnsembleResponse {
        ensemble: ensemble.name.clone(),
        version: ensemble.version,
        combine: ensemble.combine,
        outputs,
    })
}

/// One unit per input: the input tokenized once, one row per member's prompt. A unit must fit
/// one pass's token budget, or it could not ride in one pass.
fn units(
    state: &AppState,
    members: &[Arc<Entry>],
    req: PredictRequest,
) -> Result<Vec<Vec<crate::engine::RowInput>>, ApiError> {
    let texts = super::predict::texts(req.inputs, state.limits.max_inputs)?;
    let rows = texts.len() * members.len();
    let most = state.batcher.max_request_rows();
    if rows > most {
        return Err(ApiError::Unprocessable(format!(
            "{} inputs × {} members = {rows} rows; one request may queue at most {most} (--max-queue-per-task): send fewer inputs per request",
            texts.len(),
            members.len()
        )));
    }
    let labels = req.labels.unwrap_or_default();
    let budget = state.batcher.max_batch_tokens();
    let widest_prompt = members.iter().map(|m| m.slot.len()).max().unwrap_or(0);
    let n = members.len();
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let at = if texts.len() > 1 {
                format!("inputs[{i}]: ")
            } else {
                String::new()
            };
            let mut row = build_row(
                &state.tokenizer,
                &state.limits.row,
                None,
                text,
                req.max_new_tokens,
                &labels,
            )
            .map_err(|why| super::predict::refusal(&at, why))?;
            row.sequence_logprob = labels.is_empty();
            let width = widest_prompt + row.input_ids.len();
            if (n * width) as u64 > budget {
                return Err(ApiError::Unprocessable(format!(
                    "{at}{n} members × {width} encoder positions exceed one pass's budget of {budget} (--max-batch-tokens)"
                )));
            }
            Ok(members
                .iter()
                .map(|m| crate::engine::RowInput {
                    prompt: Some(m.slot.clone()),
                    ..row.clone()
                })
                .collect())
        })
        .collect()
}
