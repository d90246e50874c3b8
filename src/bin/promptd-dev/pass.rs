//! `promptd-dev engine-pass`: one fixed mixed-task batch through this process's engine, timed:
//! the encoder pass, then greedy decoding of --new-tokens (0: the encoder pass alone; 1: plus
//! the first decode step). The batch comes from a JSONL file of texts (scripts/bench-vs-hf.sh
//! times transformers on the same rows) or is made up (`--random-rows`: seeded token ids and
//! prompts); the model is a checkpoint or random weights of a public shape made on the device
//! (`--synthetic t5-xxl`), so a GPU can be measured without 45 GB of files.
//! `promptd-dev gemm` measures the device's matmul peak in the same libtorch.
use std::path::PathBuf;
use std::time::Instant;

use promptd::engine::{DeviceSpec, DtypeSpec, Engine, PromptRows, RowInput};
use promptd::model::adapters::ModelShape;
use promptd::model::random::Shape;
use promptd::model::{ModelOptions, T5Config, T5Model, T5Tokenizer};
use promptd::prompts::{load_prompt_dir, PromptLimits};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

/// Threads, device and dtype.
#[derive(Debug, Clone, clap::Args)]
pub struct On {
    /// Intra-op threads (libtorch).
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// auto (f32 on CPU, bf16 on GPU) | f32 | bf16 | f16 | int8
    #[arg(long, default_value = "auto")]
    pub dtype: DtypeSpec,
}

impl On {
    /// Sets the threads; the device and the dtype there.
    fn apply(&self) -> Result<(Device, Kind), String> {
        tch::set_num_threads(self.threads);
        let device = self.device.resolve()?;
        Ok((device, self.dtype.resolve(device)))
    }
}

/// Arguments of `promptd-dev engine-pass`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("weights").required(true).args(["model", "synthetic"])))]
#[command(group(clap::ArgGroup::new("batch").required(true).args(["rows", "random_rows"])))]
pub struct PassArgs {
    /// Model folder.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Random weights of a shape instead of a folder, made on the device: t5-small, t5-base,
    /// t5-large, t5-xl, t5-xxl (the public v1.1 / Flan-T5 configs), small or mini.
    #[arg(long)]
    synthetic: Option<Shape>,
    /// Prompts folder (the rows' tasks); without it every row runs the plain model.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// JSON lines {"task": ..., "input": ...}: the batch, in order (a row without "task"
    /// runs the plain model). Needs --model (its tokenizer).
    #[arg(long, requires = "model")]
    rows: Option<PathBuf>,
    /// A made-up batch of this many rows of --input-len random token ids (each ending with
    /// </s>), over --tasks random prompts of --prompt-len rows (row i has task i mod tasks).
    #[arg(long)]
    random_rows: Option<usize>,
    /// Tokens per made-up row.
    #[arg(long, default_value_t = 228)]
    input_len: usize,
    /// Distinct prompts over the made-up rows (0: no prompts).
    #[arg(long, default_value_t = 16)]
    tasks: usize,
    /// Rows per made-up prompt.
    #[arg(long, default_value_t = 20)]
    prompt_len: usize,
    /// Register this many more made-up prompts before timing (memory per prompt).
    #[arg(long, default_value_t = 0)]
    extra_prompts: usize,
    /// Tokens to generate per row (greedy, stopping at </s>; 0: encoder pass only).
    #[arg(long, default_value_t = 1)]
    new_tokens: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Where and how it runs.
    #[command(flatten)]
    on: On,
    /// Seed of the made-up weights, rows and prompts.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Leave the generated tokens out of the output (large batches).
    #[arg(long)]
    no_tokens: bool,
    /// After the timed runs, profile --repeats more: milliseconds per op family for the
    /// encoder pass (with the decoder's cross-attention keys) and per decode step (CPU only).
    #[arg(long)]
    profile: bool,
}

