//! Tuning jobs over HTTP: `POST /v1/tasks/{task}/tune` starts one on the server's own frozen
//! model, `GET /v1/tune-jobs[/{id}]` shows them, `DELETE` cancels, `POST .../promote` installs a
//! candidate. A finished job's prompt is stored through the same path as an upload (atomic,
//! versioned, audited) unless it scores worse on dev than the task's current prompt.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::auth::forbidden;
use super::error::{ErrorBody, JsonBody};
use super::params::TaskParam;
use super::prompts::{authorize_write, store, Upload};
use super::{ApiError, AppState};
use crate::prompts::TaskName;
use crate::tenants::Caller;
use crate::tune::jobs::{now_ms, Job, JobState, JobStatus, JobTable};
use crate::tune::output::prompt_file_bytes;
use crate::tune::scheduler::{TuneFinished, TuneWork};
use crate::tune::tuner::{Duration, Prepared};
use crate::tune::{Example, InitSpec, Metric, OptimizerKind, OptimizerSettings, TuneSettings};

/// Caps on tuning jobs.
#[derive(Debug, Clone, Copy)]
pub struct TuneLimits {
    /// Training plus dev rows per job.
    pub max_rows: usize,
    /// Steps per job.
    pub max_steps: usize,
    /// Rows per step.
    pub max_batch_size: usize,
    /// Queued or running jobs per tenant.
    pub max_jobs_per_tenant: usize,
    /// Request body bytes.
    pub max_body_bytes: usize,
}

impl Default for TuneLimits {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            max_steps: 20_000,
            max_batch_size: 64,
            max_jobs_per_tenant: 2,
            max_body_bytes: 16 << 20,
        }
    }
}

/// The server's tuning jobs.
pub struct TuneService {
    /// Every job, with records under `<prompts>/.tune-jobs/`.
    pub jobs: JobTable,
    /// Caps.
    pub limits: TuneLimits,
    /// Where jobs go to the engine thread.
    pub queue: crate::tune::scheduler::TuneQueue,
}

/// Body of `POST /v1/tasks/{task}/tune`; absent fields take `promptd tune`'s defaults.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TuneRequest {
    /// Training examples.
    pub train: Vec<Example>,
    /// Dev examples: evaluated during the run; the best prompt is kept.
    #[serde(default)]
    pub dev: Vec<Example>,
    /// Prompt rows (default 100).
    #[serde(default, deserialize_with = "super::predict::count")]
    pub prompt_length: Option<usize>,
    /// Optimizer steps (default 1000 unless `epochs`).
    #[serde(default, deserialize_with = "super::predict::count")]
    pub steps: Option<usize>,
    /// Passes over the training rows instead of `steps`.
    #[serde(default, deserialize_with = "super::predict::count")]
    pub epochs: Option<usize>,
    /// class-labels | sampled-vocab | random-uniform | text:WORDS (default class-labels).
    pub init: Option<String>,
    /// adafactor | adam | sgd (default adafactor).
    pub optimizer: Option<String>,
    /// Learning rate (default 0.3 adafactor, 0.01 adam, 1.0 sgd).
    pub lr: Option<f64>,
    /// Weight decay (default 1e-5 adafactor, 0 otherwise).
    pub weight_decay: Option<f64>,
    /// Gradient clipping by global norm.
    pub clip_grad_norm: Option<f64>,
    /// Rows per step (default 32).
    #[serde(default, deserialize_with = "super::predict::count")]
    pub batch_size: Option<usize>,
    /// Class labels (default: the distinct targets).
    pub labels: Option<Vec<String>>,
    /// accuracy | exact-match | rank-accuracy (default accuracy).
    pub metric: Option<String>,
    /// Evaluate on dev every this many steps (default 100).
    #[serde(default, deserialize_with = "super::predict::count")]
    pub eval_every: Option<usize>,
    /// Stop after this many evaluations without improvement.
    #[serde(default, deserialize_with = "super::predict::count")]
    pub patience: Option<usize>,
    /// Training dropout (default: the model's).
    pub dropout: Option<f64>,
    /// Seed (default 0).
    pub seed: Option<u64>,
}

/// Body of `202` from `POST /v1/tasks/{task}/tune`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobCreated {
    /// The job id, for `GET /v1/tune-jobs/{id}`.
    pub job: String,
    /// Its status.
    pub status: JobStatus,
}

