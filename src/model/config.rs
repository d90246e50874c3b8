//! `config.json` of a Hugging Face T5 checkpoint, with the defaults of transformers' `T5Config`.
use std::path::Path;

use serde::Deserialize;

use super::error::ModelError;

/// T5 hyper-parameters, field names as in `T5Config`.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    /// `t5` or `mt5` (the same architecture); absent means `t5`.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Rows of the shared embedding (may exceed the tokenizer's vocabulary).
    #[serde(default = "default_vocab_size")]
    pub vocab_size: i64,
    /// Hidden width.
    #[serde(default = "default_d_model")]
    pub d_model: i64,
    /// Width of one attention head.
    #[serde(default = "default_d_kv")]
    pub d_kv: i64,
    /// Width of the feed-forward layer.
    #[serde(default = "default_d_ff")]
    pub d_ff: i64,
    /// Encoder blocks.
    #[serde(default = "default_num_layers")]
    pub num_layers: i64,
    /// Decoder blocks; `num_layers` when absent.
    #[serde(default)]
    pub num_decoder_layers: Option<i64>,
    /// Attention heads.
    #[serde(default = "default_num_heads")]
    pub num_heads: i64,
    /// Buckets of the relative position bias.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: i64,
    /// Distance beyond which all relative positions share a bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: i64,
    /// RMS norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` (T5 v1.0), `gated-gelu` (v1.1, Flan), or `[gated-]<activation>`.
    #[serde(default = "default_ff_proj")]
    pub feed_forward_proj: String,
    /// Legacy flag: `false` marks v1.1 checkpoints, whose decoder output is not rescaled.
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Written by transformers >= 5 instead of relying on `tie_word_embeddings`.
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    /// Padding id (also the decoder start id unless set).
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// End-of-sequence id, an int or a list of ints.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// First decoder input.
    #[serde(default)]
    pub decoder_start_token_id: Option<i64>,
    /// Training dropout (prompt tuning's default; serving never drops).
    #[serde(default = "default_dropout")]
    pub dropout_rate: f64,
}

fn default_dropout() -> f64 {
    0.1
}

