//! Tuning IA3 instead of a prompt: one learned vector per targeted layer, scaling its output
//! (or, for a feed-forward module, its input), all in one flat f32 tensor like a LoRA's
//! factors ([`super::lora`]), initialised to ones (PEFT's `init_ia3_weights`), so the model
//! starts exactly as the frozen one.
use serde_json::json;
use tch::{Kind, Tensor};

use super::error::TuneError;
use super::lora::targets;
use super::peft::peft_adapter_files;
use crate::model::adapters::{AdapterTables, AdapterWeights, Ia3Scale, ModelShape, Site};
use crate::prompts::PromptRows;

/// What an IA3 run trains (`promptd tune --method ia3`).
#[derive(Debug, Clone, PartialEq)]
pub struct Ia3Spec {
    /// Module names (`k`, `v`, `wo`, …) or paths ending in them, PEFT's `target_modules` rule.
    pub targets: Vec<String>,
    /// The targets whose input is scaled (PEFT's `feedforward_modules`); the others' output.
    pub feedforward: Vec<String>,
}

impl Default for Ia3Spec {
    /// PEFT's own choice for T5: keys, values and the feed-forward output layer's input.
    fn default() -> Self {
        Self {
            targets: vec!["k".into(), "v".into(), "wo".into()],
            feedforward: vec!["wo".into()],
        }
    }
}

/// Where each targeted layer's vector sits in the flat parameter tensor.
#[derive(Debug, Clone)]
pub struct Ia3Layout {
    spec: Ia3Spec,
    /// (site, scales the input, features, offset).
    sites: Vec<(Site, bool, usize, usize)>,
    len: usize,
}

impl Ia3Layout {
    /// The layers of a model of `shape` that `spec` targets.
    pub fn new(spec: Ia3Spec, shape: &ModelShape) -> Result<Self, TuneError> {
        if let Some(f) = spec.feedforward.iter().find(|f| !spec.targets.contains(f)) {
            return Err(TuneError::Settings(format!(
                "--ia3-feedforward {f:?} is not one of --ia3-targets {:?}",
                spec.targets
            )));
        }
        let (mut sites, mut len) = (Vec::new(), 0);
        for site in Site::all(shape) {
            let path = site.path();
            let (Some((inputs, outputs)), true) = (site.dims(shape), targets(&spec.targets, &path))
            else {
                continue;
            };
            let input = targets(&spec.feedforward, &path);
            let features = if input { inputs } else { outputs };
            sites.push((site, input, features, len));
            len += features;
        }
        if sites.is_empty() {
            return Err(TuneError::Settings(format!(
                "--ia3-targets {:?} match no linear layer of this T5",
                spec.targets
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

    /// The targets.
    pub fn spec(&self) -> &Ia3Spec {
        &self.spec
    }

    /// PEFT's start: every factor 1.
    pub fn init(&self) -> Vec<f32> {
        vec![1.0; self.len]
    }

    /// Tables whose vectors are views into `theta` (gradients flow to it).
    pub fn tables(&self, theta: &Tensor, kind: Kind) -> Result<AdapterTables, TuneError> {
        let views = self
            .sites
            .iter()
            .map(|&(site, input, n, at)| Ok((site, input, theta.f_narrow(0, at as i64, n as i64)?)))
            .collect::<Result<Vec<_>, TuneError>>()?;
        let scales: Vec<(Site, bool, &Tensor)> =
            views.iter().map(|(s, i, v)| (*s, *i, v)).collect();
        Ok(AdapterTables::trainable_ia3(&scales, theta.device(), kind)?)
    }

    /// The vectors as the engine serves them, from flat values.
    pub fn weights(&self, values: &[f32]) -> AdapterWeights {
        let ia3 = self
            .sites
            .iter()
            .map(|&(site, input, n, at)| Ia3Scale {
                site,
                input,
                values: values[at..at + n].to_vec(),
            })
            .collect();
        AdapterWeights {
            ia3,
            ..AdapterWeights::default()
        }
    }

    /// PEFT's name of each vector (`base_model.model.<layer>.ia3_l`) and its range in the
    /// flat values.
    pub(super) fn named_ranges(
        &self,
    ) -> impl Iterator<Item = (String, std::ops::Range<usize>)> + '_ {
        self.sites.iter().map(|&(site, _, n, at)| {
            (
                format!("base_model.model.{}.ia3_l", site.path()),
                at..at + n,
            )
        })
    }

    /// The PEFT adapter folder's two files for flat `values`: adapter_config.json and
    /// adapter_model.safetensors (`…<layer>.ia3_l`, [1, in] for a feed-forward module, else
    /// [out, 1], as PEFT keeps them).
    pub fn peft_files(
        &self,
        values: &[f32],
        base_model: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), TuneError> {
        let tensors = self
            .sites
            .iter()
            .zip(self.named_ranges())
            .map(|(&(_, input, n, _), (name, range))| {
                let (rows, cols) = if input { (1, n) } else { (n, 1) };
                let values = values[range].to_vec();
                (name, PromptRows { rows, cols, values })
            })
            .collect();
        let config = json!({
            "peft_type": "IA3",
            "task_type": "SEQ_2_SEQ_LM",
            "target_modules": self.spec.targets,
            "feedforward_modules": self.spec.feedforward,
            "fan_in_fan_out": false,
            "init_ia3_weights": true,
            "modules_to_save": null,
            "inference_mode": true,
            "base_model_name_or_path": (!base_model.is_empty()).then_some(base_model),
        });
        peft_adapter_files(tensors, &config)
    }
}
