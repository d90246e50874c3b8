//! `promptd tune` and `promptd eval`: learn a soft prompt on the frozen model from labelled
//! JSON lines, and score a prompt (or none, or a text prefix) on a dev set.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::engine::{DeviceSpec, DtypeSpec, Engine};
use crate::model::adapters::ModelShape;
use crate::model::T5Tokenizer;
use crate::prompts::dir::{load_source, PromptSource};
use crate::prompts::PromptLimits;
use crate::tune::metric::evaluate_slot;
use crate::tune::metric::label_set;
use crate::tune::output::{
    curve_path, write_adapter_dir, write_curve, write_json, write_peft_dir, write_prompt_file,
};
use crate::tune::tuner::{Duration, Tuned};
use crate::tune::{
    load_jsonl, AdapterSpec, Curve, EvalSet, Ia3Spec, InitSpec, LoraSpec, Metric, OptimizerKind,
    OptimizerSettings, TuneError, TuneSettings, Tuner,
};

/// Model and device flags shared by `tune` and `eval`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Hugging Face T5 directory (config.json, weights, tokenizer).
    #[arg(long, env = "PROMPTD_MODEL")]
    pub model: PathBuf,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (f32 on CPU, bf16 on GPU) | f32 | bf16 | f16 (the prompt itself is always f32);
    /// int8 for `eval` only (CPU: int8 linear layers)
    #[arg(long, default_value = "auto")]
    pub dtype: DtypeSpec,
    /// Padded encoder tokens per evaluation pass.
    #[arg(long, default_value_t = 32768, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_tokens: u64,
}

/// Arguments of `promptd tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// Model and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training data: JSON lines {"input": "...", "target": "..."}.
    #[arg(long)]
    pub train: PathBuf,
    /// Dev data (same format): evaluated every --eval-every steps; the best prompt is kept.
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Prompt rows (virtual tokens); default 100, or the rows of a file: init.
    #[arg(long)]
    pub prompt_length: Option<usize>,
    /// class-labels | sampled-vocab | random-uniform | file:PATH | text:WORDS
    #[arg(long, default_value = "class-labels")]
    pub init: InitSpec,
    /// Class labels, comma-separated (default: the distinct targets).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// adafactor (the paper's) | adam | sgd
    #[arg(long, default_value = "adafactor")]
    pub optimizer: OptimizerKind,
    /// Learning rate (default: 0.3 adafactor, 0.01 adam, 1.0 sgd).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight decay (default: 1e-5 adafactor, 0 otherwise).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the gradient to this global L2 norm before each update.
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    /// Rows per step (at least the number of training rows: every step uses them all).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Optimizer steps [default: 1000 unless --epochs].
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<usize>,
    /// Passes over the training data instead of --steps.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Evaluate on --dev every this many steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Stop after this many evaluations without improvement.
    #[arg(long)]
    pub patience: Option<usize>,
    /// accuracy | exact-match | rank-accuracy
    #[arg(long, default_value = "accuracy")]
    pub metric: Metric,
    /// Inputs are cut to this many tokens (with </s>).
    #[arg(long, default_value_t = 512)]
    pub max_input_tokens: usize,
    /// Targets are cut to this many tokens (with </s>).
    #[arg(long, default_value_t = 128)]
    pub max_target_tokens: usize,
    /// Training dropout (default: the model's dropout_rate; 0 turns it off).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Seed of the data order, the initial prompt and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What to tune: a soft prompt, or a LoRA or IA3 adapter on the frozen model's linear layers.
    #[arg(long, value_enum, default_value_t = TuneMethod::Prompt)]
    pub method: TuneMethod,
    /// LoRA rank (`--method lora`).
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// LoRA alpha: the update is scaled by alpha / rank (`--method lora`).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Layers a LoRA changes, PEFT's `target_modules` names (`--method lora`).
    #[arg(long, value_delimiter = ',', default_value = "q,v")]
    pub lora_targets: Vec<String>,
    /// Layers IA3 scales, PEFT's `target_modules` names (`--method ia3`; PEFT's T5 default).
    #[arg(long, value_delimiter = ',', default_value = "k,v,wo")]
    pub ia3_targets: Vec<String>,
    /// The targets whose input IA3 scales (PEFT's `feedforward_modules`); the others' output.
    #[arg(long, value_delimiter = ',', default_value = "wo")]
    pub ia3_feedforward: Vec<String>,
    /// Where to write the result: a prompt file (safetensors, the format the server accepts),
    /// or for `--method lora|ia3` a PEFT adapter folder (the server and PEFT load it as it is).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub peft_dir: Option<PathBuf>,
    /// Write a JSON report (settings, curves, best step and metric, speed), and its curves as
    /// a picture next to it (`r.json` → `r.svg`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Arguments of `promptd eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Model and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// A prompt file or PEFT folder, or `none` for the plain model.
    #[arg(long)]
    pub prompt: String,
    /// Data: JSON lines {"input": "...", "target": "..."}.
    #[arg(long)]
    pub data: PathBuf,
    /// accuracy | exact-match | rank-accuracy
    #[arg(long, default_value = "accuracy")]
    pub metric: Metric,
    /// Class labels for rank-accuracy, comma-separated (default: the distinct targets).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Text put before every input (a hand-written instruction, or a pretraining prefix).
    #[arg(long)]
    pub text_prefix: Option<String>,
    /// Inputs are cut to this many tokens (with </s>).
    #[arg(long, default_value_t = 512)]
    pub max_input_tokens: usize,
    /// Targets are cut to this many tokens (with </s>).
    #[arg(long, default_value_t = 128)]
    pub max_target_tokens: usize,
    /// Include every prediction in the output.
    #[arg(long)]
    pub predictions: bool,
}