fn default_vocab_size() -> i64 {
    32128
}
fn default_d_model() -> i64 {
    512
}
fn default_d_kv() -> i64 {
    64
}
fn default_d_ff() -> i64 {
    2048
}
fn default_num_layers() -> i64 {
    6
}
fn default_num_heads() -> i64 {
    8
}
fn default_buckets() -> i64 {
    32
}
fn default_max_distance() -> i64 {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff_proj() -> String {
    "relu".into()
}

/// `model_type` values promptd serves.
pub const SUPPORTED_MODEL_TYPES: [&str; 2] = ["t5", "mt5"];

/// Feed-forward activation, as transformers' `ACT2FN` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `relu`
    Relu,
    /// `gelu` (exact, erf)
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast` (tanh approximation)
    GeluTanh,
    /// `silu`, `swish`
    Silu,
}

impl T5Config {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let cfg: T5Config = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses and checks a config given as JSON.
    pub fn from_value(value: serde_json::Value) -> Result<Self, ModelError> {
        let cfg: T5Config =
            serde_json::from_value(value).map_err(|e| ModelError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `config.json` from a model directory, then lets `generation_config.json` (when
    /// present) override the special token ids, as transformers' `generate()` does.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let mut cfg = Self::from_file(&dir.join("config.json"))?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            #[derive(Deserialize)]
            struct Generation {
                eos_token_id: Option<serde_json::Value>,
                decoder_start_token_id: Option<i64>,
                pad_token_id: Option<i64>,
            }
            let text = std::fs::read_to_string(&gen_path).map_err(|e| ModelError::Io {
                path: gen_path.clone(),
                source: e,
            })?;
            let gen: Generation = serde_json::from_str(&text)
                .map_err(|e| ModelError::Config(format!("{}: {e}", gen_path.display())))?;
            if gen.eos_token_id.as_ref().is_some_and(|v| !v.is_null()) {
                cfg.eos_token_id = gen.eos_token_id;
            }
            cfg.decoder_start_token_id = gen.decoder_start_token_id.or(cfg.decoder_start_token_id);
            cfg.pad_token_id = gen.pad_token_id.or(cfg.pad_token_id);
        }
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        self.check_model_type()?;
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ];
        for (name, value) in positive {
            if value <= 0 {
                return Err(ModelError::Config(format!(
                    "{name} must be positive, got {value}"
                )));
            }
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return Err(ModelError::Config(format!(
                "dropout_rate must be in [0, 1), got {}",
                self.dropout_rate
            )));
        }
        if self.num_layers < 0 || self.decoder_layers() < 1 {
            return Err(ModelError::Config(format!(
                "need num_layers >= 0 and num_decoder_layers >= 1, got {} and {}",
                self.num_layers,
                self.decoder_layers()
            )));
        }
        // The log-bucket formula divides by log(max_distance / max_exact).
        let max_exact = self.relative_attention_num_buckets / 4;
        if max_exact < 1 || self.relative_attention_max_distance <= max_exact {
            return Err(ModelError::Config(format!(
                "relative_attention_num_buckets {} / max_distance {} leave no logarithmic buckets",
                self.relative_attention_num_buckets, self.relative_attention_max_distance
            )));
        }
        self.activation()?;
        Ok(())
    }

    /// Refuses architectures that merely look like T5 (e.g. `umt5` has a relative-position bias
    /// in every layer, `longt5` sparse attention): loaded as T5 they would answer wrongly.
    fn check_model_type(&self) -> Result<(), ModelError> {
        match self.model_type.as_deref() {
            None | Some("t5") | Some("mt5") => Ok(()),
            Some(other) => Err(ModelError::Config(format!(
                "model_type {other:?} is not supported: promptd serves {} (T5 v1.0, v1.1, LM-adapted, \
                 Flan-T5 and mT5)",
                SUPPORTED_MODEL_TYPES.join(" or ")
            ))),
        }
    }

    /// Decoder blocks.
    pub fn decoder_layers(&self) -> i64 {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Whether the feed-forward is gated (`gated-*`).
    pub fn is_gated(&self) -> bool {
        self.feed_forward_proj.starts_with("gated-")
    }

    /// The feed-forward activation; `gated-gelu` means `gelu_new` as in transformers.
    pub fn activation(&self) -> Result<Activation, ModelError> {
        let proj = self.feed_forward_proj.as_str();
        if proj == "gated-gelu" {
            return Ok(Activation::GeluTanh);
        }
        let parts: Vec<&str> = proj.split('-').collect();
        let name = match parts.as_slice() {
            [act] => *act,
            ["gated", act] => *act,
            _ => {
                return Err(ModelError::Config(format!(
                    "feed_forward_proj {proj:?} is not `act` or `gated-act`"
                )))
            }
        };
        match name {
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "silu" | "swish" => Ok(Activation::Silu),
            other => Err(ModelError::Config(format!(
                "unsupported activation {other:?} in feed_forward_proj"
            ))),
        }
    }

    /// Whether decoder outputs are multiplied by d_model^-0.5 before the LM head (T5 v1.0).
    pub fn scale_decoder_outputs(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings != Some(false))
    }

    /// Padding id.
    pub fn pad_id(&self) -> i64 {
        self.pad_token_id.unwrap_or(0)
    }

    /// First decoder input id.
    pub fn decoder_start_id(&self) -> i64 {
        self.decoder_start_token_id.unwrap_or_else(|| self.pad_id())
    }

    /// End-of-sequence ids (the first one is appended to inputs).
    pub fn eos_ids(&self) -> Vec<i64> {
        let ids: Vec<i64> = match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|v| v.as_i64()).collect()
            }
            _ => Vec::new(),
        };
        if ids.is_empty() {
            vec![1]
        } else {
            ids
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> T5Config {
        let cfg: T5Config = serde_json::from_str(json).unwrap();
        cfg.validate().unwrap();
        cfg
    }

    #[test]
    fn v1_0_defaults() {
        let cfg = parse("{}");
        assert_eq!(cfg.activation().unwrap(), Activation::Relu);
        assert!(!cfg.is_gated());
        assert!(cfg.scale_decoder_outputs());
        assert_eq!(cfg.decoder_layers(), 6);
        assert_eq!(cfg.eos_ids(), vec![1]);
    }

    #[test]
    fn v1_1_is_gated_tanh_gelu_unscaled() {
        let cfg = parse(
            r#"{"feed_forward_proj": "gated-gelu", "tie_word_embeddings": false, "num_decoder_layers": 3}"#,
        );
        assert_eq!(cfg.activation().unwrap(), Activation::GeluTanh);
        assert!(cfg.is_gated());
        assert!(!cfg.scale_decoder_outputs());
        assert_eq!(cfg.decoder_layers(), 3);
    }

    #[test]
    fn transformers5_flag_wins() {
        let cfg = parse(
            r#"{"tie_word_embeddings": true, "scale_decoder_outputs": false, "eos_token_id": [1, 5]}"#,
        );
        assert!(!cfg.scale_decoder_outputs());
        assert_eq!(cfg.eos_ids(), vec![1, 5]);
    }

    #[test]
    fn rejects_bad_values() {
        for json in [
            r#"{"d_model": 0}"#,
            r#"{"feed_forward_proj": "gated-gelu-x"}"#,
            r#"{"feed_forward_proj": "tanhshrink"}"#,
            r#"{"relative_attention_num_buckets": 2}"#,
            r#"{"model_type": "umt5"}"#,
        ] {
            let cfg: T5Config = serde_json::from_str(json).unwrap();
            assert!(cfg.validate().is_err(), "{json}");
        }
    }

    #[test]
    fn model_types() {
        assert_eq!(
            parse(r#"{"model_type": "t5"}"#).model_type.as_deref(),
            Some("t5")
        );
        parse(r#"{"model_type": "mt5", "feed_forward_proj": "gated-gelu"}"#);
        for other in ["umt5", "longt5", "switch_transformers", "bart", ""] {
            let json = format!(r#"{{"model_type": "{other}"}}"#);
            let cfg: T5Config = serde_json::from_str(&json).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("{other:?}")), "{err}");
            assert!(err.contains("t5 or mt5"), "{err}");
        }
    }
}
