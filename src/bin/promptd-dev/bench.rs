//! `promptd-dev bench`: a load generator against a live server. Open loop (Poisson arrivals at a
//! rate) or closed loop (N clients), tasks drawn uniformly or by Zipf over T tasks, inputs of
//! varied length, optional labels. Reports throughput, latency percentiles, errors by status,
//! and from /metrics the mean rows and tasks per forward pass during the run.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

/// Task popularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dist {
    /// Every task equally likely.
    Uniform,
    /// Task k (1-based) with probability ∝ 1/k^s.
    Zipf,
}

/// Arguments of `promptd-dev bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Number of tasks, named `<task-prefix><index>` with the index zero-padded to 5 digits.
    #[arg(long, default_value_t = 1)]
    pub tasks: usize,
    /// Index of the first task (tasks are first-task .. first-task + tasks).
    #[arg(long, default_value_t = 0)]
    pub first_task: usize,
    /// Task name prefix (make-prompts writes `task00000`, …).
    #[arg(long, default_value = "task")]
    pub task_prefix: String,
    /// Task popularity.
    #[arg(long, value_enum, default_value = "uniform")]
    pub dist: Dist,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,
    /// Open loop: requests per second, Poisson arrivals. Without it: closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: clients, each sending its next request when the last one is answered.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds of measured load (after the warm-up).
    #[arg(long, default_value_t = 20.0)]
    pub duration_s: f64,
    /// Seconds of unmeasured load first.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,
    /// Fewest words per input.
    #[arg(long, default_value_t = 4)]
    pub min_words: usize,
    /// Most words per input.
    #[arg(long, default_value_t = 32)]
    pub max_words: usize,
    /// Inputs per request.
    #[arg(long, default_value_t = 1)]
    pub inputs: usize,
    /// Take the inputs from this file's JSON lines ({"input": ...}, as scripts/bench_rows.py
    /// writes them) instead of random words: client c's k-th request starts at line
    /// (c + k · concurrency) · inputs, so 64 clients over a 64-line file send the same 64 rows
    /// as an engine batch of that file (the offline run takes the lines in order).
    #[arg(long)]
    pub inputs_file: Option<std::path::PathBuf>,
    /// max_new_tokens of every request (the most, with --min-new-tokens).
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Draw each request's max_new_tokens uniformly from min-new-tokens ..= max-new-tokens.
    #[arg(long)]
    pub min_new_tokens: Option<usize>,
    /// Comma-separated labels to score (none: generation only).
    #[arg(long)]
    pub labels: Option<String>,
    /// API key (tenants file in force).
    #[arg(long, env = "PROMPTD_BENCH_KEY")]
    pub key: Option<String>,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the summary as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Offline: run the same requests straight through the engine in this process (no
    /// server, no HTTP; CPU, f32), in batches of --batch-size rows, for the server-overhead
    /// comparison.
    #[arg(long, requires_all = ["model", "prompts"])]
    pub offline: bool,
    /// Offline: the model folder.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Offline: the prompts folder.
    #[arg(long)]
    pub prompts: Option<std::path::PathBuf>,
    /// Offline: rows per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Offline: decode continuously (freed places refilled at every step) instead of in
    /// static batches.
    #[arg(long, requires = "offline")]
    pub offline_continuous: bool,
    /// Offline: milliseconds per op family over the measured window (CPU only), in the summary.
    #[arg(long, requires = "offline")]
    pub profile: bool,
}

/// xorshift64*: small, seeded, good enough for arrival times and task draws.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64).min(n as f64 - 1.0) as usize
    }
}

/// Draws task indices.
struct Tasks {
    cdf: Option<Vec<f64>>,
    n: usize,
}

impl Tasks {
    fn new(n: usize, dist: Dist, s: f64) -> Self {
        let cdf = (dist == Dist::Zipf).then(|| {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (1..=n)
                .map(|k| {
                    acc += 1.0 / (k as f64).powf(s);
                    acc
                })
                .collect();
            cdf.iter_mut().for_each(|c| *c /= acc);
            cdf
        });
        Self { cdf, n }
    }

