//! Streaming predict: each row's text as the decoder produces it, step by step, then the row's
//! whole answer. The rows of a request stream together; their events interleave in the order
//! the steps produced them. Dropping a [`PredictStream`] (a client gone) cancels its rows:
//! each leaves the running batch at the next decode step.
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::{self, SelectAll, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::error::Error;
use super::generation::TextStream;
use super::predict::{
    queue_refusal, Admission, Output, PredictInput, PredictResponse, ValidRequest,
};
use super::state::Service;
use crate::batcher::{Share, Ticket, Unit};
use crate::catalog::prompts::Entry;
use crate::engine::{EngineError, StreamToken, TokenLogprob};
use crate::tenants::Caller;

/// What a streaming request produces, row by row.
#[derive(Debug)]
pub enum StreamEvent {
    /// Row `row` decoded a token.
    Token {
        /// The row (input × choice, in request order).
        row: usize,
        /// The token.
        token_id: i64,
        /// Text that may be shown now (empty while a character or a possible stop string is
        /// incomplete).
        text: String,
        /// The token's log-probabilities, when asked.
        logprobs: Option<TokenLogprob>,
    },
    /// Row `row` finished: its whole answer.
    Done {
        /// The row.
        row: usize,
        /// Its text not yet sent in a token event.
        tail: String,
        /// Its answer, as a non-streaming request gives it.
        output: Output,
    },
}

type RowEvents = Pin<Box<dyn Stream<Item = Result<StreamEvent, Error>> + Send>>;

/// A streaming request under way.
pub struct PredictStream {
    /// Task name.
    pub task: String,
    /// The prompt version serving every row.
    pub prompt_version: u64,
    /// That version's SHA-256.
    pub prompt_sha256: String,
    /// Rows in the request.
    pub rows: usize,
    events: SelectAll<RowEvents>,
    deadline: Option<Instant>,
    timeout_ms: u64,
    /// Held until the stream ends (the tenant's in-flight quota).
    _admission: Admission,
}

impl PredictStream {
    /// The next event; `None` once every row has finished. After an error nothing follows.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, Error>> {
        let next = self.events.next();
        let event = match self.deadline {
            None => next.await,
            Some(at) => match tokio::time::timeout_at(at, next).await {
                Ok(event) => event,
                Err(_) => Some(Err(Error::Timeout(self.timeout_ms))),
            },
        };
        if matches!(event, Some(Err(_))) {
            self.events = SelectAll::new();
        }
        event
    }

    /// Waits for every row and answers as a non-streaming request does.
    pub async fn collect(mut self) -> Result<PredictResponse, Error> {
        let mut outputs: Vec<Option<Output>> = (0..self.rows).map(|_| None).collect();
        while let Some(event) = self.next().await {
            if let StreamEvent::Done { row, output, .. } = event? {
                outputs[row] = Some(output);
            }
        }
        let outputs = outputs
            .into_iter()
            .map(|o| o.ok_or_else(|| Error::Internal("a row ended without an answer".into())))
            .collect::<Result<_, _>>()?;
        Ok(PredictResponse {
            task: self.task,
            prompt_version: self.prompt_version,
            prompt_sha256: self.prompt_sha256,
            outputs,
        })
    }
}

impl Service {
    /// Like [`Service::predict`], but answers as the rows decode: checks, admission and
    /// validation are the same, and the stream's first event comes at the rows' first step.
    pub async fn predict_stream<E: From<Error>>(
        &self,
        caller: &Caller,
        task: &str,
        input: Result<PredictInput, E>,
    ) -> Result<PredictStream, E> {
        let (admission, entry) = self.admit_to_task(caller, task)?;
        let input = input?;
        let valid = self.validated(&entry, input).await?;
        let share = admission.share.clone();
        let mut stream = self.stream_rows(&entry, valid, share)?;
        stream._admission = admission;
        Ok(stream)
    }

    /// Queues a validated request's rows, each sending its tokens as they are decoded.
    pub(crate) fn stream_rows(
        &self,
        entry: &Arc<Entry>,
        mut valid: ValidRequest,
        share: Share,
    ) -> Result<PredictStream, Error> {
        let mut receivers = Vec::with_capacity(valid.rows.len());
        for row in &mut valid.rows {
            let (tx, rx) = mpsc::unbounded_channel();
            row.stream = Some(tx);
            receivers.push(rx);
        }
        let task = entry.info.task.clone();
        let units = (valid.rows.into_iter())
            .map(|r| Unit {
                key: task.clone(),
                rows: vec![r],
            })
            .collect();
        let tickets = self
            .batcher
            .submit_units(units, &share)
            .map_err(queue_refusal)?;
        let labels: Arc<[String]> = valid.labels.into();
        let rows = receivers.len();
        let events = (tickets.into_iter().flatten())
            .zip(receivers)
            .enumerate()
            .map(|(row, (ticket, tokens))| {
                let text = TextStream::new(self.tokenizer.clone(), valid.stops.clone());
                row_events(self.clone(), row, ticket, tokens, text, labels.clone())
            });
        let timeout = self.limits.request_timeout;
        Ok(PredictStream {
            task,
            prompt_version: entry.info.version,
            prompt_sha256: entry.info.sha256.clone(),
            rows,
            events: stream::select_all(events),
            deadline: (!timeout.is_zero()).then(|| Instant::now() + timeout),
            timeout_ms: timeout.as_millis() as u64,
            _admission: Admission::open(share),
        })
    }
}

/// One row's events: a token event per decoded token, then its answer. A stop string ends
/// the row early (it leaves the batch at the next step) and cuts its text.
fn row_events(
    svc: Service,
    row: usize,
    ticket: Ticket,
    tokens: mpsc::UnboundedReceiver<StreamToken>,
    text: TextStream,
    labels: Arc<[String]>,
) -> RowEvents {
    struct State {
        svc: Service,
        ticket: Ticket,
        tokens: mpsc::UnboundedReceiver<StreamToken>,
        text: TextStream,
        labels: Arc<[String]>,
        /// Text handed out so far.
        shown: String,
        done: bool,
    }
    let state = State {
        svc,
        ticket,
        tokens,
        text,
        labels,
        shown: String::new(),
        done: false,
    };
    Box::pin(stream::unfold(state, move |mut s| async move {
        if s.done {
            return None;
        }
        while let Some(token) = s.tokens.recv().await {
            if s.text.stopped() {
                continue;
            }
            let delta = match s.text.push(token.token_id) {
                Ok(delta) => delta,
                Err(e) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
            };
            if s.text.stopped() {
                s.ticket.finish_early();
            }
            s.shown.push_str(&delta);
            let event = StreamEvent::Token {
                row,
                token_id: token.token_id,
                text: delta,
                logprobs: token.logprobs,
            };
            return Some((Ok(event), s));
        }
        // The row has left the batch: its answer is there.
        s.done = true;
        let answer = s.ticket.answer().await.map_err(|e| match e {
            EngineError::Stopped => Error::Unavailable(e.to_string()),
            why => Error::Internal(format!("inference failed: {why}")),
        });
        let event = answer.and_then(|out| {
            let tail = s.text.finish()?;
            s.shown.push_str(&tail);
            let shown = std::mem::take(&mut s.shown);
            let output = s
                .svc
                .output(out, &s.labels, Some((shown, s.text.stopped())))?;
            Ok(StreamEvent::Done { row, tail, output })
        });
        Some((event, s))
    }))
}
