//! A parsed (not yet validated) tensor from a prompt file, and the safetensors reader.
use safetensors::tensor::Dtype as StDtype;
use safetensors::SafeTensors;

use super::error::PromptError;

/// Element types a prompt file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// float32
    F32,
    /// float16
    F16,
    /// bfloat16
    BF16,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
}

/// A tensor read from a file, converted to f32, shape as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Shape as stored in the file.
    pub shape: Vec<u64>,
    /// Row-major values.
    pub values: Vec<f32>,
}

impl RawTensor {
    /// Decodes `data` holding exactly `shape` elements of `dtype`.
    pub fn from_bytes(
        dtype: Dtype,
        shape: &[u64],
        data: &[u8],
        big_endian: bool,
        what: &str,
    ) -> Result<Self, PromptError> {
        let count = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| PromptError::Format(format!("{what}: shape {shape:?} is too large")))?;
        let expected = count.checked_mul(dtype.size());
        if expected != Some(data.len()) {
            return Err(PromptError::Format(format!(
                "{what}: shape {shape:?} needs {} bytes of data, expected {} but found {}",
                expected.map_or("too many".to_string(), |e| e.to_string()),
                expected.map_or("?".to_string(), |e| e.to_string()),
                data.len()
            )));
        }
        let values = match (dtype, big_endian) {
            (Dtype::F32, false) => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            (Dtype::F32, true) => data
                .chunks_exact(4)
                .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            (Dtype::F16, false) => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            (Dtype::F16, true) => data
                .chunks_exact(2)
                .map(|c| half::f16::from_be_bytes([c[0], c[1]]).to_f32())
                .collect(),
            (Dtype::BF16, false) => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            (Dtype::BF16, true) => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_be_bytes([c[0], c[1]]).to_f32())
                .collect(),
        };
        Ok(Self {
            shape: shape.to_vec(),
            values,
        })
    }
}

/// The tensor name PEFT uses in `adapter_model.safetensors`.
pub const PEFT_KEY: &str = "prompt_embeddings";

/// Whether `bytes` plausibly start a safetensors file (8-byte length, then a JSON object).
pub fn is_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[8] == b'{'
}

/// Reads the prompt tensor of a safetensors file: `prompt_embeddings` if present, else the only tensor.
pub fn parse_safetensors(bytes: &[u8]) -> Result<RawTensor, PromptError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| PromptError::Format(format!("safetensors: {e}")))?;
    let mut names = st.names();
    names.sort();
    let name = if names.contains(&PEFT_KEY) {
        PEFT_KEY
    } else if names.len() == 1 {
        names[0]
    } else {
        return Err(PromptError::Format(format!(
            "safetensors: expected one tensor or `{PEFT_KEY}`, found {} ({})",
            names.len(),
            names.iter().take(8).copied().collect::<Vec<_>>().join(", ")
        )));
    };
    read_view(&st, name)
}

/// Reads tensor `name` of a safetensors file, if it has one.
pub fn safetensors_tensor(bytes: &[u8], name: &str) -> Result<Option<RawTensor>, PromptError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| PromptError::Format(format!("safetensors: {e}")))?;
    if !st.names().contains(&name) {
        return Ok(None);
    }
    read_view(&st, name).map(Some)
}

pub(super) fn read_view(st: &SafeTensors<'_>, name: &str) -> Result<RawTensor, PromptError> {
    let view = st
        .tensor(name)
        .map_err(|e| PromptError::Format(format!("safetensors: {e}")))?;
    let dtype = match view.dtype() {
        StDtype::F32 => Dtype::F32,
        StDtype::F16 => Dtype::F16,
        StDtype::BF16 => Dtype::BF16,
        other => {
            return Err(PromptError::Format(format!(
                "safetensors: tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"
            )))
        }
    };
    let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
    RawTensor::from_bytes(dtype, &shape, view.data(), false, "safetensors")
}
