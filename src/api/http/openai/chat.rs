//! `POST /v1/chat/completions`: a T5 task has no chat template, so the input is the text of
//! the last `user` message; `system`, `assistant` and earlier messages are ignored (as
//! documented in the OpenAPI description). Choices are ordered by `n`.
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::completions::finish;
use super::{
    answer, error_chunk, prompt_tokens, shown, stream_answer, Knobs, OneOrMany, OpenAiError,
    OpenAiErrorBody, Stamp, StreamHead, StreamOptions, Usage, Whole,
};
use crate::api::http::sse::Chunks;
use crate::service::predict::{Output, PredictResponse};
use crate::service::stream::StreamEvent;
use crate::service::{Error, Service};
use crate::tenants::Caller;

/// A chat completion request (OpenAI's fields; others are ignored).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    /// A task or ensemble the caller may read.
    pub model: String,
    /// The conversation: the last `user` message is the task's input.
    pub messages: Vec<Message>,
    /// Cap on generated tokens per choice (server default when absent).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The same cap under its newer name (wins over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature; absent or 0 decodes greedily.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass (0, 1].
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Sample among the k most likely tokens (0: all).
    #[serde(default)]
    pub top_k: Option<u64>,
    /// Seeds sampling.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Generation ends before the first of these strings (at most 4).
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    /// Choices (with a temperature above 0).
    #[serde(default)]
    pub n: Option<u64>,
    /// Return each token's log-probability.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// With `logprobs`: this many most likely alternatives per token (at most 20).
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    /// Send server-sent events as tokens are decoded.
    #[serde(default)]
    pub stream: Option<bool>,
    /// With `stream`: `include_usage` adds a last chunk with the token counts.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// One message.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// `user`, `system`, `assistant`, …
    pub role: String,
    /// Text, or a list of parts of which only `text` parts are taken.
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's content.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts (`{"type": "text", "text": …}`).
    Parts(Vec<Part>),
}

/// A content part.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Part {
    /// `text` (other kinds are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    #[serde(default)]
    pub text: Option<String>,
}

/// A chat completion.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// One per choice.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// One choice.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatChoice {
    /// Position.
    pub index: usize,
    /// The assistant's message.
    pub message: AssistantMessage,
    /// With `logprobs`: `{"content": [...]}`.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// The answer as a message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: &'static str,
    /// The generated text.
    pub content: String,
}

/// Per-token log-probabilities, in the chat API's shape.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ChatLogprobs {
    /// One per generated token.
    pub content: Vec<ChatTokenLogprob>,
}

/// A token's log-probability and the most likely alternatives.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatTokenLogprob {
    /// Its text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The step's most likely tokens.
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// An alternative token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatTopLogprob {
    /// Its text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
}

fn token_logprob(token: String, logprob: f32, top: Vec<(String, f32)>) -> ChatTokenLogprob {
    ChatTokenLogprob {
        bytes: token.as_bytes().to_vec(),
        token,
        logprob,
        top_logprobs: (top.into_iter())
            .map(|(token, logprob)| ChatTopLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob,
            })
            .collect(),
    }
}

impl ChatLogprobs {
    fn of(output: &Output) -> Option<Self> {
        let steps = output.logprobs.as_ref()?;
        let content = (steps.iter().filter(|s| shown(&s.token)))
            .map(|s| {
                let top = s.top.iter().map(|t| (t.token.clone(), t.logprob)).collect();
                token_logprob(s.token.clone(), s.logprob, top)
            })
            .collect();
        Some(Self { content })
    }
}

impl ChatRequest {
    /// The task's input: the text of the last `user` message.
    fn input_text(&self) -> Result<String, OpenAiError> {
        let message = (self.messages.iter().rev())
            .find(|m| m.role == "user")
            .ok_or_else(|| {
                OpenAiError::invalid(
                    "messages",
                    "`messages` has no `user` message: its text is the task's input",
                )
            })?;
        match &message.content {
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => texts.push(t.as_str()),
                        (kind, _) => {
                            return Err(OpenAiError::invalid(
                                "messages",
                                format!("a `{kind}` content part: a T5 task reads text parts only"),
                            ))
                        }
                    }
                }
                Ok(texts.join("\n"))
            }
            None => Err(OpenAiError::invalid(
                "messages",
                "the last `user` message has no `content`",
            )),
        }
    }

    fn knobs(&self) -> Knobs {
        let top_logprobs = match self.logprobs {
            Some(true) => Some(self.top_logprobs.unwrap_or(0)),
            _ => None,
        };
        Knobs {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop: self.stop.clone(),
            n: self.n,
            top_logprobs,
        }
    }
}

