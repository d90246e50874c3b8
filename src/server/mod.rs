//! The server as a library: a typed [`ServerConfig`], and [`run`] on listeners the caller
//! bound, until a shutdown future resolves. `promptd serve` maps its flags onto the config;
//! tests start the same server in-process on `127.0.0.1:0`.
//!
//! Wires the engine thread, the batcher (supervised), the prompt registry with its folder
//! watcher, the tenants file watcher, the HTTP API (with connection limits, [`http`]) and the
//! gRPC API under the same limits ([`grpc`]); shuts down in two stages.
pub mod grpc;
pub mod http;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::app;
use crate::batcher::{Batcher, Decode, PolicyConfig};
use crate::catalog::ensembles::{EnsembleStore, Ensembles};
use crate::catalog::prompts::{Backend, PromptStore, Registry};
use crate::catalog::shelf::Shelf;
use crate::engine::adapters::DEFAULT_ADAPTER_MEMORY_MB;
use crate::engine::worker::{self, EngineConfig};
use crate::engine::{DeviceSpec, DtypeSpec};
use crate::metrics::{Metrics, TenantsReload};
use crate::model::adapters::ModelShape;
use crate::model::{T5Config, T5Tokenizer};
use crate::prompts::audit::AuditLog;
use crate::prompts::store::Store;
use crate::prompts::PromptLimits;
use crate::service::state::{TuneLimits, TuneService};
use crate::service::{Lifecycle, Limits, Service};
use crate::store::fleet::Fleet;
use crate::store::jobs::RemoteJobs;
use crate::store::objects::Objects;
use crate::store::records::{audit_sink, WatchedObject};
use crate::store::Bucket;
use crate::tenants::Tenants;
use crate::tune::jobs::replica_name;
use crate::tune::jobs::JobTable;
use crate::tune::scheduler::{TuneQueue, TuneScheduler};

pub use http::ConnectionLimits;

/// Where prompt changes are recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuditLogPath {
    /// `<prompts>/.audit.jsonl`.
    #[default]
    InPrompts,
    /// Not recorded.
    Off,
    /// This file.
    File(PathBuf),
}

/// Everything a server is made of, typed. [`ServerConfig::new`] gives the defaults that
/// `promptd serve` documents for its flags.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Hugging Face T5 folder.
    pub model: PathBuf,
    /// Device memory for LoRA, IA3 and prefix adapters, in MiB (the rest wait in host memory).
    pub adapter_memory_mb: usize,
    /// Prompts folder (loaded at start, uploads written there, watched). With a bucket
    /// (`store`), only this replica's own files are kept here (tuning job records).
    pub prompts: PathBuf,
    /// `s3://bucket/prefix`: prompts and ensembles kept in an object store a fleet shares,
    /// instead of the prompts folder.
    pub store: Option<String>,
    /// How often the bucket's manifests are polled (one conditional GET per catalog).
    pub store_poll: Duration,
    /// This replica's id in the fleet (default: host name and process id).
    pub replica_id: Option<String>,
    /// With a bucket: a running tuning job whose record is older than this has lost its
    /// replica, and another replica marks it failed.
    pub tune_lease: Duration,
    /// Where the model runs.
    pub device: DeviceSpec,
    /// The model's dtype.
    pub dtype: DtypeSpec,
    /// Batch limits and which rows may share a pass.
    pub policy: PolicyConfig,
    /// Continuous or static decoding.
    pub decode: Decode,
    /// Request limits.
    pub limits: Limits,
    /// Prompt limits (rows, file bytes).
    pub prompt_limits: PromptLimits,
    /// Caps on tuning jobs.
    pub tune: TuneLimits,
    /// Most of the engine's busy time tuning may take while requests are served.
    pub tune_share: f64,
    /// Tenants file; `None` leaves the server open.
    pub tenants: Option<PathBuf>,
    /// Audit log of prompt changes.
    pub audit_log: AuditLogPath,
    /// How often the prompts folder and the tenants file are checked for changes.
    pub watch_interval: Duration,
    /// Longest a shutdown waits for in-flight and queued work.
    pub shutdown_timeout: Duration,
    /// Distinct values of the `task` metric label.
    pub metrics_max_tasks: usize,
    /// HTTP connection limits.
    pub connections: ConnectionLimits,
}