/// Runs the batch and prints one JSON line: {"median_ms", "min_ms", "rows", "width",
/// "generated_tokens", "encoder_tflop", "bank_bytes", "load_s", "tokens"}.
pub fn run(args: PassArgs) -> Result<(), String> {
    let _guard = tch::no_grad_guard();
    let (device, kind) = args.on.apply()?;
    let opts = ModelOptions { device, kind };
    let loading = Instant::now();
    let mut model = match (&args.model, args.synthetic) {
        (Some(dir), _) => T5Model::load(dir, opts),
        (None, Some(shape)) => T5Model::synthetic(shape.config(), opts, args.seed),
        (None, None) => unreachable!("clap requires --model or --synthetic"),
    }
    .map_err(|e| e.to_string())?;
    model
        .pack_for_serving(args.on.dtype.is_int8())
        .map_err(|e| e.to_string())?;
    sync(device);
    let load_s = loading.elapsed().as_secs_f64();
    let config = model.config.clone();
    let mut engine = Engine::new(model).map_err(|e| e.to_string())?;
    let rows = match (&args.rows, args.random_rows) {
        (Some(file), _) => rows_from_file(&args, file, &mut engine)?,
        (None, Some(n)) => random_rows(&args, n, &mut engine)?,
        (None, None) => unreachable!("clap requires --rows or --random-rows"),
    };
    // Held to the end: a prompt's bank rows live while its slot does.
    let mut extra = Vec::with_capacity(args.extra_prompts);
    for i in 0..args.extra_prompts {
        let rows = random_prompt(args.prompt_len, &config, args.seed + 1_000_000 + i as i64);
        extra.push(engine.register_prompt(&rows).map_err(|e| e.to_string())?);
    }
    let mut times = Vec::with_capacity(args.repeats);
    let mut tokens: Vec<Vec<i64>> = Vec::new();
    for i in 0..args.warmup + args.repeats.max(1) {
        let t = Instant::now();
        let (outputs, _) = engine.run_rows(&rows, u64::MAX);
        sync(device);
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
    let width = rows.iter().map(RowInput::encoder_len).max().unwrap_or(0);
    let bank = engine.bank();
    let bank_bytes =
        bank.capacity() as usize * config.d_model as usize * opts.kind.elt_size_in_bytes();
    let mut out = json!({
        "median_ms": times[times.len() / 2],
        "min_ms": times[0],
        "rows": rows.len(),
        "width": width,
        "generated_tokens": tokens.iter().map(Vec::len).sum::<usize>(),
        "encoder_tflop": encoder_flops(&config, rows.len(), width) / 1e12,
        "bank_rows": bank.used_rows(),
        "bank_bytes": bank_bytes,
        "load_s": load_s,
        "device": format!("{device:?}"),
        "dtype": format!("{:?}", opts.kind),
    });
    if !args.no_tokens {
        out["tokens"] = json!(tokens);
    }
    if args.profile {
        if device != Device::Cpu {
            return Err("--profile times ops on the host: CPU only".into());
        }
        out["profile"] = profile(&mut engine, &rows, args.repeats.max(1))?;
    }
    println!("{out}");
    Ok(())
}

/// Milliseconds per op family: the admission (encoder pass, label scores, decoder set-up) and
/// one decode step, averaged over `repeats` runs; "other" is the rest of the wall time
/// (residual adds, reshapes, bookkeeping).
fn profile(engine: &mut Engine, rows: &[RowInput], repeats: usize) -> Result<Value, String> {
    use promptd::engine::continuous::Running;
    use promptd::engine::Joining;
    use promptd::model::profile;

    let mut phases = [(0.0, vec![0.0; 8]), (0.0, vec![0.0; 8])];
    let mut steps = 0usize;
    let mut add = |phase: usize, wall: f64, families: Vec<(profile::Family, f64)>| {
        phases[phase].0 += wall;
        for (i, (_, secs)) in families.into_iter().enumerate() {
            phases[phase].1[i] += secs;
        }
    };
    let mut names = Vec::new();
    for _ in 0..repeats {
        profile::enable(true);
        let mut running = Running::new(engine.model());
        // Nobody reads the answers: a reply whose receiver is gone is dropped.
        let joining = rows
            .iter()
            .map(|row| Joining {
                row: row.clone(),
                reply: tokio::sync::oneshot::channel().0,
            })
            .collect();
        let t = Instant::now();
        running.admit(engine, joining, u64::MAX);
        add(0, t.elapsed().as_secs_f64(), profile::take());
        let t = Instant::now();
        while !running.is_empty() {
            running.step(engine);
            steps += 1;
        }
        let families = profile::take();
        names = families.iter().map(|(f, _)| f.name()).collect();
        add(1, t.elapsed().as_secs_f64(), families);
        profile::enable(false);
    }
    let report = |(wall, families): &(f64, Vec<f64>), per: usize| {
        let per = per.max(1) as f64;
        let mut m = serde_json::Map::new();
        m.insert("total_ms".into(), json!(wall / per * 1e3));
        for (name, secs) in names.iter().zip(families) {
            m.insert(name.to_string(), json!(secs / per * 1e3));
        }
        m.insert(
            "other".into(),
            json!((wall - families.iter().sum::<f64>()) / per * 1e3),
        );
        Value::Object(m)
    };
    Ok(json!({
        "encoder_pass": report(&phases[0], repeats),
        "decode_step": report(&phases[1], steps),
        "decode_steps_per_run": steps / repeats,
    }))
}

fn rows_from_file(
    args: &PassArgs,
    file: &PathBuf,
    engine: &mut Engine,
) -> Result<Vec<RowInput>, String> {
    let dir = args.model.as_ref().expect("clap: --rows requires --model");
    let config = engine.model().config.clone();
    let tokenizer = T5Tokenizer::from_dir(dir, config.eos_ids()[0]).map_err(|e| e.to_string())?;
    let limits = PromptLimits {
        shape: Some(ModelShape::of(&config)),
        ..PromptLimits::default()
    };
    let loaded = match &args.prompts {
        Some(dir) => {
            let loaded = load_prompt_dir(dir, config.d_model as usize, &limits)
                .map_err(|e| e.to_string())?;
            if let Some((path, e)) = loaded.errors.first() {
                return Err(format!("{}: {e}", path.display()));
            }
            Some(loaded)
        }
        None => None,
    };
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut slots = std::collections::HashMap::new();
    let mut rows = Vec::new();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", file.display(), i + 1))?;
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
                    .register_task(&prompt.weights())
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
            sequence_logprob: false,
            ..Default::default()
        });
    }
    Ok(rows)
}