/// Body of `GET /v1/tune-jobs`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobList {
    /// The caller's jobs (every job for an admin), oldest first.
    pub jobs: Vec<JobStatus>,
}

/// Longest `text:` initial prompt accepted over HTTP (it is tokenized on the engine thread).
const MAX_INIT_TEXT_BYTES: usize = 64 << 10;

fn invalid(why: impl Into<String>) -> ApiError {
    ApiError::Unprocessable(why.into())
}

fn parse_enum<T: std::str::FromStr<Err = String>>(
    v: &Option<String>,
    default: T,
) -> Result<T, ApiError> {
    match v {
        None => Ok(default),
        Some(s) => s.parse().map_err(invalid),
    }
}

/// Checks a request against the caps and turns it into settings.
fn settings(
    req: &TuneRequest,
    limits: &TuneLimits,
    max_prompt_length: usize,
    max_labels: usize,
) -> Result<TuneSettings, ApiError> {
    if req.train.is_empty() {
        return Err(invalid(
            "`train` needs at least one {\"input\", \"target\"} row",
        ));
    }
    let rows = req.train.len() + req.dev.len();
    if rows > limits.max_rows {
        return Err(invalid(format!(
            "{rows} training and dev rows; the limit is {} (--tune-max-rows)",
            limits.max_rows
        )));
    }
    let duration = match (req.steps, req.epochs) {
        (Some(_), Some(_)) => return Err(invalid("give `steps` or `epochs`, not both")),
        (_, Some(e)) => Duration::Epochs(e),
        (Some(n), None) => Duration::Steps(n),
        (None, None) => Duration::Steps(1000),
    };
    let batch_size = req.batch_size.unwrap_or(32);
    if batch_size == 0 || batch_size > limits.max_batch_size {
        return Err(invalid(format!(
            "batch_size {batch_size} is outside 1..={} (--tune-max-batch-size)",
            limits.max_batch_size
        )));
    }
    let steps = match duration {
        Duration::Steps(n) => n,
        Duration::Epochs(e) => e.saturating_mul(req.train.len().div_ceil(batch_size)),
    };
    if steps == 0 || steps > limits.max_steps {
        return Err(invalid(format!(
            "{steps} steps; allowed 1..={} (--tune-max-steps)",
            limits.max_steps
        )));
    }
    let prompt_length = req
        .prompt_length
        .unwrap_or(crate::tune::tuner::DEFAULT_PROMPT_LENGTH);
    if prompt_length == 0 || prompt_length > max_prompt_length {
        return Err(invalid(format!(
            "prompt_length {prompt_length} is outside 1..={max_prompt_length} (the max prompt length)"
        )));
    }
    let init: InitSpec = parse_enum(&req.init, InitSpec::ClassLabels)?;
    match &init {
        InitSpec::File(_) => {
            return Err(invalid(
                "init file:PATH reads the server's disk and is only for `promptd tune`",
            ))
        }
        InitSpec::Text(text) if text.len() > MAX_INIT_TEXT_BYTES => {
            return Err(invalid(format!(
                "init text is {} bytes; the limit is {MAX_INIT_TEXT_BYTES}",
                text.len()
            )))
        }
        _ => {}
    }
    // Rank classification scores every label for every dev row.
    let metric: Metric = parse_enum(&req.metric, Metric::Accuracy)?;
    let labels = crate::tune::metric::label_set(
        req.labels.as_deref().unwrap_or_default(),
        req.train.iter().chain(&req.dev),
    );
    if metric == Metric::RankAccuracy && labels.len() > max_labels {
        return Err(invalid(format!(
            "{} labels (given, or distinct targets); the limit is {max_labels} (--max-labels)",
            labels.len()
        )));
    }
    let kind: OptimizerKind = parse_enum(&req.optimizer, OptimizerKind::Adafactor)?;
    let mut optimizer = OptimizerSettings::defaults(kind);
    optimizer.lr = req.lr.unwrap_or(optimizer.lr);
    optimizer.weight_decay = req.weight_decay.unwrap_or(optimizer.weight_decay);
    optimizer.clip_grad_norm = req.clip_grad_norm;
    let mut s = TuneSettings::new(duration);
    s.prompt_length = Some(prompt_length);
    s.init = init;
    s.labels = req.labels.clone().unwrap_or_default();
    s.optimizer = optimizer;
    s.batch_size = batch_size;
    s.eval_every = req.eval_every.unwrap_or(s.eval_every);
    s.patience = req.patience;
    s.metric = metric;
    s.dropout = req.dropout;
    s.seed = req.seed.unwrap_or(0);
    s.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(s)
}

