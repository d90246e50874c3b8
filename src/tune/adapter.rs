//! What a tuning run trains besides a prompt: a LoRA or IA3 adapter, its parameters one flat
//! f32 tensor so the tuner's optimizer, accumulation and best snapshot serve every method.
use std::collections::HashMap;
use std::ops::Range;

use tch::{Kind, Tensor};

use super::error::TuneError;
use super::ia3::{Ia3Layout, Ia3Spec};
use super::lora::{LoraLayout, LoraSpec};
use super::rng::Rng;
use crate::model::adapters::{AdapterTables, AdapterWeights, ModelShape};

/// The adapter a run tunes (`--method lora|ia3`).
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterSpec {
    /// Low-rank updates of the targeted layers.
    Lora(LoraSpec),
    /// Learned scales of the targeted layers.
    Ia3(Ia3Spec),
}

impl AdapterSpec {
    /// `lora` or `ia3`.
    pub fn method(&self) -> &'static str {
        match self {
            AdapterSpec::Lora(_) => "lora",
            AdapterSpec::Ia3(_) => "ia3",
        }
    }
}

/// Where an adapter's tensors sit in the flat parameters.
#[derive(Debug, Clone)]
pub enum AdapterLayout {
    /// A LoRA's factors.
    Lora(LoraLayout),
    /// IA3 vectors.
    Ia3(Ia3Layout),
}

impl AdapterLayout {
    /// The layout of `spec` on a model of `shape`.
    pub fn new(spec: AdapterSpec, shape: &ModelShape) -> Result<Self, TuneError> {
        Ok(match spec {
            AdapterSpec::Lora(s) => AdapterLayout::Lora(LoraLayout::new(s, shape)?),
            AdapterSpec::Ia3(s) => AdapterLayout::Ia3(Ia3Layout::new(s, shape)?),
        })
    }

    /// `lora` or `ia3`.
    pub fn method(&self) -> &'static str {
        match self {
            AdapterLayout::Lora(_) => "lora",
            AdapterLayout::Ia3(_) => "ia3",
        }
    }

    /// Parameters trained.
    pub fn len(&self) -> usize {
        match self {
            AdapterLayout::Lora(l) => l.len(),
            AdapterLayout::Ia3(l) => l.len(),
        }
    }

    /// Whether it trains nothing (never: the layouts refuse that).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The LoRA rank (None for IA3).
    pub fn rank(&self) -> Option<usize> {
        match self {
            AdapterLayout::Lora(l) => Some(l.spec().rank),
            AdapterLayout::Ia3(_) => None,
        }
    }

    /// PEFT's initial values.
    pub fn init(&self, rng: &mut Rng) -> Vec<f32> {
        match self {
            AdapterLayout::Lora(l) => l.init(rng),
            AdapterLayout::Ia3(l) => l.init(),
        }
    }

    /// Tables whose tensors are views into `theta` (gradients flow to it).
    pub fn tables(&self, theta: &Tensor, kind: Kind) -> Result<AdapterTables, TuneError> {
        match self {
            AdapterLayout::Lora(l) => l.tables(theta, kind),
            AdapterLayout::Ia3(l) => l.tables(theta, kind),
        }
    }

    /// The adapter as the engine serves it, from flat values.
    pub fn weights(&self, values: &[f32]) -> AdapterWeights {
        match self {
            AdapterLayout::Lora(l) => l.weights(values),
            AdapterLayout::Ia3(l) => l.weights(values),
        }
    }

    /// PEFT's name of each tensor and its range in the flat values.
    fn named_ranges(&self) -> Vec<(String, Range<usize>)> {
        match self {
            AdapterLayout::Lora(l) => l.named_ranges().collect(),
            AdapterLayout::Ia3(l) => l.named_ranges().collect(),
        }
    }

    /// Flat values from the tensors of a PEFT adapter of this layout, by PEFT's names.
    pub fn pack(&self, named: &HashMap<String, Vec<f32>>) -> Result<Vec<f32>, TuneError> {
        let mut out = vec![0f32; self.len()];
        for (name, range) in self.named_ranges() {
            match named.get(&name) {
                Some(v) if v.len() == range.len() => out[range].copy_from_slice(v),
                Some(v) => {
                    return Err(TuneError::Data(format!(
                        "{name} has {} values; this layout has {}",
                        v.len(),
                        range.len()
                    )))
                }
                None => return Err(TuneError::Data(format!("no tensor {name}"))),
            }
        }
        Ok(out)
    }

    /// The tensors by PEFT's names from flat values.
    pub fn unpack(&self, values: &[f32]) -> Vec<(String, Vec<f32>)> {
        self.named_ranges()
            .into_iter()
            .map(|(name, range)| (name, values[range].to_vec()))
            .collect()
    }

    /// The PEFT adapter folder's two files (adapter_config.json, adapter_model.safetensors).
    pub fn peft_files(
        &self,
        values: &[f32],
        base_model: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), TuneError> {
        match self {
            AdapterLayout::Lora(l) => l.peft_files(values, base_model),
            AdapterLayout::Ia3(l) => l.peft_files(values, base_model),
        }
    }
}
