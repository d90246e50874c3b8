//! `POST /v1/tasks/{task}/predict`: validate, queue one row per input, wait, answer in order.
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::{check_read, reject};
use super::error::{ErrorBody, JsonBody};
use super::params::TaskParam;
use super::validate::{best_label, build_row, RowRefusal};
use super::{ApiError, AppState};
use crate::batcher::{Refused, RowError, RowReply, Share, Ticket, Unit};
use crate::engine::{RowInput, RowOutput};
use crate::metrics::UNKNOWN_TASK;
use crate::prompts::registry::Entry;
use crate::tenants::quota::InFlight;
use crate::tenants::Caller;

/// Request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// One text or a list of texts.
    #[schema(schema_with = inputs_schema)]
    pub inputs: serde_json::Value,
    /// Cap on generated tokens per input (server default when absent).
    #[serde(default, deserialize_with = "count")]
    pub max_new_tokens: Option<usize>,
    /// Candidate labels to score for every input.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
}

/// A JSON integer, or a float without a fractional part (JSON Schema counts `3.0` as an integer).
pub fn as_count(n: &serde_json::Number) -> Option<usize> {
    match n.as_u64() {
        Some(u) => usize::try_from(u).ok(),
        // Saturates for huge values, which the limits then refuse by name.
        None => n
            .as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0)
            .map(|f| f as usize),
    }
}

/// An optional count: a JSON integer, or a float without a fraction (see [`as_count`]).
pub(crate) fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => as_count(&n)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected a non-negative integer, got {n}"))),
    }
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

/// A request whose every input passed the limits, ready for the queue.
pub struct ValidRequest {
    /// One row per input, in order.
    pub rows: Vec<RowInput>,
    /// The labels every row scores.
    pub labels: Vec<String>,
}

/// One input's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Output {
    /// Decoded generation.
    pub text: String,
    /// Generated ids, up to and including `</s>`.
    pub token_ids: Vec<i64>,
    /// Log-likelihood of each label, in the order given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f64>>,
    /// The label with the highest score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Response body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PredictResponse {
    /// Task name.
    pub task: String,
    /// The prompt version that served every input of this request.
    pub prompt_version: u64,
    /// One per input, in input order.
    pub outputs: Vec<Output>,
}

/// The request's texts: one string or a non-empty list of at most `max`.
pub(crate) fn texts(inputs: serde_json::Value, max: usize) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::Unprocessable("`inputs` must be a string or a non-empty array of strings".into())
    };
    let texts = match inputs {
        serde_json::Value::String(s) => vec![s],
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    if texts.is_empty() {
        return Err(bad());
    }
    if texts.len() > max {
        return Err(ApiError::Unprocessable(format!(
            "{} inputs; the limit is {max} per request (--max-inputs)",
            texts.len()
        )));
    }
    Ok(texts)
}

/// Generates for every input with the task's soft prompt; rows of any tasks share forward
/// passes. With `labels`, also scores each label's log-likelihood for every input.
#[utoipa::path(post, path = "/v1/tasks/{task}/predict", tag = "predict",
    params(TaskParam),
    request_body = PredictRequest,
    responses(
        (status = 200, description = "One output per input, in order", body = PredictResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key (tenants file in force)", body = ErrorBody),
        (status = 403, description = "Another tenant's task, or a tenant quota (max_prompts)", body = ErrorBody),
        (status = 404, description = "Unknown task", body = ErrorBody),
        (status = 413, description = "Body over --max-body-bytes", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "A limit is violated (inputs, tokens, max_new_tokens, labels)", body = ErrorBody),
        (status = 429, description = "Queue full, or the tenant's request rate / in-flight quota; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "Loading or shutting down", body = ErrorBody),
        (status = 504, description = "Did not finish within --request-timeout-ms", body = ErrorBody)))]
pub async fn predict(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<PredictRequest>, ApiError>,
) -> Result<Json<PredictResponse>, ApiError> {
    let task = path.map(|Path(t)| t).unwrap_or_default();
    run(&state, &caller, &task, body.map(|JsonBody(req)| req))
        .await
        .map(Json)
}

/// Runs one predict request and records its metrics (status as HTTP would answer). Every
/// front door calls this: the HTTP route, the KServe v2 route and gRPC.
pub async fn run(
    state: &AppState,
    caller: &Caller,
    task: &str,
    body: Result<PredictRequest, ApiError>,
) -> Result<PredictResponse, ApiError> {
    let started = Instant::now();
    // The entry is looked up once: every input of this request uses this version's rows.
    let entry = state.registry.get(task);
    let label = match &entry {
        Some(_) => state.metrics.task_label(task),
        None => UNKNOWN_TASK.to_string(),
    };
    let result = predict_inner(state, caller, task, entry, body).await;
    record(state, &label, started, &result);
    result
}

/// Counts a finished request under the task label `label` (`promptd_requests_total` by the
/// status HTTP answers, and its duration) and logs a server-side failure.
pub(crate) fn record<T>(
    state: &AppState,
    label: &str,
    started: Instant,
    result: &Result<T, ApiError>,
) {
    let status = match result {
        Ok(_) => StatusCode::OK,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(%label, error = %e, "predict failed");
            }
            e.status()
        }
    };
    state
        .metrics
        .requests
        .with_label_values(&[label, status.as_str()])
        .inc();
    state
        .metrics
        .request_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
}

