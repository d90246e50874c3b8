//! `promptd-dev engine-pass`: one fixed mixed-task batch through this process's engine, timed:
//! the encoder pass, then greedy decoding of --new-tokens (1: the encoder pass plus the first
//! decode step). scripts/bench_engine_vs_hf.py times transformers on the same rows, so the two
//! are compared side by side (scripts/bench-vs-hf.sh).
use std::path::PathBuf;
use std::time::Instant;

use promptd::engine::{Engine, RowInput};
use promptd::model::{ModelOptions, T5Model, T5Tokenizer};
use promptd::prompts::{load_prompt_dir, PromptLimits};
use serde_json::{json, Value};

/// Arguments of `promptd-dev engine-pass`.
#[derive(Debug, Clone, clap::Args)]
pub struct PassArgs {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// Prompts folder (the rows' tasks); without it every row runs the plain model.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// JSON lines {"task": ..., "input": ...}: the batch, in order (a row without "task"
    /// runs the plain model).
    #[arg(long)]
    rows: PathBuf,
    /// Tokens to generate per row (greedy, stopping at </s>).
    #[arg(long, default_value_t = 1)]
    new_tokens: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Intra-op threads (libtorch).
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

/// Runs the batch and prints {"median_ms", "min_ms", "rows", "tokens"} as one JSON line.
pub fn run(args: PassArgs) -> Result<(), String> {
    tch::set_num_threads(args.threads);
    let _guard = tch::no_grad_guard();
    let model = T5Model::load(
        &args.model,
        ModelOptions {
            device: tch::Device::Cpu,
            kind: tch::Kind::Float,
        },
    )
    .map_err(|e| e.to_string())?;
    let eos = model.config.eos_ids()[0];
    let tokenizer = T5Tokenizer::from_dir(&args.model, eos).map_err(|e| e.to_string())?;
    let d_model = model.config.d_model as usize;
    let mut engine = Engine::new(model).map_err(|e| e.to_string())?;
    let loaded = match &args.prompts {
        Some(dir) => Some(
            load_prompt_dir(dir, d_model, &PromptLimits::default()).map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let text =
        std::fs::read_to_string(&args.rows).map_err(|e| format!("{}: {e}", args.rows.display()))?;
    let mut slots = std::collections::HashMap::new();
    let mut rows = Vec::new();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: {e}", args.rows.display(), i + 1))?;
        let slot = match v["task"].as_str() {
            None => None,
            Some(task) if slots.contains_key(task) => slots.get(task).cloned(),
            Some(task) => {
                let name = promptd::prompts::TaskName::parse(task).map_err(|e| e.to_string())?;
                let prompt = loaded
                    .as_ref()
                    .and_then(|l| l.prompts.get(&name))
                    .ok_or_else(|| format!("no prompt for task {task} (--prompts)"))?;
                let slot = engine
                    .register_prompt(&prompt.encoder)
                    .map_err(|e| e.to_string())?;
                slots.insert(task.to_string(), slot.clone());
                Some(slot)
            }
        };
        rows.push(RowInput {
            prompt: slot,
            input_ids: tokenizer
                .encode(v["input"].as_str().unwrap_or_default())
                .map_err(|e| e.to_string())?,
            max_new_tokens: args.new_tokens,
            labels: Vec::new(),
            cancel: None,
        });
    }
    let mut times = Vec::with_capacity(args.repeats);
    let mut tokens = Vec::new();
    for i in 0..args.warmup + args.repeats.max(1) {
        let t = Instant::now();
        let (outputs, _) = engine.run_rows(&rows, u64::MAX);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if i >= args.warmup {
            times.push(ms);
        }
        if tokens.is_empty() {
            tokens = outputs
                .into_iter()
                .map(|o| o.map(|o| o.token_ids).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "median_ms": times[times.len() / 2],
            "min_ms": times[0],
            "rows": rows.len(),
            "tokens": tokens,
        })
    );
    Ok(())
}
