//! PEFT LoRA and IA3 adapters (`adapter_config.json` + `adapter_model.safetensors`), read into
//! the factors the engine mixes per row ([`AdapterWeights`]), checked against the model.
//!
//! Only what changes inference is read; options PEFT applies differently, or that promptd
//! cannot serve in a shared pass (DoRA, biases, `modules_to_save`, …), are refused by name.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use regex::Regex;
use safetensors::SafeTensors;
use serde::Deserialize;
use serde_json::Value;

use super::error::PromptError;
use super::tensor::{read_view, RawTensor};
use crate::model::adapters::{
    AdapterWeights, Ia3Scale, LoraFactors, ModelShape, PrefixWeights, Site,
};

/// Which kind of adapter a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// Low-rank updates of linear layers.
    Lora,
    /// Learned scales of activations.
    Ia3,
    /// Learned keys and values before the decoder's own (prefix tuning).
    Prefix,
}

/// A validated LoRA or IA3 adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    /// LoRA or IA3.
    pub kind: AdapterKind,
    /// `adapter_config.json` as uploaded (stored with the tensors).
    pub config: String,
    /// The tensors as uploaded (f32), by their PEFT names.
    pub tensors: Vec<(String, RawTensor)>,
    /// What the engine applies.
    pub weights: Arc<AdapterWeights>,
}

impl Adapter {
    /// The largest LoRA rank (None for IA3).
    pub fn rank(&self) -> Option<usize> {
        self.weights.lora.iter().map(|f| f.rank).max()
    }

    /// The module names it changes (`q`, `v`, `wo`, …), sorted.
    pub fn modules(&self) -> Vec<&'static str> {
        let lora = self.weights.lora.iter().map(|f| f.site.module);
        let ia3 = self.weights.ia3.iter().map(|s| s.site.module);
        let set: BTreeSet<_> = lora.chain(ia3).collect();
        set.into_iter().map(|m| m.name()).collect()
    }
}

/// Whether a config names a LoRA, IA3 or prefix-tuning adapter.
pub fn is_adapter(peft_type: Option<&str>) -> bool {
    matches!(peft_type, Some("LORA" | "IA3" | "PREFIX_TUNING"))
}

/// PEFT's `target_modules` (or `feedforward_modules`): names, or one regular expression.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Targets {
    List(Vec<String>),
    Pattern(String),
}

impl Targets {
    /// Whether module path `path` is targeted, as PEFT decides it: a regular expression must
    /// match the whole path; a name must equal the path or end it after a dot.
    fn matches(&self, path: &str) -> Result<bool, PromptError> {
        match self {
            Targets::Pattern(p) => Ok(full_regex(p, "target_modules")?.is_match(path)),
            Targets::List(names) => Ok(names.iter().any(|n| ends_with_module(path, n))),
        }
    }
}

fn ends_with_module(path: &str, name: &str) -> bool {
    path == name || path.ends_with(&format!(".{name}"))
}

fn full_regex(pattern: &str, field: &str) -> Result<Regex, PromptError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        PromptError::Adapter(format!(
            "{field} {pattern:?} is not a regular expression: {e}"
        ))
    })
}