/// Starts tuning `task`'s prompt on the served model (202 with the job id). Only a caller
/// allowed to write the task may tune it.
#[utoipa::path(post, path = "/v1/tasks/{task}/tune", tag = "tuning",
    params(TaskParam),
    request_body = TuneRequest,
    responses(
        (status = 202, description = "Accepted: the job runs between serving passes", body = JobCreated),
        (status = 400, description = "Malformed JSON or task name", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "May not write this task", body = ErrorBody),
        (status = 413, description = "Over --tune-max-body-bytes", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "Out-of-range settings or too many rows or steps", body = ErrorBody),
        (status = 429, description = "The tenant already runs its most jobs", body = ErrorBody),
        (status = 503, description = "Loading or shutting down", body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<TuneRequest>,
) -> Result<(StatusCode, Json<JobCreated>), ApiError> {
    let Path(task) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let status = start_job(&state, &caller, TaskName::parse(&task)?, req).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(JobCreated {
            job: status.id.clone(),
            status,
        }),
    ))
}

/// Validates a tuning request and hands the job to the engine. Shared by HTTP and gRPC.
pub async fn start_job(
    state: &AppState,
    caller: &Caller,
    task: TaskName,
    req: TuneRequest,
) -> Result<JobStatus, ApiError> {
    state.check_serving()?;
    authorize_write(state, caller, &task)?;
    let service = state.tuning.clone();
    let mut max_len = state.registry.limits().max_rows;
    if let Caller::Tenant(t) = caller {
        max_len = max_len.min(t.max_prompt_length);
    }
    let settings = settings(&req, &service.limits, max_len, state.limits.row.max_labels)?;
    let total = match settings.duration {
        Duration::Steps(n) => n,
        Duration::Epochs(e) => e.saturating_mul(req.train.len().div_ceil(settings.batch_size)),
    };
    // The task's label set, kept with the job for reading the prompt later (neighbors).
    let labels = crate::tune::metric::label_set(&settings.labels, req.train.iter().chain(&req.dev));
    // Tokenizing thousands of rows is CPU work: off the runtime, and off the engine thread.
    let data = {
        let (tokenizer, settings) = (state.tokenizer.clone(), settings.clone());
        tokio::task::spawn_blocking(move || {
            Prepared::new(&tokenizer, &settings, &req.train, &req.dev)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("preparing the tuning data failed: {e}")))?
        .map_err(|e| invalid(e.to_string()))?
    };
    let active = service.jobs.active_for(caller.name());
    if active >= service.limits.max_jobs_per_tenant {
        return Err(ApiError::RateLimited {
            why: format!(
                "tenant {:?} already has {active} tuning jobs queued or running (--tune-max-jobs-per-tenant)",
                caller.name()
            ),
            retry_after_s: 60,
        });
    }
    let job = service
        .jobs
        .create(
            task.as_str(),
            caller.name(),
            total,
            &settings.metric.to_string(),
        )
        .map_err(records_error)?;
    if labels.len() <= super::neighbors::MAX_REPORT_LABELS {
        job.status.lock().labels = labels;
    }
    let current = state.registry.get(task.as_str()).map(|e| e.slot.clone());
    let (done, finished) = oneshot::channel();
    let status = job.snapshot();
    let work = TuneWork {
        job: job.clone(),
        settings,
        data: Some(data),
        tokenizer: state.tokenizer.clone(),
        current,
        done,
    };
    if service.queue.submit(work).is_err() {
        fail(&service.jobs, &job, "the engine is not running");
        return Err(ApiError::Unavailable("the engine is not running".into()));
    }
    tokio::spawn(complete(
        state.clone(),
        caller.clone(),
        task,
        status.id.clone(),
        finished,
    ));
    tracing::info!(job = %status.id, task = %status.task, tenant = caller.name(), steps = total, "tuning job accepted");
    Ok(status)
}

