//! PEFT prompt-tuning adapters: `adapter_config.json` + `adapter_model.safetensors`.
use serde::Deserialize;

use super::adapter::{is_adapter, parse_adapter};
use super::error::PromptError;
use super::multitask::{task_prompts, MULTITASK};
use super::prompt::{check_matrix, parse_tensor_file, Prompt, PromptLimits};
use crate::engine::PromptRows;

/// The fields of PEFT's `PromptTuningConfig` that decide how rows are laid out.
#[derive(Debug, Deserialize)]
pub struct AdapterConfig {
    /// `PROMPT_TUNING` (or `P_TUNING`, whose saved rows are the encoder's output).
    pub peft_type: Option<String>,
    /// Rows per transformer submodule.
    pub num_virtual_tokens: usize,
    /// 2 for seq2seq (encoder rows then decoder rows), 1 otherwise.
    pub num_transformer_submodules: Option<usize>,
    /// Prompt width, when recorded.
    pub token_dim: Option<usize>,
}

impl AdapterConfig {
    /// Parses `adapter_config.json`.
    pub fn parse(bytes: &[u8]) -> Result<Self, PromptError> {
        let cfg: AdapterConfig =
            serde_json::from_slice(bytes).map_err(|e| PromptError::Adapter(e.to_string()))?;
        match cfg.peft_type.as_deref() {
            Some("PROMPT_TUNING") | Some("P_TUNING") | None => {}
            Some(other) => {
                return Err(PromptError::Adapter(format!(
                    "peft_type {other:?} is not supported; promptd serves PROMPT_TUNING, P_TUNING, LORA and IA3"
                )))
            }
        }
        if cfg.num_virtual_tokens == 0 {
            return Err(PromptError::Adapter(
                "num_virtual_tokens must be at least 1".into(),
            ));
        }
        match cfg.num_transformer_submodules {
            None | Some(1) | Some(2) => Ok(cfg),
            Some(n) => Err(PromptError::Adapter(format!(
                "num_transformer_submodules must be 1 or 2, got {n}"
            ))),
        }
    }
}

impl Prompt {
    /// Every prompt of a PEFT adapter: one, or a multitask adapter's one per task.
    pub fn from_peft_tasks(
        config: &[u8],
        weights: &[u8],
        d_model: usize,
        limits: &PromptLimits,
    ) -> Result<Vec<Self>, PromptError> {
        if super::multitask::task_count(config).is_some() {
            return task_prompts(config, weights, d_model, limits);
        }
        Ok(vec![Self::from_peft(config, weights, d_model, limits)?])
    }

    /// A PEFT adapter: the first `num_virtual_tokens` rows feed the encoder, the rest are decoder rows.
    pub fn from_peft(
        config: &[u8],
        weights: &[u8],
        d_model: usize,
        limits: &PromptLimits,
    ) -> Result<Self, PromptError> {
        #[derive(Deserialize)]
        struct Kind {
            peft_type: Option<String>,
        }
        let kind: Kind =
            serde_json::from_slice(config).map_err(|e| PromptError::Adapter(e.to_string()))?;
        match kind.peft_type.as_deref() {
            None | Some("PROMPT_TUNING" | "P_TUNING" | "LORA" | "IA3" | "PREFIX_TUNING") => {}
            Some(MULTITASK) => {
                return Err(PromptError::Adapter(format!(
                    "a {MULTITASK} adapter holds one prompt per task: it is served as tasks <name>.0, <name>.1, … (upload it, or put its folder in the prompts folder)"
                )))
            }
            Some(other) => {
                return Err(PromptError::Adapter(format!(
                    "peft_type {other:?} is not supported; promptd serves PROMPT_TUNING, P_TUNING, {MULTITASK}, PREFIX_TUNING, LORA and IA3"
                )))
            }
        }
        if is_adapter(kind.peft_type.as_deref()) {
            if weights.len() > limits.max_file_bytes {
                return Err(PromptError::Format(format!(
                    "adapter_model.safetensors is {} bytes; the limit is {}",
                    weights.len(),
                    limits.max_file_bytes
                )));
            }
            let adapter =
                parse_adapter(config, weights, limits.shape.as_ref(), limits.max_lora_rank)?;
            let prompt = Prompt {
                encoder: PromptRows {
                    rows: 0,
                    cols: d_model,
                    values: Vec::new(),
                },
                decoder: None,
                adapter: Some(adapter),
            };
            prompt.validate(d_model, limits)?;
            return Ok(prompt);
        }
        let cfg = AdapterConfig::parse(config)?;
        if let Some(dim) = cfg.token_dim {
            if dim != d_model {
                return Err(PromptError::Invalid(format!(
                    "adapter token_dim is {dim}, the model's d_model is {d_model}"
                )));
            }
        }
        let all = check_matrix(parse_tensor_file(weights, limits)?, d_model)?;
        let p = cfg.num_virtual_tokens;
        // Older configs may omit the key: p rows is one submodule, 2p rows is encoder + decoder.
        let submodules = cfg
            .num_transformer_submodules
            .unwrap_or(if all.rows == 2 * p { 2 } else { 1 });
        if all.rows != p * submodules {
            return Err(PromptError::Invalid(format!(
                "adapter_model.safetensors has {} rows; adapter_config.json implies {p} x {submodules} = {}",
                all.rows,
                p * submodules
            )));
        }
        let split = p * all.cols;
        let encoder = PromptRows {
            rows: p,
            cols: all.cols,
            values: all.values[..split].to_vec(),
        };
        let decoder = (submodules == 2).then(|| PromptRows {
            rows: p,
            cols: all.cols,
            values: all.values[split..].to_vec(),
        });
        let prompt = Prompt {
            encoder,
            decoder,
            adapter: None,
        };
        prompt.validate(d_model, limits)?;
        Ok(prompt)
    }
}