/// The fields of a LoRA or IA3 config promptd reads or refuses.
#[derive(Debug, Deserialize)]
struct Config {
    peft_type: String,
    #[serde(default)]
    r: Option<f64>,
    #[serde(default)]
    lora_alpha: Option<f64>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    rank_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    target_modules: Option<Targets>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    num_virtual_tokens: Option<usize>,
    #[serde(default)]
    num_layers: Option<usize>,
    #[serde(default)]
    token_dim: Option<usize>,
    #[serde(default)]
    num_attention_heads: Option<usize>,
    #[serde(default)]
    num_transformer_submodules: Option<usize>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

/// Options that change what the adapter computes in ways a shared pass does not serve:
/// refused when set to anything but their default.
const REFUSED: [(&str, &str); 9] = [
    ("use_dora", "DoRA (weight-decomposed LoRA)"),
    ("modules_to_save", "fully trained copies of modules"),
    ("lora_bias", "LoRA biases"),
    (
        "fan_in_fan_out",
        "transposed (Conv1D) weights, which T5 does not have",
    ),
    ("layer_replication", "replicated layers"),
    (
        "target_parameters",
        "adapted parameters outside linear layers",
    ),
    ("trainable_token_indices", "trained token embeddings"),
    ("alora_invocation_tokens", "activated LoRA"),
    ("use_qalora", "quantization-aware LoRA"),
];

fn is_default(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Self, PromptError> {
        let cfg: Config =
            serde_json::from_slice(bytes).map_err(|e| PromptError::Adapter(e.to_string()))?;
        for (field, what) in REFUSED {
            if let Some(v) = cfg.rest.get(field).filter(|v| !is_default(v)) {
                return Err(PromptError::Adapter(format!(
                    "{field} is {v}: {what} is not supported"
                )));
            }
        }
        if let Some(bias) = cfg.bias.as_deref().filter(|b| *b != "none") {
            return Err(PromptError::Adapter(format!(
                "bias is {bias:?}: only \"none\" is supported (trained biases change the frozen layers for every task)"
            )));
        }
        Ok(cfg)
    }

    /// A per-module value of `pattern` (PEFT's `rank_pattern` / `alpha_pattern` key rule: a
    /// key matches a path it ends after a dot, or as a regular expression), else `default`.
    fn pattern_value(
        pattern: &BTreeMap<String, f64>,
        field: &str,
        path: &str,
        default: f64,
    ) -> Result<f64, PromptError> {
        for (key, value) in pattern {
            if ends_with_module(path, key)
                || full_regex(&format!("(.*\\.)?(?:{key})"), field)?.is_match(path)
            {
                return Ok(*value);
            }
        }
        Ok(default)
    }
}

/// Reads a LoRA or IA3 adapter for a model of `shape` (None: only its own consistency is
/// checked, as `promptd store verify` does without a model); ranks up to `max_rank`.
pub fn parse_adapter(
    config: &[u8],
    weights: &[u8],
    shape: Option<&ModelShape>,
    max_rank: usize,
) -> Result<Adapter, PromptError> {
    let cfg = Config::parse(config)?;
    let st = SafeTensors::deserialize(weights)
        .map_err(|e| PromptError::Format(format!("adapter_model.safetensors: {e}")))?;
    let mut names = st.names();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        tensors.push((name.to_string(), read_view(&st, name)?));
    }
    let weights = match cfg.peft_type.as_str() {
        "LORA" => lora(&cfg, &tensors, shape, max_rank)?,
        "IA3" => ia3(&tensors, shape)?,
        "PREFIX_TUNING" => prefix(&cfg, &tensors, shape)?,
        other => {
            return Err(PromptError::Adapter(format!(
                "peft_type {other:?} is not a LoRA or IA3 adapter"
            )))
        }
    };
    if let Some(targets) = &cfg.target_modules {
        check_targets(targets, &weights, shape)?;
    }
    if weights.is_empty() {
        return Err(PromptError::Invalid(
            "adapter_model.safetensors holds no adapter tensors".into(),
        ));
    }
    let kind = match cfg.peft_type.as_str() {
        "LORA" => AdapterKind::Lora,
        "IA3" => AdapterKind::Ia3,
        _ => AdapterKind::Prefix,
    };
    Ok(Adapter {
        kind,
        config: String::from_utf8_lossy(config).into_owned(),
        tensors,
        weights: Arc::new(weights),
    })
}

/// The site a tensor sits on and the rest of its name, e.g. (`…SelfAttention.q`, `lora_A.weight`).
fn split_site<'a>(name: &'a str, suffixes: &[&'a str]) -> Result<(Site, &'a str), PromptError> {
    for suffix in suffixes {
        if let Some(path) = name.strip_suffix(&format!(".{suffix}")) {
            return match Site::parse(path) {
                Some(site) => Ok((site, suffix)),
                None => Err(PromptError::Invalid(format!(
                    "adapter tensor `{name}` is not on a linear layer of a T5 block (q, k, v, o, wi, wi_0, wi_1, wo)"
                ))),
            };
        }
    }
    Err(PromptError::Invalid(format!(
        "adapter tensor `{name}` is not a {} tensor",
        suffixes.join(" / ")
    )))
}

