//! Deterministic random T5 checkpoints and prompt folders for benchmarks (`promptd-dev
//! make-model` / `make-prompts`, and benches/engine.rs). Cost does not depend on the weights' values, but they are
//! never zeros (zeros would make every row and every step alike).
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

/// Checkpoint shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// t5-small's shapes: d_model 512, 6+6 layers, 8 heads, d_ff 1024 gated-gelu, vocab 32128.
    Small,
    /// For quick runs: d_model 128, 2+2 layers, 4 heads, d_ff 256, vocab 32128.
    Mini,
}

impl std::str::FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "small" => Ok(Shape::Small),
            "mini" => Ok(Shape::Mini),
            other => Err(format!("{other:?}: expected small or mini")),
        }
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
    /// Rows per prompt.
    pub length: usize,
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
    }
}

/// Writes config.json, model.safetensors and tokenizer.json for `args.shape`.
pub fn make_model(args: RandomModel) -> Result<(), String> {
    let d = dims(args.shape);
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let config = json!({
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
    });
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
    let header = npy_header(args.length, args.d_model);
    let width = args.count.saturating_sub(1).to_string().len().max(5);
    for i in 0..args.count {
        let mut bytes = header.clone();
        for _ in 0..args.length * args.d_model {
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
        "{}: {} prompts of {}x{}",
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
