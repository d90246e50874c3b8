//! Predict: queue one row per input with the task's prompt, wait, answer in order. Rows of
//! any tasks share forward passes. The rows of an ensemble input form one admission unit
//! ([`Service::answer_units`]), so they join a pass together.
use std::sync::Arc;

use serde::Serialize;

use super::error::Error;
use super::generation::{finish_reason, FinishReason, Generation};
use super::rows::{best_label, build_row, refusal};
use super::state::Service;
use crate::batcher::{Refused, Share, Ticket, Unit};
use crate::catalog::prompts::Entry;
use crate::engine::{EngineError, PromptSlot, RowInput, RowOutput, RowResult};
use crate::tenants::quota::InFlight;
use crate::tenants::Caller;

/// What a predict request asks, whatever door it came through.
#[derive(Debug, Clone, Default)]
pub struct PredictInput {
    /// The texts, answered in order.
    pub inputs: Vec<String>,
    /// Cap on generated tokens per input (the server default when absent).
    pub max_new_tokens: Option<usize>,
    /// Candidate labels to score for every input.
    pub labels: Option<Vec<String>>,
    /// Sampling, log-probabilities, stop strings, choices (default: greedy, none).
    pub generation: Generation,
}

/// A request whose every input passed the limits, ready for the queue.
pub struct ValidRequest {
    /// One row per input, in order.
    pub rows: Vec<RowInput>,
    /// The labels every row scores.
    pub labels: Vec<String>,
    /// The request's stop strings.
    pub stops: Arc<[String]>,
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
    /// Why generation ended: `stop` (the model ended the text, or a stop string was
    /// reached: the text ends before it) or `length` (max_new_tokens reached).
    pub finish_reason: FinishReason,
    /// Each generated token's log-probability and the most likely alternatives (when asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprobs>>,
}

/// A generated token's log-probability under the model, and the step's most likely tokens.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenLogprobs {
    /// The token.
    pub token_id: i64,
    /// Its text (the vocabulary piece, `▁` shown as a space).
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens at this step, most likely first.
    pub top: Vec<TopLogprob>,
}

/// One of a step's most likely tokens.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TopLogprob {
    /// The token.
    pub token_id: i64,
    /// Its text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
}

/// A task's answer to a predict request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PredictResponse {
    /// Task name.
    pub task: String,
    /// The prompt version that served every input of this request.
    pub prompt_version: u64,
    /// That version's SHA-256 (as uploaded): a replica serving a stale copy shows here.
    pub prompt_sha256: String,
    /// One per input, in input order.
    pub outputs: Vec<Output>,
}

/// A caller admitted under its tenant's quotas: the in-flight guard (held until the answer)
/// and its share of batch slots.
pub struct Admission {
    _in_flight: Option<InFlight>,
    /// The caller's share of batch slots.
    pub share: Share,
}

impl Admission {
    /// An admission with no in-flight guard.
    pub(crate) fn open(share: Share) -> Self {
        Self {
            _in_flight: None,
            share,
        }
    }
}

impl Service {
    /// Generates for every input with `task`'s soft prompt, and with labels scores each
    /// label's log-likelihood for every input. `input` is an error when the front door could
    /// not read the request: it is answered after the checks that come first (readiness,
    /// permission, quotas, the task), so every door refuses in the same order.
    pub async fn predict<E: From<Error>>(
        &self,
        caller: &Caller,
        task: &str,
        input: Result<PredictInput, E>,
    ) -> Result<PredictResponse, E> {
        let (admission, entry) = self.admit_to_task(caller, task)?;
        let input = input?;
        Ok(self.predict_entry(&entry, input, &admission).await?)
    }

    /// The checks before a task's request is read: readiness, permission, quotas (so a refused
    /// request costs no tokenizing and no queue room), then the task. The entry is looked up
    /// once: every input of the request uses this version's rows.
    pub(crate) fn admit_to_task(
        &self,
        caller: &Caller,
        task: &str,
    ) -> Result<(Admission, Arc<Entry>), Error> {
        self.check_serving()?;
        let set = self.tenants.current();
        self.check_read(caller, &set, task)?;
        let admission = self.admit(caller)?;
        let entry = self
            .registry
            .get(task)
            .ok_or_else(|| Error::UnknownTask(task.chars().take(128).collect()))?;
        Ok((admission, entry))
    }