fn check_finite(name: &str, t: &RawTensor) -> Result<(), PromptError> {
    match t.values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(PromptError::Invalid(format!(
            "adapter tensor `{name}` has a non-finite value at flat index {i}"
        ))),
        None => Ok(()),
    }
}

/// (in, out) of `site` in the model, or an error naming the tensor.
fn model_dims(
    site: &Site,
    shape: Option<&ModelShape>,
    name: &str,
) -> Result<Option<(usize, usize)>, PromptError> {
    let Some(shape) = shape else {
        return Ok(None);
    };
    match site.dims(shape) {
        Some(d) => Ok(Some(d)),
        None => Err(PromptError::Invalid(format!(
            "adapter tensor `{name}` is on {}, which this model does not have ({} encoder and {} decoder blocks, {} feed-forward)",
            site.path(),
            shape.encoder_layers,
            shape.decoder_layers,
            if shape.gated { "gated: wi_0, wi_1, wo" } else { "wi, wo" }
        ))),
    }
}

fn lora(
    cfg: &Config,
    tensors: &[(String, RawTensor)],
    shape: Option<&ModelShape>,
    max_rank: usize,
) -> Result<AdapterWeights, PromptError> {
    let r = cfg
        .r
        .ok_or_else(|| PromptError::Adapter("r (the LoRA rank) is missing".into()))?;
    let alpha = cfg.lora_alpha.unwrap_or(8.0);
    let mut pairs: BTreeMap<Site, (Option<&RawTensor>, Option<&RawTensor>, &str)> = BTreeMap::new();
    for (name, t) in tensors {
        check_finite(name, t)?;
        let (site, suffix) = split_site(name, &["lora_A.weight", "lora_B.weight"])?;
        let entry = pairs.entry(site).or_insert((None, None, name));
        if suffix == "lora_A.weight" {
            entry.0 = Some(t);
        } else {
            entry.1 = Some(t);
        }
    }
    let mut out = AdapterWeights::default();
    for (site, (a, b, name)) in pairs {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(PromptError::Invalid(format!(
                "{} has only one of lora_A and lora_B (tensor `{name}`)",
                site.path()
            )));
        };
        let (&[rank, inputs], &[outputs, rank_b]) = (a.shape.as_slice(), b.shape.as_slice()) else {
            return Err(PromptError::Invalid(format!(
                "{}: lora_A must be [r, in] and lora_B [out, r], got {:?} and {:?}",
                site.path(),
                a.shape,
                b.shape
            )));
        };
        let (rank, inputs, outputs) = (rank as usize, inputs as usize, outputs as usize);
        if rank_b as usize != rank || rank == 0 {
            return Err(PromptError::Invalid(format!(
                "{}: lora_A {:?} and lora_B {:?} disagree on the rank",
                site.path(),
                a.shape,
                b.shape
            )));
        }
        if rank > max_rank {
            return Err(PromptError::Invalid(format!(
                "{}: LoRA rank {rank} is over the limit of {max_rank} (--max-lora-rank)",
                site.path()
            )));
        }
        if let Some((want_in, want_out)) = model_dims(&site, shape, name)? {
            if (inputs, outputs) != (want_in, want_out) {
                return Err(PromptError::Invalid(format!(
                    "{}: the LoRA maps {inputs} → {outputs} features; the model's layer maps {want_in} → {want_out}",
                    site.path()
                )));
            }
        }
        let path = site.path();
        let r_site = Config::pattern_value(&cfg.rank_pattern, "rank_pattern", &path, r)?;
        let alpha_site = Config::pattern_value(&cfg.alpha_pattern, "alpha_pattern", &path, alpha)?;
        if r_site as usize != rank {
            return Err(PromptError::Invalid(format!(
                "{path}: the tensors have rank {rank}, adapter_config.json says {r_site}"
            )));
        }
        let scaling = if cfg.use_rslora {
            alpha_site / r_site.sqrt()
        } else {
            alpha_site / r_site
        } as f32;
        out.lora.push(LoraFactors {
            site,
            rank,
            inputs,
            outputs,
            a: a.values.clone(),
            b: b.values.iter().map(|v| v * scaling).collect(),
        });
    }
    Ok(out)
}

