//! `promptd inspect MODEL_DIR`: what promptd sees in a model folder and whether it can serve it.
//! Reads headers and the tokenizer only; no weight is loaded, whatever the model's size.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::weights::{Layout, Weights};
use crate::model::{T5Config, T5Model, T5Tokenizer, TokenizerSource};

/// Arguments of `promptd inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// Hugging Face T5 directory, or a PEFT adapter folder (adapter_config.json +
    /// adapter_model.safetensors).
    pub model: PathBuf,
    /// For an adapter folder: the model whose shapes it must fit.
    #[arg(long)]
    pub for_model: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `inspect` found; fields are `None` where the folder did not say.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The folder.
    pub dir: PathBuf,
    /// `model_type` from config.json (absent means t5).
    pub model_type: Option<String>,
    /// T5 v1.0 / v1.1-style, from the feed-forward and the output scaling.
    pub variant: Option<String>,
    /// Encoder blocks.
    pub encoder_layers: Option<i64>,
    /// Decoder blocks.
    pub decoder_layers: Option<i64>,
    /// Hidden width.
    pub d_model: Option<i64>,
    /// Feed-forward width.
    pub d_ff: Option<i64>,
    /// Attention heads.
    pub num_heads: Option<i64>,
    /// Embedding rows (config.json).
    pub vocab_size: Option<i64>,
    /// Tokens the tokenizer knows, special ones included.
    pub tokenizer_vocab: Option<usize>,
    /// Where the tokenizer comes from.
    pub tokenizer: Option<&'static str>,
    /// The weight layout's marker file.
    pub weights: Option<&'static str>,
    /// Weight files and their sizes in bytes.
    pub files: Vec<(String, u64)>,
    /// Tensor count per stored dtype.
    pub dtypes: BTreeMap<String, usize>,
    /// Parameters, each stored tensor counted once.
    pub parameters: Option<u64>,
    /// Bytes the weights take once loaded, per `--dtype`.
    pub weight_memory: BTreeMap<&'static str, u64>,
    /// Things that load but will bite.
    pub warnings: Vec<String>,
    /// Whether `promptd serve --model DIR` would start.
    pub can_serve: bool,
    /// Why not, when it would not.
    pub reason: Option<String>,
}

/// Inspects `dir`; never fails: what cannot be read is the reason it cannot be served.
pub fn report(dir: &Path) -> Report {
    let mut r = Report {
        dir: dir.to_path_buf(),
        model_type: None,
        variant: None,
        encoder_layers: None,
        decoder_layers: None,
        d_model: None,
        d_ff: None,
        num_heads: None,
        vocab_size: None,
        tokenizer_vocab: None,
        tokenizer: TokenizerSource::of(dir).map(TokenizerSource::file_name),
        weights: Layout::of(dir).map(Layout::file_name),
        files: Vec::new(),
        dtypes: BTreeMap::new(),
        parameters: None,
        weight_memory: BTreeMap::new(),
        warnings: Vec::new(),
        can_serve: false,
        reason: None,
    };
    if let Err(reason) = fill(dir, &mut r) {
        r.reason = Some(reason);
    } else {
        r.can_serve = true;
    }
    r
}

fn fill(dir: &Path, r: &mut Report) -> Result<(), String> {
    let cfg = T5Config::from_dir(dir).map_err(|e| e.to_string())?;
    r.model_type = Some(cfg.model_type.clone().unwrap_or_else(|| "t5".into()));
    r.variant = Some(variant(&cfg));
    r.encoder_layers = Some(cfg.num_layers);
    r.decoder_layers = Some(cfg.decoder_layers());
    r.d_model = Some(cfg.d_model);
    r.d_ff = Some(cfg.d_ff);
    r.num_heads = Some(cfg.num_heads);
    r.vocab_size = Some(cfg.vocab_size);

    let weights = Weights::open_dry_run(dir).map_err(|e| e.to_string())?;
    for path in weights.files() {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        r.files.push((name.unwrap_or_default(), size));
    }
    let mut seen = HashSet::new();
    let mut params = 0u64;
    for (_, info) in weights.tensors() {
        *r.dtypes.entry(dtype_name(info.kind)).or_default() += 1;
        if seen.insert(info.alias_key()) {
            params = params.saturating_add(info.numel());
        }
    }
    r.parameters = Some(params);
    for (dtype, bytes) in [("f32", 4), ("bf16", 2), ("f16", 2)] {
        r.weight_memory.insert(dtype, params.saturating_mul(bytes));
    }

    let tokenizer = T5Tokenizer::from_dir(dir, cfg.eos_ids()[0]).map_err(|e| e.to_string())?;
    let known = tokenizer.inner().get_vocab_size(true);
    r.tokenizer_vocab = Some(known);
    if known as i64 > cfg.vocab_size {
        r.warnings.push(format!(
            "the tokenizer has {known} tokens but the embedding only {} rows: inputs with the \
             extra tokens will be rejected",
            cfg.vocab_size
        ));
    }
    T5Model::check(dir).map_err(|e| e.to_string())?;
    Ok(())
}

