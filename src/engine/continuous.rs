//! Continuous batching for the decoder: rows join a running batch at a decode-step boundary
//! (their encoder pass runs then, and their caches are merged into the batch's) and leave it
//! the step they finish, answering at once. A row still sees exactly what it would alone: its
//! self-attention columns from before it joined and the encoder padding of longer rows are
//! masked, and T5's decoder position bias depends only on key − query, which is the same for
//! every row when the caches are right-aligned.
use tch::{Kind, Tensor};
use tokio::sync::oneshot;

use super::{
    count_label_pairs, count_tasks, guarded, split_by_token_budget, BatchStats, Engine,
    EngineError, RowInput, RowOutput,
};
use crate::model::profile::{span, Family};
use crate::model::{DecoderState, T5Model};

/// A row's answer.
pub type RowResult = Result<RowOutput, EngineError>;

/// A row entering the running batch, and where its answer goes.
pub struct Joining {
    /// The row.
    pub row: RowInput,
    /// Answered when the row finishes (or fails).
    pub reply: oneshot::Sender<RowResult>,
}

/// What one admission did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Rows admitted (some may already be answered: no generation, or failed).
    pub rows: usize,
    /// Rows decoding together after the admission.
    pub live_rows: usize,
    /// Distinct prompts among them.
    pub live_tasks: usize,
    /// Cost of each encoder pass the admission ran (decode fields are zero).
    pub passes: Vec<BatchStats>,
}

/// A row being decoded.
struct Live {
    row: RowInput,
    reply: oneshot::Sender<RowResult>,
    out: Vec<i64>,
    scores: Option<Vec<f64>>,
    /// Self-attention cache columns before this row's first step (masked for it).
    offset: i64,
    /// Encoder positions of this row.
    enc_len: i64,
}

impl Live {
    fn finished(&self, eos: &[i64]) -> bool {
        self.out.last().is_some_and(|t| eos.contains(t))
            || self.out.len() >= self.row.max_new_tokens
            || self.row.is_cancelled()
    }

    fn answer(self) {
        let _ = self.reply.send(Ok(RowOutput {
            token_ids: self.out,
            scores: self.scores,
        }));
    }
}

/// Encoder output of newcomers, ready to merge.
struct Fresh {
    /// Decoder state of the rows that generate (None when none does).
    state: Option<DecoderState>,
    /// Which of the group's rows generate.
    decoding: Vec<bool>,
    scores: Vec<Option<Vec<f64>>>,
    stats: BatchStats,
}

/// The batch being decoded.
pub struct Running {
    state: Option<DecoderState>,
    /// Last token of each live row [B].
    tokens: Option<Tensor>,
    live: Vec<Live>,
    eos: Vec<i64>,
    start_id: i64,
    /// Decode work done since the last [`Running::take_work`].
    work: DecodeWork,
}

/// Decode work a running batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeWork {
    /// Decoder steps.
    pub steps: usize,
    /// Sum over steps of the rows in the batch (finished rows leave it).
    pub row_steps: usize,
}

impl Running {
    /// An empty batch for `model`.
    pub fn new(model: &T5Model) -> Self {
        Self {
            state: None,
            tokens: None,
            live: Vec::new(),
            eos: model.config.eos_ids(),
            start_id: model.config.decoder_start_id(),
            work: DecodeWork::default(),
        }
    }

    /// The decode work done since the last call.
    pub fn take_work(&mut self) -> DecodeWork {
        std::mem::take(&mut self.work)
    }

    /// Rows decoding.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no row is decoding.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Distinct prompts among the live rows.
    pub fn tasks(&self) -> usize {
        count_tasks(self.live.iter().map(|l| &l.row))
    }