impl ServerConfig {
    /// The defaults, serving `model` with the prompts in `prompts`.
    pub fn new(model: impl Into<PathBuf>, prompts: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            prompts: prompts.into(),
            store: None,
            store_poll: Duration::from_secs(1),
            replica_id: None,
            tune_lease: Duration::from_millis(crate::tune::jobs::STALE_AFTER_MS),
            device: DeviceSpec::Auto,
            dtype: DtypeSpec::Auto,
            policy: PolicyConfig::default(),
            decode: Decode::default(),
            limits: Limits::default(),
            prompt_limits: PromptLimits::default(),
            adapter_memory_mb: DEFAULT_ADAPTER_MEMORY_MB,
            tune: TuneLimits::default(),
            tune_share: 0.25,
            tenants: None,
            audit_log: AuditLogPath::default(),
            watch_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            metrics_max_tasks: 32,
            connections: ConnectionLimits::default(),
        }
    }
}

/// Why a server could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The model folder's config or tokenizer.
    #[error("{0}")]
    Model(#[from] crate::model::ModelError),
    /// The device or dtype.
    #[error("{0}")]
    Device(String),
    /// Starting the engine thread.
    #[error("starting the engine thread: {0}")]
    EngineThread(#[source] std::io::Error),
    /// The prompts folder (or its tuning records).
    #[error("prompts folder {path}: {source}")]
    Prompts {
        /// The folder.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The tuning job records in the prompts folder.
    #[error("tuning jobs in {path}: {source}")]
    TuneJobs {
        /// The prompts folder.
        path: PathBuf,
        /// What failed.
        #[source]
        source: crate::tune::TuneError,
    },
    /// The tenants file.
    #[error("{0}")]
    Tenants(#[from] crate::tenants::TenantsError),
    /// The object store's URL or settings.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// The audit log.
    #[error("audit log {path}: {source}")]
    Audit {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The model or the prompts failed to load after the server started listening.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The HTTP server's task ended on its own (a panic or a join failure).
    #[error("the HTTP server stopped: {0}")]
    Http(#[source] tokio::task::JoinError),
    /// The HTTP server's task ended without being asked to.
    #[error("the HTTP server stopped unasked")]
    HttpEnded,
    /// A listener failed.
    #[error("{0}")]
    Listener(#[source] std::io::Error),
}

/// Why loading failed after the server started listening.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The engine thread could not load the model (its reason).
    #[error("model failed to load: {0}")]
    Model(String),
    /// The prompts folder could not be read.
    #[error("loading prompts: {0}")]
    Prompts(#[from] crate::catalog::CatalogError),
}

/// A built server, before it listens: the routes' state and the engine thread.
pub struct Built {
    /// Route state (registry, batcher, engine handle, metrics, limits).
    pub state: Service,
    /// The engine thread.
    pub engine_thread: std::thread::JoinHandle<()>,
}

/// Builds the server: reads the model config and tokenizer, starts the engine thread (which
/// loads the weights in the background) and opens the prompts folder. Nothing is served yet.
/// Runs inside a Tokio runtime (readiness starts following the engine here).
pub fn build(config: &ServerConfig) -> Result<Built, ServerError> {
    let model_config = T5Config::from_dir(&config.model)?;
    let eos = model_config.eos_ids()[0];
    let tokenizer = T5Tokenizer::from_dir(&config.model, eos)?;
    let device = config.device.resolve().map_err(ServerError::Device)?;
    let kind = config.dtype.resolve(device);
    let metrics = Arc::new(Metrics::new(config.metrics_max_tasks));
    let (scheduler, submitted) = TuneScheduler::new(config.tune_share);
    let engine_config = EngineConfig {
        model_dir: config.model.clone(),
        device,
        kind,
        int8: config.dtype.is_int8(),
        max_batch_tokens: config.policy.max_batch_tokens,
        adapter_memory: config.adapter_memory_mb << 20,
    };
    let (engine, engine_thread) =
        worker::spawn(engine_config, Box::new(scheduler)).map_err(ServerError::EngineThread)?;
    let prompts_error = |source| ServerError::Prompts {
        path: config.prompts.clone(),
        source,
    };
    if config.store.is_some() {
        // With a bucket, this replica's own files (tuning job records) stay in a local folder.
        std::fs::create_dir_all(&config.prompts).map_err(prompts_error)?;
    }
    let bucket = config
        .store
        .as_deref()
        .map(|url| Bucket::open(url, metrics.store.clone()))
        .transpose()?;
    let replica = config.replica_id.clone().unwrap_or_else(|| match &bucket {
        Some(_) => format!("{}-{}", replica_name(), std::process::id()),
        None => replica_name(),
    });
    let jobs = JobTable::open_as(&config.prompts, replica.clone()).map_err(|source| {
        ServerError::TuneJobs {
            path: config.prompts.clone(),
            source,
        }
    })?;
    let remote = bucket
        .as_ref()
        .map(|b| Arc::new(RemoteJobs::new(b.clone(), config.tune_lease)));
    if let Some(remote) = &remote {
        let remote = remote.clone();
        jobs.set_mirror(Box::new(move |status| remote.record(status.clone())));
    }
    let tuning = Arc::new(TuneService {
        jobs,
        limits: TuneLimits {
            max_batch_size: config.tune.max_batch_size.max(1),
            ..config.tune
        },
        queue: TuneQueue::new(submitted, engine.waker()),
        remote,
    });
    let (backend, ensemble_store, fleet) = match &config.store {
        None => {
            let store = Store::open(&config.prompts).map_err(prompts_error)?;
            (
                Backend::Folder(store.clone()),
                EnsembleStore::new(store),
                None,
            )
        }
        Some(_) => {
            let bucket = bucket.clone().expect("opened above");
            let shelf =
                |kind, ext| Shelf::new(Objects::new(bucket.clone(), kind, ext, replica.clone()));
            (
                Backend::Bucket(shelf("prompts", "safetensors")),
                EnsembleStore::in_bucket(shelf("ensembles", "json")),
                Some(Arc::new(Fleet::new(
                    bucket.clone(),
                    replica.clone(),
                    String::new(),
                ))),
            )
        }
    };
    let ensembles = Arc::new(Ensembles::new(ensemble_store));
    let registry = Arc::new(Registry::new(PromptStore::new(
        backend,
        engine.clone(),
        model_config.d_model as usize,
        PromptLimits {
            shape: Some(ModelShape::of(&model_config)),
            ..config.prompt_limits
        },
        metrics.clone(),
    )));
    let batcher = Batcher::new(config.policy, config.decode, metrics.clone());
    let remote_tenants = match config.tenants.as_ref().and_then(|p| p.to_str()) {
        Some(url) if url.starts_with("s3://") => {
            Some(Arc::new(WatchedObject::open(url, metrics.store.clone())?))
        }
        _ => None,
    };
    let tenants = match (&config.tenants, &remote_tenants) {
        (Some(_), Some(object)) => {
            // Read once before serving, on a thread and runtime of its own (this may run on
            // any runtime), with a client of its own (its connections die with that runtime).
            let o = WatchedObject::open(object.url(), metrics.store.clone())?;
            let bytes = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| crate::store::StoreError::Config(e.to_string()))?
                    .block_on(o.changed())
            })
            .join()
            .map_err(|_| ServerError::Device("reading the tenants object panicked".into()))??
            .unwrap_or_default();
            Tenants::from_bytes(object.url(), bytes.to_vec(), config.prompt_limits.max_rows)?
        }
        (Some(path), None) => Tenants::load(path, config.prompt_limits.max_rows)?,
        (None, _) => {
            let warning = "no --tenants file: the server is OPEN — anyone who can reach it may read, replace and delete every prompt";
            tracing::warn!("{warning}");
            eprintln!("promptd: WARNING: {warning}");
            Tenants::open()
        }
    };
    let audit = match (&config.audit_log, &bucket) {
        // With a fleet's store, the default log is objects in it (`audit/`).
        (AuditLogPath::InPrompts, Some(bucket)) => Some(Arc::new(AuditLog::to_sink(
            &format!("{}/audit/", bucket.url()),
            audit_sink(bucket.clone(), replica.clone()),
        ))),
        (audit, _) => match audit {
            AuditLogPath::Off => None,
            AuditLogPath::File(path) => Some(path.clone()),
            AuditLogPath::InPrompts => Some(config.prompts.join(".audit.jsonl")),
        }
        .map(|path| {
            AuditLog::open(&path)
                .map(Arc::new)
                .map_err(|source| ServerError::Audit { path, source })
        })
        .transpose()?,
    };
    let lifecycle = Arc::new(Lifecycle::new(Some(metrics.ready.clone())));
    // Readiness follows the engine from the start (a model that fails to load fails it).
    tokio::spawn({
        let (lifecycle, engine) = (lifecycle.clone(), engine.clone());
        async move { lifecycle.follow_engine(engine).await }
    });
    let mut limits = config.limits;
    // A request larger than the queue could never be admitted: refuse it as invalid.
    limits.max_inputs = limits.max_inputs.min(config.policy.max_queue);
    let state = Service {
        registry,
        ensembles,
        batcher,
        engine,
        tokenizer: Arc::new(tokenizer),
        metrics,
        limits,
        lifecycle,
        tenants: Arc::new(tenants),
        audit,
        tuning,
        fleet,
    };
    Ok(Built {
        state,
        engine_thread,
    })
}

/// Serves `config` on `http` (and `grpc`, when given) until `shutdown` resolves, then drains:
/// stage one stops accepting, refuses new work (503) and fails readiness; stage two waits,
/// bounded by `shutdown_timeout`, for in-flight requests and the queue. Ok after a clean drain.
pub async fn run(
    config: ServerConfig,
    http: tokio::net::TcpListener,
    grpc: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let Built {
        state,
        engine_thread,
    } = build(&config)?;
    serve(config, state, engine_thread, http, grpc, shutdown).await
}

/// [`run`] on a server already built (tests reach into its state first).
pub async fn serve(
    config: ServerConfig,
    state: Service,
    engine_thread: std::thread::JoinHandle<()>,
    http: tokio::net::TcpListener,
    grpc: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let batcher = state.batcher.clone();
    let lifecycle = state.lifecycle.clone();
    let tuning = state.tuning.clone();
    let batcher_task = tokio::spawn(supervise_batcher(state.clone()));
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<StartupError>(1);
    let startup = {
        let (engine, catalogs) = (
            state.engine.clone(),
            (state.registry.clone(), state.ensembles.clone()),
        );
        let lifecycle = lifecycle.clone();
        let interval = match &state.fleet {
            Some(_) => config.store_poll,
            None => config.watch_interval,
        };
        let fleet = state.fleet.clone();
        let metrics = state.metrics.clone();
        if let (Some(fleet), Ok(addr)) = (&fleet, http.local_addr()) {
            fleet.set_addr(addr.to_string());
        }
        tokio::spawn(async move {
            match load(&engine, &catalogs.0, &catalogs.1, &lifecycle).await {
                Ok(()) => {
                    let fleet = fleet.map(|f| (f, metrics));
                    watch(&catalogs.0, &catalogs.1, interval, fleet.as_ref()).await
                }
                Err(why) => {
                    let _ = fatal_tx.send(why).await;
                }
            }
        })
    };
    // A tenants object in a fleet's store is polled as often as the store's manifests.
    let tenants_object = match config.tenants.as_ref().and_then(|p| p.to_str()) {
        Some(url) if url.starts_with("s3://") => {
            Some(WatchedObject::open(url, state.metrics.store.clone())?)
        }
        _ => None,
    };
    let tenants_every = match &tenants_object {
        Some(_) => config.store_poll,
        None => config.watch_interval,
    };
    let sweeper = state
        .tuning
        .remote
        .clone()
        .map(|remote| tokio::spawn(sweep_jobs(remote, state.tuning.clone())));
    let tenant_watch = tokio::spawn(watch_tenants(
        state.tenants.clone(),
        state.metrics.clone(),
        tenants_every,
        tenants_object,
    ));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let grpc = grpc.map(|listener| {
        tokio::spawn(grpc::serve(
            listener,
            state.clone(),
            config.connections,
            stopped(),
        ))
    });
    let mut server = tokio::spawn(http::serve(
        http,
        app(state.clone()),
        config.connections,
        http::ConnectionGauges {
            open: state.metrics.http_connections.clone(),
            refused: state.metrics.http_connections_refused.clone(),
        },
        stopped(),
    ));
    let outcome = tokio::select! {
        r = &mut server => Err(match r {
            Ok(()) => ServerError::HttpEnded,
            Err(e) => ServerError::Http(e),
        }),
        Some(why) = fatal_rx.recv() => Err(ServerError::Startup(why)),
        () = shutdown => Ok(()),
    };
    lifecycle.drain();
    batcher.close();
    let _ = stop_tx.send(true);
    match &outcome {
        Ok(()) => tracing::info!("shutting down: draining in-flight requests"),
        Err(why) => tracing::error!("shutting down: {why}"),
    }
    let grace = config.shutdown_timeout;
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
        server.abort();
    }
    startup.abort();
    let _ = startup.await;
    if let Some(fleet) = &state.fleet {
        fleet.leave().await;
    }
    tenant_watch.abort();
    if let Some(sweeper) = sweeper {
        sweeper.abort();
        let _ = sweeper.await;
    }
    tuning
        .jobs
        .fail_active("the server shut down before the job ended");
    drop(state);
    // Every engine handle is gone now; the engine thread ends after its current job.
    let joined = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || engine_thread.join()),
    )
    .await;
    if joined.is_err() {
        tracing::warn!("the engine thread is still busy; exiting without it");
    }
    outcome.map(|()| tracing::info!("stopped"))
}