    fn draw(&self, rng: &mut Rng) -> usize {
        match &self.cdf {
            None => rng.below(self.n),
            Some(cdf) => {
                let u = rng.unit();
                cdf.partition_point(|&c| c < u).min(self.n - 1)
            }
        }
    }
}

const WORDS: [&str; 16] = [
    "review", "the", "battery", "lasts", "all", "day", "screen", "cracked", "after", "a", "week",
    "great", "value", "would", "buy", "again",
];

/// Shared results of the measured window.
#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    statuses: BTreeMap<String, u64>,
    rows: u64,
    /// Tokens generated in the answered rows.
    tokens: u64,
}

/// The inputs of `--inputs-file`.
fn read_inputs(args: &BenchArgs) -> Result<Option<Arc<[String]>>, String> {
    let Some(path) = &args.inputs_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let inputs: Vec<String> =
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                let row: Value = serde_json::from_str(line)
                    .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?;
                row["input"].as_str().map(str::to_string).ok_or_else(|| {
                    format!("{} line {}: no \"input\" string", path.display(), i + 1)
                })
            })
            .collect::<Result<_, _>>()?;
    if inputs.is_empty() {
        return Err(format!("{}: no inputs", path.display()));
    }
    Ok(Some(inputs.into()))
}

/// Runs the benchmark and prints the summary.
pub fn run(args: BenchArgs) -> Result<(), String> {
    if args.tasks == 0 || args.min_words == 0 || args.max_words < args.min_words {
        return Err(
            "--tasks and --min-words must be at least 1, and --max-words ≥ --min-words".into(),
        );
    }
    if args.min_new_tokens.is_some_and(|m| m > args.max_new_tokens) {
        return Err("--min-new-tokens must be at most --max-new-tokens".into());
    }
    let inputs = read_inputs(&args)?;
    if args.offline {
        return offline(&args, inputs.as_deref());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(bench(args, inputs))
}

async fn bench(args: BenchArgs, inputs: Option<Arc<[String]>>) -> Result<(), String> {
    let args = Arc::new(args);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .map_err(|e| e.to_string())?;
    let before = scrape(&client, &args).await;
    let start = Instant::now();
    let warm_until = start + Duration::from_secs_f64(args.warmup_s);
    let end = warm_until + Duration::from_secs_f64(args.duration_s);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut before_measured = None;

    let progress = {
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let t = tally.lock();
                eprintln!(
                    "bench: {:.0} s, {} answers, {} rows measured",
                    start.elapsed().as_secs_f64(),
                    t.latencies.len(),
                    t.rows
                );
            }
        })
    };

    let mut handles = Vec::new();
    match args.rate {
        Some(rate) if rate > 0.0 => {
            let mut rng = Rng::new(args.seed);
            let tasks = Tasks::new(args.tasks, args.dist, args.zipf_s);
            let mut next = Instant::now();
            let mut sent = 0;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                if before_measured.is_none() && Instant::now() >= warm_until {
                    before_measured = Some((scrape(&client, &args).await, Instant::now()));
                }
                let body = request_body(&args, &mut rng, &tasks, inputs.as_deref(), sent);
                sent += args.inputs;
                let (client, args, tally) = (client.clone(), args.clone(), tally.clone());
                handles.push(tokio::spawn(async move {
                    one(&client, &args, body, warm_until, end, &tally).await;
                }));
                next += Duration::from_secs_f64(-rng.unit().ln() / rate);
            }
        }
        Some(_) => return Err("--rate must be positive".into()),
        None => {
            for c in 0..args.concurrency {
                let (client, args, tally) = (client.clone(), args.clone(), tally.clone());
                let inputs = inputs.clone();
                handles.push(tokio::spawn(async move {
                    let mut rng = Rng::new(args.seed.wrapping_add(c as u64 * 7919));
                    let tasks = Tasks::new(args.tasks, args.dist, args.zipf_s);
                    let mut first = c * args.inputs;
                    while Instant::now() < end {
                        let body = request_body(&args, &mut rng, &tasks, inputs.as_deref(), first);
                        first += args.concurrency * args.inputs;
                        one(&client, &args, body, warm_until, end, &tally).await;
                    }
                }));
            }
            tokio::time::sleep_until(warm_until.into()).await;
            before_measured = Some((scrape(&client, &args).await, Instant::now()));
        }
    }
    for h in handles {
        let _ = h.await;
    }
    progress.abort();
    let after = scrape(&client, &args).await;
    let (base, from) = before_measured.unwrap_or((before, start));
    summarize(
        &args,
        &tally.lock(),
        &base,
        &after,
        from.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// A request's task and body: its inputs are `--inputs-file`'s lines from `first` on (wrapping
/// around), or random words.
fn request_body(
    args: &BenchArgs,
    rng: &mut Rng,
    tasks: &Tasks,
    file: Option<&[String]>,
    first: usize,
) -> (String, Value) {
    let task = format!(
        "{}{:05}",
        args.task_prefix,
        args.first_task + tasks.draw(rng)
    );
    let inputs: Vec<String> = (0..args.inputs)
        .map(|i| match file {
            Some(lines) => lines[(first + i) % lines.len()].clone(),
            None => {
                let n = args.min_words + rng.below(args.max_words - args.min_words + 1);
                (0..n)
                    .map(|_| WORDS[rng.below(WORDS.len())])
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        })
        .collect();
    let max_new_tokens = match args.min_new_tokens {
        Some(min) => min + rng.below(args.max_new_tokens - min + 1),
        None => args.max_new_tokens,
    };
    let mut body = json!({"inputs": inputs, "max_new_tokens": max_new_tokens});
    if let Some(labels) = &args.labels {
        body["labels"] = json!(labels.split(',').collect::<Vec<_>>());
    }
    (task, body)
}

async fn one(
    client: &reqwest::Client,
    args: &BenchArgs,
    (task, body): (String, Value),
    warm_until: Instant,
    end: Instant,
    tally: &Mutex<Tally>,
) {
    let sent = Instant::now();
    let mut req = client
        .post(format!("{}/v1/tasks/{task}/predict", args.url))
        .json(&body);
    if let Some(key) = &args.key {
        req = req.bearer_auth(key);
    }
    let mut tokens = 0;
    let status = match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16().to_string();
            let body = r.bytes().await.unwrap_or_default();
            if let Ok(answer) = serde_json::from_slice::<Value>(&body) {
                let outputs = answer["outputs"].as_array().map(Vec::as_slice);
                tokens = (outputs.unwrap_or_default().iter())
                    .filter_map(|o| o["token_ids"].as_array())
                    .map(|ids| ids.len() as u64)
                    .sum();
            }
            status
        }
        Err(e) if e.is_connect() => "connect_error".to_string(),
        Err(_) => "io_error".to_string(),
    };
    let done = Instant::now();
    if sent >= warm_until && done <= end + Duration::from_secs(60) {
        let mut t = tally.lock();
        if status == "200" {
            t.latencies.push(done.duration_since(sent).as_secs_f64());
            t.rows += args.inputs as u64;
            t.tokens += tokens;
        }
        *t.statuses.entry(status).or_default() += 1;
    }
}

