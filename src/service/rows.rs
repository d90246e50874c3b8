//! Turning request text into engine rows, with every limit checked before any work is queued.
//! Shared by every front door and `promptd predict`, so all give the same answers and errors.
use std::sync::Arc;

use super::error::Error;
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

/// Why an input could not become a row.
#[derive(Debug, thiserror::Error)]
pub enum RowRefusal {
    /// The input breaks a limit (the client's to fix): names the limit, its value and its flag.
    #[error("{0}")]
    Limit(String),
    /// The tokenizer failed (the server's fault, not the input's).
    #[error("tokenizing: {0}")]
    Tokenizer(#[from] crate::model::ModelError),
}

/// Tokenizes one input (and its labels) into a row for `prompt`, checking `limits`.
pub fn build_row(
    tokenizer: &T5Tokenizer,
    limits: &RowLimits,
    prompt: Option<Arc<PromptSlot>>,
    input: &str,
    max_new_tokens: Option<usize>,
    labels: &[String],
) -> Result<RowInput, RowRefusal> {
    let max_new_tokens = max_new_tokens.unwrap_or(limits.default_max_new_tokens);
    if max_new_tokens > limits.max_new_tokens_limit {
        return Err(RowRefusal::Limit(format!(
            "max_new_tokens {max_new_tokens} exceeds the limit {} (--max-new-tokens-limit)",
            limits.max_new_tokens_limit
        )));
    }
    if labels.len() > limits.max_labels {
        return Err(RowRefusal::Limit(format!(
            "{} labels; the limit is {} (--max-labels)",
            labels.len(),
            limits.max_labels
        )));
    }
    // Bytes bound tokens: text too long to fit is refused before tokenizing it, so a flood of
    // huge inputs costs no tokenizer time or memory.
    let max_bytes = tokenizer.max_text_bytes(limits.max_input_tokens);
    let too_long = |what: &str, bytes: usize| {
        RowRefusal::Limit(format!(
            "{what} is {bytes} bytes, more than {} tokens can hold ({max_bytes} bytes with this vocabulary); the limit is {} tokens (--max-input-tokens)",
            limits.max_input_tokens, limits.max_input_tokens
        ))
    };
    if input.len() > max_bytes {
        return Err(too_long("input", input.len()));
    }
    if let Some(label) = labels.iter().find(|l| l.len() > max_bytes) {
        return Err(too_long("a label", label.len()));
    }
    let input_ids = tokenizer.encode(input)?;
    if input_ids.len() > limits.max_input_tokens {
        return Err(RowRefusal::Limit(format!(
            "input has {} tokens; the limit is {} (--max-input-tokens)",
            input_ids.len(),
            limits.max_input_tokens
        )));
    }
    let labels = labels
        .iter()
        .map(|l| {
            let ids = tokenizer.encode(l)?;
            if ids.len() > limits.max_input_tokens {
                return Err(RowRefusal::Limit(format!(
                    "a label has {} tokens; the limit is {} (--max-input-tokens)",
                    ids.len(),
                    limits.max_input_tokens
                )));
            }
            Ok(ids)
        })
        .collect::<Result<Vec<_>, RowRefusal>>()?;
    Ok(RowInput {
        prompt,
        input_ids,
        max_new_tokens,
        labels,
        cancel: None,
        sequence_logprob: false,
        ..Default::default()
    })
}

/// The error for an input that could not become a row: a broken limit is the client's
/// (`Invalid`), a failing tokenizer the server's (`Internal`).
pub fn refusal(at: &str, why: RowRefusal) -> Error {
    match why {
        RowRefusal::Limit(_) => Error::Invalid(format!("{at}{why}")),
        RowRefusal::Tokenizer(_) => Error::Internal(format!("{at}{why}")),
    }
}

/// A JSON integer, or a float without a fractional part (JSON Schema counts `3.0` as an integer).
pub fn as_count(n: &serde_json::Number) -> Option<usize> {
    match n.as_u64() {
        Some(u) => usize::try_from(u).ok(),
        // Saturates for huge values, which the limits then refuse by name.
        None => n
            .as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0)
            .map(|f| f as usize),
    }
}

/// An optional count: a JSON integer, or a float without a fraction (see [`as_count`]).
pub fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    use serde::Deserialize;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => as_count(&n)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected a non-negative integer, got {n}"))),
    }
}

/// The label with the highest score.
pub fn best_label<'a>(labels: &'a [String], scores: &[f64]) -> Option<&'a str> {
    let (i, _) = scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    labels.get(i).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_tokenizer_is_the_servers_fault_and_a_limit_the_clients() {
        let e = refusal(
            "inputs[1]: ",
            RowRefusal::Tokenizer(crate::model::ModelError::Tokenizer("boom".into())),
        );
        assert_eq!(e.error_type(), "internal");
        assert!(e.is_server_fault());
        assert!(e.to_string().starts_with("inputs[1]: tokenizing: "), "{e}");
        let e = refusal("", RowRefusal::Limit("too long".into()));
        assert_eq!(e.error_type(), "validation");
    }
}