fn variant(cfg: &T5Config) -> String {
    let family = if cfg.model_type.as_deref() == Some("mt5") {
        "mT5"
    } else {
        "T5"
    };
    match (cfg.is_gated(), cfg.scale_decoder_outputs()) {
        (false, true) => format!(
            "{family} v1.0 ({}, tied lm_head scaled by d_model^-0.5)",
            cfg.feed_forward_proj
        ),
        (true, false) => format!(
            "{family} v1.1 / LM-adapted / Flan ({}, untied lm_head)",
            cfg.feed_forward_proj
        ),
        (gated, scaled) => format!(
            "{family} ({}, {} lm_head{})",
            cfg.feed_forward_proj,
            if gated { "gated" } else { "plain" },
            if scaled { " scaled" } else { "" }
        ),
    }
}

fn dtype_name(kind: tch::Kind) -> String {
    match kind {
        tch::Kind::Float => "f32".into(),
        tch::Kind::Half => "f16".into(),
        tch::Kind::BFloat16 => "bf16".into(),
        tch::Kind::Double => "f64".into(),
        other => format!("{other:?}"),
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn text(r: &Report) -> String {
    let opt = |v: Option<i64>| v.map_or("?".to_string(), |v| v.to_string());
    let mut out = format!("model:        {}\n", r.dir.display());
    out += &format!(
        "type:         {} — {}\n",
        r.model_type.as_deref().unwrap_or("?"),
        r.variant.as_deref().unwrap_or("?")
    );
    out += &format!(
        "layers:       {} encoder + {} decoder\nd_model:      {}  d_ff: {}  heads: {}\n",
        opt(r.encoder_layers),
        opt(r.decoder_layers),
        opt(r.d_model),
        opt(r.d_ff),
        opt(r.num_heads)
    );
    out += &format!(
        "vocab:        {} embedding rows, tokenizer {} ({})\n",
        opt(r.vocab_size),
        r.tokenizer_vocab
            .map_or("?".into(), |v| format!("{v} tokens")),
        r.tokenizer.unwrap_or("none found")
    );
    out += &format!("weights:      {}\n", r.weights.unwrap_or("none found"));
    for (file, size) in &r.files {
        out += &format!("  {file}  {}\n", human(*size));
    }
    let dtypes: Vec<String> = r.dtypes.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    out += &format!("dtypes:       {}\n", dtypes.join(", "));
    if let Some(p) = r.parameters {
        out += &format!("parameters:   {p} ({:.1}M)\n", p as f64 / 1e6);
    }
    for (dtype, bytes) in &r.weight_memory {
        out += &format!("memory --dtype {dtype}: {} of weights\n", human(*bytes));
    }
    for w in &r.warnings {
        out += &format!("warning:      {w}\n");
    }
    match &r.reason {
        None => out += "can serve:    yes\n",
        Some(why) => out += &format!("can serve:    no — {why}\n"),
    }
    out
}

/// Prints the report; exits non-zero when the model cannot be served.
pub fn run(args: InspectArgs) -> Result<(), String> {
    if super::inspect_adapter::is_adapter_dir(&args.model) {
        let r = super::inspect_adapter::report(&args.model, args.for_model.as_deref());
        let body = if args.json {
            serde_json::to_string_pretty(&r).map_err(|e| e.to_string())? + "\n"
        } else {
            super::inspect_adapter::text(&r)
        };
        std::io::Write::write_all(&mut std::io::stdout().lock(), body.as_bytes())
            .map_err(|e| format!("stdout: {e}"))?;
        return match r.can_serve {
            true => Ok(()),
            false => Err(format!("cannot serve {}", args.model.display())),
        };
    }
    let r = report(&args.model);
    let body = if args.json {
        serde_json::to_string_pretty(&r).map_err(|e| e.to_string())? + "\n"
    } else {
        text(&r)
    };
    // An error, not a panic, when stdout is closed early (`| head`).
    std::io::Write::write_all(&mut std::io::stdout().lock(), body.as_bytes())
        .map_err(|e| format!("stdout: {e}"))?;
    if r.can_serve {
        Ok(())
    } else {
        Err(format!("cannot serve {}", args.model.display()))
    }
}
