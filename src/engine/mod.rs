//! The engine: the only code that runs the model. It owns the model and the prompt bank,
//! turns a batch of rows (each with its own prompt) into one encoder pass, then greedy
//! decoding and label scoring. There is one decoder, [`continuous::Running`]: a batch run to
//! its end ([`Engine::run_rows`], static batching) is a running batch that admits rows only
//! once.
pub mod bank;
pub mod continuous;
pub mod device;
pub mod neighbors;
pub mod score;
pub mod side;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tch::Tensor;
use tokio::sync::oneshot;

pub use bank::{PromptBank, PromptSlot};
/// The batcher's contract with the engine thread (continuous batching).
pub use continuous::{Admitted, DecodeWork, Joining, RowResult};
pub use device::{DeviceSpec, DtypeSpec};

use crate::model::profile::{span, Family};
use crate::model::{ModelError, T5Model};
use score::LabelPair;

/// Errors while running a batch.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A row is malformed (caught before any tensor work).
    #[error("invalid row {row}: {why}")]
    InvalidRow {
        /// Index of the row in the batch.
        row: usize,
        /// What is wrong.
        why: String,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Running the batch panicked; the engine itself is still usable.
    #[error("batch failed: {0}")]
    Panic(String),
    /// A decode step of a running batch failed, so every row in it failed (the reason).
    #[error("decoding failed: {0}")]
    Decode(String),
}

impl From<tch::TchError> for EngineError {
    fn from(e: tch::TchError) -> Self {
        EngineError::Model(ModelError::Torch(e))
    }
}

/// A matrix of prompt rows, f32, row-major: what the engine serves for a task.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRows {
    /// Number of rows (virtual tokens).
    pub rows: usize,
    /// Row width (d_model).
    pub cols: usize,
    /// rows × cols values.
    pub values: Vec<f32>,
}

/// One request row: its prompt (or none), tokenized input, and what to compute.
#[derive(Debug, Clone)]
pub struct RowInput {
    /// The task's prompt in the bank; `None` runs the plain model.
    pub prompt: Option<Arc<PromptSlot>>,
    /// Input token ids, ending with `</s>`.
    pub input_ids: Vec<i64>,
    /// Tokens to generate at most (0: no generation).
    pub max_new_tokens: usize,
    /// Candidate labels as token ids, each ending with `</s>`.
    pub labels: Vec<Vec<i64>>,
    /// Set once nobody waits for this row: its decoding stops at the next step and its
    /// labels are not scored (its output is then meaningless).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Also sum the log-probabilities of the generated tokens ([`RowOutput::logprob`]; an
    /// ensemble's vote breaks ties with it).
    pub sequence_logprob: bool,
}

impl RowInput {
    /// Encoder positions this row takes: prompt rows plus input tokens.
    pub fn encoder_len(&self) -> usize {
        self.prompt.as_ref().map_or(0, |p| p.len()) + self.input_ids.len()
    }

    /// Whether the row was abandoned.
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// Runs `f`, turning a panic inside it into [`EngineError::Panic`].
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(EngineError::Panic(why))
    })
}

/// The token budget of one forward pass, used by the batcher and the engine alike: whether
/// `more` rows may join a pass of `rows` rows when the longest row of them all then has
/// `widest` encoder positions, i.e. the padded size (rows × longest row) stays within
/// `max_tokens`. The first rows of a pass always fit: a row longer than the budget runs alone.
pub fn within_token_budget(rows: usize, more: usize, widest: usize, max_tokens: u64) -> bool {
    rows == 0 || (rows + more) as u64 * widest as u64 <= max_tokens
}

/// Splits rows, in order, into consecutive groups within the token budget
/// ([`within_token_budget`]); a row longer than the budget runs alone.
pub fn split_by_token_budget(lengths: &[usize], max_tokens: u64) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut longest = 0usize;
    for (i, &len) in lengths.iter().enumerate() {
        let widest = longest.max(len);
        if within_token_budget(i - start, 1, widest, max_tokens) {
            longest = widest;
        } else {
            groups.push(start..i);
            start = i;
            longest = len;
        }
    }
    if start < lengths.len() {
        groups.push(start..lengths.len());
    }
    groups
}