async fn predict_inner(
    state: &AppState,
    caller: &Caller,
    task: &str,
    entry: Option<Arc<Entry>>,
    body: Result<PredictRequest, ApiError>,
) -> Result<PredictResponse, ApiError> {
    state.check_serving()?;
    // Permission and quotas first: a refused request costs no tokenizing and no queue room.
    let set = state.tenants.current();
    check_read(state, caller, &set, task)?;
    let (_in_flight, share) = admit(state, caller)?;
    let entry = entry.ok_or_else(|| ApiError::UnknownTask(task.chars().take(128).collect()))?;
    let req = body?;
    // Tokenizing up to a megabyte of text is CPU work: keep it off the async workers.
    let (st, slot) = (state.clone(), entry.slot.clone());
    let valid = tokio::task::spawn_blocking(move || validate(&st, &slot, req))
        .await
        .map_err(|e| ApiError::Internal(format!("validation task failed: {e}")))??;
    let units = valid
        .rows
        .into_iter()
        .map(|r| Unit {
            key: task.to_string(),
            rows: vec![r],
        })
        .collect();
    let answers: Vec<RowOutput> = run_units(state, units, &share)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let mut outputs = Vec::with_capacity(answers.len());
    for out in answers {
        let text = state
            .tokenizer
            .decode(&out.token_ids)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let label = out
            .scores
            .as_deref()
            .and_then(|s| best_label(&valid.labels, s))
            .map(str::to_string);
        outputs.push(Output {
            text,
            token_ids: out.token_ids,
            scores: out.scores,
            label,
        });
    }
    Ok(PredictResponse {
        task: entry.info.task.clone(),
        prompt_version: entry.info.version,
        outputs,
    })
}

/// Tokenizes every input for `slot`.
pub(crate) fn validate(
    state: &AppState,
    slot: &Arc<crate::engine::PromptSlot>,
    req: PredictRequest,
) -> Result<ValidRequest, ApiError> {
    let texts = texts(req.inputs, state.limits.max_inputs)?;
    let most = state.batcher.max_request_rows();
    if texts.len() > most {
        return Err(ApiError::Unprocessable(format!(
            "{} inputs; one request may queue at most {most} rows (--max-queue-per-task)",
            texts.len()
        )));
    }
    let labels = req.labels.unwrap_or_default();
    let rows = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            build_row(
                &state.tokenizer,
                &state.limits.row,
                Some(slot.clone()),
                text,
                req.max_new_tokens,
                &labels,
            )
            .map_err(|why| {
                let at = if texts.len() > 1 {
                    format!("inputs[{i}]: ")
                } else {
                    String::new()
                };
                refusal(&at, why)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ValidRequest { rows, labels })
}

/// The error for an input that could not become a row: a broken limit is the client's (422), a
/// failing tokenizer the server's (500).
pub(crate) fn refusal(at: &str, why: RowRefusal) -> ApiError {
    match why {
        RowRefusal::Limit(_) => ApiError::Unprocessable(format!("{at}{why}")),
        RowRefusal::Tokenizer(_) => ApiError::Internal(format!("{at}{why}")),
    }
}

/// Admits the caller under its tenant's rate and in-flight quotas: the guard (held until the
/// answer) and the caller's share of batch slots.
pub(crate) fn admit(
    state: &AppState,
    caller: &Caller,
) -> Result<(Option<InFlight>, Share), ApiError> {
    match caller {
        Caller::Open => Ok((None, Share::default())),
        Caller::Tenant(t) => {
            let guard = t.limiter.admit().map_err(|refusal| {
                reject(state, caller, crate::metrics::Rejection::RateLimited);
                ApiError::from(refusal)
            })?;
            let share = Share {
                tenant: Arc::from(t.name.as_str()),
                weight: t.weight,
            };
            Ok((Some(guard), share))
        }
    }
}

/// Queues `units` (all or none), waits for every row within the request timeout and returns
/// the rows' outputs unit by unit; the first failed row fails the request.
pub(crate) async fn run_units(
    state: &AppState,
    units: Vec<Unit>,
    share: &Share,
) -> Result<Vec<Vec<RowOutput>>, ApiError> {
    let mut tickets = state
        .batcher
        .submit_units(units, share)
        .map_err(|e| match e {
            Refused::Full { queued, max, .. } => ApiError::QueueFull { queued, max },
            Refused::TaskFull { task, queued, max } => {
                ApiError::TaskQueueFull { task, queued, max }
            }
            Refused::Closed => ApiError::Unavailable("the server is shutting down".into()),
        })?;
    let timeout = state.limits.request_timeout;
    let answers = if timeout.is_zero() {
        answers(&mut tickets).await
    } else {
        tokio::time::timeout(timeout, answers(&mut tickets))
            .await
            .map_err(|_| ApiError::Timeout(timeout.as_millis() as u64))?
    };
    answers
        .into_iter()
        .map(|unit| {
            unit.into_iter()
                .map(|answer| {
                    answer.map_err(|e| match e {
                        // Every engine failure is the server's (rows are validated before they queue).
                        RowError::Engine(why) => {
                            ApiError::Internal(format!("inference failed: {why}"))
                        }
                        RowError::Stopped => {
                            ApiError::Unavailable("the engine is not running".into())
                        }
                    })
                })
                .collect()
        })
        .collect()
}

/// Awaits every row's answer, unit by unit, in order.
async fn answers(tickets: &mut [Vec<Ticket>]) -> Vec<Vec<RowReply>> {
    let mut out = Vec::with_capacity(tickets.len());
    for unit in tickets.iter_mut() {
        let mut replies = Vec::with_capacity(unit.len());
        for t in unit.iter_mut() {
            replies.push(t.answer().await);
        }
        out.push(replies);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn a_failing_tokenizer_is_the_servers_fault_and_a_limit_the_clients() {
        let e = refusal(
            "inputs[1]: ",
            RowRefusal::Tokenizer(crate::model::ModelError::Tokenizer("boom".into())),
        );
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.error_type(), "internal");
        assert!(e.to_string().starts_with("inputs[1]: tokenizing: "), "{e}");
        let e = refusal("", RowRefusal::Limit("too long".into()));
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