    /// Encodes `joining` (in groups within the token budget), scores their labels, answers the
    /// rows with nothing to generate and merges the others into the running batch. When an
    /// encoder pass fails its rows are retried one by one, so only rows at fault get an error.
    pub fn admit(
        &mut self,
        engine: &mut Engine,
        joining: Vec<Joining>,
        max_batch_tokens: u64,
    ) -> Admitted {
        let lengths: Vec<usize> = joining.iter().map(|j| j.row.encoder_len()).collect();
        let mut admitted = Admitted {
            rows: joining.len(),
            ..Admitted::default()
        };
        let mut rest = joining.into_iter();
        for group in split_by_token_budget(&lengths, max_batch_tokens) {
            let group: Vec<Joining> = rest.by_ref().take(group.len()).collect();
            let rows: Vec<RowInput> = group.iter().map(|j| j.row.clone()).collect();
            match guarded(|| prepare(engine, &rows)) {
                Ok(fresh) => {
                    admitted.passes.push(fresh.stats.clone());
                    self.join(engine.model(), fresh, group);
                }
                Err(e) if group.len() == 1 => {
                    let _ = group.into_iter().next().expect("one").reply.send(Err(e));
                }
                Err(e) => {
                    tracing::warn!(
                        rows = group.len(),
                        "encoder pass failed, retrying rows alone: {e}"
                    );
                    for one in group {
                        match guarded(|| prepare(engine, std::slice::from_ref(&one.row))) {
                            Ok(fresh) => {
                                admitted.passes.push(fresh.stats.clone());
                                self.join(engine.model(), fresh, vec![one]);
                            }
                            Err(e) => {
                                let _ = one.reply.send(Err(e));
                            }
                        }
                    }
                }
            }
        }
        admitted.live_rows = self.len();
        admitted.live_tasks = self.tasks();
        admitted
    }

    /// Answers the group's rows that do not generate and merges the others in.
    fn join(&mut self, model: &T5Model, fresh: Fresh, group: Vec<Joining>) {
        let mut newcomers = Vec::new();
        for ((joining, scores), decoding) in group.into_iter().zip(fresh.scores).zip(fresh.decoding)
        {
            let enc_len = joining.row.encoder_len() as i64;
            let live = Live {
                row: joining.row,
                reply: joining.reply,
                out: Vec::new(),
                scores,
                offset: 0,
                enc_len,
            };
            if decoding {
                newcomers.push(live);
            } else {
                live.answer();
            }
        }
        let Some(state) = fresh.state else {
            return;
        };
        let merged = guarded(|| {
            let start = Tensor::f_full(
                [newcomers.len() as i64],
                self.start_id,
                (Kind::Int64, model.options().device),
            )?;
            let (mut state, tokens) = match (self.state.take(), self.tokens.take()) {
                (Some(old), Some(tokens)) => {
                    (old.merge(state)?, Tensor::f_cat(&[tokens, start], 0)?)
                }
                _ => (state, start),
            };
            let remaining = self
                .live
                .iter()
                .chain(&newcomers)
                .map(|l| (l.row.max_new_tokens - l.out.len()) as i64)
                .max()
                .unwrap_or(1);
            let steps = state.step + remaining;
            model.plan_decoder(&mut state, steps)?;
            Ok((state, tokens))
        });
        match merged {
            Ok((state, tokens)) => {
                for l in &mut newcomers {
                    l.offset = state.step;
                }
                self.live.extend(newcomers);
                self.state = Some(state);
                self.tokens = Some(tokens);
            }
            Err(e) => {
                self.live.extend(newcomers);
                self.fail_all(&e);
            }
        }
    }

    /// One decode step for every live row; rows that finish are answered and leave. A failed
    /// step fails every live row (the batch's caches can no longer be trusted).
    pub fn step(&mut self, model: &T5Model) {
        if self.live.is_empty() {
            return;
        }
        if let Err(e) = guarded(|| self.step_inner(model)) {
            self.fail_all(&e);
        }
    }