/// Waits for the model, loads the prompts folder and marks the server ready.
pub async fn load(
    engine: &worker::EngineHandle,
    registry: &Registry,
    ensembles: &Ensembles,
    lifecycle: &Lifecycle,
) -> Result<(), StartupError> {
    engine.ready().await.map_err(StartupError::Model)?;
    lifecycle.loading("loading prompts");
    // An object store that cannot be reached yet is waited for (not ready meanwhile); a
    // folder that cannot be read is fatal.
    let mut wait = Duration::from_millis(200);
    let report = loop {
        match sync(registry, ensembles).await {
            Err(crate::catalog::CatalogError::Unavailable(why)) => {
                tracing::warn!("loading prompts from the store: {why}; retrying");
                lifecycle.loading("waiting for the object store");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                lifecycle.loading("loading prompts");
            }
            other => break other?,
        }
    };
    tracing::info!(
        prompts = registry.len(),
        failed = report.failed,
        "prompts loaded; ready"
    );
    lifecycle.ready();
    Ok(())
}

/// Runs the batching loop; if it ever dies (a panic) while the server is not shutting down,
/// readiness fails and every waiting request is answered at once (503), instead of waiting
/// for its timeout with nobody to serve it.
pub async fn supervise_batcher(state: Service) {
    let batcher = state.batcher.clone();
    let outcome = tokio::spawn(batcher.clone().batching_loop(state.engine.clone())).await;
    let why = match outcome {
        Ok(()) if state.lifecycle.current() == crate::service::lifecycle::Status::Draining => {
            return
        }
        Ok(()) => "the batching loop stopped".to_string(),
        Err(e) => format!("the batching loop failed: {e}"),
    };
    tracing::error!("{why}; failing readiness and the waiting requests");
    state.lifecycle.fail(why);
    let dropped = batcher.abandon();
    if dropped > 0 {
        tracing::warn!(rows = dropped, "waiting rows answered 503");
    }
}

