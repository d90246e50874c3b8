//! Continuous batching for the decoder: rows join a running batch at a decode-step boundary
//! (their encoder pass runs then, and their caches are written into finished rows' slots, or
//! appended) and leave it the step they finish, answering at once. A row still sees exactly what it would alone: its
//! self-attention columns from before it joined and the encoder padding of longer rows are
//! masked, and T5's decoder position bias depends only on key − query, which is the same for
//! every row when the caches are right-aligned.
use std::collections::HashSet;

use tch::{Kind, Tensor};
use tokio::sync::oneshot;

use super::adapters::AdapterStats;
use super::error::{guarded, EngineError};
use super::passes::Engine;
use super::rows::{
    count_label_pairs, count_tasks, split_by_token_budget, BatchStats, RowInput, RowOutput,
};
use super::sampling::{sample, SampleRow, StreamToken, TokenLogprob};
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
    /// The adapter bank after the admission.
    pub adapters: AdapterStats,
}

/// A row being decoded.
struct Live {
    row: RowInput,
    reply: oneshot::Sender<RowResult>,
    out: Vec<i64>,
    /// Summed log-probability of `out` (kept when the row asks for it).
    logprob: f64,
    /// Each token's log-probabilities (kept when the row asks for them).
    token_logprobs: Vec<TokenLogprob>,
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

    fn answer(self, eos: &[i64]) {
        let ended = self.out.last().is_some_and(|t| eos.contains(t));
        let logprob = self.row.sequence_logprob.then_some(self.logprob);
        let token_logprobs = self.row.top_logprobs.map(|_| self.token_logprobs);
        let _ = self.reply.send(Ok(RowOutput {
            token_ids: self.out,
            scores: self.scores,
            logprob,
            ended,
            token_logprobs,
        }));
    }
}

/// Log-probabilities of one step, per slot.
struct Picked {
    /// The chosen token's.
    chosen: Vec<f32>,
    /// The most likely tokens (empty when no row asks).
    top: Vec<Vec<(i64, f32)>>,
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
    /// Last token of each batch row [B].
    tokens: Option<Tensor>,
    /// The batch's rows in order: a finished row leaves its slot empty (still computed, its
    /// tokens ignored) until a newcomer takes it or the batch is compacted.
    slots: Vec<Option<Live>>,
    /// Rows decoding (occupied slots).
    live: usize,
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
    /// Sum over steps of the rows computed: live rows and finished rows' slots not yet
    /// compacted away.
    pub row_steps: usize,
    /// Newcomers written into a finished row's slot (no copy of the batch).
    pub reused_slots: usize,
    /// Batch copies that dropped finished rows' slots.
    pub compactions: usize,
}

/// A batch whose finished rows' slots are more than this fraction of it is compacted before
/// the next step (a copy of the live rows' caches), instead of computing the empty slots on.
const COMPACT_WHEN_EMPTY: f64 = 0.25;

