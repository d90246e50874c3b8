//! Dev-set metrics, computed through the serving engine (the same passes `predict` runs), so a
//! tuned prompt scores exactly what the server will answer.
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::data::{tokenize_capped, Example};
use super::error::TuneError;
use crate::engine::{Engine, PromptRows, PromptSlot, RowInput};
use crate::model::T5Tokenizer;

/// How a dev prediction is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// The greedy output equals the target (surrounding whitespace ignored).
    Accuracy,
    /// The greedy output equals the target after SQuAD normalisation (case, punctuation,
    /// articles, whitespace).
    ExactMatch,
    /// Rank classification: the label with the highest log-likelihood is the target.
    RankAccuracy,
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "accuracy" => Ok(Self::Accuracy),
            "exact-match" => Ok(Self::ExactMatch),
            "rank-accuracy" => Ok(Self::RankAccuracy),
            other => Err(format!(
                "unknown metric {other:?}: use accuracy, exact-match or rank-accuracy"
            )),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Accuracy => "accuracy",
            Self::ExactMatch => "exact-match",
            Self::RankAccuracy => "rank-accuracy",
        })
    }
}

/// SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces.
pub fn normalize_answer(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Labels for rank classification and class-label init: the given ones, else the distinct
/// targets in order of first appearance.
pub fn label_set<'a>(given: &[String], examples: impl Iterator<Item = &'a Example>) -> Vec<String> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let mut seen = Vec::<String>::new();
    for ex in examples {
        if !seen.contains(&ex.target) {
            seen.push(ex.target.clone());
        }
    }
    seen
}

struct EvalRow {
    input_ids: Vec<i64>,
    target: String,
}

/// A tokenized dev set ready to run.
pub struct EvalSet {
    metric: Metric,
    rows: Vec<EvalRow>,
    labels: Vec<String>,
    label_ids: Vec<Vec<i64>>,
    max_new_tokens: usize,
}

impl EvalSet {
    /// Tokenizes `examples` (inputs after `text_prefix`, if any) for `metric`; rank
    /// classification scores `labels`.
    pub fn new(
        tokenizer: &T5Tokenizer,
        examples: &[Example],
        metric: Metric,
        labels: Vec<String>,
        max_input_tokens: usize,
        max_target_tokens: usize,
        text_prefix: Option<&str>,
    ) -> Result<Self, TuneError> {
        let mut rows = Vec::with_capacity(examples.len());
        let mut longest_target = 1;
        for ex in examples {
            let input = match text_prefix {
                Some(prefix) if prefix.ends_with(char::is_whitespace) || prefix.is_empty() => {
                    format!("{prefix}{}", ex.input)
                }
                Some(prefix) => format!("{prefix} {}", ex.input),
                None => ex.input.clone(),
            };
            let (input_ids, _) = tokenize_capped(tokenizer, &input, max_input_tokens)?;
            let (target_ids, _) = tokenize_capped(tokenizer, &ex.target, max_target_tokens)?;
            longest_target = longest_target.max(target_ids.len());
            rows.push(EvalRow {
                input_ids,
                target: ex.target.clone(),
            });
        }
        let label_ids = if metric == Metric::RankAccuracy {
            if labels.is_empty() {
                return Err(TuneError::Settings(
                    "rank-accuracy needs labels (--labels, or targets in the data)".into(),
                ));
            }
            labels
                .iter()
                .map(|l| tokenizer.encode(l).map_err(TuneError::from))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        Ok(Self {
            metric,
            rows,
            labels,
            label_ids,
            // One more than the longest target: an output that runs on past it is wrong.
            max_new_tokens: longest_target + 1,
        })
    }

    /// Examples in the set.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A metric's value on a dev set, with each prediction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalOutcome {
    /// The metric.
    pub metric: Metric,
    /// Fraction correct, 0..=1.
    pub value: f64,
    /// Examples scored correct.
    pub correct: usize,
    /// Examples scored.
    pub total: usize,
    /// The prediction for each example (the text, or the chosen label).
    pub predictions: Vec<String>,
}

/// Runs the dev set through `engine` with `prompt` (None: the plain model) and scores it.
pub fn evaluate(
    engine: &mut Engine,
    tokenizer: &T5Tokenizer,
    prompt: Option<&PromptRows>,
    set: &EvalSet,
    max_batch_tokens: u64,
) -> Result<EvalOutcome, TuneError> {
    let slot = prompt
        .map(|rows| engine.register_prompt(rows))
        .transpose()?;
    evaluate_slot(engine, tokenizer, slot, set, max_batch_tokens)
}

/// Runs the dev set with a prompt already in the bank (None: the plain model) and scores it.
pub fn evaluate_slot(
    engine: &mut Engine,
    tokenizer: &T5Tokenizer,
    slot: Option<Arc<PromptSlot>>,
    set: &EvalSet,
    max_batch_tokens: u64,
) -> Result<EvalOutcome, TuneError> {
    let mut eval = ChunkedEval::new(slot);
    loop {
        if let Some(outcome) = eval.step(engine, tokenizer, set, usize::MAX, max_batch_tokens)? {
            return Ok(outcome);
        }
    }
}

/// A dev evaluation run a chunk of rows at a time, so a server's engine thread can serve
/// between chunks.
pub struct ChunkedEval {
    slot: Option<Arc<PromptSlot>>,
    next: usize,
    correct: usize,
    predictions: Vec<String>,
}

impl ChunkedEval {
    /// An evaluation of the prompt in `slot` (None: the plain model), not started.
    pub fn new(slot: Option<Arc<PromptSlot>>) -> Self {
        Self {
            slot,
            next: 0,
            correct: 0,
            predictions: Vec::new(),
        }
    }