/// Brings the prompts, then the ensembles of them, in line with the store; the prompts' report.
pub async fn sync(
    registry: &Registry,
    ensembles: &Ensembles,
) -> Result<crate::catalog::SyncReport, crate::catalog::CatalogError> {
    let report = registry.sync().await?;
    ensembles.sync().await?;
    Ok(report)
}

/// Keeps the catalogs in step with the prompts folder or the bucket, forever. With a bucket,
/// every sync that served all the manifests held is recorded (sync lag, sync age) and told to
/// the fleet in this replica's heartbeat.
pub async fn watch(
    registry: &Registry,
    ensembles: &Ensembles,
    interval: Duration,
    fleet: Option<&(Arc<Fleet>, Arc<Metrics>)>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beating: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tick.tick().await;
        let synced = sync(registry, ensembles).await;
        if let Err(e) = &synced {
            tracing::warn!("checking the prompt store failed: {e}");
        }
        let Some((fleet, metrics)) = fleet else {
            continue;
        };
        let shelves = (registry.shelf(), ensembles.store().shelf());
        if let (Ok(_), Some(prompts), Some(ens)) = (&synced, shelves.0, shelves.1) {
            for lag in [prompts.synced(), ens.synced()].into_iter().flatten() {
                metrics.store.sync_lag.observe(lag);
            }
            fleet.synced_now();
            // Written beside the next poll, not before it: a slow store write must not stretch
            // the poll cycle (one heartbeat in flight at a time).
            if beating.as_ref().is_none_or(|b| b.is_finished()) {
                let (fleet, applied) = (fleet.clone(), (prompts.applied(), ens.applied()));
                beating = Some(tokio::spawn(async move {
                    if let Err(e) = fleet.beat(applied.0, applied.1).await {
                        tracing::warn!("writing this replica's heartbeat failed: {e}");
                    }
                }));
            }
        }
    }
}