impl Running {
    /// An empty batch for `model`.
    pub fn new(model: &T5Model) -> Self {
        Self {
            state: None,
            tokens: None,
            slots: Vec::new(),
            live: 0,
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
        self.live
    }

    /// Whether no row is decoding.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Distinct prompts among the live rows.
    pub fn tasks(&self) -> usize {
        count_tasks(self.lives().map(|l| &l.row))
    }

    /// The adapters rows decoding now use (they stay on the device).
    fn live_adapters(&self) -> HashSet<u64> {
        self.lives()
            .filter_map(|l| l.row.prompt.as_ref()?.adapter_id())
            .collect()
    }

    fn lives(&self) -> impl Iterator<Item = &Live> {
        self.slots.iter().flatten()
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
            let live = self.live_adapters();
            match guarded(|| prepare(engine, &rows, &live)) {
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
                        let live = self.live_adapters();
                        let alone = std::slice::from_ref(&one.row);
                        match guarded(|| prepare(engine, alone, &live)) {
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
        admitted.adapters = engine.adapters().stats();
        admitted
    }

    /// Answers the group's rows that do not generate and merges the others in: into finished
    /// rows' slots first, after the batch's rows for the rest.
    fn join(&mut self, model: &T5Model, fresh: Fresh, group: Vec<Joining>) {
        let mut newcomers = Vec::new();
        for ((joining, scores), decoding) in group.into_iter().zip(fresh.scores).zip(fresh.decoding)
        {
            let enc_len = joining.row.encoder_len() as i64;
            let live = Live {
                row: joining.row,
                reply: joining.reply,
                out: Vec::new(),
                logprob: 0.0,
                token_logprobs: Vec::new(),
                scores,
                offset: 0,
                enc_len,
            };
            if decoding {
                newcomers.push(live);
            } else {
                live.answer(&self.eos);
            }
        }
        let Some(state) = fresh.state else {
            return;
        };
        let free: Vec<i64> = (self.slots.iter().enumerate())
            .filter(|(_, s)| s.is_none())
            .map(|(i, _)| i as i64)
            .take(newcomers.len())
            .collect();
        let remaining = self
            .lives()
            .chain(&newcomers)
            .map(|l| (l.row.max_new_tokens - l.out.len()) as i64)
            .max()
            .unwrap_or(1);
        let (start_id, n) = (self.start_id, newcomers.len() as i64);
        let merged = guarded(|| {
            let device = model.options().device;
            let starts = |n: i64| Tensor::f_full([n], start_id, (Kind::Int64, device));
            let (mut state, tokens) = match (self.state.take(), self.tokens.take()) {
                (Some(mut old), Some(mut tokens)) => {
                    let placed = free.len() as i64;
                    let rest = if placed == 0 {
                        Some(state)
                    } else if placed == n {
                        old.place(state, &free)?;
                        None
                    } else {
                        let pick = |from: i64, to: i64| -> Result<Tensor, EngineError> {
                            let idx: Vec<i64> = (from..to).collect();
                            Ok(Tensor::f_from_slice(&idx)?.f_to_device(device)?)
                        };
                        old.place(state.select(&pick(0, placed)?)?, &free)?;
                        Some(state.select(&pick(placed, n)?)?)
                    };
                    if placed > 0 {
                        let idx = Tensor::f_from_slice(&free)?.f_to_device(device)?;
                        let _ = tokens.f_index_fill_(0, &idx, start_id)?;
                    }
                    match rest {
                        Some(rest) => {
                            let added = rest.rows();
                            (
                                old.append(rest)?,
                                Tensor::f_cat(&[tokens, starts(added)?], 0)?,
                            )
                        }
                        None => (old, tokens),
                    }
                }
                _ => (state, starts(n)?),
            };
            model.plan_decoder(&mut state, remaining)?;
            Ok((state, tokens))
        });
        self.live += newcomers.len();
        match merged {
            Ok((state, tokens)) => {
                let step = state.step;
                let mut newcomers = newcomers.into_iter().map(|mut l| {
                    l.offset = step;
                    Some(l)
                });
                for &slot in &free {
                    self.slots[slot as usize] = newcomers.next().flatten();
                }
                self.slots.extend(newcomers);
                self.work.reused_slots += free.len();
                self.state = Some(state);
                self.tokens = Some(tokens);
            }
            Err(e) => {
                self.slots.extend(newcomers.into_iter().map(Some));
                self.fail_all(&e);
            }
        }
    }

    /// One decode step for every live row; rows that finish are answered and leave their
    /// slot. A failed step fails every live row (the batch's caches can no longer be trusted).
    pub fn step(&mut self, engine: &Engine) {
        if self.live == 0 {
            return;
        }
        if let Err(e) = guarded(|| self.step_inner(engine)) {
            self.fail_all(&e);
        }
    }

    fn step_inner(&mut self, engine: &Engine) -> Result<(), EngineError> {
        #[cfg(debug_assertions)]
        if crate::fault::take(&crate::fault::PANIC_STEPS) {
            panic!("injected fault: a decode step panicked");
        }
        self.compact_if_worth()?;
        let (Some(state), Some(tokens)) = (self.state.as_mut(), self.tokens.as_ref()) else {
            return Err(EngineError::Decode(
                "live rows without decoder state".into(),
            ));
        };
        let logits = engine
            .model()
            .decode_step(tokens, state, engine.adapters().tables())?;
        let next = self.choose(&logits)?;
        let picked = self.logprobs(&logits, &next)?;
        let next_host: Vec<i64> = {
            let _span = span(Family::HostCopy);
            Vec::try_from(&next)?
        };
        self.work.steps += 1;
        self.work.row_steps += self.slots.len();
        self.tokens = Some(next);
        for (i, (slot, &token)) in self.slots.iter_mut().zip(&next_host).enumerate() {
            let Some(live) = slot else { continue };
            live.out.push(token);
            let mut logprobs = None;
            if let Some(picked) = &picked {
                live.logprob += f64::from(picked.chosen[i]);
                if let Some(k) = live.row.top_logprobs {
                    let top = picked
                        .top
                        .get(i)
                        .map_or(Vec::new(), |t| t.iter().take(k).copied().collect());
                    let lp = TokenLogprob {
                        logprob: picked.chosen[i],
                        top,
                    };
                    live.token_logprobs.push(lp.clone());
                    logprobs = Some(lp);
                }
            }
            if let Some(stream) = &live.row.stream {
                // A listener gone is a cancelled row: it stops at the finished() check below.
                let _ = stream.send(StreamToken {
                    token_id: token,
                    logprobs,
                });
            }
            if live.finished(&self.eos) {
                slot.take().expect("occupied").answer(&self.eos);
                self.live -= 1;
            }
        }
        if self.live == 0 {
            self.state = None;
            self.tokens = None;
            self.slots.clear();
            return Ok(());
        }
        // Columns before every remaining row's first step are padding for all: skip them.
        let first = self.lives().map(|l| l.offset).min().unwrap_or(0);
        if let Some(state) = self.state.as_mut() {
            state.trim_to(first);
        }
        Ok(())
    }

    /// Each slot's next token: the argmax, or for sampling rows a draw from their own
    /// distribution (their logits only, so a row's token does not depend on its neighbours).
    fn choose(&self, logits: &Tensor) -> Result<Tensor, EngineError> {
        let next = logits.f_argmax(-1, false)?;
        let (idx, rows): (Vec<i64>, Vec<SampleRow>) = (self.slots.iter().enumerate())
            .filter_map(|(i, slot)| {
                let live = slot.as_ref()?;
                let sampling = live.row.sampling?;
                Some((
                    i as i64,
                    SampleRow {
                        sampling,
                        step: live.out.len(),
                    },
                ))
            })
            .unzip();
        if idx.is_empty() {
            return Ok(next);
        }
        let idx = Tensor::f_from_slice(&idx)?.f_to_device(logits.device())?;
        let drawn = sample(&logits.f_index_select(0, &idx)?, &rows)?;
        Ok(next.f_index_copy(0, &idx, &drawn)?)
    }

    /// The chosen tokens' log-probabilities (in f32, as transformers' log_softmax over the
    /// logits) and, for rows that ask, the step's most likely tokens; only when a live row
    /// uses them.
    fn logprobs(&self, logits: &Tensor, next: &Tensor) -> Result<Option<Picked>, EngineError> {
        let wants = |l: &Live| l.row.sequence_logprob || l.row.top_logprobs.is_some();
        if !self.lives().any(wants) {
            return Ok(None);
        }
        let lp = logits
            .f_to_kind(Kind::Float)?
            .f_log_softmax(-1, Kind::Float)?;
        let chosen = lp
            .f_gather(-1, &next.f_unsqueeze(-1)?, false)?
            .f_squeeze_dim(-1)?;
        let k = self
            .lives()
            .filter_map(|l| l.row.top_logprobs)
            .max()
            .unwrap_or(0)
            .min(lp.size()[1] as usize);
        let top = if k == 0 {
            Vec::new()
        } else {
            let (values, ids) = lp.f_topk(k as i64, -1, true, true)?;
            let values = Vec::<f32>::try_from(&values.f_flatten(0, -1)?)?;
            let ids = Vec::<i64>::try_from(&ids.f_flatten(0, -1)?)?;
            ids.chunks(k)
                .zip(values.chunks(k))
                .map(|(ids, values)| ids.iter().copied().zip(values.iter().copied()).collect())
                .collect()
        };
        let _span = span(Family::HostCopy);
        Ok(Some(Picked {
            chosen: Vec::try_from(&chosen)?,
            top,
        }))
    }

    /// Drops the finished rows' slots (a copy of the live rows' caches) when they are more
    /// than [`COMPACT_WHEN_EMPTY`] of the batch, and encoder positions past the longest live row.
    fn compact_if_worth(&mut self) -> Result<(), EngineError> {
        let empty = self.slots.len() - self.live;
        if empty == 0 || (empty as f64) <= COMPACT_WHEN_EMPTY * self.slots.len() as f64 {
            return Ok(());
        }
        let (Some(state), Some(tokens)) = (self.state.as_ref(), self.tokens.as_ref()) else {
            return Ok(());
        };
        let keep: Vec<i64> = (self.slots.iter().enumerate())
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i as i64)
            .collect();
        let keep = Tensor::f_from_slice(&keep)?.f_to_device(tokens.device())?;
        let mut state = state.select(&keep)?;
        let enc_len = self.lives().map(|l| l.enc_len).max().unwrap_or(1);
        state.narrow_encoder(enc_len)?;
        self.tokens = Some(tokens.f_index_select(0, &keep)?);
        self.state = Some(state);
        self.slots.retain(Option::is_some);
        self.work.compactions += 1;
        Ok(())
    }

    /// Answers every live row with `e` and empties the batch.
    pub fn fail_all(&mut self, e: &EngineError) {
        tracing::error!(rows = self.live, "running batch failed: {e}");
        for live in self.slots.drain(..).flatten() {
            // A panic stays a panic (metrics and logs tell bugs from model failures).
            let e = match e {
                EngineError::Panic(why) => EngineError::Panic(why.clone()),
                other => EngineError::Decode(other.to_string()),
            };
            let _ = live.reply.send(Err(e));
        }
        self.live = 0;
        self.state = None;
        self.tokens = None;
    }
}

/// Static batching: a running batch that admits its rows once and decodes to its end.
impl Engine {
    /// Runs a mixed-task batch to its end: one encoder pass over `[prompt rows ; input]` for
    /// every row, then greedy decoding and label scoring. The first row that failed fails the
    /// call; [`Engine::run_rows`] answers each row on its own.
    pub fn run_batch(&mut self, rows: &[RowInput]) -> Result<Vec<RowOutput>, EngineError> {
        let (outputs, passes) = self.run_to_end(rows);
        if let Some(last) = passes.last() {
            self.last_stats = last.clone();
        }
        outputs.into_iter().collect()
    }

    /// Admits `rows` to a fresh running batch at once (encoder passes that fail are retried
    /// row by row) and decodes until the last row finishes. Returns each row's result and the
    /// passes' costs; the decode work is counted on the last pass.
    fn run_to_end(&mut self, rows: &[RowInput]) -> (Vec<RowResult>, Vec<BatchStats>) {
        let mut running = Running::new(self.model());
        let (joining, replies): (Vec<Joining>, Vec<_>) = rows
            .iter()
            .map(|row| {
                let (reply, rx) = oneshot::channel();
                (
                    Joining {
                        row: row.clone(),
                        reply,
                    },
                    rx,
                )
            })
            .unzip();
        let mut passes = running.admit(self, joining, u64::MAX).passes;
        while !running.is_empty() {
            running.step(self);
        }
        let work = running.take_work();
        let outputs: Vec<RowResult> = replies
            .into_iter()
            .map(|mut rx| {
                rx.try_recv()
                    .unwrap_or_else(|_| Err(EngineError::Decode("the row was not answered".into())))
            })
            .collect();
        if let Some(last) = passes.last_mut() {
            last.decode_steps = work.steps;
            last.decode_row_steps = work.row_steps;
            last.generated_tokens = outputs.iter().flatten().map(|o| o.token_ids.len()).sum();
        }
        (outputs, passes)
    }

    /// Runs rows in groups that respect the token budget, each to its end before the next
    /// (static batching). Returns each row's result in order and the cost of every pass.
    pub fn run_rows(
        &mut self,
        rows: &[RowInput],
        max_batch_tokens: u64,
    ) -> (Vec<Result<RowOutput, EngineError>>, Vec<BatchStats>) {
        let lengths: Vec<usize> = rows.iter().map(RowInput::encoder_len).collect();
        let mut results = Vec::with_capacity(rows.len());
        let mut passes = Vec::new();
        for group in split_by_token_budget(&lengths, max_batch_tokens) {
            let (outputs, stats) = self.run_to_end(&rows[group]);
            if let Some(last) = stats.last() {
                self.last_stats = last.clone();
            }
            results.extend(outputs);
            passes.extend(stats);
        }
        (results, passes)
    }
}

/// Encoder pass and label scores of a group; decoder state for its rows that generate.
fn prepare(
    engine: &mut Engine,
    rows: &[RowInput],
    live: &HashSet<u64>,
) -> Result<Fresh, EngineError> {
    let encoded = engine.encode_rows(rows, live)?;
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
        let ad = encoded.adapt(engine.adapters().tables());
        if picked.len() == rows.len() {
            Some(model.start_decoder(&encoded.out, &encoded.mask, steps, ad.as_ref())?)
        } else {
            let idx = Tensor::f_from_slice(&picked)?.f_to_device(encoded.out.device())?;
            let ad = ad.map(|ad| ad.select(&idx)).transpose()?;
            Some(model.start_decoder(
                &encoded.out.f_index_select(0, &idx)?,
                &encoded.mask.f_index_select(0, &idx)?,
                steps,
                ad.as_ref(),
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