    fn step_inner(&mut self, model: &T5Model) -> Result<(), EngineError> {
        #[cfg(debug_assertions)]
        if crate::fault::take(&crate::fault::PANIC_STEPS) {
            panic!("injected fault: a decode step panicked");
        }
        let (Some(state), Some(tokens)) = (self.state.as_mut(), self.tokens.as_ref()) else {
            return Err(EngineError::Decode(
                "live rows without decoder state".into(),
            ));
        };
        let logits = model.decode_step(tokens, state)?;
        let next = logits.f_argmax(-1, false)?;
        let next_host: Vec<i64> = {
            let _span = span(Family::HostCopy);
            Vec::try_from(&next)?
        };
        self.work.steps += 1;
        self.work.row_steps += self.live.len();
        let mut keep = Vec::with_capacity(self.live.len());
        for (pos, (live, &token)) in self.live.iter_mut().zip(&next_host).enumerate() {
            live.out.push(token);
            if !live.finished(&self.eos) {
                keep.push(pos as i64);
            }
        }
        if keep.len() == self.live.len() {
            self.tokens = Some(next);
            return Ok(());
        }
        let mut kept = Vec::with_capacity(keep.len());
        let mut next_keep = keep.iter().peekable();
        for (pos, live) in std::mem::take(&mut self.live).into_iter().enumerate() {
            if next_keep.peek().is_some_and(|&&k| k == pos as i64) {
                next_keep.next();
                kept.push(live);
            } else {
                live.answer();
            }
        }
        self.live = kept;
        if self.live.is_empty() {
            self.state = None;
            self.tokens = None;
            return Ok(());
        }
        let keep = Tensor::f_from_slice(&keep)?.f_to_device(next.device())?;
        let mut state = state.select(&keep)?;
        // Columns before every remaining row's first step, and encoder positions past the
        // longest remaining row, are padding for all: drop them.
        let unused = self.live.iter().map(|l| l.offset).min().unwrap_or(0);
        let enc_len = self.live.iter().map(|l| l.enc_len).max().unwrap_or(1);
        state.trim(unused, enc_len)?;
        for live in &mut self.live {
            live.offset -= unused;
        }
        self.state = Some(state);
        self.tokens = Some(next.f_index_select(0, &keep)?);
        Ok(())
    }

    /// Answers every live row with `e` and empties the batch.
    pub fn fail_all(&mut self, e: &EngineError) {
        tracing::error!(rows = self.live.len(), "running batch failed: {e}");
        for live in self.live.drain(..) {
            // A panic stays a panic (metrics and logs tell bugs from model failures).
            let e = match e {
                EngineError::Panic(why) => EngineError::Panic(why.clone()),
                other => EngineError::Decode(other.to_string()),
            };
            let _ = live.reply.send(Err(e));
        }
        self.state = None;
        self.tokens = None;
    }
}

/// Encoder pass and label scores of a group; decoder state for its rows that generate.
fn prepare(engine: &mut Engine, rows: &[RowInput]) -> Result<Fresh, EngineError> {
    let encoded = engine.encode_rows(rows)?;
    let scores = engine.score_rows(rows, &encoded)?;
    let decoding: Vec<bool> = rows
        .iter()
        .map(|r| r.max_new_tokens > 0 && !r.is_cancelled())
        .collect();
    let picked: Vec<i64> = (0..rows.len() as i64)
        .filter(|&i| decoding[i as usize])
        .collect();
    let state = if picked.is_empty() {
        None
    } else {
        let steps = rows.iter().map(|r| r.max_new_tokens).max().unwrap_or(1) as i64;
        let model = engine.model();
        if picked.len() == rows.len() {
            Some(model.start_decoder(&encoded.out, &encoded.mask, steps)?)
        } else {
            let idx = Tensor::f_from_slice(&picked)?.f_to_device(encoded.out.device())?;
            Some(model.start_decoder(
                &encoded.out.f_index_select(0, &idx)?,
                &encoded.mask.f_index_select(0, &idx)?,
                steps,
            )?)
        }
    };
    let stats = BatchStats {
        rows: rows.len(),
        tasks: count_tasks(rows.iter()),
        padded_encoder_tokens: rows.len() * encoded.width,
        label_pairs: count_label_pairs(rows),
        ..BatchStats::default()
    };
    Ok(Fresh {
        state,
        decoding,
        scores,
        stats,
    })
}