fn fail(jobs: &JobTable, job: &Job, why: &str) {
    {
        let mut s = job.status.lock();
        s.state = JobState::Failed;
        s.error = Some(why.to_string());
        s.finished_ms = Some(now_ms());
    }
    if let Err(e) = jobs.persist(job) {
        tracing::error!("recording tuning job: {e}");
    }
}

/// Waits for the engine to finish a job, then installs its prompt or keeps it as a candidate.
async fn complete(
    state: AppState,
    caller: Caller,
    task: TaskName,
    job_id: String,
    finished: oneshot::Receiver<TuneFinished>,
) {
    let jobs = &state.tuning.jobs;
    let mut finished = std::pin::pin!(finished);
    let mut beat = tokio::time::interval(std::time::Duration::from_millis(
        crate::tune::jobs::HEARTBEAT_MS,
    ));
    let done = loop {
        tokio::select! {
            done = &mut finished => break done,
            _ = beat.tick() => {
                // Progress on disk, and proof of life for other replicas sharing the folder.
                if let Some(job) = jobs.get(&job_id) {
                    if let Err(e) = jobs.persist(&job) {
                        tracing::warn!("recording tuning job progress: {e}");
                    }
                }
            }
        }
    };
    let Ok(TuneFinished { job, result }) = done else {
        return;
    };
    match result {
        None | Some(Err(_)) => {
            if let Err(e) = jobs.persist(&job) {
                tracing::error!("recording tuning job: {e}");
            }
        }
        Some(Ok(done)) => {
            let worse =
                matches!((done.best_metric, done.current_metric), (Some(b), Some(c)) if b < c);
            {
                let mut s = job.status.lock();
                s.current_metric = done.current_metric;
            }
            if worse {
                match jobs.save_candidate(&job.snapshot().id, &done.rows) {
                    Ok(()) => {
                        let mut s = job.status.lock();
                        s.state = JobState::Candidate;
                        s.finished_ms = Some(now_ms());
                    }
                    Err(e) => fail(jobs, &job, &format!("saving the candidate prompt: {e}")),
                }
                let _ = jobs.persist(&job);
                return;
            }
            install(&state, &caller, &task, &job, &done.rows).await;
        }
    }
}

/// Stores `rows` as `task`'s next version through the upload path.
async fn install(
    state: &AppState,
    caller: &Caller,
    task: &TaskName,
    job: &Job,
    rows: &crate::prompts::PromptRows,
) {
    let jobs = &state.tuning.jobs;
    let stored = match prompt_file_bytes(rows) {
        Ok(bytes) => store(
            state,
            caller,
            Ok((task.clone(), Upload::Tensor(bytes.into()))),
        )
        .await
        .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match stored {
        Ok((info, _)) => {
            let mut s = job.status.lock();
            s.state = JobState::Succeeded;
            s.version = Some(info.version);
            s.finished_ms = Some(now_ms());
            tracing::info!(job = %s.id, task = %task, version = info.version, "tuned prompt installed");
        }
        Err(why) => fail(jobs, job, &format!("storing the tuned prompt: {why}")),
    }
    if let Err(e) = jobs.persist(job) {
        tracing::error!("recording tuning job: {e}");
    }
}

fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<Arc<Job>, ApiError> {
    let job = state
        .tuning
        .jobs
        .get(id)
        .ok_or_else(|| ApiError::UnknownJob(truncate(id)))?;
    let owner = job.status.lock().tenant.clone();
    if caller.is_admin() || owner == caller.name() {
        Ok(job)
    } else {
        Err(forbidden(
            state,
            caller,
            "the tuning job belongs to another tenant",
        ))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// One tuning job: state, step, loss, dev metric, ETA.
#[utoipa::path(get, path = "/v1/tune-jobs/{id}", tag = "tuning",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Another tenant's job", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    job_status(&state, &caller, &id).map(Json)
}

/// One job's status, if the caller may see it. Shared by HTTP and gRPC.
pub fn job_status(state: &AppState, caller: &Caller, id: &str) -> Result<JobStatus, ApiError> {
    Ok(visible(state, caller, id)?.snapshot())
}

/// The caller's tuning jobs (every job for an admin or an open server).
#[utoipa::path(get, path = "/v1/tune-jobs", tag = "tuning", responses(
    (status = 200, description = "Jobs, oldest first", body = JobList),
    (status = 401, description = "Missing or unknown API key", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<JobList> {
    Json(JobList {
        jobs: list_jobs(&state, &caller),
    })
}

/// The caller's jobs (every job for an admin), oldest first. Shared by HTTP and gRPC.
pub fn list_jobs(state: &AppState, caller: &Caller) -> Vec<JobStatus> {
    let mut jobs = state.tuning.jobs.all();
    if !caller.is_admin() {
        jobs.retain(|j| j.tenant == caller.name());
    }
    jobs
}

/// Cancels a queued or running job (it stops at its next step; nothing is installed).
#[utoipa::path(delete, path = "/v1/tune-jobs/{id}", tag = "tuning",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 202, description = "Cancelling", body = JobStatus),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Another tenant's job", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has already ended", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobStatus>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(cancel_job(&state, &caller, &id)?),
    ))
}