/// Answers the last `user` message with the task (or ensemble) named by `model`.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The chat completion; with `stream`, server-sent events of `chat.completion.chunk` chunks, then `[DONE]`. The input is the last `user` message's text; other messages are ignored", content(
            (ChatCompletion = "application/json"),
            (crate::api::http::sse::SseEvent = "text/event-stream"))),
        (status = 400, description = "A field is malformed or not supported (it is named in `param`)", body = OpenAiErrorBody),
        (status = 401, description = "Missing or unknown key", body = OpenAiErrorBody),
        (status = 403, description = "The key may not read this model", body = OpenAiErrorBody),
        (status = 404, description = "No such model", body = OpenAiErrorBody),
        (status = 413, description = "Body over --max-body-bytes", body = OpenAiErrorBody),
        (status = 415, description = "The body is not JSON (Content-Type: application/json)", body = OpenAiErrorBody),
        (status = 429, description = "Queue full or rate limited (Retry-After)", body = OpenAiErrorBody),
        (status = 503, description = "Not ready", body = OpenAiErrorBody)))]
pub async fn chat_completions(
    State(svc): State<Service>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    let Json(req) = body?;
    let text = req.input_text()?;
    let n = req.n.unwrap_or(1).max(1) as usize;
    let input = req.knobs().input(vec![text.clone()])?;
    let stamp = Stamp::new("chatcmpl");
    let prompt_tokens = prompt_tokens(&svc, std::slice::from_ref(&text)).await?;
    if req.stream == Some(true) {
        let options = req.stream_options.as_ref();
        let chunks = ChatChunks {
            head: StreamHead::new(
                &svc,
                stamp,
                "chat.completion.chunk",
                &req.model,
                options,
                prompt_tokens,
            ),
            started: vec![false; n],
        };
        return stream_answer(&svc, &caller, &req.model, input, chunks).await;
    }
    let answer = answer(&svc, &caller, &req.model, input).await?;
    Ok(Json(chat_completion(stamp, &req.model, answer, prompt_tokens)).into_response())
}

fn chat_completion(
    stamp: Stamp,
    model: &str,
    answer: PredictResponse,
    prompt_tokens: usize,
) -> ChatCompletion {
    let completion_tokens = answer.outputs.iter().map(|o| o.token_ids.len()).sum();
    let choices = (answer.outputs.into_iter().enumerate())
        .map(|(index, o)| ChatChoice {
            index,
            logprobs: ChatLogprobs::of(&o),
            finish_reason: finish(&o),
            message: AssistantMessage {
                role: "assistant",
                content: o.text,
            },
        })
        .collect();
    ChatCompletion {
        id: stamp.id,
        object: "chat.completion",
        created: stamp.created,
        model: model.to_string(),
        choices,
        usage: Usage::new(prompt_tokens, completion_tokens),
    }
}

/// The chunks of a streaming chat completion.
struct ChatChunks {
    head: StreamHead,
    /// Whether each choice's first chunk (with the role) was sent.
    started: Vec<bool>,
}

impl ChatChunks {
    /// A choice's delta; its first carries the role.
    fn delta(&mut self, row: usize, content: String) -> Value {
        let first = self.started.get(row).is_some_and(|s| !s);
        if let Some(s) = self.started.get_mut(row) {
            *s = true;
        }
        if first {
            json!({"role": "assistant", "content": content})
        } else {
            json!({"content": content})
        }
    }
}

impl Chunks for ChatChunks {
    fn event(&mut self, event: StreamEvent) -> Vec<Value> {
        let choice = match event {
            StreamEvent::Token {
                row,
                token_id,
                text,
                logprobs,
            } => {
                let (token, logprobs) = self.head.token(token_id, logprobs);
                let logprobs = logprobs
                    .map(|(logprob, top)| json!({"content": [token_logprob(token, logprob, top)]}));
                let first = self.started.get(row).is_some_and(|s| !s);
                if text.is_empty() && logprobs.is_none() && !first {
                    return Vec::new();
                }
                let delta = self.delta(row, text);
                json!({"index": row, "delta": delta, "logprobs": logprobs, "finish_reason": null})
            }
            StreamEvent::Done { row, tail, output } => {
                let delta = if tail.is_empty() && self.started.get(row).is_some_and(|s| *s) {
                    json!({})
                } else {
                    self.delta(row, tail)
                };
                json!({
                    "index": row,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish(&output),
                })
            }
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

impl Whole for ChatChunks {
    fn whole(&mut self, answer: PredictResponse) -> Vec<Value> {
        let head = &self.head;
        let c = chat_completion(head.stamp.clone(), &head.model, answer, head.prompt_tokens);
        let choices = (c.choices.into_iter())
            .map(|ch| {
                let delta = json!({"role": "assistant", "content": ch.message.content});
                json!({"index": ch.index, "delta": delta, "logprobs": ch.logprobs, "finish_reason": ch.finish_reason})
            })
            .collect();
        head.whole(choices, c.usage)
    }
}
