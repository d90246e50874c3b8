//! Deterministic random T5 checkpoints and prompt folders for benchmarks (`promptd-dev
//! make-model` / `make-prompts`, and benches/engine.rs), and random weights made straight on
//! the device for the public T5 shapes (`T5Model::synthetic`, `promptd-dev engine-pass
//! --synthetic`). Cost does not depend on the weights' values, but they are
//! never zeros (zeros would make every row and every step alike).
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::config::T5Config;
use super::error::ModelError;
use super::t5::{ModelOptions, T5Model};
use super::weights::WeightSource;

/// Checkpoint shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The benchmarks' t5-small stand-in: d_model 512, 6+6 layers, 8 heads, d_ff 1024
    /// gated-gelu, vocab 32128.
    Small,
    /// For quick runs: d_model 128, 2+2 layers, 4 heads, d_ff 256, vocab 32128.
    Mini,
    /// The public T5 v1.1 / Flan-T5 configs (gated-gelu, untied head, vocab 32128), by size:
    /// small, base, large, xl (3B) and xxl (11B).
    Public(PublicSize),
}

/// Sizes of the public T5 v1.1 / Flan-T5 checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicSize {
    /// google/flan-t5-small: d_model 512, d_ff 1024, 6 heads, 8+8 layers.
    Small,
    /// google/flan-t5-base: d_model 768, d_ff 2048, 12 heads, 12+12 layers.
    Base,
    /// google/flan-t5-large: d_model 1024, d_ff 2816, 16 heads, 24+24 layers.
    Large,
    /// google/flan-t5-xl: d_model 2048, d_ff 5120, 32 heads, 24+24 layers.
    Xl,
    /// google/flan-t5-xxl: d_model 4096, d_ff 10240, 64 heads, 24+24 layers.
    Xxl,
}

impl std::str::FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "small" => Ok(Shape::Small),
            "mini" => Ok(Shape::Mini),
            "t5-small" => Ok(Shape::Public(PublicSize::Small)),
            "t5-base" => Ok(Shape::Public(PublicSize::Base)),
            "t5-large" => Ok(Shape::Public(PublicSize::Large)),
            "t5-xl" => Ok(Shape::Public(PublicSize::Xl)),
            "t5-xxl" => Ok(Shape::Public(PublicSize::Xxl)),
            other => Err(format!(
                "{other:?}: expected small, mini, t5-small, t5-base, t5-large, t5-xl or t5-xxl"
            )),
        }
    }
}

impl Shape {
    /// The shape's `config.json`.
    pub fn config_json(self) -> Value {
        let d = dims(self);
        json!({
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "vocab_size": d.vocab,
            "d_model": d.d_model,
            "d_kv": d.d_kv,
            "d_ff": d.d_ff,
            "num_layers": d.layers,
            "num_decoder_layers": d.layers,
            "num_heads": d.heads,
            "relative_attention_num_buckets": d.buckets,
            "relative_attention_max_distance": 128,
            "dropout_rate": 0.0,
            "layer_norm_epsilon": 1e-6,
            "feed_forward_proj": "gated-gelu",
            "is_encoder_decoder": true,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "decoder_start_token_id": 0,
            "tie_word_embeddings": false,
        })
    }

    /// The shape's config.
    pub fn config(self) -> T5Config {
        T5Config::from_value(self.config_json()).expect("the built-in shapes are valid configs")
    }
}

/// Random weights for any config, made on the model's device in its dtype when asked for:
/// `T5Model::synthetic`. Scales as in [`make_model`] (unit embeddings, fan-in scaled
/// projections, unit layer norms), so activations stay finite at every depth.
pub struct Synthetic {
    opts: ModelOptions,
    /// Hugging Face's `_init_weights` scales instead ([`T5Model::synthetic_hf_init`]): the
    /// model's d_model and d_kv, and whether its head is the embedding matrix.
    hf: Option<(i64, i64, bool)>,
    seed: i64,
}