fn ia3(
    tensors: &[(String, RawTensor)],
    shape: Option<&ModelShape>,
) -> Result<AdapterWeights, PromptError> {
    let mut out = AdapterWeights::default();
    for (name, t) in tensors {
        check_finite(name, t)?;
        let (site, _) = split_site(name, &["ia3_l"])?;
        // PEFT stores a feed-forward module's vector as [1, in] (it scales the input) and
        // any other as [out, 1] (it scales the output).
        let (input, len) = match t.shape.as_slice() {
            &[1, n] => (true, n as usize),
            &[n, 1] => (false, n as usize),
            other => {
                return Err(PromptError::Invalid(format!(
                "adapter tensor `{name}` has shape {other:?}; IA3 vectors are [1, in] or [out, 1]"
            )))
            }
        };
        if let Some((inputs, outputs)) = model_dims(&site, shape, name)? {
            let want = if input { inputs } else { outputs };
            if len != want {
                return Err(PromptError::Invalid(format!(
                    "adapter tensor `{name}` scales {len} features; the model's {} has {want} {}",
                    site.path(),
                    if input { "inputs" } else { "outputs" }
                )));
            }
        }
        out.ia3.push(Ia3Scale {
            site,
            input,
            values: t.values.clone(),
        });
    }
    Ok(out)
}

/// A prefix-tuning adapter as PEFT applies it to T5 at inference: `prompt_embeddings`
/// [P, num_layers·2·token_dim] read as num_layers·2 slots of keys or values; PEFT doubles the
/// slots for the cross-attention, gives decoder block j the four slots from 4j (wrapping), and
/// then discards the cross-attention pair, so block j's self-attention gets keys from slot
/// 4j mod 2L and values from 4j+1 mod 2L (blocks may share slots). The encoder gets nothing.
fn prefix(
    cfg: &Config,
    tensors: &[(String, RawTensor)],
    shape: Option<&ModelShape>,
) -> Result<AdapterWeights, PromptError> {
    let field = |v: Option<usize>, name: &str| {
        v.filter(|&n| n > 0)
            .ok_or_else(|| PromptError::Adapter(format!("{name} is missing or 0")))
    };
    let p = field(cfg.num_virtual_tokens, "num_virtual_tokens")?;
    let layers = field(cfg.num_layers, "num_layers")?;
    let width = field(cfg.token_dim, "token_dim")?;
    let heads = field(cfg.num_attention_heads, "num_attention_heads")?;
    match cfg.num_transformer_submodules {
        None | Some(2) => {}
        Some(n) => {
            return Err(PromptError::Adapter(format!(
                "num_transformer_submodules is {n}; a T5 (encoder-decoder) prefix has 2"
            )))
        }
    }
    if width % heads != 0 {
        return Err(PromptError::Adapter(format!(
            "token_dim {width} is not a multiple of num_attention_heads {heads}"
        )));
    }
    let head_dim = width / heads;
    let [(name, t)] = tensors else {
        return Err(PromptError::Invalid(format!(
            "a prefix adapter holds one tensor (prompt_embeddings), found {}",
            tensors.len()
        )));
    };
    check_finite(name, t)?;
    if t.shape != [p as u64, (layers * 2 * width) as u64] {
        return Err(PromptError::Invalid(format!(
            "`{name}` has shape {:?}; adapter_config.json implies [{p}, {}] (num_virtual_tokens, num_layers x 2 x token_dim)",
            t.shape,
            layers * 2 * width
        )));
    }
    let decoder_layers = match shape {
        Some(s) => {
            if heads != s.heads || head_dim * s.heads != s.inner {
                return Err(PromptError::Adapter(format!(
                    "num_attention_heads {heads} and token_dim {width} give heads of width {head_dim}; the model has {} heads of width {}",
                    s.heads,
                    s.inner / s.heads.max(1)
                )));
            }
            if s.decoder_layers > layers {
                return Err(PromptError::Adapter(format!(
                    "num_layers is {layers} but the model has {} decoder blocks: PEFT itself has no prefix for the last ones and cannot run this adapter on this model",
                    s.decoder_layers
                )));
            }
            s.decoder_layers
        }
        None => layers,
    };
    // Slot s of row i starts at i·(2L·width) + s·width; one slot is [P, heads, head_dim].
    let slot = |s: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity(p * width);
        for h in 0..heads {
            for i in 0..p {
                let at = i * layers * 2 * width + s * width + h * head_dim;
                out.extend_from_slice(&t.values[at..at + head_dim]);
            }
        }
        out
    };
    let kv = (0..decoder_layers)
        .map(|j| (slot(4 * j % (2 * layers)), slot((4 * j + 1) % (2 * layers))))
        .collect();
    Ok(AdapterWeights {
        prefix: Some(PrefixWeights {
            len: p,
            heads,
            head_dim,
            layers: kv,
        }),
        ..AdapterWeights::default()
    })
}