/// Encoder output of a group of rows.
pub(crate) struct Encoded {
    /// [B, S, d]
    pub out: Tensor,
    /// 0/1 [B, S]
    pub mask: Tensor,
    /// S: the longest row's encoder positions.
    pub width: usize,
}

/// Distinct prompts among rows; rows without a prompt count as one more.
pub fn count_tasks<'a>(rows: impl Iterator<Item = &'a RowInput>) -> usize {
    let mut prompts: Vec<Option<usize>> = rows
        .map(|r| r.prompt.as_ref().map(|p| Arc::as_ptr(p) as usize))
        .collect();
    prompts.sort_unstable();
    prompts.dedup();
    prompts.len()
}

/// (row, label) pairs to score: the labels of rows not cancelled.
pub fn count_label_pairs(rows: &[RowInput]) -> usize {
    rows.iter()
        .filter(|r| !r.is_cancelled())
        .map(|r| r.labels.len())
        .sum()
}

/// What one row produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOutput {
    /// Generated ids without the start token, up to and including `</s>`.
    pub token_ids: Vec<i64>,
    /// Log-likelihood of each label, in the order given (None without labels).
    pub scores: Option<Vec<f64>>,
    /// Summed log-probability of the generated tokens (when the row asked for it).
    pub logprob: Option<f64>,
}

/// What the last batch cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Rows in the batch.
    pub rows: usize,
    /// Distinct prompts (tasks) in the batch; rows without a prompt count as one more.
    pub tasks: usize,
    /// Encoder positions including padding (rows × longest row).
    pub padded_encoder_tokens: usize,
    /// Decoder steps run for generation.
    pub decode_steps: usize,
    /// Row-steps of generation actually computed (finished rows leave the batch).
    pub decode_row_steps: usize,
    /// Generated tokens.
    pub generated_tokens: usize,
    /// (row, label) pairs scored.
    pub label_pairs: usize,
}

/// The model plus its prompt bank.
pub struct Engine {
    model: T5Model,
    bank: PromptBank,
    last_stats: BatchStats,
}

impl Engine {
    /// Wraps a loaded model with an empty prompt bank on its device.
    pub fn new(model: T5Model) -> Result<Self, ModelError> {
        let opts = model.options();
        let bank = PromptBank::new(
            model.vocab_size(),
            model.config.d_model,
            opts.device,
            opts.kind,
        )?;
        Ok(Self {
            model,
            bank,
            last_stats: BatchStats::default(),
        })
    }

    /// The model.
    pub fn model(&self) -> &T5Model {
        &self.model
    }

    /// The prompt bank.
    pub fn bank(&self) -> &PromptBank {
        &self.bank
    }

    /// Cost of the last successful batch.
    pub fn last_stats(&self) -> &BatchStats {
        &self.last_stats
    }

    /// For each of a served prompt's rows, the `k` nearest of the first `vocab` vocabulary
    /// tokens by cosine similarity (paper §7).
    pub fn prompt_neighbors(
        &self,
        slot: &PromptSlot,
        k: usize,
        vocab: i64,
    ) -> Result<Vec<Vec<neighbors::Neighbor>>, EngineError> {
        let rows = self.bank.rows_of(slot)?;
        neighbors::nearest(self.model.shared(), &rows, k, vocab)
    }

    /// Makes room in the bank for `rows` more prompt rows at once.
    pub fn reserve_prompt_rows(&mut self, rows: usize) -> Result<(), ModelError> {
        self.bank.reserve(rows as i64)
    }

    /// Writes a prompt's encoder rows into the bank; the rows live while the slot does.
    pub fn register_prompt(&mut self, rows: &PromptRows) -> Result<Arc<PromptSlot>, ModelError> {
        #[cfg(debug_assertions)]
        if crate::fault::take(&crate::fault::PANIC_REGISTERS) {
            panic!("injected fault: registering a prompt panicked");
        }
        self.bank.insert(rows)
    }

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
        let mut running = continuous::Running::new(&self.model);
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
            running.step(&self.model);
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