    /// Tokenizes a request for `entry`, off the async workers (up to a megabyte of text is
    /// CPU work).
    pub(crate) async fn validated(
        &self,
        entry: &Arc<Entry>,
        input: PredictInput,
    ) -> Result<ValidRequest, Error> {
        let (svc, slot) = (self.clone(), entry.slot.clone());
        tokio::task::spawn_blocking(move || svc.validate(&slot, input))
            .await
            .map_err(|e| Error::task_failed("validation task", e))?
    }

    async fn predict_entry(
        &self,
        entry: &Arc<Entry>,
        input: PredictInput,
        admission: &Admission,
    ) -> Result<PredictResponse, Error> {
        let phase = |name: &str, since: std::time::Instant| {
            (self.metrics.request_phase.with_label_values(&[name]))
                .observe(since.elapsed().as_secs_f64())
        };
        let t = std::time::Instant::now();
        let valid = self.validated(entry, input).await?;
        phase("validate", t);
        if !valid.stops.is_empty() {
            // Rows end at their stop string, seen as their tokens stream.
            let stream = self.stream_rows(entry, valid, admission.share.clone())?;
            return stream.collect().await;
        }
        let task = &entry.info.task;
        let units = valid
            .rows
            .into_iter()
            .map(|r| Unit {
                key: task.clone(),
                rows: vec![r],
            })
            .collect();
        let t = std::time::Instant::now();
        let answers: Vec<RowOutput> = self
            .answer_units(units, &admission.share)
            .await?
            .into_iter()
            .flatten()
            .collect();
        phase("wait", t);
        let t = std::time::Instant::now();
        let outputs = answers
            .into_iter()
            .map(|out| self.output(out, &valid.labels, None))
            .collect::<Result<Vec<_>, _>>()?;
        phase("respond", t);
        Ok(PredictResponse {
            task: entry.info.task.clone(),
            prompt_version: entry.info.version,
            prompt_sha256: entry.info.sha256.clone(),
            outputs,
        })
    }

    /// A row's answer; `text` is the streamed text when it was (cut at a stop string).
    pub(crate) fn output(
        &self,
        out: RowOutput,
        labels: &[String],
        text: Option<(String, bool)>,
    ) -> Result<Output, Error> {
        let (text, stopped) = match text {
            Some(streamed) => streamed,
            None => {
                let text = self
                    .tokenizer
                    .decode(&out.token_ids)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                (text, false)
            }
        };
        let label = out
            .scores
            .as_deref()
            .and_then(|s| best_label(labels, s))
            .map(str::to_string);
        let logprobs = out.token_logprobs.map(|steps| {
            let piece = |id: i64| self.tokenizer.piece(id);
            (out.token_ids.iter().zip(steps))
                .map(|(&token_id, step)| TokenLogprobs {
                    token_id,
                    token: piece(token_id),
                    logprob: step.logprob,
                    top: (step.top.into_iter())
                        .map(|(token_id, logprob)| TopLogprob {
                            token_id,
                            token: piece(token_id),
                            logprob,
                        })
                        .collect(),
                })
                .collect()
        });
        Ok(Output {
            finish_reason: finish_reason(out.ended, stopped),
            text,
            token_ids: out.token_ids,
            scores: out.scores,
            label,
            logprobs,
        })
    }

    /// The request's texts: at least one, at most --max-inputs, and no more rows than one
    /// request may queue.
    pub(crate) fn check_inputs(&self, inputs: &[String]) -> Result<(), Error> {
        if inputs.is_empty() {
            return Err(Error::Invalid(
                "`inputs` must be a string or a non-empty array of strings".into(),
            ));
        }
        let max = self.limits.max_inputs;
        if inputs.len() > max {
            return Err(Error::Invalid(format!(
                "{} inputs; the limit is {max} per request (--max-inputs)",
                inputs.len()
            )));
        }
        Ok(())
    }