/// Normal values for tensor `name` of a model seeded with `seed`, from a generator of their
/// own (SplitMix64, Box–Muller): the same values whatever else draws from libtorch's
/// process-wide generator meanwhile (tests running side by side).
fn own_normal(name: &str, shape: &[i64], seed: i64) -> Result<Tensor, ModelError> {
    let mut state = name
        .bytes()
        .fold(seed as u64 ^ 0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        // A uniform in (0, 1]: never 0, so the logarithm below is finite.
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    let n = shape.iter().product::<i64>().max(0) as usize;
    let mut values = Vec::with_capacity(n + 1);
    while values.len() < n {
        let (u, v) = (next(), next());
        let r = (-2.0 * u.ln()).sqrt();
        let angle = std::f64::consts::TAU * v;
        values.push((r * angle.cos()) as f32);
        values.push((r * angle.sin()) as f32);
    }
    values.truncate(n);
    Ok(Tensor::f_from_slice(&values)?.f_view(shape)?)
}

impl Synthetic {
    /// Seeds libtorch's generators (CPU and CUDA) with `seed`.
    pub fn new(opts: ModelOptions, seed: i64) -> Self {
        tch::manual_seed(seed);
        Self {
            opts,
            hf: None,
            seed,
        }
    }
}

impl WeightSource for Synthetic {
    fn contains(&self, name: &str) -> bool {
        match self.hf {
            Some((_, _, true)) => name == "shared.weight",
            // An untied head, like every v1.1 checkpoint.
            _ => matches!(name, "shared.weight" | "lm_head.weight"),
        }
    }

    fn is_alias(&self, _a: &str, _b: &str) -> bool {
        false
    }

    fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        let options = (self.opts.kind, self.opts.device);
        if name.ends_with("layer_norm.weight") {
            return Ok(Tensor::f_ones(shape, options)?);
        }
        if let Some((d_model, d_kv, _)) = self.hf {
            // transformers' T5PreTrainedModel._init_weights with factor 1.
            let d = d_model as f64;
            let std = if name.ends_with("relative_attention_bias.weight") {
                d.powf(-0.5)
            } else if name.ends_with(".q.weight") {
                (d * d_kv as f64).powf(-0.5)
            } else if name == "shared.weight" || name == "lm_head.weight" {
                1.0
            } else {
                (*shape.last().unwrap_or(&1) as f64).powf(-0.5)
            };
            let t = own_normal(name, shape, self.seed)?.f_mul_scalar(std)?;
            return Ok(t.f_to_kind(self.opts.kind)?.f_to_device(self.opts.device)?);
        }
        let std = if name.ends_with("relative_attention_bias.weight") {
            0.5
        } else if name == "shared.weight" {
            1.0
        } else {
            // A projection [out, in]: fan-in scaling.
            (*shape.last().unwrap_or(&1) as f64).powf(-0.5)
        };
        let mut t = Tensor::f_randn(shape, options)?;
        let _ = t.f_mul_scalar_(std)?;
        Ok(t)
    }
}

impl T5Model {
    /// A model of `config`'s shapes with random weights made directly on `opts`' device in its
    /// dtype (no files, no host copy): for measuring shapes whose checkpoints are not at hand.
    pub fn synthetic(config: T5Config, opts: ModelOptions, seed: i64) -> Result<Self, ModelError> {
        let source = Synthetic::new(opts, seed);
        Self::from_weights(config, &source, opts)
    }

    /// Like [`T5Model::synthetic`], with the scales of a freshly initialised transformers
    /// model (`T5ForConditionalGeneration(config)`): queries scaled by (d_model·d_kv)^-0.5,
    /// unit embeddings, the head tied to them when the config ties it. The values come from a
    /// generator of the model's own, so the same seed gives the same model in any process
    /// state.
    pub fn synthetic_hf_init(
        config: T5Config,
        opts: ModelOptions,
        seed: i64,
    ) -> Result<Self, ModelError> {
        let tied = config.tie_word_embeddings.unwrap_or(true);
        let mut source = Synthetic::new(opts, seed);
        source.hf = Some((config.d_model, config.d_kv, tied));
        Self::from_weights(config, &source, opts)
    }
}

/// A random checkpoint to write.
#[derive(Debug, Clone)]
pub struct RandomModel {
    /// Output folder (created; files in it are replaced).
    pub out: PathBuf,
    /// Shapes.
    pub shape: Shape,
    /// Random seed.
    pub seed: i64,
    /// A T5 tokenizer.json to start from; its vocabulary is padded to the model's size.
    pub tokenizer: PathBuf,
}

