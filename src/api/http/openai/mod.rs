//! The OpenAI-compatible front door: `POST /v1/completions`, `POST /v1/chat/completions`,
//! `GET /v1/models` and `GET /v1/models/{model}`, so the clients users already have (the
//! `openai` packages, LiteLLM, LangChain, gateways) call a task by naming it as the `model`.
//! A thin door over the same [`Service`] calls as the others: a task or ensemble the caller may
//! read, its keys as `Authorization: Bearer`, and errors in OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`).
//!
//! Where promptd differs from OpenAI's own server: `temperature` defaults to 0 (greedy, so a
//! task answers the same each time) and `max_tokens` to the server's default
//! (`--default-max-new-tokens`); unknown fields are ignored, as OpenAI's server does, and so
//! are `presence_penalty`, `frequency_penalty`, `logit_bias` and `user`.
pub mod chat;
pub mod completions;
pub mod models;

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use std::sync::Arc;

use super::error::ApiError;
use super::sse;
use crate::engine::sampling::fresh_seed;
use crate::engine::TokenLogprob;
use crate::model::T5Tokenizer;
use crate::service::generation::Generation;
use crate::service::predict::{PredictInput, PredictResponse};
use crate::service::{Error, Service};
use crate::tenants::Caller;

/// Whether `path` is one of this door's (its errors take OpenAI's shape).
pub fn is_openai(path: &str) -> bool {
    matches!(
        path,
        "/v1/completions" | "/v1/chat/completions" | "/v1/models"
    ) || path.starts_with("/v1/models/")
}

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    message: String,
    code: String,
    param: Option<String>,
    retry_after_s: Option<u64>,
}

/// The body of an error (OpenAI's shape).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorBody {
    /// The error.
    pub error: OpenAiErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorDetail {
    /// What went wrong, naming the field and the value.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error`,
    /// `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// promptd's stable error type (`model_not_found` for an unknown model).
    pub code: Option<String>,
}

impl OpenAiError {
    /// A 400 naming `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            code: "invalid_request".into(),
            param: Some(param.into()),
            retry_after_s: None,
        }
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON body (also a stream's error chunk).
    pub fn body(&self) -> OpenAiErrorBody {
        OpenAiErrorBody {
            error: OpenAiErrorDetail {
                message: self.message.clone(),
                kind: self.kind().into(),
                param: self.param.clone(),
                code: Some(self.code.clone()),
            },
        }
    }
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        let retry_after_s = e.service().and_then(Error::retry_after_s);
        let (status, code) = match &e {
            // OpenAI answers a value it cannot take with 400.
            ApiError::Service(Error::Invalid(_)) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Service(Error::UnknownTask(_) | Error::UnknownEnsemble(_)) => {
                (StatusCode::NOT_FOUND, "model_not_found")
            }
            other => (other.status(), other.error_type()),
        };
        let param = match &e {
            ApiError::Service(Error::UnknownTask(_) | Error::UnknownEnsemble(_)) => {
                Some("model".to_string())
            }
            // The service names a refused field first, in backticks.
            ApiError::Service(Error::Invalid(m)) => m
                .strip_prefix('`')
                .and_then(|rest| rest.split_once('`'))
                .map(|(field, _)| field.to_string()),
            _ => None,
        };
        let message = match &e {
            ApiError::Service(Error::UnknownTask(m) | Error::UnknownEnsemble(m)) => {
                format!("The model `{m}` does not exist (no task or ensemble of that name that you may read)")
            }
            other => other.to_string(),
        };
        Self {
            status,
            message,
            code: code.into(),
            param,
            retry_after_s,
        }
    }
}

impl From<Error> for OpenAiError {
    fn from(e: Error) -> Self {
        ApiError::from(e).into()
    }
}

impl From<JsonRejection> for OpenAiError {
    fn from(e: JsonRejection) -> Self {
        let status = e.status();
        let mut err = OpenAiError::from(ApiError::malformed(e.body_text()));
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE || status == StatusCode::PAYLOAD_TOO_LARGE {
            err.status = status;
        }
        err
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_s {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs.to_string()).expect("digits"),
            );
        }
        response
    }
}

/// A string or a list of strings (`prompt`, `stop`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with the request's token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling and length fields both routes take.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Cap on generated tokens per choice.
    pub max_tokens: Option<u64>,
    /// Sampling temperature (absent or 0: greedy).
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    pub top_p: Option<f64>,
    /// Sample among the k most likely tokens.
    pub top_k: Option<u64>,
    /// Seeds sampling (a negative seed is taken as its two's complement).
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<OneOrMany>,
    /// Choices per input.
    pub n: Option<u64>,
    /// Alternatives per token's log-probability (absent: no log-probabilities).
    pub top_logprobs: Option<u64>,
}

impl Knobs {
    /// The service's input for `inputs`.
    fn input(self, inputs: Vec<String>) -> Result<PredictInput, OpenAiError> {
        let count = |field: &str, v: Option<u64>| -> Result<Option<usize>, OpenAiError> {
            v.map(|v| {
                usize::try_from(v)
                    .map_err(|_| OpenAiError::invalid(field, format!("`{field}` is too large")))
            })
            .transpose()
        };
        let generation = Generation {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: count("top_k", self.top_k)?,
            seed: self.seed.map(|s| s as u64),
            top_logprobs: count("logprobs", self.top_logprobs)?,
            stop: self.stop.map(OneOrMany::into_vec).unwrap_or_default(),
            n: count("n", self.n)?,
        };
        Ok(PredictInput {
            inputs,
            max_new_tokens: count("max_tokens", self.max_tokens)?,
            labels: None,
            generation,
        })
    }
}

