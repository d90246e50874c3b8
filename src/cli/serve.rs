//! `promptd serve`: the HTTP server. Wires the engine thread, the batcher, the prompt
//! registry with its folder watcher, and the API; shuts down in two stages on SIGTERM/SIGINT.
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::api::tune::{TuneLimits, TuneService};
use crate::api::validate::RowLimits;
use crate::api::{app, ApiLimits, AppState, Lifecycle};
use crate::batcher::{Batcher, Batching, Decode, PolicyConfig};
use crate::engine::worker::{self, EngineConfig};
use crate::engine::{DeviceSpec, DtypeSpec};
use crate::metrics::Metrics;
use crate::model::{T5Config, T5Tokenizer};
use crate::prompts::audit::AuditLog;
use crate::prompts::registry::Registry;
use crate::prompts::store::Store;
use crate::prompts::PromptLimits;
use crate::tenants::Tenants;
use crate::tune::jobs::JobTable;

/// Arguments of `promptd serve`. Every flag can also be set as `PROMPTD_<FLAG>`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Hugging Face T5 directory (config.json; safetensors or pytorch_model.bin weights, single or
    /// sharded; tokenizer.json or spiece.model).
    #[arg(long, env = "PROMPTD_MODEL")]
    pub model: PathBuf,
    /// Prompts folder: loaded at start, uploads are written here, changes by others are picked up.
    #[arg(long, env = "PROMPTD_PROMPTS")]
    pub prompts: PathBuf,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed on stdout).
    #[arg(long, env = "PROMPTD_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,
    /// Address of the gRPC API (proto/promptd.proto), or `off`; printed on stdout like --addr.
    #[arg(long, env = "PROMPTD_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: Listen,
    /// Rows per forward pass; rows of any tasks share a pass.
    #[arg(long, env = "PROMPTD_MAX_BATCH_SIZE", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch_size: u32,
    /// Longest a row waits for a fuller batch, in milliseconds.
    #[arg(long, env = "PROMPTD_MAX_WAIT_MS", default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Rows the queue holds; beyond that requests get 429 with Retry-After.
    #[arg(long, env = "PROMPTD_MAX_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue: u32,
    /// Rows one task may have waiting (default: half of --max-queue), so a flooding task gets
    /// 429 before it fills the queue for every other task.
    #[arg(long, env = "PROMPTD_MAX_QUEUE_PER_TASK",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue_per_task: Option<u32>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, env = "PROMPTD_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (f32 on CPU, bf16 on GPU) | f32 | bf16 | f16
    #[arg(long, env = "PROMPTD_DTYPE", default_value = "auto")]
    pub dtype: DtypeSpec,
    /// mixed: rows of any tasks share a forward pass; per-task: only rows of one task do
    /// (a baseline for benchmarks, as servers without mixed-task batching behave).
    #[arg(long, env = "PROMPTD_BATCHING", value_enum, default_value = "mixed")]
    pub batching: Batching,
    /// continuous: new rows join the running decode batch at the next step and finished rows
    /// leave at once; static: a batch decodes to its end before the next starts (for
    /// comparisons). per-task batching always decodes statically.
    #[arg(long, env = "PROMPTD_DECODE", value_enum, default_value = "continuous")]
    pub decode: Decode,
    /// Padded encoder tokens (rows x longest row) per forward pass; bounds attention memory.
    #[arg(long, env = "PROMPTD_MAX_BATCH_TOKENS", default_value_t = 32768,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_tokens: u64,
    /// Tokens generated per input when a request does not say.
    #[arg(long, env = "PROMPTD_MAX_NEW_TOKENS", default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Largest max_new_tokens a request may ask for.
    #[arg(long, env = "PROMPTD_MAX_NEW_TOKENS_LIMIT", default_value_t = 1024)]
    pub max_new_tokens_limit: usize,
    /// Longest input or label, in tokens including </s>; longer ones get 422.
    #[arg(long, env = "PROMPTD_MAX_INPUT_TOKENS", default_value_t = 2048)]
    pub max_input_tokens: usize,
    /// Most candidate labels per request.
    #[arg(long, env = "PROMPTD_MAX_LABELS", default_value_t = 256)]
    pub max_labels: usize,
    /// Most inputs per predict request.
    #[arg(long, env = "PROMPTD_MAX_INPUTS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inputs: u32,
    /// Largest predict body, in bytes (413 beyond).
    #[arg(long, env = "PROMPTD_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Longest prompt accepted, in virtual tokens.
    #[arg(long, env = "PROMPTD_MAX_PROMPT_LENGTH", default_value_t = 512)]
    pub max_prompt_length: usize,
    /// Largest prompt upload, in bytes (413 beyond).
    #[arg(long, env = "PROMPTD_MAX_PROMPT_BYTES", default_value_t = 64 << 20)]
    pub max_prompt_bytes: usize,
    /// Longest URL (path and query) in bytes; longer ones get 414.
    #[arg(long, env = "PROMPTD_MAX_URI_BYTES", default_value_t = 8 << 10)]
    pub max_uri_bytes: usize,
    /// Largest total size of request headers in bytes; larger ones get 431.
    #[arg(long, env = "PROMPTD_MAX_HEADER_BYTES", default_value_t = 32 << 10)]
    pub max_header_bytes: usize,
    /// Time a predict request may take, queueing included, before it gets 504 (0: no limit).
    #[arg(long, env = "PROMPTD_REQUEST_TIMEOUT_MS", default_value_t = 60_000)]
    pub request_timeout_ms: u64,
    /// How often the prompts folder is checked for changes made by others.
    #[arg(long, env = "PROMPTD_WATCH_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub watch_interval_ms: u64,
    /// Longest a shutdown waits for in-flight and queued requests, in seconds.
    #[arg(long, env = "PROMPTD_SHUTDOWN_TIMEOUT_S", default_value_t = 30)]
    pub shutdown_timeout_s: u64,
    /// Tenants file (TOML, or JSON by extension): API keys, task ownership, quotas, batch
    /// weights. Reloaded on change and on SIGHUP. Without it the server is open to anyone.
    #[arg(long, env = "PROMPTD_TENANTS")]
    pub tenants: Option<PathBuf>,
    /// Audit log of prompt changes (JSON lines); default `<prompts>/.audit.jsonl`, `off` for none.
    #[arg(long, env = "PROMPTD_AUDIT_LOG")]
    pub audit_log: Option<String>,
    /// Most of the engine's recent time tuning jobs may take while requests are being served
    /// (an idle engine tunes at full speed).
    #[arg(long, env = "PROMPTD_TUNE_SHARE", default_value_t = 0.25)]
    pub tune_share: f64,
    /// Training plus dev rows one tuning job may carry.
    #[arg(long, env = "PROMPTD_TUNE_MAX_ROWS", default_value_t = 10_000)]
    pub tune_max_rows: usize,
    /// Steps one tuning job may take.
    #[arg(long, env = "PROMPTD_TUNE_MAX_STEPS", default_value_t = 20_000)]
    pub tune_max_steps: usize,
    /// Rows per tuning step (bounds how long one step holds the engine).
    #[arg(long, env = "PROMPTD_TUNE_MAX_BATCH_SIZE", default_value_t = 64)]
    pub tune_max_batch_size: usize,
    /// Queued or running tuning jobs per tenant.
    #[arg(long, env = "PROMPTD_TUNE_MAX_JOBS_PER_TENANT", default_value_t = 2)]
    pub tune_max_jobs_per_tenant: usize,
    /// Size of a tuning request body in bytes.
    #[arg(long, env = "PROMPTD_TUNE_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub tune_max_body_bytes: usize,
    /// Distinct task values of the `task` metric label; other tasks count as `_other`.
    #[arg(long, env = "PROMPTD_METRICS_MAX_TASKS", default_value_t = 32)]
    pub metrics_max_tasks: usize,
}