/// A folder of random prompts to write.
#[derive(Debug, Clone)]
pub struct RandomPrompts {
    /// Output folder (created).
    pub out: PathBuf,
    /// Number of prompts (tasks `task00000`, `task00001`, …).
    pub count: usize,
    /// Rows per prompt (the most, with `min_length`).
    pub length: usize,
    /// Prompt k gets `min_length + k mod (length - min_length + 1)` rows: lengths spread
    /// evenly over min_length..=length (None: every prompt `length` rows).
    pub min_length: Option<usize>,
    /// Row width (the model's d_model).
    pub d_model: usize,
    /// Random seed.
    pub seed: u64,
}

struct Dims {
    d_model: i64,
    d_kv: i64,
    d_ff: i64,
    layers: i64,
    heads: i64,
    vocab: i64,
    buckets: i64,
}

fn dims(shape: Shape) -> Dims {
    match shape {
        Shape::Small => Dims {
            d_model: 512,
            d_kv: 64,
            d_ff: 1024,
            layers: 6,
            heads: 8,
            vocab: 32128,
            buckets: 32,
        },
        Shape::Mini => Dims {
            d_model: 128,
            d_kv: 32,
            d_ff: 256,
            layers: 2,
            heads: 4,
            vocab: 32128,
            buckets: 32,
        },
        Shape::Public(size) => {
            let (d_model, d_ff, heads, layers) = match size {
                PublicSize::Small => (512, 1024, 6, 8),
                PublicSize::Base => (768, 2048, 12, 12),
                PublicSize::Large => (1024, 2816, 16, 24),
                PublicSize::Xl => (2048, 5120, 32, 24),
                PublicSize::Xxl => (4096, 10240, 64, 24),
            };
            Dims {
                d_model,
                d_kv: 64,
                d_ff,
                layers,
                heads,
                vocab: 32128,
                buckets: 32,
            }
        }
    }
}

/// Writes config.json, model.safetensors and tokenizer.json for `args.shape`.
pub fn make_model(args: RandomModel) -> Result<(), String> {
    let d = dims(args.shape);
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let config = args.shape.config_json();
    write_json(&args.out.join("config.json"), &config)?;

    tch::manual_seed(args.seed);
    let _guard = tch::no_grad_guard();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut add = |name: String, shape: &[i64], std: f64| {
        let t = if std == 0.0 {
            Tensor::ones(shape, (Kind::Float, Device::Cpu))
        } else {
            Tensor::randn(shape, (Kind::Float, Device::Cpu)) * std
        };
        tensors.push((name, t));
    };
    let inner = d.heads * d.d_kv;
    let proj = (d.d_model as f64).powf(-0.5);
    add("shared.weight".into(), &[d.vocab, d.d_model], 1.0);
    add("lm_head.weight".into(), &[d.vocab, d.d_model], proj);
    for (stack, cross) in [("encoder", false), ("decoder", true)] {
        for i in 0..d.layers {
            let b = format!("{stack}.block.{i}.layer");
            for m in ["q", "k", "v"] {
                add(
                    format!("{b}.0.SelfAttention.{m}.weight"),
                    &[inner, d.d_model],
                    proj,
                );
            }
            add(
                format!("{b}.0.SelfAttention.o.weight"),
                &[d.d_model, inner],
                proj,
            );
            if i == 0 {
                add(
                    format!("{b}.0.SelfAttention.relative_attention_bias.weight"),
                    &[d.buckets, d.heads],
                    0.5,
                );
            }
            add(format!("{b}.0.layer_norm.weight"), &[d.d_model], 0.0);
            let ff = if cross {
                for m in ["q", "k", "v"] {
                    add(
                        format!("{b}.1.EncDecAttention.{m}.weight"),
                        &[inner, d.d_model],
                        proj,
                    );
                }
                add(
                    format!("{b}.1.EncDecAttention.o.weight"),
                    &[d.d_model, inner],
                    proj,
                );
                add(format!("{b}.1.layer_norm.weight"), &[d.d_model], 0.0);
                2
            } else {
                1
            };
            add(
                format!("{b}.{ff}.DenseReluDense.wi_0.weight"),
                &[d.d_ff, d.d_model],
                proj,
            );
            add(
                format!("{b}.{ff}.DenseReluDense.wi_1.weight"),
                &[d.d_ff, d.d_model],
                proj,
            );
            add(
                format!("{b}.{ff}.DenseReluDense.wo.weight"),
                &[d.d_model, d.d_ff],
                (d.d_ff as f64).powf(-0.5),
            );
            add(format!("{b}.{ff}.layer_norm.weight"), &[d.d_model], 0.0);
        }
        add(
            format!("{stack}.final_layer_norm.weight"),
            &[d.d_model],
            0.0,
        );
    }
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let weights = args.out.join("model.safetensors");
    Tensor::write_safetensors(&named, &weights)
        .map_err(|e| format!("writing {}: {e}", weights.display()))?;

    let text = std::fs::read_to_string(&args.tokenizer)
        .map_err(|e| format!("{}: {e}", args.tokenizer.display()))?;
    let mut tokenizer: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", args.tokenizer.display()))?;
    let vocab = tokenizer["model"]["vocab"]
        .as_array_mut()
        .ok_or("the tokenizer is not a Unigram model with a vocab list")?;
    // Pieces no text produces, so ids above the base vocabulary still decode to something.
    let mut i = 0;
    while (vocab.len() as i64) < d.vocab {
        vocab.push(json!([format!("\u{2581}bench{i}"), -100.0]));
        i += 1;
    }
    write_json(&args.out.join("tokenizer.json"), &tokenizer)?;
    let params: i64 = tensors.iter().map(|(_, t)| t.numel() as i64).sum();
    println!(
        "{}: {:?} T5, {params} parameters, seed {}",
        args.out.display(),
        args.shape,
        args.seed
    );
    Ok(())
}