fn random_rows(args: &PassArgs, n: usize, engine: &mut Engine) -> Result<Vec<RowInput>, String> {
    let config = engine.model().config.clone();
    let mut slots = Vec::with_capacity(args.tasks);
    for t in 0..args.tasks {
        let rows = random_prompt(args.prompt_len, &config, args.seed + t as i64);
        slots.push(engine.register_prompt(&rows).map_err(|e| e.to_string())?);
    }
    // Ids of ordinary tokens: above the specials, below the vocabulary.
    let eos = config.eos_ids()[0];
    let ids = Tensor::randint_low(
        3,
        config.vocab_size,
        [(n * args.input_len) as i64],
        (Kind::Int64, Device::Cpu),
    );
    let ids: Vec<i64> = Vec::try_from(&ids).map_err(|e: tch::TchError| e.to_string())?;
    Ok((0..n)
        .map(|i| {
            let mut input_ids = ids[i * args.input_len..(i + 1) * args.input_len - 1].to_vec();
            input_ids.push(eos);
            RowInput {
                prompt: (!slots.is_empty()).then(|| slots[i % slots.len()].clone()),
                input_ids,
                max_new_tokens: args.new_tokens,
                labels: Vec::new(),
                cancel: None,
                sequence_logprob: false,
                ..Default::default()
            }
        })
        .collect())
}

/// A made-up prompt: values uniform in [-0.5, 0.5), seeded.
fn random_prompt(rows: usize, config: &T5Config, seed: i64) -> PromptRows {
    tch::manual_seed(seed);
    let cols = config.d_model as usize;
    let values = Tensor::rand([(rows * cols) as i64], (Kind::Float, Device::Cpu)) - 0.5;
    PromptRows {
        rows,
        cols,
        values: Vec::try_from(&values).expect("f32 values"),
    }
}

/// Matmul FLOPs of an encoder pass over `rows` × `width` positions (padding included: it is
/// computed): projections, feed-forward and attention; norms and the bias are left out.
fn encoder_flops(c: &T5Config, rows: usize, width: usize) -> f64 {
    let tokens = (rows * width) as f64;
    let (d, inner, ff) = (
        c.d_model as f64,
        (c.num_heads * c.d_kv) as f64,
        c.d_ff as f64,
    );
    let ff_mats = if c.is_gated() { 3.0 } else { 2.0 };
    let per_layer =
        2.0 * tokens * (4.0 * d * inner + ff_mats * d * ff) + 4.0 * tokens * width as f64 * inner;
    per_layer * c.num_layers as f64
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Arguments of `promptd-dev gemm`.
#[derive(Debug, Clone, clap::Args)]
pub struct GemmArgs {
    /// Square matrix size.
    #[arg(long, default_value_t = 4096)]
    size: i64,
    /// Timed runs (the best is reported).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Where and how it runs.
    #[command(flatten)]
    on: On,
}

/// One large matmul in this libtorch, timed: prints {"size", "best_ms", "tflops"}, the peak
/// an engine pass's achieved rate is compared with.
pub fn gemm(args: GemmArgs) -> Result<(), String> {
    let _guard = tch::no_grad_guard();
    let (device, kind) = args.on.apply()?;
    let n = args.size;
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let mut best = f64::INFINITY;
    for i in 0..args.repeats.max(1) + 2 {
        let t = Instant::now();
        // a @ b.T through the serving kernel (`--cpu-matmul` on the CPU), as a pass multiplies.
        let _c = promptd::model::matmul::linear(&a, &b, false).map_err(|e| e.to_string())?;
        sync(device);
        if i >= 2 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    let flops = 2.0 * (n as f64).powi(3);
    println!(
        "{}",
        json!({
            "size": n,
            "best_ms": best * 1e3,
            "tflops": flops / best / 1e12,
            "device": format!("{device:?}"),
            "dtype": format!("{kind:?}"),
            "cpu_matmul": format!("{:?}", promptd::model::matmul::cpu_matmul()),
        })
    );
    Ok(())
}