/// A completion's id and creation time.
#[derive(Debug, Clone)]
pub struct Stamp {
    /// `cmpl-…` or `chatcmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
}

impl Stamp {
    fn new(prefix: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id: format!("{prefix}-{:016x}", fresh_seed()),
            created,
        }
    }
}

/// Token counts of a request (`usage`).
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Input tokens, `</s>` included, once per input.
    pub prompt_tokens: usize,
    /// Generated tokens over every choice, `</s>` included.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// Input tokens of `inputs` (the usage's prompt side); counted off the async workers.
async fn prompt_tokens(svc: &Service, inputs: &[String]) -> Result<usize, OpenAiError> {
    let (tok, texts) = (svc.tokenizer.clone(), inputs.to_vec());
    let counts = tokio::task::spawn_blocking(move || {
        texts
            .iter()
            .map(|t| tok.encode(t).map(|ids| ids.len()))
            .sum::<Result<usize, _>>()
    })
    .await
    .map_err(|e| Error::task_failed("token count", e))?;
    counts.map_err(|e| Error::Internal(e.to_string()).into())
}

/// Runs `model` (a task, or an ensemble) on `input`, counted like the other doors.
async fn answer(
    svc: &Service,
    caller: &Caller,
    model: &str,
    input: PredictInput,
) -> Result<PredictResponse, OpenAiError> {
    let ensemble = svc.is_ensemble_model(model);
    let call = svc.infer::<ApiError>(caller, model, Ok(input));
    crate::api::requests::counted(svc, model, ensemble, ApiError::outcome, call)
        .await
        .map_err(OpenAiError::from)
}

/// Streams `model`'s answer as `chunks`: a task's rows as they decode; an ensemble (which
/// votes once its members finish) as its whole answer at once.
async fn stream_answer<C: sse::Chunks + Whole>(
    svc: &Service,
    caller: &Caller,
    model: &str,
    input: PredictInput,
    mut chunks: C,
) -> Result<Response, OpenAiError> {
    if svc.is_ensemble_model(model) {
        let whole = answer(svc, caller, model, input).await?;
        let values = chunks.whole(whole);
        return Ok(sse::respond_values(values));
    }
    let call = svc.predict_stream::<ApiError>(caller, model, Ok(input));
    let rows = crate::api::requests::counted(svc, model, false, ApiError::outcome, call)
        .await
        .map_err(OpenAiError::from)?;
    Ok(sse::respond(rows, chunks))
}

/// A stream's chunks for an answer that came whole (an ensemble's).
trait Whole {
    /// Every chunk of the answer, the end's included.
    fn whole(&mut self, answer: PredictResponse) -> Vec<Value>;
}

/// A stream's error chunk.
fn error_chunk(e: Error) -> Value {
    json!(OpenAiError::from(e).body())
}

/// What every chunk of a stream shares, and the tokens it has counted.
struct StreamHead {
    tokenizer: Arc<T5Tokenizer>,
    stamp: Stamp,
    /// `text_completion` or `chat.completion.chunk`.
    object: &'static str,
    model: String,
    /// Whether a last chunk carries the usage (`stream_options.include_usage`).
    usage: bool,
    prompt_tokens: usize,
    completion_tokens: usize,
}

/// A streamed token's text and, when asked, its log-probability and its alternatives' texts.
type Shown = (String, Option<(f32, Vec<(String, f32)>)>);

impl StreamHead {
    fn new(
        svc: &Service,
        stamp: Stamp,
        object: &'static str,
        model: &str,
        options: Option<&StreamOptions>,
        prompt_tokens: usize,
    ) -> Self {
        Self {
            tokenizer: svc.tokenizer.clone(),
            stamp,
            object,
            model: model.to_string(),
            usage: options.is_some_and(|o| o.include_usage),
            prompt_tokens,
            completion_tokens: 0,
        }
    }

    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.stamp.id,
            "object": self.object,
            "created": self.stamp.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// Counts a streamed token; its text, and its log-probabilities unless it is a special
    /// token (`</s>`), which has no text.
    fn token(&mut self, token_id: i64, logprobs: Option<TokenLogprob>) -> Shown {
        self.completion_tokens += 1;
        let token = self.tokenizer.piece(token_id);
        let logprobs = logprobs.filter(|_| shown(&token)).map(|lp| {
            let top = (lp.top.iter())
                .map(|&(id, v)| (self.tokenizer.piece(id), v))
                .collect();
            (lp.logprob, top)
        });
        (token, logprobs)
    }

    /// The usage chunk, when asked for.
    fn end(&self) -> Vec<Value> {
        let usage = Usage::new(self.prompt_tokens, self.completion_tokens);
        self.usage_chunk(usage).into_iter().collect()
    }

    fn usage_chunk(&self, usage: Usage) -> Option<Value> {
        self.usage.then(|| {
            let mut last = self.chunk(json!([]));
            last["usage"] = json!(usage);
            last
        })
    }

    /// The chunks of an answer that came whole: one per choice, then the usage.
    fn whole(&self, choices: Vec<Value>, usage: Usage) -> Vec<Value> {
        (choices.into_iter())
            .map(|choice| self.chunk(json!([choice])))
            .chain(self.usage_chunk(usage))
            .collect()
    }
}

/// The text of a generated token for log-probabilities (`</s>` and the like have none).
fn shown(token: &str) -> bool {
    !(token.starts_with('<') && token.ends_with('>'))
}