/// Loads the model into an engine, and the tokenizer.
pub fn load_engine(args: &ModelArgs) -> Result<(Engine, T5Tokenizer), String> {
    super::load::load_engine(&args.model, args.device, args.dtype)
}

/// Sets the returned flag on Ctrl-C (SIGINT) instead of killing the process.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let _ = std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                set.store(true, Ordering::SeqCst);
            }
        });
    flag
}

fn settings_from(args: &TuneArgs) -> TuneSettings {
    let mut optimizer = OptimizerSettings::defaults(args.optimizer);
    optimizer.lr = args.lr.unwrap_or(optimizer.lr);
    optimizer.weight_decay = args.weight_decay.unwrap_or(optimizer.weight_decay);
    optimizer.clip_grad_norm = args.clip_grad_norm;
    let duration = match (args.steps, args.epochs) {
        (_, Some(e)) => Duration::Epochs(e),
        (Some(n), None) => Duration::Steps(n),
        (None, None) => Duration::Steps(1000),
    };
    TuneSettings {
        prompt_length: args.prompt_length,
        init: args.init.clone(),
        labels: args.labels.clone(),
        optimizer,
        batch_size: args.batch_size,
        duration,
        eval_every: args.eval_every,
        patience: args.patience,
        metric: args.metric,
        max_input_tokens: args.max_input_tokens,
        max_target_tokens: args.max_target_tokens,
        dropout: args.dropout,
        seed: args.seed,
        max_batch_tokens: args.model.max_batch_tokens,
        adapter: match args.method {
            TuneMethod::Prompt => None,
            TuneMethod::Lora => Some(AdapterSpec::Lora(LoraSpec {
                rank: args.lora_rank,
                alpha: args.lora_alpha,
                targets: args.lora_targets.clone(),
            })),
            TuneMethod::Ia3 => Some(AdapterSpec::Ia3(Ia3Spec {
                targets: args.ia3_targets.clone(),
                feedforward: args.ia3_feedforward.clone(),
            })),
        },
    }
}

