//! What one adapter changes in the frozen model, as read from its files.
use tch::Tensor;

use super::sites::Site;

/// A LoRA update of one layer: `x @ A.T @ B.T`, the scaling folded into `b`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFactors {
    /// The layer.
    pub site: Site,
    /// Rank r.
    pub rank: usize,
    /// Input features.
    pub inputs: usize,
    /// Output features.
    pub outputs: usize,
    /// `lora_A.weight` [r, in], row-major.
    pub a: Vec<f32>,
    /// `lora_B.weight` × scaling [out, r], row-major.
    pub b: Vec<f32>,
}

/// An IA3 scale of one layer's input (feed-forward modules) or output.
#[derive(Debug, Clone, PartialEq)]
pub struct Ia3Scale {
    /// The layer.
    pub site: Site,
    /// Scales the layer's input (else its output).
    pub input: bool,
    /// One factor per feature.
    pub values: Vec<f32>,
}

/// Prefix keys and values of every decoder block's self-attention (prefix tuning).
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixWeights {
    /// Prefix positions P.
    pub len: usize,
    /// Attention heads.
    pub heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// For each decoder block: keys and values, each [heads, P, head_dim] row-major.
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
}

/// What an adapter changes in the frozen model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdapterWeights {
    /// LoRA updates.
    pub lora: Vec<LoraFactors>,
    /// IA3 scales.
    pub ia3: Vec<Ia3Scale>,
    /// A decoder self-attention prefix.
    pub prefix: Option<PrefixWeights>,
}

impl AdapterWeights {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.lora.is_empty() && self.ia3.is_empty() && self.prefix.is_none()
    }

    /// Parameters it holds.
    pub fn parameters(&self) -> usize {
        let prefix = self
            .prefix
            .as_ref()
            .map_or(0, |p| p.layers.iter().map(|(k, v)| k.len() + v.len()).sum());
        self.lora
            .iter()
            .map(|l| l.a.len() + l.b.len())
            .sum::<usize>()
            + self.ia3.iter().map(|s| s.values.len()).sum::<usize>()
            + prefix
    }
}

/// The prefix of each row of a batch, per decoder block (rows without one have length 0).
pub struct PrefixRows {
    /// Each row's prefix length [B] (int64).
    pub lens: Tensor,
    /// Per decoder block: keys and values [B, H, longest prefix, d_kv], zeros past a row's.
    pub kv: Vec<(Tensor, Tensor)>,
}