    /// Tokenizes every input for `slot`.
    pub(crate) fn validate(
        &self,
        slot: &Arc<PromptSlot>,
        req: PredictInput,
    ) -> Result<ValidRequest, Error> {
        let texts = req.inputs;
        self.check_inputs(&texts)?;
        let generation = req.generation;
        generation.check()?;
        let choices = generation.choices();
        let most = self.batcher.max_request_rows();
        if texts.len() * choices > most {
            return Err(Error::Invalid(format!(
                "{} inputs × {choices} choices; one request may queue at most {most} rows (--max-queue-per-task)",
                texts.len()
            )));
        }
        let labels = req.labels.unwrap_or_default();
        let seed = generation.request_seed();
        let mut rows = Vec::with_capacity(texts.len() * choices);
        for (i, text) in texts.iter().enumerate() {
            let row = build_row(
                &self.tokenizer,
                &self.limits.row,
                Some(slot.clone()),
                text,
                req.max_new_tokens,
                &labels,
            )
            .map_err(|why| refusal(&at(i, texts.len()), why))?;
            for choice in 0..choices {
                let mut row = row.clone();
                generation.apply(&mut row, choice, seed);
                rows.push(row);
            }
        }
        Ok(ValidRequest {
            rows,
            labels,
            stops: generation.stop.into(),
        })
    }

    /// Admits the caller under its tenant's rate and in-flight quotas.
    pub(crate) fn admit(&self, caller: &Caller) -> Result<Admission, Error> {
        match caller {
            Caller::Open => Ok(Admission {
                _in_flight: None,
                share: Share::default(),
            }),
            Caller::Tenant(t) => {
                let guard = t.limiter.admit().map_err(|refusal| {
                    self.reject(caller, crate::metrics::Rejection::RateLimited);
                    Error::from(refusal)
                })?;
                Ok(Admission {
                    _in_flight: Some(guard),
                    share: Share {
                        tenant: Arc::from(t.name.as_str()),
                        weight: t.weight,
                    },
                })
            }
        }
    }

    /// Queues `units` (all or none), waits for every row within the request timeout and
    /// returns the rows' outputs unit by unit; the first failed row fails the request.
    pub(crate) async fn answer_units(
        &self,
        units: Vec<Unit>,
        share: &Share,
    ) -> Result<Vec<Vec<RowOutput>>, Error> {
        let mut tickets = self
            .batcher
            .submit_units(units, share)
            .map_err(queue_refusal)?;
        let timeout = self.limits.request_timeout;
        let answers = if timeout.is_zero() {
            answers(&mut tickets).await
        } else {
            tokio::time::timeout(timeout, answers(&mut tickets))
                .await
                .map_err(|_| Error::Timeout(timeout.as_millis() as u64))?
        };
        answers
            .into_iter()
            .map(|unit| {
                unit.into_iter()
                    .map(|answer| {
                        answer.map_err(|e| match e {
                            // Every engine failure is the server's (rows are validated before
                            // they queue).
                            EngineError::Stopped => Error::Unavailable(e.to_string()),
                            why => Error::Internal(format!("inference failed: {why}")),
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

/// The queue's refusal as the service's error.
pub(crate) fn queue_refusal(e: Refused) -> Error {
    match e {
        Refused::Full { queued, max, .. } => Error::QueueFull { queued, max },
        Refused::TaskFull { task, queued, max } => Error::TaskQueueFull { task, queued, max },
        Refused::Closed => Error::Unavailable("the server is shutting down".into()),
    }
}

/// Where an input's error is: `inputs[i]: ` when the request has several.
pub(crate) fn at(i: usize, n: usize) -> String {
    if n > 1 {
        format!("inputs[{i}]: ")
    } else {
        String::new()
    }
}

/// Awaits every row's answer, unit by unit, in order.
async fn answers(tickets: &mut [Vec<Ticket>]) -> Vec<Vec<RowResult>> {
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
