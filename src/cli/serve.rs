//! `promptd serve`: maps its flags onto a [`ServerConfig`], binds the listeners, prints their
//! addresses and runs [`server::run`] until SIGTERM/SIGINT.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::limits::{RowLimitArgs, TuneLimitArgs};
use crate::batcher::{Batching, Decode, PolicyConfig};
use crate::engine::{DeviceSpec, DtypeSpec};
use crate::prompts::PromptLimits;
use crate::server::{self, AuditLogPath, ConnectionLimits, ServerConfig};
use crate::service::Limits;
use crate::store::Location;

/// Arguments of `promptd serve`. Every flag can also be set as `PROMPTD_<FLAG>`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Hugging Face T5 directory (config.json; safetensors or pytorch_model.bin weights, single or
    /// sharded; tokenizer.json or spiece.model).
    #[arg(long, env = "PROMPTD_MODEL")]
    pub model: PathBuf,
    /// Prompts folder: loaded at start, uploads are written here, changes by others are picked up.
    #[arg(
        long,
        env = "PROMPTD_PROMPTS",
        required_unless_present = "store",
        conflicts_with = "store"
    )]
    pub prompts: Option<PathBuf>,
    /// Where prompts and ensembles are kept: a folder (as --prompts), or `s3://bucket/prefix`,
    /// an S3-compatible object store a fleet of replicas shares, configured by the standard
    /// AWS_* variables (AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_ALLOW_HTTP=true for a plain-HTTP endpoint). README "Run a fleet".
    #[arg(long, env = "PROMPTD_STORE")]
    pub store: Option<String>,
    /// How often each replica polls the object store's manifests (one conditional GET per
    /// catalog: a 304 when nothing changed).
    #[arg(long, env = "PROMPTD_STORE_POLL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..))]
    pub store_poll_ms: u64,
    /// This replica's id in the fleet (GET /v1/fleet, heartbeats); default: host name and
    /// process id.
    #[arg(long, env = "PROMPTD_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// With --store s3://…: a tuning job whose replica has not renewed its record for this long
    /// is marked failed by another replica (renewed six times per lease).
    #[arg(long, env = "PROMPTD_TUNE_LEASE_MS", default_value_t = crate::tune::jobs::STALE_AFTER_MS,
          value_parser = clap::value_parser!(u64).range(600..))]
    pub tune_lease_ms: u64,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed on stdout).
    #[arg(long, env = "PROMPTD_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,
    /// Address of the gRPC API (proto/promptd.proto), or `off`; printed on stdout like --addr.
    #[arg(long, env = "PROMPTD_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: Listen,
    /// Rows per forward pass; rows of any tasks share a pass.
    #[arg(long, env = "PROMPTD_MAX_BATCH_SIZE", default_value_t = PolicyConfig::default().max_batch_size as u32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch_size: u32,
    /// Longest a row waits for a fuller batch, in milliseconds.
    #[arg(long, env = "PROMPTD_MAX_WAIT_MS",
          default_value_t = PolicyConfig::default().max_wait.as_millis() as u64)]
    pub max_wait_ms: u64,
    /// Rows the queue holds; beyond that requests get 429 with Retry-After.
    #[arg(long, env = "PROMPTD_MAX_QUEUE", default_value_t = PolicyConfig::default().max_queue as u32,
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
    /// auto (f32 on CPU, bf16 on GPU) | f32 | bf16 | f16 | int8 (CPU: int8 linear layers)
    #[arg(long, env = "PROMPTD_DTYPE", default_value = "auto")]
    pub dtype: DtypeSpec,
    /// mixed: rows of any tasks share a forward pass; per-task: only rows of one task do
    /// (a baseline for benchmarks, as servers without mixed-task batching behave).
    #[arg(long, env = "PROMPTD_BATCHING", default_value = "mixed")]
    pub batching: Batching,
    /// continuous: new rows join the running decode batch at the next step and finished rows
    /// leave at once; static: a batch decodes to its end before the next starts (for
    /// comparisons). per-task batching always decodes statically.
    #[arg(long, env = "PROMPTD_DECODE", default_value = "continuous")]
    pub decode: Decode,
    /// Padded encoder tokens (rows x longest row) per forward pass; bounds attention memory.
    #[arg(long, env = "PROMPTD_MAX_BATCH_TOKENS",
          default_value_t = PolicyConfig::default().max_batch_tokens,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_tokens: u64,
    /// Per-input limits and the longest prompt.
    #[command(flatten)]
    pub rows: RowLimitArgs,
    /// Most inputs per predict request.
    #[arg(long, env = "PROMPTD_MAX_INPUTS", default_value_t = Limits::default().max_inputs as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inputs: u32,
    /// Largest predict body, in bytes (413 beyond).
    #[arg(long, env = "PROMPTD_MAX_BODY_BYTES",
          default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Largest prompt upload, in bytes (413 beyond).
    #[arg(long, env = "PROMPTD_MAX_PROMPT_BYTES",
          default_value_t = Limits::default().max_prompt_bytes)]
    pub max_prompt_bytes: usize,
    /// Device memory for LoRA, IA3 and prefix adapters, in MiB: the least recently used are
    /// moved off when full (they stay in host memory and load again when a row needs them).
    #[arg(long, env = "PROMPTD_ADAPTER_MEMORY_MB",
          default_value_t = crate::engine::adapters::DEFAULT_ADAPTER_MEMORY_MB)]
    pub adapter_memory_mb: usize,
    /// Highest rank a LoRA adapter may have (uploads above it are refused).
    #[arg(long, env = "PROMPTD_MAX_LORA_RANK",
          default_value_t = PromptLimits::default().max_lora_rank as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_lora_rank: u32,
    /// Longest URL (path and query) in bytes; longer ones get 414.
    #[arg(long, env = "PROMPTD_MAX_URI_BYTES",
          default_value_t = Limits::default().max_uri_bytes)]
    pub max_uri_bytes: usize,
    /// Largest total size of request headers in bytes; larger ones get 431.
    #[arg(long, env = "PROMPTD_MAX_HEADER_BYTES",
          default_value_t = Limits::default().max_header_bytes)]
    pub max_header_bytes: usize,
    /// Time a predict request may take, queueing included, before it gets 504 (0: no limit).
    #[arg(long, env = "PROMPTD_REQUEST_TIMEOUT_MS",
          default_value_t = Limits::default().request_timeout.as_millis() as u64)]
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
    /// Caps on tuning jobs.
    #[command(flatten)]
    pub tune: TuneLimitArgs,
    /// Distinct task values of the `task` metric label; other tasks count as `_other`.
    #[arg(long, env = "PROMPTD_METRICS_MAX_TASKS", default_value_t = 32)]
    pub metrics_max_tasks: usize,
    /// Time an HTTP connection has to deliver a request's complete headers, counted from when
    /// it opened or answered its previous request: slow senders and idle keep-alive
    /// connections are closed after it.
    #[arg(long, env = "PROMPTD_HEADER_READ_TIMEOUT_MS",
          default_value_t = ConnectionLimits::default().header_read_timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
    /// Open HTTP connections; more are closed as soon as they are accepted.
    #[arg(long, env = "PROMPTD_MAX_CONNECTIONS",
          default_value_t = ConnectionLimits::default().max_connections as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
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

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn config(&self) -> ServerConfig {
        let (prompts, store) = match (&self.prompts, self.store.as_deref().map(Location::parse)) {
            (Some(dir), _) => (dir.clone(), None),
            (None, Some(Location::Folder(dir))) => (dir, None),
            // A bucket: this replica's own files (tuning job records) in a folder of its own.
            (None, Some(Location::Bucket(url))) => (
                std::env::temp_dir().join(format!("promptd-{}", std::process::id())),
                Some(url),
            ),
            (None, None) => (PathBuf::from("prompts"), None),
        };
        let mut config = ServerConfig::new(&self.model, prompts);
        config.store = store;
        config.store_poll = Duration::from_millis(self.store_poll_ms);
        config.replica_id = self.replica_id.clone();
        config.tune_lease = Duration::from_millis(self.tune_lease_ms);
        config.device = self.device;
        config.dtype = self.dtype;
        config.policy = PolicyConfig {
            max_batch_size: self.max_batch_size as usize,
            max_wait: Duration::from_millis(self.max_wait_ms),
            max_queue: self.max_queue as usize,
            max_queue_per_task: self
                .max_queue_per_task
                .map_or((self.max_queue as usize / 2).max(1), |n| n as usize),
            max_batch_tokens: self.max_batch_tokens,
            batching: self.batching,
        };
        config.decode = self.decode;
        config.limits = Limits {
            row: self.rows.row_limits(),
            max_inputs: self.max_inputs as usize,
            max_body_bytes: self.max_body_bytes,
            max_prompt_bytes: self.max_prompt_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_uri_bytes: self.max_uri_bytes,
            max_header_bytes: self.max_header_bytes,
        };
        config.adapter_memory_mb = self.adapter_memory_mb;
        config.prompt_limits = PromptLimits {
            max_rows: self.rows.max_prompt_length,
            max_file_bytes: self.max_prompt_bytes,
            max_lora_rank: self.max_lora_rank as usize,
            shape: None,
        };
        config.tune = self.tune.tune_limits();
        config.tune_share = self.tune_share;
        config.tenants = self.tenants.clone();
        config.audit_log = match self.audit_log.as_deref() {
            None => AuditLogPath::InPrompts,
            Some("off") => AuditLogPath::Off,
            Some(path) => AuditLogPath::File(path.into()),
        };
        config.watch_interval = Duration::from_millis(self.watch_interval_ms);
        config.shutdown_timeout = Duration::from_secs(self.shutdown_timeout_s);
        config.metrics_max_tasks = self.metrics_max_tasks;
        config.connections = ConnectionLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_connections: self.max_connections as usize,
        };
        config
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

async fn serve(args: ServeArgs) -> Result<(), String> {
    let http = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| format!("binding {}: {e}", args.addr))?;
    let local = http.local_addr().map_err(|e| e.to_string())?;
    // Tests and scripts read these lines to find ephemeral ports.
    println!("promptd listening on http://{local}");
    let grpc = match args.grpc_addr.0 {
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
    let shutdown = async {
        let signal = shutdown_signal().await;
        tracing::info!(signal, "signal received");
    };
    server::run(args.config(), http, grpc, shutdown)
        .await
        .map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The flags' defaults are the library's: `promptd serve` with no options configures the
    /// same server as `ServerConfig::new`.
    #[test]
    fn flag_defaults_are_the_config_defaults() {
        let cli =
            crate::cli::Cli::try_parse_from(["promptd", "serve", "--model", "m", "--prompts", "p"])
                .unwrap();
        let crate::cli::Command::Serve(args) = cli.command else {
            unreachable!()
        };
        assert_eq!(
            format!("{:?}", args.config()),
            format!("{:?}", ServerConfig::new("m", "p"))
        );
    }
}
