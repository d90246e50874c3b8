//! `POST /v1/completions`: each `prompt` string is one input of the task named by `model`;
//! choices are ordered by prompt, then by `n`.
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    answer, error_chunk, prompt_tokens, shown, stream_answer, Knobs, OneOrMany, OpenAiError,
    OpenAiErrorBody, Stamp, StreamHead, StreamOptions, Usage, Whole,
};
use crate::api::http::sse::Chunks;
use crate::service::predict::{Output, PredictResponse};
use crate::service::stream::StreamEvent;
use crate::service::{Error, Service};
use crate::tenants::Caller;

/// A completion request (OpenAI's fields; others are ignored).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    /// A task or ensemble the caller may read.
    pub model: String,
    /// One input, or a list of inputs.
    pub prompt: OneOrMany,
    /// Cap on generated tokens per choice (server default when absent).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Sampling temperature; absent or 0 decodes greedily.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass (0, 1].
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Sample among the k most likely tokens (0: all).
    #[serde(default)]
    pub top_k: Option<u64>,
    /// Seeds sampling: the same prompt, seed and parameters give the same completion.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Generation ends before the first of these strings (at most 4).
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    /// Choices per prompt (with a temperature above 0).
    #[serde(default)]
    pub n: Option<u64>,
    /// Log-probability of each token and this many most likely alternatives (at most 20).
    #[serde(default)]
    pub logprobs: Option<u64>,
    /// Send server-sent events as tokens are decoded.
    #[serde(default)]
    pub stream: Option<bool>,
    /// With `stream`: `include_usage` adds a last chunk with the token counts.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Refused: promptd does not echo the prompt.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Refused: a T5 task has no insertion suffix.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Refused: use `n`.
    #[serde(default)]
    pub best_of: Option<u64>,
}

/// A completion.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Completion {
    /// `cmpl-…`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model (task or ensemble) that answered.
    pub model: String,
    /// One per prompt and choice.
    pub choices: Vec<CompletionChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// One choice.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    /// Position: prompt × n + choice.
    pub index: usize,
    /// The generated text (ending before a stop string).
    pub text: String,
    /// With `logprobs`: per-token log-probabilities.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// Per-token log-probabilities, in the completions API's shape.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct CompletionLogprobs {
    /// Each token's text.
    pub tokens: Vec<String>,
    /// Each token's log-probability.
    pub token_logprobs: Vec<f32>,
    /// The most likely tokens at each step.
    pub top_logprobs: Vec<serde_json::Map<String, Value>>,
    /// Where each token starts in the text (characters).
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    fn push(&mut self, token: &str, logprob: f32, top: &[(String, f32)], offset: usize) {
        self.tokens.push(token.to_string());
        self.token_logprobs.push(logprob);
        self.top_logprobs
            .push(top.iter().map(|(t, lp)| (t.clone(), json!(lp))).collect());
        self.text_offset.push(offset);
    }

    fn of(output: &Output) -> Option<Self> {
        let steps = output.logprobs.as_ref()?;
        let mut out = Self::default();
        let mut offset = 0;
        for step in steps.iter().filter(|s| shown(&s.token)) {
            let top: Vec<(String, f32)> = step
                .top
                .iter()
                .map(|t| (t.token.clone(), t.logprob))
                .collect();
            out.push(&step.token, step.logprob, &top, offset);
            offset += step.token.chars().count();
        }
        Some(out)
    }
}

impl CompletionRequest {
    fn check(&self) -> Result<(), OpenAiError> {
        if self.echo == Some(true) {
            return Err(OpenAiError::invalid(
                "echo",
                "`echo` is not supported: a T5 task's completion never contains its prompt",
            ));
        }
        if self.suffix.is_some() {
            return Err(OpenAiError::invalid(
                "suffix",
                "`suffix` is not supported: a T5 task has no text after the completion",
            ));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(OpenAiError::invalid(
                "best_of",
                "`best_of` is not supported: ask for `n` choices",
            ));
        }
        Ok(())
    }
}