/// Every name in a `target_modules` list must match some linear layer of the model.
fn check_targets(
    targets: &Targets,
    weights: &AdapterWeights,
    shape: Option<&ModelShape>,
) -> Result<(), PromptError> {
    let sites: Vec<Site> = match shape {
        Some(shape) => Site::all(shape),
        None => weights
            .lora
            .iter()
            .map(|f| f.site)
            .chain(weights.ia3.iter().map(|s| s.site))
            .collect(),
    };
    let paths: Vec<String> = sites.iter().map(Site::path).collect();
    match targets {
        Targets::List(names) => {
            for name in names {
                if !paths.iter().any(|p| ends_with_module(p, name)) {
                    return Err(PromptError::Adapter(format!(
                        "target_modules entry {name:?} matches no linear layer of this T5 (q, k, v, o, {})",
                        if shape.is_some_and(|s| s.gated) { "wi_0, wi_1, wo" } else { "wi, wo" }
                    )));
                }
            }
        }
        Targets::Pattern(p) => {
            let mut any = false;
            for path in &paths {
                any |= targets.matches(path)?;
            }
            if !any {
                return Err(PromptError::Adapter(format!(
                    "target_modules {p:?} matches no linear layer of this T5"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_slots_follow_peft_and_wrap_past_the_encoder_depth() {
        // 4 layers of slots, one head of width 2, one prefix position: slot s holds s.
        let (layers, width) = (4usize, 2usize);
        let values: Vec<f32> = (0..layers * 2 * width)
            .map(|i| (i / width) as f32)
            .collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let weights = safetensors::tensor::serialize(
            [(
                "prompt_embeddings",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![1, layers * 2 * width],
                    &bytes,
                )
                .unwrap(),
            )],
            None,
        )
        .unwrap();
        let config = br#"{"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 1, "num_layers": 4,
            "token_dim": 2, "num_attention_heads": 1, "num_transformer_submodules": 2}"#;
        let shape = ModelShape {
            d_model: 2,
            inner: 2,
            heads: 1,
            d_ff: 4,
            gated: false,
            encoder_layers: 4,
            decoder_layers: 4,
        };
        let a = parse_adapter(config, &weights, Some(&shape), 64).unwrap();
        let p = a.weights.prefix.as_ref().unwrap();
        let slots: Vec<(f32, f32)> = p.layers.iter().map(|(k, v)| (k[0], v[0])).collect();
        assert_eq!(slots, vec![(0.0, 1.0), (4.0, 5.0), (0.0, 1.0), (4.0, 5.0)]);
        // More decoder blocks than the prefix has layers: PEFT cannot run it, refused.
        let deeper = ModelShape {
            decoder_layers: 5,
            ..shape
        };
        let err = parse_adapter(config, &weights, Some(&deeper), 64).unwrap_err();
        assert!(err.to_string().contains("num_layers is 4"), "{err}");
    }

    #[test]
    fn target_lists_match_peft_suffix_rule() {
        let t = Targets::List(vec!["q".into(), "EncDecAttention.v".into()]);
        assert!(t
            .matches("decoder.block.0.layer.1.EncDecAttention.v")
            .unwrap());
        assert!(!t
            .matches("decoder.block.0.layer.0.SelfAttention.v")
            .unwrap());
        assert!(t
            .matches("encoder.block.0.layer.0.SelfAttention.q")
            .unwrap());
        let p = Targets::Pattern(r".*encoder.*\.(k|o)".into());
        assert!(p
            .matches("encoder.block.1.layer.0.SelfAttention.k")
            .unwrap());
        assert!(!p
            .matches("decoder.block.1.layer.0.SelfAttention.k")
            .unwrap());
    }
}