    /// One encoder pass over `[prompt rows ; input]` for every row (right-padded).
    pub(crate) fn encode_rows(&mut self, rows: &[RowInput]) -> Result<Encoded, EngineError> {
        #[cfg(debug_assertions)]
        if crate::fault::take(&crate::fault::PANIC_PASSES) {
            panic!("injected fault: forward pass panicked");
        }
        self.check_rows(rows)?;
        let opts = self.model.options();
        let pad = self.model.config.pad_id();
        let width = rows.iter().map(RowInput::encoder_len).max().unwrap_or(1);
        let mut ids = vec![pad; rows.len() * width];
        let mut mask = vec![0i64; rows.len() * width];
        for (i, row) in rows.iter().enumerate() {
            let virtual_ids = row.prompt.iter().flat_map(|p| p.virtual_ids());
            for (j, id) in virtual_ids.chain(row.input_ids.iter().copied()).enumerate() {
                ids[i * width + j] = id;
                mask[i * width + j] = 1;
            }
        }
        let shape = [rows.len() as i64, width as i64];
        let copying = span(Family::HostCopy);
        let ids = Tensor::f_from_slice(&ids)?
            .f_view(shape)?
            .f_to_device(opts.device)?;
        let mask = Tensor::f_from_slice(&mask)?
            .f_view(shape)?
            .f_to_device(opts.device)?;
        drop(copying);
        let embeds = {
            let _span = span(Family::Gather);
            self.bank.embed(self.model.shared(), &ids)?
        };
        let out = self.model.encode(&embeds, &mask)?;
        Ok(Encoded { out, mask, width })
    }

    /// Each row's label log-likelihoods: None without labels, empty when the row was cancelled.
    pub(crate) fn score_rows(
        &self,
        rows: &[RowInput],
        encoded: &Encoded,
    ) -> Result<Vec<Option<Vec<f64>>>, EngineError> {
        let pairs: Vec<LabelPair> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_cancelled())
            .flat_map(|(i, r)| {
                r.labels
                    .iter()
                    .map(move |l| LabelPair { row: i, target: l })
            })
            .collect();
        let mut scores =
            score::score_labels(&self.model, &encoded.out, &encoded.mask, &pairs)?.into_iter();
        Ok(rows
            .iter()
            .map(|row| match (row.labels.is_empty(), row.is_cancelled()) {
                (true, _) => None,
                (false, true) => Some(Vec::new()),
                (false, false) => Some(scores.by_ref().take(row.labels.len()).collect()),
            })
            .collect())
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

    fn check_rows(&self, rows: &[RowInput]) -> Result<(), EngineError> {
        let vocab = self.model.vocab_size();
        for (i, row) in rows.iter().enumerate() {
            let bad = |why: String| Err(EngineError::InvalidRow { row: i, why });
            if row.input_ids.is_empty() {
                return bad("empty input ids (need at least </s>)".into());
            }
            let ids = row.input_ids.iter().chain(row.labels.iter().flatten());
            if let Some(id) = ids.into_iter().find(|&&id| id < 0 || id >= vocab) {
                return bad(format!(
                    "token id {id} is outside the model's vocabulary of {vocab}"
                ));
            }
            if row.labels.iter().any(|l| l.is_empty()) {
                return bad("a label has no tokens (need at least </s>)".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::split_by_token_budget;

    #[test]
    fn token_budget_groups_keep_order() {
        assert!(split_by_token_budget(&[], 10).is_empty());
        assert_eq!(split_by_token_budget(&[2, 2, 2, 2], 8), vec![0..4]);
        assert_eq!(
            split_by_token_budget(&[2, 2, 5, 1], 8),
            vec![0..2, 2..3, 3..4]
        );
        assert_eq!(split_by_token_budget(&[3, 3, 3, 1, 1], 9), vec![0..3, 3..5]);
        // A row longer than the budget still runs, alone.
        assert_eq!(
            split_by_token_budget(&[1, 50, 1], 10),
            vec![0..1, 1..2, 2..3]
        );
    }
}
