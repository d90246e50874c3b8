//! Tuning a LoRA instead of a prompt: the factors of every targeted layer live in one flat f32
//! tensor (each site's A [r, in] then B [out, r]), so the tuner's one-tensor machinery (the
//! optimizer, gradient accumulation, the best snapshot) is unchanged, and an elementwise
//! optimizer (Adam, SGD) steps exactly as it would per matrix. The loss runs through tables
//! built from views into it ([`AdapterTables::trainable_lora`]), so gradients reach A and B.
use serde_json::json;
use tch::{Kind, Tensor};

use super::error::TuneError;
use super::peft::peft_adapter_files;
use super::rng::Rng;
use crate::model::adapters::{AdapterTables, AdapterWeights, LoraFactors, ModelShape, Site};
use crate::prompts::PromptRows;

/// Whether one of `names` (module names like `q`, or paths ending in one) names the layer at
/// `path`: PEFT's `target_modules` rule for a list.
pub(super) fn targets(names: &[String], path: &str) -> bool {
    names
        .iter()
        .any(|t| path == t || path.ends_with(&format!(".{t}")))
}

/// What a LoRA run trains (`promptd tune --method lora`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// Rank r.
    pub rank: usize,
    /// `lora_alpha`: the update is scaled by alpha / r.
    pub alpha: f64,
    /// Module names (`q`, `v`, …) or paths ending in them, PEFT's `target_modules` rule.
    pub targets: Vec<String>,
}

/// Where each targeted layer's factors sit in the flat parameter tensor.
#[derive(Debug, Clone)]
pub struct LoraLayout {
    spec: LoraSpec,
    /// (site, in, out, offset of A; B follows A).
    sites: Vec<(Site, usize, usize, usize)>,
    len: usize,
}

impl LoraLayout {
    /// The layers of a model of `shape` that `spec` targets.
    pub fn new(spec: LoraSpec, shape: &ModelShape) -> Result<Self, TuneError> {
        if spec.rank == 0 {
            return Err(TuneError::Settings("--lora-rank must be at least 1".into()));
        }
        if !(spec.alpha.is_finite() && spec.alpha > 0.0) {
            return Err(TuneError::Settings(format!(
                "--lora-alpha must be positive, got {}",
                spec.alpha
            )));
        }
        let mut sites = Vec::new();
        let mut len = 0;
        for site in Site::all(shape) {
            let path = site.path();
            if let (true, Some((inputs, outputs))) =
                (targets(&spec.targets, &path), site.dims(shape))
            {
                sites.push((site, inputs, outputs, len));
                len += spec.rank * (inputs + outputs);
            }
        }
        if sites.is_empty() {
            return Err(TuneError::Settings(format!(
                "--lora-targets {:?} match no linear layer of this T5 (q, k, v, o, {})",
                spec.targets,
                if shape.gated {
                    "wi_0, wi_1, wo"
                } else {
                    "wi, wo"
                }
            )));
        }
        Ok(Self { spec, sites, len })
    }

    /// Parameters trained.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it trains nothing (never: `new` refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rank and targets.
    pub fn spec(&self) -> &LoraSpec {
        &self.spec
    }

    fn scaling(&self) -> f64 {
        self.spec.alpha / self.spec.rank as f64
    }

    /// PEFT's start: A ~ U(-1/√in, 1/√in) (kaiming-uniform with a = √5), B = 0.
    pub fn init(&self, rng: &mut Rng) -> Vec<f32> {
        let mut out = vec![0f32; self.len];
        for &(_, inputs, _, at) in &self.sites {
            let bound = 1.0 / (inputs as f64).sqrt();
            for v in &mut out[at..at + self.spec.rank * inputs] {
                *v = ((rng.next_f64() * 2.0 - 1.0) * bound) as f32;
            }
        }
        out
    }

    /// Tables whose factors are views into `theta` (gradients flow to it).
    pub fn tables(&self, theta: &Tensor, kind: Kind) -> Result<AdapterTables, TuneError> {
        let r = self.spec.rank as i64;
        let mut views = Vec::with_capacity(self.sites.len());
        for &(site, inputs, outputs, at) in &self.sites {
            let (i, o, at) = (inputs as i64, outputs as i64, at as i64);
            let a = theta.f_narrow(0, at, r * i)?.f_view([r, i])?;
            let b = theta.f_narrow(0, at + r * i, o * r)?.f_view([o, r])?;
            views.push((site, a, b));
        }
        let factors: Vec<(Site, &Tensor, &Tensor, f64)> = views
            .iter()
            .map(|(s, a, b)| (*s, a, b, self.scaling()))
            .collect();
        Ok(AdapterTables::trainable_lora(
            &factors,
            theta.device(),
            kind,
        )?)
    }

    /// The factors as the engine serves them (B scaled), from flat values.
    pub fn weights(&self, values: &[f32]) -> AdapterWeights {
        let r = self.spec.rank;
        let scaling = self.scaling() as f32;
        let lora = self
            .sites
            .iter()
            .map(|&(site, inputs, outputs, at)| LoraFactors {
                site,
                rank: r,
                inputs,
                outputs,
                a: values[at..at + r * inputs].to_vec(),
                b: values[at + r * inputs..at + r * (inputs + outputs)]
                    .iter()
                    .map(|v| v * scaling)
                    .collect(),
            })
            .collect();
        AdapterWeights {
            lora,
            ..AdapterWeights::default()
        }
    }

    /// PEFT's name of each factor tensor (`base_model.model.<layer>.lora_A.weight`, then B) and
    /// its range in the flat values.
    pub(super) fn named_ranges(
        &self,
    ) -> impl Iterator<Item = (String, std::ops::Range<usize>)> + '_ {
        let r = self.spec.rank;
        self.sites
            .iter()
            .flat_map(move |&(site, inputs, outputs, at)| {
                let path = format!("base_model.model.{}", site.path());
                [
                    (format!("{path}.lora_A.weight"), at..at + r * inputs),
                    (
                        format!("{path}.lora_B.weight"),
                        at + r * inputs..at + r * (inputs + outputs),
                    ),
                ]
            })
    }

    /// The PEFT adapter folder's two files for flat `values`: adapter_config.json and
    /// adapter_model.safetensors (PEFT's names, B unscaled).
    pub fn peft_files(
        &self,
        values: &[f32],
        base_model: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), TuneError> {
        let r = self.spec.rank;
        let mut tensors = Vec::with_capacity(self.sites.len() * 2);
        for (name, range) in self.named_ranges() {
            let rows = if name.ends_with(".lora_A.weight") {
                r
            } else {
                range.len() / r
            };
            let values = values[range].to_vec();
            let cols = values.len() / rows;
            tensors.push((name, PromptRows { rows, cols, values }));
        }
        let mut modules: Vec<&str> = self.sites.iter().map(|(s, ..)| s.module.name()).collect();
        modules.sort_unstable();
        modules.dedup();
        let config = json!({
            "peft_type": "LORA",
            "task_type": "SEQ_2_SEQ_LM",
            "r": r,
            "lora_alpha": self.spec.alpha,
            "lora_dropout": 0.0,
            "target_modules": modules,
            "bias": "none",
            "use_rslora": false,
            "use_dora": false,
            "fan_in_fan_out": false,
            "modules_to_save": null,
            "init_lora_weights": true,
            "inference_mode": true,
            "base_model_name_or_path": (!base_model.is_empty()).then_some(base_model),
        });
        peft_adapter_files(tensors, &config)
    }
}
