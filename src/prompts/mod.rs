//! Soft prompts: file formats, validation, PEFT adapters, prompt folders.
//!
//! The rule for which rows feed the encoder:
//! - a bare tensor file (`.safetensors` with one tensor or `prompt_embeddings`, or `.npy`)
//!   is all encoder rows;
//! - a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`) holds
//!   `num_virtual_tokens * num_transformer_submodules` rows: the first `num_virtual_tokens`
//!   are the encoder prompt (what PEFT's own `generate()` uses), the rest are decoder rows,
//!   kept but not served.
pub mod audit;
pub mod dir;
pub mod ensembles;
pub mod npy;
pub mod peft;
pub mod store;
pub mod tensor;

use std::fmt;

/// The rows the engine serves (defined there: prompts depend on the engine, never the reverse).
pub use crate::engine::PromptRows;
pub use dir::{load_prompt_dir, PromptDir};
pub use tensor::RawTensor;

/// Errors about prompt names, files and contents.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The bytes are not a readable tensor file.
    #[error("{0}")]
    Format(String),
    /// The tensor is readable but not a valid prompt for this model.
    #[error("{0}")]
    Invalid(String),
    /// A PEFT adapter config is unusable.
    #[error("adapter_config.json: {0}")]
    Adapter(String),
    /// A task name breaks the naming rule.
    #[error("{0}")]
    TaskName(String),
    /// A file could not be read (the kind is kept: a full disk is not a missing file).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

impl PromptError {
    /// A failure reading `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        PromptError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Limits every prompt is checked against.
#[derive(Debug, Clone, Copy)]
pub struct PromptLimits {
    /// Maximum encoder prompt rows (virtual tokens).
    pub max_rows: usize,
    /// Maximum size in bytes of one prompt file.
    pub max_file_bytes: usize,
}

impl Default for PromptLimits {
    fn default() -> Self {
        Self {
            max_rows: 512,
            max_file_bytes: 64 << 20,
        }
    }
}

/// A task name: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskName(String);

impl TaskName {
    /// Longest accepted name.
    pub const MAX_LEN: usize = 128;

    /// Checks `name` against the naming rule.
    pub fn parse(name: &str) -> Result<Self, PromptError> {
        let ok_first = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_rest = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok_first || !ok_rest || name.len() > Self::MAX_LEN {
            let shown: String = name.chars().take(40).collect();
            return Err(PromptError::TaskName(format!(
                "invalid task name {shown:?}: use 1 to {} characters from [A-Za-z0-9._-], starting with a letter or digit",
                Self::MAX_LEN
            )));
        }
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated soft prompt for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Rows prepended to the encoder input.
    pub encoder: PromptRows,
    /// Decoder rows of a PEFT seq2seq adapter (kept, not served).
    pub decoder: Option<PromptRows>,
}

impl Prompt {
    /// A bare tensor file (.safetensors or .npy, detected by content): all rows are encoder rows.
    pub fn from_tensor_file(
        bytes: &[u8],
        d_model: usize,
        limits: &PromptLimits,
    ) -> Result<Self, PromptError> {
        let raw = parse_tensor_file(bytes, limits)?;
        let rows = check_matrix(raw, d_model)?;
        let prompt = Prompt {
            encoder: rows,
            decoder: None,
        };
        prompt.validate(d_model, limits)?;
        Ok(prompt)
    }

    /// Encoder prompt length.
    pub fn len(&self) -> usize {
        self.encoder.rows
    }

    /// Whether the prompt has no rows (never true once validated).
    pub fn is_empty(&self) -> bool {
        self.encoder.rows == 0
    }

    /// Checks width, row count and finiteness.
    pub fn validate(&self, d_model: usize, limits: &PromptLimits) -> Result<(), PromptError> {
        let enc = &self.encoder;
        if enc.rows == 0 {
            return Err(PromptError::Invalid(
                "prompt has 0 rows; need at least 1".into(),
            ));
        }
        if enc.rows > limits.max_rows {
            return Err(PromptError::Invalid(format!(
                "prompt has {} rows; the limit is {} (max prompt length)",
                enc.rows, limits.max_rows
            )));
        }
        for part in std::iter::once(enc).chain(self.decoder.as_ref()) {
            if part.cols != d_model {
                return Err(PromptError::Invalid(format!(
                    "prompt rows have width {}, the model's d_model is {d_model}",
                    part.cols
                )));
            }
            if let Some(i) = part.values.iter().position(|v| !v.is_finite()) {
                return Err(PromptError::Invalid(format!(
                    "prompt value at row {}, column {} is {} (every value must be finite)",
                    i / part.cols.max(1),
                    i % part.cols.max(1),
                    part.values[i]
                )));
            }
        }
        Ok(())
    }
}

/// Parses .npy or .safetensors bytes, detected by content.
pub fn parse_tensor_file(bytes: &[u8], limits: &PromptLimits) -> Result<RawTensor, PromptError> {
    if bytes.is_empty() {
        return Err(PromptError::Format("empty prompt file".into()));
    }
    if bytes.len() > limits.max_file_bytes {
        return Err(PromptError::Format(format!(
            "prompt file is {} bytes; the limit is {}",
            bytes.len(),
            limits.max_file_bytes
        )));
    }
    if npy::is_npy(bytes) {
        npy::parse(bytes)
    } else if tensor::is_safetensors(bytes) {
        tensor::parse_safetensors(bytes)
    } else {
        Err(PromptError::Format(
            "not a prompt tensor file: expected .safetensors or .npy content".into(),
        ))
    }
}

/// Requires a 2-D tensor of width `d_model`.
fn check_matrix(raw: RawTensor, d_model: usize) -> Result<PromptRows, PromptError> {
    match raw.shape.as_slice() {
        &[rows, cols] => {
            if cols as usize != d_model {
                return Err(PromptError::Invalid(format!(
                    "prompt has shape [{rows}, {cols}]: width {cols} does not match the model's d_model {d_model}"
                )));
            }
            Ok(PromptRows {
                rows: rows as usize,
                cols: cols as usize,
                values: raw.values,
            })
        }
        other => Err(PromptError::Invalid(format!(
            "prompt must be a 2-D [rows, d_model] matrix, got shape {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names() {
        for ok in ["a", "task-1", "acme.sentiment_v2", "A9"] {
            TaskName::parse(ok).unwrap();
        }
        for bad in [
            "",
            ".x",
            "-x",
            "../x",
            "a/b",
            "a b",
            "%2e%2e",
            "a\0b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(TaskName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