/// A listening address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" | "" => Ok(Listen(None)),
            addr => addr
                .parse()
                .map(|a| Listen(Some(a)))
                .map_err(|e| format!("{addr:?} is neither an address (host:port) nor `off`: {e}")),
        }
    }
}

/// Runs the server until SIGTERM/SIGINT; Ok after a clean drain.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("promptd-rt")
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(serve(args))
}

/// Everything a running server is made of, before it listens.
pub struct Server {
    /// Route state (registry, batcher, engine handle, metrics, limits).
    pub state: AppState,
    /// The engine thread.
    pub engine_thread: std::thread::JoinHandle<()>,
}

/// Builds the server from its arguments: reads the model config and tokenizer, starts the
/// engine thread (which loads the weights in the background) and opens the prompts folder.
pub fn build(args: &ServeArgs) -> Result<Server, String> {
    let config = T5Config::from_dir(&args.model).map_err(|e| e.to_string())?;
    let eos = config.eos_ids()[0];
    let tokenizer = T5Tokenizer::from_dir(&args.model, eos).map_err(|e| e.to_string())?;
    let device = args.device.resolve()?;
    let kind = args.dtype.resolve(device);
    let metrics = Arc::new(Metrics::new(args.metrics_max_tasks));
    let (engine, engine_thread) = worker::spawn(EngineConfig {
        model_dir: args.model.clone(),
        device,
        kind,
        max_batch_tokens: args.max_batch_tokens,
        tune_share: args.tune_share,
    })
    .map_err(|e| format!("starting the engine thread: {e}"))?;
    let tuning = Arc::new(TuneService {
        jobs: JobTable::open(&args.prompts).map_err(|e| format!("tuning jobs: {e}"))?,
        limits: TuneLimits {
            max_rows: args.tune_max_rows,
            max_steps: args.tune_max_steps,
            max_batch_size: args.tune_max_batch_size.max(1),
            max_jobs_per_tenant: args.tune_max_jobs_per_tenant,
            max_body_bytes: args.tune_max_body_bytes,
        },
    });
    let store = Store::open(&args.prompts)
        .map_err(|e| format!("prompts folder {}: {e}", args.prompts.display()))?;
    let limits = PromptLimits {
        max_rows: args.max_prompt_length,
        max_file_bytes: args.max_prompt_bytes,
    };
    let registry = Arc::new(Registry::new(
        store,
        engine.clone(),
        config.d_model as usize,
        limits,
        metrics.clone(),
    ));
    let batcher = Batcher::new(
        PolicyConfig {
            max_batch_size: args.max_batch_size as usize,
            max_wait: Duration::from_millis(args.max_wait_ms),
            max_queue: args.max_queue as usize,
            max_queue_per_task: args
                .max_queue_per_task
                .map_or((args.max_queue as usize / 2).max(1), |n| n as usize),
            max_batch_tokens: args.max_batch_tokens,
            batching: args.batching,
        },
        args.decode,
        metrics.clone(),
    );
    let lifecycle = Arc::new(Lifecycle::default());
    let tenants = match &args.tenants {
        Some(path) => Tenants::load(path, args.max_prompt_length).map_err(|e| e.to_string())?,
        None => {
            let warning = "no --tenants file: the server is OPEN — anyone who can reach it may read, replace and delete every prompt";
            tracing::warn!("{warning}");
            eprintln!("promptd: WARNING: {warning}");
            Tenants::open()
        }
    };
    let audit = match args.audit_log.as_deref() {
        Some("off") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => Some(args.prompts.join(".audit.jsonl")),
    }
    .map(|path| {
        AuditLog::open(&path)
            .map(Arc::new)
            .map_err(|e| format!("audit log {}: {e}", path.display()))
    })
    .transpose()?;
    let state = AppState {
        registry,
        batcher,
        engine,
        tokenizer: Arc::new(tokenizer),
        metrics,
        limits: ApiLimits {
            row: RowLimits {
                max_input_tokens: args.max_input_tokens,
                default_max_new_tokens: args.max_new_tokens,
                max_new_tokens_limit: args.max_new_tokens_limit,
                max_labels: args.max_labels,
            },
            // A request larger than the queue could never be admitted: refuse it as invalid.
            max_inputs: args.max_inputs.min(args.max_queue) as usize,
            max_body_bytes: args.max_body_bytes,
            max_prompt_bytes: args.max_prompt_bytes,
            request_timeout: Duration::from_millis(args.request_timeout_ms),
            max_uri_bytes: args.max_uri_bytes,
            max_header_bytes: args.max_header_bytes,
        },
        lifecycle,
        tenants: Arc::new(tenants),
        audit,
        tuning,
    };
    Ok(Server {
        state,
        engine_thread,
    })
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let Server {
        state,
        engine_thread,
    } = build(&args)?;
    let batcher = state.batcher.clone();
    let lifecycle = state.lifecycle.clone();
    let tuning = state.tuning.clone();
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| format!("binding {}: {e}", args.addr))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    // Tests and scripts read these lines to find ephemeral ports.
    println!("promptd listening on http://{local}");
    let grpc_listener = match args.grpc_addr.0 {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("binding the gRPC address {addr}: {e}"))?;
            let local = l.local_addr().map_err(|e| e.to_string())?;
            println!("promptd gRPC listening on {local}");
            tracing::info!(addr = %local, "gRPC listening");
            Some(l)
        }
        None => None,
    };
    tracing::info!(addr = %local, "listening; loading the model");

    let batcher_task = tokio::spawn(batcher.clone().run(state.engine.clone()));
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<String>(1);
    let startup = {
        let (engine, registry) = (state.engine.clone(), state.registry.clone());
        let lifecycle = lifecycle.clone();
        let interval = Duration::from_millis(args.watch_interval_ms);
        tokio::spawn(async move {
            match load(&engine, &registry, &lifecycle).await {
                Ok(()) => watch(&registry, interval).await,
                Err(why) => {
                    let _ = fatal_tx.send(why).await;
                }
            }
        })
    };

    let tenant_watch = tokio::spawn(watch_tenants(
        state.tenants.clone(),
        state.metrics.clone(),
        Duration::from_millis(args.watch_interval_ms),
    ));

    // Stage one on a signal: stop accepting, refuse new work (503), fail readiness.
    // Stage two: wait, bounded, for in-flight requests and the queue to drain.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let grpc = grpc_listener
        .map(|listener| tokio::spawn(crate::api::grpc::serve(listener, state.clone(), stopped())));
    let server = axum::serve(listener, app(state))
        .with_graceful_shutdown(stopped())
        .into_future();
    let mut server = tokio::spawn(server);
    let outcome = tokio::select! {
        r = &mut server => Err(format!("server stopped: {r:?}")),
        why = fatal_rx.recv() => Err(why.unwrap_or_else(|| "start-up failed".into())),
        signal = shutdown_signal() => Ok(signal),
    };
    lifecycle.draining.store(true, Ordering::Release);
    batcher.close();
    let _ = stop_tx.send(true);
    match &outcome {
        Ok(signal) => tracing::info!(signal, "shutting down: draining in-flight requests"),
        Err(why) => tracing::error!("shutting down: {why}"),
    }
    let grace = Duration::from_secs(args.shutdown_timeout_s);
    let drained = tokio::time::timeout(grace, async {
        let _ = (&mut server).await;
        if let Some(grpc) = grpc {
            let _ = grpc.await;
        }
        let _ = batcher_task.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            secs = grace.as_secs(),
            "drain timed out; exiting with work unfinished"
        );
    }
    startup.abort();
    let _ = startup.await;
    tenant_watch.abort();
    tuning
        .jobs
        .fail_active("the server shut down before the job ended");
    // Every engine handle is gone now; the engine thread ends after its current job.
    let joined = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || engine_thread.join()),
    )
    .await;
    if joined.is_err() {
        tracing::warn!("the engine thread is still busy; exiting without it");
    }
    outcome.map(|_| tracing::info!("stopped"))
}