/// Asks the engine to stop a queued or running job. Shared by HTTP and gRPC.
pub fn cancel_job(state: &AppState, caller: &Caller, id: &str) -> Result<JobStatus, ApiError> {
    let job = visible(state, caller, id)?;
    let status = job.snapshot();
    if !status.state.is_active() {
        return Err(ApiError::Conflict(format!(
            "tuning job {} has already ended ({})",
            status.id,
            status.state.as_str()
        )));
    }
    job.cancel.store(true, Ordering::Release);
    Ok(status)
}

/// Installs a candidate (a job whose prompt scored below the task's current one) as the
/// task's next version.
#[utoipa::path(post, path = "/v1/tune-jobs/{id}/promote", tag = "tuning",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Installed", body = JobStatus),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Another tenant's job, or may not write the task", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is not a candidate", body = ErrorBody)))]
pub async fn promote(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    promote_job(&state, &caller, &id).await.map(Json)
}

/// Installs a candidate's prompt as its task's next version. Shared by HTTP and gRPC.
pub async fn promote_job(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<JobStatus, ApiError> {
    state.check_serving()?;
    let job = visible(state, caller, id)?;
    let status = job.snapshot();
    if status.state != JobState::Candidate {
        return Err(ApiError::Conflict(format!(
            "tuning job {} is {}, not a candidate",
            status.id,
            status.state.as_str()
        )));
    }
    let task = TaskName::parse(&status.task)?;
    authorize_write(state, caller, &task)?;
    let path = state.tuning.jobs.candidate_path(&status.id);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::from_io(e.kind(), format!("reading the candidate prompt: {e}")))?;
    let (info, _) = store(state, caller, Ok((task, Upload::Tensor(bytes.into())))).await?;
    {
        let mut s = job.status.lock();
        s.state = JobState::Succeeded;
        s.version = Some(info.version);
    }
    state.tuning.jobs.persist(&job).map_err(records_error)?;
    Ok(job.snapshot())
}

/// A job record that could not be written: by its I/O kind (a full disk is 507).
fn records_error(e: crate::tune::TuneError) -> ApiError {
    match &e {
        crate::tune::TuneError::Io { source, .. } => {
            ApiError::from_io(source.kind(), e.to_string())
        }
        _ => ApiError::Internal(e.to_string()),
    }
}

impl TuneService {
    /// Sets the tuning metrics from the job table (called at each scrape): jobs by state,
    /// steps and engine seconds summed over every job, the loss of each active job. Only this
    /// replica's jobs count (records of others sharing the folder would be counted twice).
    pub fn update_metrics(&self, metrics: &crate::metrics::Metrics) {
        let mut all = self.jobs.all();
        all.retain(|j| j.replica == self.jobs.replica());
        for state in JobState::ALL {
            let n = all.iter().filter(|j| j.state == state).count();
            metrics
                .tune_jobs
                .with_label_values(&[state.as_str()])
                .set(n as i64);
        }
        let steps: f64 = all.iter().map(|j| j.step as f64).sum();
        let secs: f64 = all.iter().map(|j| j.engine_seconds).sum();
        // Counters only move up: every job stays in the table and its totals only grow.
        metrics
            .tune_steps
            .inc_by((steps - metrics.tune_steps.get()).max(0.0));
        metrics
            .tune_engine_seconds
            .inc_by((secs - metrics.tune_engine_seconds.get()).max(0.0));
        metrics.tune_loss.reset();
        for j in all.iter().filter(|j| j.state.is_active()) {
            if let Some(loss) = j.loss {
                metrics.tune_loss.with_label_values(&[&j.id]).set(loss);
            }
        }
    }
}
