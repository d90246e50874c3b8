//! A validated prompt: the limits it is checked against, and a bare tensor file read as one.
use super::adapter::Adapter;
use super::error::PromptError;
use super::tensor::RawTensor;
use super::{npy, tensor};
use crate::engine::{PromptRows, TaskWeights};
use crate::model::adapters::ModelShape;

/// Limits every prompt is checked against.
#[derive(Debug, Clone, Copy)]
pub struct PromptLimits {
    /// Maximum encoder prompt rows (virtual tokens).
    pub max_rows: usize,
    /// Maximum size in bytes of one prompt file.
    pub max_file_bytes: usize,
    /// Highest LoRA rank an adapter may have (`--max-lora-rank`).
    pub max_lora_rank: usize,
    /// The model LoRA and IA3 adapters must fit (None: only their own consistency is
    /// checked, as without a model).
    pub shape: Option<ModelShape>,
}

impl Default for PromptLimits {
    fn default() -> Self {
        Self {
            max_rows: 512,
            max_file_bytes: 64 << 20,
            max_lora_rank: 64,
            shape: None,
        }
    }
}

/// A validated task: a soft prompt, or a LoRA or IA3 adapter (then with no prompt rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Rows prepended to the encoder input (none for an adapter).
    pub encoder: PromptRows,
    /// Decoder rows of a PEFT seq2seq adapter (kept, not served).
    pub decoder: Option<PromptRows>,
    /// A LoRA or IA3 adapter.
    pub adapter: Option<Adapter>,
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
            adapter: None,
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

    /// What the upload holds that is not served, because PEFT does not use it at inference
    /// either (said in the upload's answer and by `promptd inspect`).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(p) = self
            .adapter
            .as_ref()
            .and_then(|a| a.weights.prefix.as_ref())
        {
            notes.push(format!(
                "a prefix of {} positions reaches only the decoder's self-attention: PEFT discards its cross-attention copy at inference and gives the encoder nothing",
                p.len
            ));
        }
        if let Some(d) = &self.decoder {
            notes.push(format!(
                "the adapter's decoder half ({} rows of num_transformer_submodules: 2) is stored but not served: PEFT's generate() feeds only the encoder half",
                d.rows
            ));
        }
        notes
    }

    /// What the engine serves for it.
    pub fn weights(&self) -> TaskWeights {
        TaskWeights {
            rows: self.encoder.clone(),
            adapter: self.adapter.as_ref().map(|a| a.weights.clone()),
        }
    }

    /// Checks width, row count and finiteness.
    pub fn validate(&self, d_model: usize, limits: &PromptLimits) -> Result<(), PromptError> {
        let enc = &self.encoder;
        if enc.rows == 0 && self.adapter.is_none() {
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
pub(super) fn check_matrix(raw: RawTensor, d_model: usize) -> Result<PromptRows, PromptError> {
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