/// Fails, every lease, the tuning jobs whose replica stopped renewing their lease.
async fn sweep_jobs(remote: Arc<RemoteJobs>, tuning: Arc<TuneService>) {
    let mut tick = tokio::time::interval(remote.lease().max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = remote.sweep(tuning.jobs.replica()).await {
            tracing::warn!("checking the fleet's tuning jobs: {e}");
        }
    }
}

/// Reloads the tenants file when it changes (polled like the prompts folder) or on SIGHUP; a
/// bad new version is logged and the previous tenants stay in force.
pub async fn watch_tenants(
    tenants: Arc<Tenants>,
    metrics: Arc<Metrics>,
    interval: Duration,
    object: Option<WatchedObject>,
) {
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
        let reloaded = match &object {
            None => tenants.reload(),
            Some(object) => match object.changed().await {
                Ok(Some(bytes)) => tenants.apply(bytes.to_vec()),
                Ok(None) => Ok(false),
                Err(e) => {
                    tracing::warn!("reading the tenants object: {e}; the tenants in force stay");
                    Ok(false)
                }
            },
        };
        match reloaded {
            Ok(false) => {}
            Ok(true) => {
                metrics.tenants_reload(TenantsReload::Loaded);
                tracing::info!(tenants = ?tenants.current().names(), "tenants file loaded");
            }
            Err(e) => {
                metrics.tenants_reload(TenantsReload::Invalid);
                tracing::error!("tenants file not reloaded, the previous one stays in force: {e}");
            }
        }
    }
}