/// Writes `count` random prompts as `taskNNNNN.npy` (f32, `[length, d_model]`).
pub fn make_prompts(args: RandomPrompts) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let mut state = args
        .seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let min = args.min_length.unwrap_or(args.length);
    if min == 0 || min > args.length {
        return Err(format!(
            "prompt lengths {min}..={}: need 1 <= min <= max",
            args.length
        ));
    }
    let width = args.count.saturating_sub(1).to_string().len().max(5);
    for i in 0..args.count {
        let length = min + i % (args.length - min + 1);
        let mut bytes = npy_header(length, args.d_model);
        for _ in 0..length * args.d_model {
            // xorshift64*: uniform in [-0.5, 0.5), never all zeros.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(2685821657736338717);
            let v = (r >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let path = args.out.join(format!("task{i:0width$}.npy"));
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!(
        "{}: {} prompts of {min}..={} x {}",
        args.out.display(),
        args.count,
        args.length,
        args.d_model
    );
    Ok(())
}

fn npy_header(rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&((dict.len() + pad + 1) as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
}

fn write_json(path: &Path, v: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Counts what a model asks for; hands out zero-stride stand-ins (no memory).
    struct Counting(Cell<i64>);

    impl WeightSource for Counting {
        fn contains(&self, name: &str) -> bool {
            matches!(name, "shared.weight" | "lm_head.weight")
        }
        fn is_alias(&self, _: &str, _: &str) -> bool {
            false
        }
        fn get(&self, _: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
            self.0.set(self.0.get() + shape.iter().product::<i64>());
            let one = Tensor::f_zeros([] as [i64; 0], (Kind::Float, Device::Cpu))?;
            Ok(one.f_expand(shape, true)?)
        }
    }

    #[test]
    fn public_shapes_have_the_published_parameter_counts() {
        // The Flan-T5 model cards' / transformers' num_parameters() for each size.
        for (shape, params) in [
            ("t5-small", 76_961_152),
            ("t5-base", 247_577_856),
            ("t5-large", 783_150_080),
            ("t5-xl", 2_849_757_184),
            ("t5-xxl", 11_135_332_352),
        ] {
            let shape: Shape = shape.parse().unwrap();
            let counting = Counting(Cell::new(0));
            let opts = ModelOptions {
                device: Device::Cpu,
                kind: Kind::Float,
            };
            T5Model::from_weights(shape.config(), &counting, opts).unwrap();
            assert_eq!(counting.0.get(), params, "{shape:?}");
        }
    }

    #[test]
    fn synthetic_weights_are_seeded_and_on_the_asked_dtype() {
        let opts = ModelOptions {
            device: Device::Cpu,
            kind: Kind::BFloat16,
        };
        let a = T5Model::synthetic(Shape::Mini.config(), opts, 3).unwrap();
        let b = T5Model::synthetic(Shape::Mini.config(), opts, 3).unwrap();
        let c = T5Model::synthetic(Shape::Mini.config(), opts, 4).unwrap();
        assert_eq!(a.shared().kind(), Kind::BFloat16);
        assert!(a.shared().equal(b.shared()));
        assert!(!a.shared().equal(c.shared()));
    }
}