/// Counters of /metrics that the summary uses, in this order.
const COUNTERS: [&str; 18] = [
    "promptd_batch_size_count ",
    "promptd_batch_size_sum ",
    "promptd_batch_tasks_sum ",
    "promptd_generated_tokens_total ",
    "promptd_decode_rows_count ",
    "promptd_decode_rows_sum ",
    "promptd_decode_tasks_sum ",
    // 7..: where the time went.
    "promptd_batch_duration_seconds_sum ",
    "promptd_batch_duration_seconds_count ",
    "promptd_decode_steps_total ",
    "promptd_decode_seconds_total ",
    "promptd_decode_row_steps_total ",
    "promptd_queue_wait_seconds_sum ",
    "promptd_queue_wait_seconds_count ",
    "promptd_request_phase_seconds_sum{phase=\"validate\"} ",
    "promptd_request_phase_seconds_sum{phase=\"wait\"} ",
    "promptd_request_phase_seconds_sum{phase=\"respond\"} ",
    "promptd_request_phase_seconds_count{phase=\"wait\"} ",
];

type Counters = [f64; COUNTERS.len()];

/// The [`COUNTERS`] at one moment (NaN when absent).
async fn scrape(client: &reqwest::Client, args: &BenchArgs) -> Counters {
    let mut req = client.get(format!("{}/metrics", args.url));
    if let Some(key) = &args.key {
        req = req.bearer_auth(key);
    }
    let text = match req.send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    COUNTERS.map(value)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Prints the summary; `scraped_s` is the time between the two scrapes of `before` and `after`.
fn summarize(args: &BenchArgs, t: &Tally, before: &Counters, after: &Counters, scraped_s: f64) {
    let mut lat = t.latencies.clone();
    lat.sort_by(f64::total_cmp);
    let secs = args.duration_s;
    let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let passes = d[0];
    // Closed-loop rows that all generate as many tokens finish in waves, so the rows answered
    // in a window move by whole waves; the server's token rate does not. Rows per second
    // from it: tokens per second over the answered rows' mean tokens.
    let tokens_per_row = t.tokens as f64 / t.rows as f64;
    let mean_latency = lat.iter().sum::<f64>() / lat.len() as f64;
    // In a closed loop each client always has one request out, so (Little's law) requests per
    // second = clients / mean latency, a rate that answers arriving in waves cannot bias.
    let closed_rows_per_s =
        (args.rate.is_none()).then(|| (args.concurrency * args.inputs) as f64 / mean_latency);
    let requests = d[17];
    let summary = json!({
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "rate": args.rate,
        "concurrency": if args.rate.is_none() { Some(args.concurrency) } else { None },
        "tasks": args.tasks,
        "dist": format!("{:?}", args.dist).to_lowercase(),
        "duration_s": secs,
        "requests_ok": lat.len(),
        "requests_per_s": lat.len() as f64 / secs,
        "rows_per_s": t.rows as f64 / secs,
        "generated_tokens_per_s": d[3] / secs,
        "rows_per_s_closed_loop": closed_rows_per_s,
        "tokens_per_row": tokens_per_row,
        // Mean milliseconds per request (client, validate, wait, respond), per row (queue),
        // and the engine thread's seconds in the window (admissions, decode steps).
        "breakdown": {
            "request_ms": mean_latency * 1e3,
            "validate_ms": d[14] / requests * 1e3,
            "wait_ms": d[15] / requests * 1e3,
            "respond_ms": d[16] / requests * 1e3,
            "queue_ms_per_row": d[12] / d[13] * 1e3,
            "admissions": d[8],
            "admit_s": d[7],
            "decode_steps": d[9],
            "decode_s": d[10],
            "rows_per_step": d[11] / d[9],
            "ms_per_step": d[10] / d[9] * 1e3,
            "engine_busy": (d[7] + d[10]) / scraped_s,
        },
        "latency_ms": {
            "p50": percentile(&lat, 0.50) * 1e3,
            "p90": percentile(&lat, 0.90) * 1e3,
            "p99": percentile(&lat, 0.99) * 1e3,
        },
        "statuses": t.statuses,
        "passes": passes,
        "mean_rows_per_pass": d[1] / passes,
        "mean_tasks_per_pass": d[2] / passes,
        "mean_decode_rows": d[5] / d[4],
        "mean_decode_tasks": d[6] / d[4],
    });
    if args.json {
        println!("{summary}");
        return;
    }
    println!(
        "{} loop, {} tasks ({}), {:.0} s: {:.1} req/s, {:.1} rows/s; latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
        summary["mode"].as_str().unwrap_or(""),
        args.tasks,
        summary["dist"].as_str().unwrap_or(""),
        secs,
        summary["requests_per_s"].as_f64().unwrap_or(0.0),
        summary["rows_per_s"].as_f64().unwrap_or(0.0),
        summary["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        summary["latency_ms"]["p90"].as_f64().unwrap_or(f64::NAN),
        summary["latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "statuses {}; {} forward passes, {:.1} rows and {:.1} tasks per pass; {:.0} tokens/s",
        summary["statuses"],
        passes,
        summary["mean_rows_per_pass"],
        summary["mean_tasks_per_pass"],
        summary["generated_tokens_per_s"]
    );
    if d[4] > 0.0 {
        println!(
            "running batch: {:.1} rows and {:.1} tasks decoding together when rows joined",
            summary["mean_decode_rows"], summary["mean_decode_tasks"]
        );
    }
}

/// The same requests as the load, run by this process's own engine in full batches: what the
/// hardware gives without a server. Runs for --warmup-s, then measures --duration-s.
fn offline(args: &BenchArgs, file: Option<&[String]>) -> Result<(), String> {
    use promptd::engine::continuous::Running;
    use promptd::engine::{Engine, RowInput};
    use promptd::engine::{Joining, RowResult};
    use promptd::model::{ModelOptions, T5Model, T5Tokenizer};
    use promptd::prompts::{load_prompt_dir, PromptLimits};

    let (Some(model_dir), Some(prompts_dir)) = (&args.model, &args.prompts) else {
        return Err("--offline needs --model and --prompts".into());
    };
    let _guard = tch::no_grad_guard();
    let mut model = T5Model::load(
        model_dir,
        ModelOptions {
            device: tch::Device::Cpu,
            kind: tch::Kind::Float,
        },
    )
    .map_err(|e| e.to_string())?;
    // As the server packs it.
    model.pack_for_serving(false).map_err(|e| e.to_string())?;
    let eos = model.config.eos_ids()[0];
    let tokenizer = T5Tokenizer::from_dir(model_dir, eos).map_err(|e| e.to_string())?;
    let d_model = model.config.d_model as usize;
    let max_batch_tokens = 32768;
    let mut engine = Engine::new(model).map_err(|e| e.to_string())?;
    let loaded = load_prompt_dir(prompts_dir, d_model, &PromptLimits::default())
        .map_err(|e| e.to_string())?;
    let mut slots = std::collections::HashMap::new();
    for (task, prompt) in &loaded.prompts {
        slots.insert(
            task.to_string(),
            engine
                .register_prompt(&prompt.encoder)
                .map_err(|e| e.to_string())?,
        );
    }
    let mut rng = Rng::new(args.seed);
    let tasks = Tasks::new(args.tasks, args.dist, args.zipf_s);
    let mut made = 0;
    let mut next_row = || -> Result<RowInput, String> {
        let (task, body) = request_body(args, &mut rng, &tasks, file, made);
        made += 1;
        let slot = slots
            .get(&task)
            .ok_or_else(|| format!("no prompt for task {task} in the prompts folder"))?;
        let text = body["inputs"][0].as_str().unwrap_or_default();
        let labels = match &args.labels {
            Some(l) => l
                .split(',')
                .map(|l| tokenizer.encode(l).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(RowInput {
            prompt: Some(slot.clone()),
            input_ids: tokenizer.encode(text).map_err(|e| e.to_string())?,
            max_new_tokens: body["max_new_tokens"].as_u64().unwrap_or(16) as usize,
            labels,
            cancel: None,
            sequence_logprob: false,
            ..Default::default()
        })
    };
    let start = Instant::now();
    let warm_until = start + Duration::from_secs_f64(args.warmup_s);
    let end = warm_until + Duration::from_secs_f64(args.duration_s);
    let (mut rows_done, mut tokens, mut passes, mut measured_from) = (0u64, 0u64, 0u64, None);
    let mut profiling = false;
    if args.offline_continuous {
        // A saturated continuous batch: every freed place is refilled at the next step.
        let mut running = Running::new(engine.model());
        let mut waiting: Vec<(bool, tokio::sync::oneshot::Receiver<RowResult>)> = Vec::new();
        while Instant::now() < end {
            let measured = Instant::now() >= warm_until;
            if measured {
                measured_from.get_or_insert_with(Instant::now);
                if args.profile && !profiling {
                    promptd::model::profile::enable(true);
                    profiling = true;
                }
            }
            let room = args.batch_size - running.len();
            if room > 0 {
                let mut joining = Vec::with_capacity(room);
                for _ in 0..room {
                    let (reply, rx) = tokio::sync::oneshot::channel();
                    joining.push(Joining {
                        row: next_row()?,
                        reply,
                    });
                    waiting.push((measured, rx));
                }
                passes += running
                    .admit(&mut engine, joining, max_batch_tokens)
                    .passes
                    .len() as u64;
            }
            running.step(&engine);
            waiting.retain_mut(|(counted, rx)| match rx.try_recv() {
                Ok(out) => {
                    if *counted {
                        rows_done += 1;
                        tokens += out.map_or(0, |o| o.token_ids.len() as u64);
                    }
                    false
                }
                Err(_) => true,
            });
        }
    }
    while !args.offline_continuous && Instant::now() < end {
        let rows: Vec<RowInput> = (0..args.batch_size)
            .map(|_| next_row())
            .collect::<Result<_, _>>()?;
        let measured = Instant::now() >= warm_until;
        if measured {
            measured_from.get_or_insert_with(Instant::now);
        }
        if measured && args.profile && !profiling {
            promptd::model::profile::enable(true);
            profiling = true;
        }
        let (outputs, stats) = engine.run_rows(&rows, max_batch_tokens);
        if !measured {
            continue;
        }
        if let Some(e) = outputs.iter().find_map(|o| o.as_ref().err()) {
            return Err(format!("engine: {e}"));
        }
        rows_done += rows.len() as u64;
        passes += stats.len() as u64;
        tokens += stats.iter().map(|s| s.generated_tokens as u64).sum::<u64>();
    }
    let secs = measured_from.map_or(f64::NAN, |t| (Instant::now() - t).as_secs_f64());
    let mut summary = json!({
        "mode": if args.offline_continuous { "offline-continuous" } else { "offline" },
        "tasks": args.tasks,
        "batch_size": args.batch_size,
        "duration_s": secs,
        "rows_per_s": rows_done as f64 / secs,
        "generated_tokens_per_s": tokens as f64 / secs,
        "passes": passes,
    });
    if profiling {
        let families = promptd::model::profile::take();
        promptd::model::profile::enable(false);
        let mut ms = serde_json::Map::new();
        for (family, s) in &families {
            ms.insert(family.name().into(), json!(s * 1e3));
        }
        let spent: f64 = families.iter().map(|(_, s)| s).sum();
        ms.insert("other".into(), json!((secs - spent) * 1e3));
        summary["profile_ms"] = Value::Object(ms);
    }
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "offline engine, {} tasks, batches of {}: {:.1} rows/s, {:.0} tokens/s over {:.0} s",
            args.tasks,
            args.batch_size,
            rows_done as f64 / secs,
            tokens as f64 / secs,
            secs
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_the_first_tasks_and_uniform_covers_all() {
        let mut rng = Rng::new(3);
        let zipf = Tasks::new(100, Dist::Zipf, 1.0);
        let mut counts = vec![0usize; 100];
        for _ in 0..100_000 {
            counts[zipf.draw(&mut rng)] += 1;
        }
        // P(task 1) = 1/H(100) ≈ 0.193; P(task 2) is half of it.
        let p1 = counts[0] as f64 / 1e5;
        assert!((p1 - 0.193).abs() < 0.01, "{p1}");
        assert!((counts[0] as f64 / counts[1] as f64 - 2.0).abs() < 0.15);
        let uniform = Tasks::new(7, Dist::Uniform, 1.0);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[uniform.draw(&mut rng)] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }

    #[test]
    fn exponential_gaps_average_one_over_the_rate() {
        let mut rng = Rng::new(9);
        let mean: f64 = (0..100_000).map(|_| -rng.unit().ln() / 50.0).sum::<f64>() / 1e5;
        assert!((mean - 0.02).abs() < 0.0005, "{mean}");
    }
}