    /// Scores the next `rows` rows of `set`; the outcome once every row is scored.
    pub fn step(
        &mut self,
        engine: &mut Engine,
        tokenizer: &T5Tokenizer,
        set: &EvalSet,
        rows: usize,
        max_batch_tokens: u64,
    ) -> Result<Option<EvalOutcome>, TuneError> {
        let _guard = tch::no_grad_guard();
        let rank = set.metric == Metric::RankAccuracy;
        let end = self.next.saturating_add(rows.max(1)).min(set.rows.len());
        let chunk = &set.rows[self.next..end];
        let inputs: Vec<RowInput> = chunk
            .iter()
            .map(|r| RowInput {
                prompt: self.slot.clone(),
                input_ids: r.input_ids.clone(),
                max_new_tokens: if rank { 0 } else { set.max_new_tokens },
                labels: if rank {
                    set.label_ids.clone()
                } else {
                    Vec::new()
                },
                cancel: None,
                sequence_logprob: false,
                ..Default::default()
            })
            .collect();
        let (results, _) = engine.run_rows(&inputs, max_batch_tokens);
        for (row, result) in chunk.iter().zip(results) {
            let out = result?;
            let (prediction, ok) = match set.metric {
                Metric::RankAccuracy => {
                    let scores = out.scores.unwrap_or_default();
                    let best = scores
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map(|(i, _)| set.labels[i].clone())
                        .unwrap_or_default();
                    let ok = best == row.target;
                    (best, ok)
                }
                Metric::Accuracy => {
                    let text = tokenizer.decode(&out.token_ids)?;
                    let ok = text.trim() == row.target.trim();
                    (text, ok)
                }
                Metric::ExactMatch => {
                    let text = tokenizer.decode(&out.token_ids)?;
                    let ok = normalize_answer(&text) == normalize_answer(&row.target);
                    (text, ok)
                }
            };
            self.correct += usize::from(ok);
            self.predictions.push(prediction);
        }
        self.next = end;
        if self.next < set.rows.len() {
            return Ok(None);
        }
        let total = set.rows.len();
        Ok(Some(EvalOutcome {
            metric: set.metric,
            value: if total == 0 {
                0.0
            } else {
                self.correct as f64 / total as f64
            },
            correct: self.correct,
            total,
            predictions: std::mem::take(&mut self.predictions),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_normalisation() {
        assert_eq!(normalize_answer("  The Cat, sat!  "), "cat sat");
        assert_eq!(normalize_answer("an Apple"), "apple");
    }

    #[test]
    fn labels_default_to_distinct_targets_in_order() {
        let ex = |t: &str| Example {
            input: "x".into(),
            target: t.into(),
        };
        let data = [ex("b"), ex("a"), ex("b")];
        assert_eq!(label_set(&[], data.iter()), vec!["b", "a"]);
        assert_eq!(label_set(&["z".into()], data.iter()), vec!["z"]);
    }
}
