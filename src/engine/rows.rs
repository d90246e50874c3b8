//! A batch's rows: what comes in, what goes out, what a pass cost, and the token budget that
//! groups rows into passes.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::bank::PromptSlot;
use super::sampling::{Sampling, TokenLogprob, TokenSender};

/// One request row: its prompt (or none), tokenized input, and what to compute.
#[derive(Debug, Clone, Default)]
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
    /// How the row picks its tokens: `None` decodes greedily.
    pub sampling: Option<Sampling>,
    /// Record each generated token's log-probability and the `k` most likely tokens at its
    /// step ([`RowOutput::token_logprobs`]).
    pub top_logprobs: Option<usize>,
    /// Each token is also sent here the step it is decoded (streaming).
    pub stream: Option<TokenSender>,
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
    /// Whether generation ended with an end-of-sequence token (not at max_new_tokens).
    pub ended: bool,
    /// Each generated token's log-probabilities (when the row asked: [`RowInput::top_logprobs`]).
    pub token_logprobs: Option<Vec<TokenLogprob>>,
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