/// What `promptd tune` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TuneMethod {
    /// A soft prompt (prompt tuning).
    Prompt,
    /// A LoRA (low-rank updates of the targeted linear layers), written as a PEFT adapter.
    Lora,
    /// IA3 (learned scales of the targeted layers), written as a PEFT adapter.
    Ia3,
}

fn progress_bar(total: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} {per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Runs `promptd tune`.
pub fn run_tune(args: TuneArgs) -> Result<(), String> {
    if args.model.dtype.is_int8() {
        return Err(
            "tuning runs in f32 (or bf16 on a GPU); --dtype int8 is for serve, predict and eval, \
             which serve a prompt tuned in f32 as it is"
                .into(),
        );
    }
    let started = Instant::now();
    let train = load_jsonl(&args.train).map_err(|e| e.to_string())?;
    let dev = match &args.dev {
        Some(path) => load_jsonl(path).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let (mut engine, tokenizer) = load_engine(&args.model)?;
    let settings = settings_from(&args);
    let mut tuner = Tuner::new(engine.model(), &tokenizer, settings, &train, &dev)
        .map_err(|e| e.to_string())?;
    if tuner.truncated_rows() > 0 {
        tracing::warn!(
            rows = tuner.truncated_rows(),
            "training rows cut to --max-input-tokens / --max-target-tokens"
        );
    }
    let interrupted = interrupt_flag();
    tracing::info!(
        steps = tuner.total_steps(),
        prompt_length = tuner.current_rows().map(|r| r.rows).unwrap_or_default(),
        adapter_parameters = tuner.adapter().map(|l| l.len()).unwrap_or_default(),
        train = train.len(),
        dev = dev.len(),
        "tuning started (Ctrl-C saves the best prompt so far)"
    );
    let bar = progress_bar(tuner.total_steps(), args.quiet);
    let outcome = train_loop(
        &mut tuner,
        &mut engine,
        &tokenizer,
        &bar,
        &interrupted,
        args.quiet,
    );
    bar.finish_and_clear();
    let stopped_by_user = interrupted.load(Ordering::SeqCst);
    let mut report = tuner.report();
    report["model"] = json!(args.model.model.display().to_string());
    report["wall_seconds"] = json!(started.elapsed().as_secs_f64());
    report["interrupted"] = json!(stopped_by_user);
    if let Err(e) = &outcome {
        report["error"] = json!(e.to_string());
    }
    // A diverged run's current P is not finite: only a dev-selected best is worth keeping.
    let keep = outcome.is_ok() || tuner.best().is_some();
    if keep {
        write_result(&args, &tuner, &engine).map_err(|e| e.to_string())?;
    }
    if let Some(path) = &args.report {
        write_json(path, &report).map_err(|e| e.to_string())?;
        let name = |p: &Path| {
            p.file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into())
        };
        let title = format!(
            "promptd tune: {} on {}, {} steps",
            name(&args.train),
            name(&args.model.model),
            tuner.step()
        );
        write_curve(&curve_path(path), &Curve::of(&tuner), &title).map_err(|e| e.to_string())?;
    }
    outcome.map_err(|e| e.to_string())?;
    if !args.quiet {
        let best = match tuner.best() {
            Some((step, m)) => format!(", best dev {} {m:.4} at step {step}", args.metric),
            None => String::new(),
        };
        eprintln!(
            "promptd tune: {} steps in {:.1}s (final loss {:.4}{best}); wrote {}",
            tuner.step(),
            tuner.train_seconds(),
            tuner.last_loss().unwrap_or(f64::NAN),
            args.out.display()
        );
    }
    if stopped_by_user {
        return Err(format!(
            "interrupted at step {}: saved the best prompt so far to {}",
            tuner.step(),
            args.out.display()
        ));
    }
    Ok(())
}

/// Writes the run's result: the prompt (and its PEFT folder), or the adapter's PEFT folder.
fn write_result(args: &TuneArgs, tuner: &Tuner, engine: &Engine) -> Result<(), TuneError> {
    match tuner.best_output(&args.model.model.display().to_string())? {
        Tuned::Rows(rows) => {
            write_prompt_file(&args.out, &rows)?;
            if let Some(dir) = &args.peft_dir {
                write_peft_dir(dir, &rows, &engine.model().config, &args.model.model)?;
            }
        }
        Tuned::Adapter { config, weights } => {
            let files = (config, weights);
            for dir in std::iter::once(&args.out).chain(&args.peft_dir) {
                write_adapter_dir(dir, &files)?;
            }
        }
    }
    Ok(())
}

fn train_loop(
    tuner: &mut Tuner,
    engine: &mut Engine,
    tokenizer: &T5Tokenizer,
    bar: &ProgressBar,
    interrupted: &AtomicBool,
    quiet: bool,
) -> Result<(), TuneError> {
    let metric = tuner.settings().metric;
    let mut dev_text = String::new();
    if tuner.eval_due() {
        if let Some(o) = tuner.evaluate(engine, tokenizer)? {
            dev_text = format!(" dev {metric} {:.4}", o.value);
            tracing::debug!(step = 0, value = o.value, "initial prompt on dev");
        }
    }
    while !tuner.finished() && !interrupted.load(Ordering::SeqCst) {
        let r = tuner.train_step(engine.model())?;
        if tuner.eval_due() {
            if let Some(o) = tuner.evaluate(engine, tokenizer)? {
                dev_text = format!(" dev {metric} {:.4}", o.value);
                // Without a terminal (a log file, CI) evaluations are logged instead of drawn.
                if bar.is_hidden() && !quiet {
                    tracing::info!(step = r.step, loss = r.loss, metric = %metric, value = o.value, "evaluated");
                }
            }
        }
        bar.set_position(r.step as u64);
        bar.set_message(format!("loss {:.4}{dev_text}", r.loss));
    }
    Ok(())
}

/// Runs `promptd eval` and prints one JSON object.
pub fn run_eval(args: EvalArgs) -> Result<(), String> {
    let data = load_jsonl(&args.data).map_err(|e| e.to_string())?;
    let (mut engine, tokenizer) = load_engine(&args.model)?;
    let d_model = engine.model().config.d_model as usize;
    // A prompt file or folder, or any PEFT adapter (LoRA, IA3, prefix) checked against the model.
    let slot = match args.prompt.as_str() {
        "none" => None,
        path => {
            let path = Path::new(path);
            let source = if path.is_dir() {
                PromptSource::PeftDir(path.to_path_buf())
            } else {
                PromptSource::TensorFile(path.to_path_buf())
            };
            let limits = PromptLimits {
                max_rows: usize::MAX,
                shape: Some(ModelShape::of(&engine.model().config)),
                ..PromptLimits::default()
            };
            let task = load_source(&source, d_model, &limits).map_err(|e| e.to_string())?;
            Some(
                engine
                    .register_task(&task.weights())
                    .map_err(|e| e.to_string())?,
            )
        }
    };
    let labels = label_set(&args.labels, data.iter());
    let set = EvalSet::new(
        &tokenizer,
        &data,
        args.metric,
        labels,
        args.max_input_tokens,
        args.max_target_tokens,
        args.text_prefix.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    let outcome = evaluate_slot(
        &mut engine,
        &tokenizer,
        slot,
        &set,
        args.model.max_batch_tokens,
    )
    .map_err(|e| e.to_string())?;
    let mut out = json!({
        "metric": outcome.metric,
        "value": outcome.value,
        "correct": outcome.correct,
        "total": outcome.total,
        "prompt": args.prompt,
        "text_prefix": args.text_prefix,
    });
    if args.predictions {
        out["predictions"] = json!(outcome.predictions);
    }
    println!("{out}");
    Ok(())
}