/// Waits for the model, loads the prompts folder and marks the server ready.
pub async fn load(
    engine: &worker::EngineHandle,
    registry: &Registry,
    lifecycle: &Lifecycle,
) -> Result<(), String> {
    engine
        .ready()
        .await
        .map_err(|why| format!("model failed to load: {why}"))?;
    let report = registry
        .sync()
        .await
        .map_err(|e| format!("loading prompts: {e}"))?;
    tracing::info!(
        prompts = registry.len(),
        failed = report.failed,
        "prompts loaded; ready"
    );
    lifecycle.ready.store(true, Ordering::Release);
    Ok(())
}

/// Keeps the registry in step with the prompts folder, forever.
pub async fn watch(registry: &Registry, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = registry.sync().await {
            tracing::warn!("checking the prompts folder failed: {e}");
        }
    }
}

/// Reloads the tenants file when it changes (polled like the prompts folder) or on SIGHUP; a
/// bad new version is logged and the previous tenants stay in force.
pub async fn watch_tenants(tenants: Arc<Tenants>, metrics: Arc<Metrics>, interval: Duration) {
    if !tenants.enabled() {
        return;
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = hangup => tracing::info!("SIGHUP: reloading the tenants file"),
        }
        match tenants.reload() {
            Ok(false) => {}
            Ok(true) => {
                metrics.tenant_reloads.with_label_values(&["loaded"]).inc();
                tracing::info!(tenants = ?tenants.current().names(), "tenants file loaded");
            }
            Err(e) => {
                metrics.tenant_reloads.with_label_values(&["invalid"]).inc();
                tracing::error!("tenants file not reloaded, the previous one stays in force: {e}");
            }
        }
    }
}

async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => "SIGINT",
        _ = term => "SIGTERM",
    }
}
