//! Turning request text into engine rows, with every limit checked before any work is queued.
//! Shared by the HTTP API and `promptd predict`, so both give the same answers and errors.
use std::sync::Arc;

use crate::engine::{PromptSlot, RowInput};
use crate::model::T5Tokenizer;

/// Limits on what one input may ask for.
#[derive(Debug, Clone, Copy)]
pub struct RowLimits {
    /// Longest input (and label), in tokens including `</s>`.
    pub max_input_tokens: usize,
    /// Tokens generated when a request does not say.
    pub default_max_new_tokens: usize,
    /// Largest `max_new_tokens` accepted.
    pub max_new_tokens_limit: usize,
    /// Most candidate labels per input.
    pub max_labels: usize,
}

impl Default for RowLimits {
    fn default() -> Self {
        Self {
            max_input_tokens: 2048,
            default_max_new_tokens: 32,
            max_new_tokens_limit: 1024,
            max_labels: 256,
        }
    }
}

/// Tokenizes one input (and its labels) into a row for `prompt`, checking `limits`.
/// Errors name the limit, its value and the flag that sets it.
pub fn build_row(
    tokenizer: &T5Tokenizer,
    limits: &RowLimits,
    prompt: Option<Arc<PromptSlot>>,
    input: &str,
    max_new_tokens: Option<usize>,
    labels: &[String],
) -> Result<RowInput, String> {
    let max_new_tokens = max_new_tokens.unwrap_or(limits.default_max_new_tokens);
    if max_new_tokens > limits.max_new_tokens_limit {
        return Err(format!(
            "max_new_tokens {max_new_tokens} exceeds the limit {} (--max-new-tokens-limit)",
            limits.max_new_tokens_limit
        ));
    }
    if labels.len() > limits.max_labels {
        return Err(format!(
            "{} labels; the limit is {} (--max-labels)",
            labels.len(),
            limits.max_labels
        ));
    }
    let input_ids = tokenizer.encode(input).map_err(|e| e.to_string())?;
    if input_ids.len() > limits.max_input_tokens {
        return Err(format!(
            "input has {} tokens; the limit is {} (--max-input-tokens)",
            input_ids.len(),
            limits.max_input_tokens
        ));
    }
    let labels = labels
        .iter()
        .map(|l| {
            let ids = tokenizer.encode(l).map_err(|e| e.to_string())?;
            if ids.len() > limits.max_input_tokens {
                return Err(format!(
                    "a label has {} tokens; the limit is {} (--max-input-tokens)",
                    ids.len(),
                    limits.max_input_tokens
                ));
            }
            Ok(ids)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(RowInput {
        prompt,
        input_ids,
        max_new_tokens,
        labels,
        cancel: None,
    })
}

/// The label with the highest score.
pub fn best_label<'a>(labels: &'a [String], scores: &[f64]) -> Option<&'a str> {
    let (i, _) = scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    labels.get(i).map(String::as_str)
}
