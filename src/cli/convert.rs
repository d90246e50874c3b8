//! `promptd convert MODEL_DIR --out DIR`: rewrites any folder promptd loads as sharded
//! safetensors plus `tokenizer.json`, for memory-mapped starts without the pickle or the
//! SentencePiece conversion. Holds at most one shard of tensors in memory.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tch::{Device, Kind, Tensor};

use crate::model::weights::Weights;
use crate::model::{T5Model, T5Tokenizer, TokenizerSource};

/// Files copied as they are when present.
const COPIED: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
];

/// Arguments of `promptd convert`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConvertArgs {
    /// Hugging Face T5 directory promptd can serve (see `promptd inspect`).
    pub model: PathBuf,
    /// Output folder (created; must not be the input folder).
    #[arg(long)]
    pub out: PathBuf,
    /// Largest shard, in MB (10^6 bytes); one tensor larger than this gets a shard of its own.
    #[arg(long, default_value_t = 2000)]
    pub max_shard_mb: u64,
    /// Stored dtype of the weights: as in the input, or converted.
    #[arg(long, value_enum, default_value = "keep")]
    pub dtype: StoreDtype,
}

/// Stored dtype of converted weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreDtype {
    /// As in the input.
    Keep,
    /// float32
    F32,
    /// bfloat16
    Bf16,
    /// float16
    F16,
}

/// Runs the conversion.
pub fn run(args: ConvertArgs) -> Result<(), String> {
    let written = convert(&args)?;
    println!(
        "wrote {} weight file(s) and tokenizer.json to {}",
        written,
        args.out.display()
    );
    Ok(())
}

/// Converts `args.model` into `args.out`; returns the number of weight files written.
pub fn convert(args: &ConvertArgs) -> Result<usize, String> {
    let src = &args.model;
    let cfg = T5Model::check(src).map_err(|e| format!("{}: {e}", src.display()))?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    if same(src, &args.out) {
        return Err("--out must not be the model folder".into());
    }
    let weights = Weights::open(src, Device::Cpu, Kind::Float).map_err(|e| e.to_string())?;
    let names = unique_names(&weights);
    let shards = plan_shards(
        &weights,
        &names,
        args.max_shard_mb.saturating_mul(1_000_000),
    );
    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let file = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        };
        total += write_shard(&weights, shard, args.dtype, &args.out.join(&file))?;
        for name in shard {
            weight_map.insert(name.clone(), file.clone());
        }
    }
    if count > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write(
            &args.out.join("model.safetensors.index.json"),
            index.to_string().as_bytes(),
        )?;
    }
    for f in COPIED {
        if src.join(f).is_file() {
            std::fs::copy(src.join(f), args.out.join(f)).map_err(|e| format!("{f}: {e}"))?;
        }
    }
    let json = args.out.join("tokenizer.json");
    if TokenizerSource::of(src) == Some(TokenizerSource::Json) {
        std::fs::copy(src.join("tokenizer.json"), &json).map_err(|e| e.to_string())?;
    } else {
        let tok = T5Tokenizer::from_dir(src, cfg.eos_ids()[0]).map_err(|e| e.to_string())?;
        tok.inner()
            .save(&json, false)
            .map_err(|e| format!("{}: {e}", json.display()))?;
    }
    Ok(count)
}

/// Every tensor once: of names aliasing one stored tensor, `shared.weight` if it is one of
/// them, else the first in order. Sorted.
fn unique_names(weights: &Weights) -> Vec<String> {
    let mut names: Vec<(&str, _)> = weights.tensors().map(|(n, i)| (n, i.alias_key())).collect();
    names.sort_by_key(|(n, _)| (*n != "shared.weight", n.to_string()));
    let mut seen = HashSet::new();
    let mut out: Vec<String> = names
        .into_iter()
        .filter(|(_, key)| seen.insert(key.clone()))
        .map(|(n, _)| n.to_string())
        .collect();
    out.sort();
    out
}

fn plan_shards(weights: &Weights, names: &[String], max_bytes: u64) -> Vec<Vec<String>> {
    let sizes: HashMap<&str, u64> = weights
        .tensors()
        .map(|(n, i)| (n, i.numel() * i.kind.elt_size_in_bytes() as u64))
        .collect();
    let mut shards: Vec<Vec<String>> = vec![Vec::new()];
    let mut used = 0u64;
    for name in names {
        let size = sizes.get(name.as_str()).copied().unwrap_or(0);
        let current = shards.last_mut().expect("at least one shard");
        if !current.is_empty() && used + size > max_bytes {
            shards.push(Vec::new());
            used = 0;
        }
        shards
            .last_mut()
            .expect("at least one shard")
            .push(name.clone());
        used += size;
    }
    shards
}

fn dtype_of(kind: Kind) -> Result<Dtype, String> {
    match kind {
        Kind::Float => Ok(Dtype::F32),
        Kind::Half => Ok(Dtype::F16),
        Kind::BFloat16 => Ok(Dtype::BF16),
        Kind::Double => Ok(Dtype::F64),
        other => Err(format!("cannot store {other:?}")),
    }
}

/// Writes one shard; returns its tensor bytes.
fn write_shard(
    weights: &Weights,
    names: &[String],
    dtype: StoreDtype,
    path: &Path,
) -> Result<u64, String> {
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(names.len());
    for name in names {
        let t = weights.read_raw(name).map_err(|e| e.to_string())?;
        let t = match dtype {
            StoreDtype::Keep => t,
            StoreDtype::F32 => to_kind(t, Kind::Float)?,
            StoreDtype::Bf16 => to_kind(t, Kind::BFloat16)?,
            StoreDtype::F16 => to_kind(t, Kind::Half)?,
        };
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)
            .map_err(|e| e.to_string())?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        data.push((name.clone(), dtype_of(t.kind())?, shape, bytes));
    }
    let total = data.iter().map(|d| d.3.len() as u64).sum();
    let views = data
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.as_str(),
                TensorView::new(*d, s.clone(), b).map_err(|e| e.to_string())?,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(total)
}

fn to_kind(t: Tensor, kind: Kind) -> Result<Tensor, String> {
    t.f_to_kind(kind).map_err(|e| e.to_string())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}
