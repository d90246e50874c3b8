//! Safetensors files of tuned tensors: a prompt's rows, a PEFT adapter's tensors with its
//! config.
use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};

use super::error::TuneError;
use crate::prompts::store::ADAPTER_CONFIG_KEY;
use crate::prompts::PromptRows;

/// A safetensors file of 2-D f32 `tensors` by name, with header metadata `meta`.
pub(super) fn safetensors_bytes(
    tensors: Vec<(&str, &PromptRows)>,
    meta: HashMap<String, String>,
) -> Result<Vec<u8>, TuneError> {
    let data: Vec<(&str, Vec<u8>, [usize; 2])> = tensors
        .iter()
        .map(|(name, rows)| {
            let bytes = rows.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (*name, bytes, [rows.rows, rows.cols])
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, bytes, shape)| {
            TensorView::new(Dtype::F32, shape.to_vec(), bytes).map(|v| (*name, v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TuneError::Data(e.to_string()))?;
    safetensors::tensor::serialize(views, Some(meta)).map_err(|e| TuneError::Data(e.to_string()))
}

/// A PEFT adapter's two files from its tensors (PEFT's names, 2-D f32) and config:
/// adapter_config.json, and adapter_model.safetensors that also carries the config in its
/// header metadata (`promptd.adapter_config`), so the weights file alone is a whole upload.
pub fn peft_adapter_files(
    tensors: Vec<(String, PromptRows)>,
    config: &serde_json::Value,
) -> Result<(Vec<u8>, Vec<u8>), TuneError> {
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (ADAPTER_CONFIG_KEY.to_string(), config.to_string()),
    ]);
    let weights = safetensors_bytes(tensors.iter().map(|(n, t)| (n.as_str(), t)).collect(), meta)?;
    let text = serde_json::to_vec_pretty(config).map_err(|e| TuneError::Data(e.to_string()))?;
    Ok((text, weights))
}