/// Completes each prompt with the task (or ensemble) named by `model`.
#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion; with `stream`, server-sent events of `text_completion` chunks, then `[DONE]`", content(
            (Completion = "application/json"),
            (crate::api::http::sse::SseEvent = "text/event-stream"))),
        (status = 400, description = "A field is malformed or not supported (it is named in `param`)", body = OpenAiErrorBody),
        (status = 401, description = "Missing or unknown key", body = OpenAiErrorBody),
        (status = 403, description = "The key may not read this model", body = OpenAiErrorBody),
        (status = 404, description = "No such model", body = OpenAiErrorBody),
        (status = 413, description = "Body over --max-body-bytes", body = OpenAiErrorBody),
        (status = 415, description = "The body is not JSON (Content-Type: application/json)", body = OpenAiErrorBody),
        (status = 429, description = "Queue full or rate limited (Retry-After)", body = OpenAiErrorBody),
        (status = 503, description = "Not ready", body = OpenAiErrorBody)))]
pub async fn completions(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    let Json(req) = body?;
    req.check()?;
    let inputs = req.prompt.clone().into_vec();
    let n = req.n.unwrap_or(1).max(1) as usize;
    let knobs = Knobs {
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        seed: req.seed,
        stop: req.stop.clone(),
        n: req.n,
        top_logprobs: req.logprobs,
    };
    let input = knobs.input(inputs.clone())?;
    let stamp = Stamp::new("cmpl");
    let prompt_tokens = prompt_tokens(&svc, &inputs).await?;
    if req.stream == Some(true) {
        let options = req.stream_options.as_ref();
        let chunks = CompletionChunks {
            head: StreamHead::new(
                &svc,
                stamp,
                "text_completion",
                &req.model,
                options,
                prompt_tokens,
            ),
            offsets: vec![0; inputs.len() * n],
        };
        return stream_answer(&svc, &caller, &req.model, input, chunks).await;
    }
    let answer = answer(&svc, &caller, &req.model, input).await?;
    Ok(Json(completion(stamp, &req.model, answer, prompt_tokens)).into_response())
}

fn completion(
    stamp: Stamp,
    model: &str,
    answer: PredictResponse,
    prompt_tokens: usize,
) -> Completion {
    let completion_tokens = answer.outputs.iter().map(|o| o.token_ids.len()).sum();
    let choices = (answer.outputs.into_iter().enumerate())
        .map(|(index, o)| CompletionChoice {
            index,
            logprobs: CompletionLogprobs::of(&o),
            finish_reason: finish(&o),
            text: o.text,
        })
        .collect();
    Completion {
        id: stamp.id,
        object: "text_completion",
        created: stamp.created,
        model: model.to_string(),
        choices,
        usage: Usage::new(prompt_tokens, completion_tokens),
    }
}

/// An output's finish reason as OpenAI spells it.
pub(super) fn finish(o: &Output) -> String {
    serde_json::to_value(o.finish_reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The chunks of a streaming completion.
struct CompletionChunks {
    head: StreamHead,
    /// Characters sent per choice (the next token's text offset).
    offsets: Vec<usize>,
}

impl Chunks for CompletionChunks {
    fn event(&mut self, event: StreamEvent) -> Vec<Value> {
        let choice = match event {
            StreamEvent::Token {
                row,
                token_id,
                text,
                logprobs,
            } => {
                let offset = self.offsets.get(row).copied().unwrap_or(0);
                if let Some(o) = self.offsets.get_mut(row) {
                    *o += text.chars().count();
                }
                let (token, logprobs) = self.head.token(token_id, logprobs);
                let logprobs = logprobs.map(|(logprob, top)| {
                    let mut one = CompletionLogprobs::default();
                    one.push(&token, logprob, &top, offset);
                    one
                });
                if text.is_empty() && logprobs.is_none() {
                    return Vec::new();
                }
                json!({"index": row, "text": text, "logprobs": logprobs, "finish_reason": null})
            }
            StreamEvent::Done { row, tail, output } => json!({
                "index": row,
                "text": tail,
                "logprobs": null,
                "finish_reason": finish(&output),
            }),
        };
        vec![self.head.chunk(json!([choice]))]
    }

    fn end(&mut self) -> Vec<Value> {
        self.head.end()
    }

    fn error(&mut self, error: Error) -> Value {
        error_chunk(error)
    }
}

impl Whole for CompletionChunks {
    fn whole(&mut self, answer: PredictResponse) -> Vec<Value> {
        let head = &self.head;
        let c = completion(head.stamp.clone(), &head.model, answer, head.prompt_tokens);
        let choices = c.choices.iter().map(|ch| json!(ch)).collect();
        head.whole(choices, c.usage)
    }
}
