//! The tuning-job lifecycle on the server's own frozen model: start (validate, hand to the
//! engine), complete (install the prompt, or keep it as a candidate when it scores worse on
//! dev than the task's current prompt), promote a candidate, cancel, list. A finished job's
//! prompt is stored through the same path as an upload (atomic, versioned, audited). Records of
//! jobs interrupted by a restart are recovered as failed by [`crate::tune::jobs::JobTable`].
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::oneshot;

use super::error::Error;
use super::prompts::Upload;
use super::state::{Service, TuneLimits};
use crate::prompts::{PromptLimits, TaskName};
use crate::tenants::Caller;
use crate::tune::jobs::{now_ms, Job, JobState, JobStatus, JobTable};
use crate::tune::output::prompt_file_bytes;
use crate::tune::scheduler::{TuneFinished, TuneWork};
use crate::tune::tuner::{Duration, Prepared, Tuned};
use crate::tune::{
    AdapterLayout, AdapterSpec, Example, Ia3Spec, InitSpec, LoraSpec, Metric, OptimizerKind,
    OptimizerSettings, TuneSettings,
};

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
    #[serde(default, deserialize_with = "super::rows::count")]
    pub prompt_length: Option<usize>,
    /// Optimizer steps (default 1000 unless `epochs`).
    #[serde(default, deserialize_with = "super::rows::count")]
    pub steps: Option<usize>,
    /// Passes over the training rows instead of `steps`.
    #[serde(default, deserialize_with = "super::rows::count")]
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
    #[serde(default, deserialize_with = "super::rows::count")]
    pub batch_size: Option<usize>,
    /// Class labels (default: the distinct targets).
    pub labels: Option<Vec<String>>,
    /// accuracy | exact-match | rank-accuracy (default accuracy).
    pub metric: Option<String>,
    /// Evaluate on dev every this many steps (default 100).
    #[serde(default, deserialize_with = "super::rows::count")]
    pub eval_every: Option<usize>,
    /// Stop after this many evaluations without improvement.
    #[serde(default, deserialize_with = "super::rows::count")]
    pub patience: Option<usize>,
    /// Training dropout (default: the model's).
    pub dropout: Option<f64>,
    /// Seed (default 0).
    pub seed: Option<u64>,
    /// What to tune: prompt | lora | ia3 (default prompt). An adapter is installed as the
    /// task's next version, a PEFT adapter like an uploaded one.
    pub method: Option<String>,
    /// LoRA rank (method lora; default 8, at most the server's --max-lora-rank).
    #[serde(default, deserialize_with = "super::rows::count")]
    pub lora_rank: Option<usize>,
    /// LoRA alpha: the update is scaled by alpha / rank (method lora; default 16).
    pub lora_alpha: Option<f64>,
    /// Layers a LoRA changes, PEFT's target_modules names (method lora; default q, v).
    pub lora_targets: Option<Vec<String>>,
    /// Layers IA3 scales (method ia3; default k, v, wo).
    pub ia3_targets: Option<Vec<String>>,
    /// The IA3 targets whose input is scaled, PEFT's feedforward_modules (default wo).
    pub ia3_feedforward: Option<Vec<String>>,
}

/// Most module names a tuning request may list as targets.
const MAX_TARGETS: usize = 64;

/// Longest `text:` initial prompt accepted over HTTP (it is tokenized on the engine thread).
const MAX_INIT_TEXT_BYTES: usize = 64 << 10;

fn invalid(why: impl Into<String>) -> Error {
    Error::Invalid(why.into())
}

fn parse_enum<T: std::str::FromStr<Err = String>>(
    v: &Option<String>,
    default: T,
) -> Result<T, Error> {
    match v {
        None => Ok(default),
        Some(s) => s.parse().map_err(invalid),
    }
}

/// The adapter a request tunes (None: a prompt), checked against the served model.
fn adapter_spec(req: &TuneRequest, prompts: &PromptLimits) -> Result<Option<AdapterSpec>, Error> {
    let method = req.method.as_deref().unwrap_or("prompt");
    let lora_fields =
        req.lora_rank.is_some() || req.lora_alpha.is_some() || req.lora_targets.is_some();
    let ia3_fields = req.ia3_targets.is_some() || req.ia3_feedforward.is_some();
    let prompt_fields = req.prompt_length.is_some() || req.init.is_some();
    let names = |v: &Option<Vec<String>>, default: &[&str]| -> Result<Vec<String>, Error> {
        let list = match v {
            Some(list) => list.clone(),
            None => default.iter().map(|s| s.to_string()).collect(),
        };
        if list.is_empty()
            || list.len() > MAX_TARGETS
            || list.iter().any(|t| t.is_empty() || t.len() > 256)
        {
            return Err(invalid(format!(
                "targets must name 1..={MAX_TARGETS} modules (q, k, v, o, wi, wi_0, wi_1, wo)"
            )));
        }
        Ok(list)
    };
    let spec = match method {
        "prompt" if lora_fields || ia3_fields => {
            return Err(invalid("lora_* and ia3_* fields need `method` lora or ia3"))
        }
        "prompt" => return Ok(None),
        "lora" | "ia3" if prompt_fields => {
            return Err(invalid(format!(
                "`prompt_length` and `init` are for method prompt, not {method}"
            )))
        }
        "lora" if ia3_fields => return Err(invalid("ia3_* fields need method ia3")),
        "ia3" if lora_fields => return Err(invalid("lora_* fields need method lora")),
        "lora" => {
            let rank = req.lora_rank.unwrap_or(8);
            if rank == 0 || rank > prompts.max_lora_rank {
                return Err(invalid(format!(
                    "lora_rank {rank} is outside 1..={} (--max-lora-rank)",
                    prompts.max_lora_rank
                )));
            }
            AdapterSpec::Lora(LoraSpec {
                rank,
                alpha: req.lora_alpha.unwrap_or(16.0),
                targets: names(&req.lora_targets, &["q", "v"])?,
            })
        }
        "ia3" => AdapterSpec::Ia3(Ia3Spec {
            targets: names(&req.ia3_targets, &["k", "v", "wo"])?,
            feedforward: match &req.ia3_feedforward {
                Some(f) if f.is_empty() => Vec::new(),
                f => names(f, &["wo"])?,
            },
        }),
        other => {
            return Err(invalid(format!(
                "method {:?}: expected prompt, lora or ia3",
                truncate(other)
            )))
        }
    };
    if let Some(shape) = &prompts.shape {
        AdapterLayout::new(spec.clone(), shape).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(Some(spec))
}

/// Checks a request against the caps and turns it into settings.
fn settings(
    req: &TuneRequest,
    limits: &TuneLimits,
    prompts: &PromptLimits,
    max_prompt_length: usize,
    max_labels: usize,
) -> Result<TuneSettings, Error> {
    let adapter = adapter_spec(req, prompts)?;
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
    if adapter.is_some() {
        s.prompt_length = None;
    }
    s.adapter = adapter;
    s.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(s)
}

impl Service {
    /// Starts tuning `task`'s prompt on the served model: validates the request and hands the
    /// job to the engine, which steps it between serving passes. Only a caller allowed to
    /// write the task may tune it.
    pub async fn start_tune(
        &self,
        caller: &Caller,
        task: TaskName,
        req: TuneRequest,
    ) -> Result<JobStatus, Error> {
        self.check_serving()?;
        self.authorize_prompt_write(caller, &task)?;
        // A fleet's job lives in its store: refused while the store cannot be reached (its
        // record and its prompt could not be written).
        if let Some(shelf) = self.registry.shelf() {
            shelf
                .objects()
                .poll()
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
        }
        let service = self.tuning.clone();
        let mut max_len = self.registry.limits().max_rows;
        if let Caller::Tenant(t) = caller {
            max_len = max_len.min(t.max_prompt_length);
        }
        let settings = settings(
            &req,
            &service.limits,
            self.registry.limits(),
            max_len,
            self.limits.row.max_labels,
        )?;
        let total = match settings.duration {
            Duration::Steps(n) => n,
            Duration::Epochs(e) => e.saturating_mul(req.train.len().div_ceil(settings.batch_size)),
        };
        // The task's label set, kept with the job for reading the prompt later (neighbors).
        let labels =
            crate::tune::metric::label_set(&settings.labels, req.train.iter().chain(&req.dev));
        // Tokenizing thousands of rows is CPU work: off the runtime, and off the engine thread.
        let data = {
            let (tokenizer, settings) = (self.tokenizer.clone(), settings.clone());
            tokio::task::spawn_blocking(move || {
                Prepared::new(&tokenizer, &settings, &req.train, &req.dev)
            })
            .await
            .map_err(|e| Error::task_failed("preparing the tuning data", e))?
            .map_err(|e| invalid(e.to_string()))?
        };
        let active = service.jobs.active_for(caller.name());
        if active >= service.limits.max_jobs_per_tenant {
            return Err(Error::RateLimited {
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
        {
            let mut s = job.status.lock();
            s.method = settings
                .adapter
                .as_ref()
                .map_or("prompt", AdapterSpec::method)
                .to_string();
            if labels.len() <= super::neighbors::MAX_REPORT_LABELS {
                s.labels = labels;
            }
        }
        let current = self.registry.get(task.as_str()).map(|e| e.slot.clone());
        let (done, finished) = oneshot::channel();
        let status = job.snapshot();
        let work = TuneWork {
            job: job.clone(),
            settings,
            data: Some(data),
            tokenizer: self.tokenizer.clone(),
            current,
            done,
        };
        if service.queue.submit(work).is_err() {
            fail(&service.jobs, &job, "the engine is not running");
            return Err(Error::Unavailable("the engine is not running".into()));
        }
        tokio::spawn(
            self.clone()
                .complete(caller.clone(), task, status.id.clone(), finished),
        );
        tracing::info!(job = %status.id, task = %status.task, tenant = caller.name(), steps = total, "tuning job accepted");
        Ok(status)
    }
}

/// A candidate as one file: the prompt file, or the adapter's weights (whose metadata holds
/// its config), which an upload of that file alone reads back.
fn candidate_bytes(tuned: &Tuned) -> Result<Vec<u8>, crate::tune::TuneError> {
    match tuned {
        Tuned::Rows(rows) => prompt_file_bytes(rows),
        Tuned::Adapter { weights, .. } => Ok(weights.clone()),
    }
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
impl Service {
    async fn complete(
        self,
        caller: Caller,
        task: TaskName,
        job_id: String,
        finished: oneshot::Receiver<TuneFinished>,
    ) {
        let jobs = &self.tuning.jobs;
        let mut finished = std::pin::pin!(finished);
        // A fleet's lease is renewed six times per lease; a folder's every HEARTBEAT_MS.
        let every = match &self.tuning.remote {
            Some(remote) => remote.lease() / 6,
            None => std::time::Duration::from_millis(crate::tune::jobs::HEARTBEAT_MS),
        };
        let mut beat = tokio::time::interval(every);
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
                    let saved = match candidate_bytes(&done.tuned)
                        .and_then(|bytes| jobs.save_candidate(&job.snapshot().id, &bytes))
                    {
                        Ok(()) => self.save_remote_candidate(&job.snapshot().id).await,
                        Err(e) => Err(e.to_string()),
                    };
                    match saved {
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
                self.install(&caller, &task, &job, done.tuned).await;
            }
        }
    }

    /// Stores a job's prompt or adapter as `task`'s next version through the upload path.
    async fn install(&self, caller: &Caller, task: &TaskName, job: &Job, tuned: Tuned) {
        let jobs = &self.tuning.jobs;
        let upload = match tuned {
            Tuned::Rows(rows) => prompt_file_bytes(&rows).map(Upload::Tensor),
            Tuned::Adapter { config, weights } => Ok(Upload::Peft { weights, config }),
        };
        let stored = match upload {
            Ok(upload) => self
                .put_prompt(caller, Ok((task.clone(), upload)))
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

    /// Copies job `id`'s candidate prompt to the fleet's store (nothing without one).
    async fn save_remote_candidate(&self, id: &str) -> Result<(), String> {
        let Some(remote) = &self.tuning.remote else {
            return Ok(());
        };
        let bytes = tokio::fs::read(self.tuning.jobs.candidate_path(id))
            .await
            .map_err(|e| e.to_string())?;
        remote
            .save_candidate(id, bytes)
            .await
            .map_err(|e| e.to_string())
    }

    /// Job `id`, if `caller` may see it (its own, or any for an admin).
    pub(super) fn visible(&self, caller: &Caller, id: &str) -> Result<Arc<Job>, Error> {
        let job = self
            .tuning
            .jobs
            .get(id)
            .ok_or_else(|| Error::UnknownJob(truncate(id)))?;
        let owner = job.status.lock().tenant.clone();
        self.owned(caller, &owner)?;
        Ok(job)
    }

    fn owned(&self, caller: &Caller, owner: &str) -> Result<(), Error> {
        if caller.is_admin() || owner == caller.name() {
            Ok(())
        } else {
            Err(self.forbidden(caller, "the tuning job belongs to another tenant"))
        }
    }

    /// Job `id` of another replica of the fleet, from the store, if `caller` may see it.
    async fn remote_job(&self, caller: &Caller, id: &str) -> Result<JobStatus, Error> {
        let unknown = || Error::UnknownJob(truncate(id));
        let Some(remote) = &self.tuning.remote else {
            return Err(unknown());
        };
        // Ids are promptd's own (`tj-<ms>-<n>`): anything else is no key in the store.
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') || id.len() > 64 {
            return Err(unknown());
        }
        let status = remote
            .get(id, self.tuning.jobs.replica())
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?
            .ok_or_else(unknown)?;
        self.owned(caller, &status.tenant)?;
        Ok(status)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl Service {
    /// One tuning job's status (state, step, loss, dev metric, ETA), if the caller may see it:
    /// a job of this replica, or of any replica of its fleet (its record in the store).
    pub async fn tune_job(&self, caller: &Caller, id: &str) -> Result<JobStatus, Error> {
        match self.visible(caller, id) {
            Ok(job) => Ok(job.snapshot()),
            Err(Error::UnknownJob(_)) => self.remote_job(caller, id).await,
            Err(e) => Err(e),
        }
    }

    /// The caller's jobs (every job for an admin), on every replica of the fleet, oldest
    /// first. Shared by HTTP and gRPC.
    pub async fn list_tune_jobs(&self, caller: &Caller) -> Result<Vec<JobStatus>, Error> {
        let mut jobs = self.tuning.jobs.all();
        if let Some(remote) = &self.tuning.remote {
            let mine: std::collections::HashSet<String> =
                jobs.iter().map(|j| j.id.clone()).collect();
            let others = remote
                .list(self.tuning.jobs.replica())
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            jobs.extend(others.into_iter().filter(|j| !mine.contains(&j.id)));
            jobs.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        }
        if !caller.is_admin() {
            jobs.retain(|j| j.tenant == caller.name());
        }
        Ok(jobs)
    }

    /// Cancels a queued or running job: the engine stops it at its next step; nothing is
    /// installed.
    pub async fn cancel_tune(&self, caller: &Caller, id: &str) -> Result<JobStatus, Error> {
        let job = match self.visible(caller, id) {
            Err(Error::UnknownJob(_)) => {
                let status = self.remote_job(caller, id).await?;
                return Err(Error::Conflict(format!(
                    "tuning job {} runs on replica {} ({}): cancel it there",
                    status.id,
                    status.replica,
                    status.state.as_str()
                )));
            }
            other => other?,
        };
        let status = job.snapshot();
        if !status.state.is_active() {
            return Err(Error::Conflict(format!(
                "tuning job {} has already ended ({})",
                status.id,
                status.state.as_str()
            )));
        }
        job.cancel.store(true, Ordering::Release);
        Ok(status)
    }

    /// Installs a candidate (a job whose prompt scored below the task's current one) as its
    /// task's next version.
    pub async fn promote_tune(&self, caller: &Caller, id: &str) -> Result<JobStatus, Error> {
        self.check_serving()?;
        // A job of this replica, or of another one of the fleet (record and candidate in the
        // store).
        let (job, status) = match self.visible(caller, id) {
            Ok(job) => {
                let status = job.snapshot();
                (Some(job), status)
            }
            Err(Error::UnknownJob(_)) => (None, self.remote_job(caller, id).await?),
            Err(e) => return Err(e),
        };
        if status.state != JobState::Candidate {
            return Err(Error::Conflict(format!(
                "tuning job {} is {}, not a candidate",
                status.id,
                status.state.as_str()
            )));
        }
        let task = TaskName::parse(&status.task)?;
        self.authorize_prompt_write(caller, &task)?;
        let bytes = match (&job, &self.tuning.remote) {
            (Some(_), _) => {
                let path = self.tuning.jobs.candidate_path(&status.id);
                tokio::fs::read(&path).await.map_err(|e| {
                    Error::from_io(e.kind(), format!("reading the candidate prompt: {e}"))
                })?
            }
            (None, Some(remote)) => remote
                .candidate(&status.id)
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "job {}: its candidate prompt is missing from the store",
                        status.id
                    ))
                })?
                .to_vec(),
            (None, None) => return Err(Error::UnknownJob(truncate(id))),
        };
        let (info, _) = self
            .put_prompt(caller, Ok((task, Upload::Tensor(bytes))))
            .await?;
        match job {
            Some(job) => {
                {
                    let mut s = job.status.lock();
                    s.state = JobState::Succeeded;
                    s.version = Some(info.version);
                }
                self.tuning.jobs.persist(&job).map_err(records_error)?;
                Ok(job.snapshot())
            }
            None => {
                let mut status = status;
                status.state = JobState::Succeeded;
                status.version = Some(info.version);
                if let Some(remote) = &self.tuning.remote {
                    remote.record(status.clone());
                }
                Ok(status)
            }
        }
    }
}

/// A job record that could not be written: by its I/O kind (a full disk is 507).
fn records_error(e: crate::tune::TuneError) -> Error {
    match &e {
        crate::tune::TuneError::Io { source, .. } => Error::from_io(source.kind(), e.to_string()),
        _ => Error::Internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropout_just_under_one_is_taken_as_sent() {
        // The largest double below 1: a parser that rounds it to 1.0 would refuse it as "got 1".
        let req: TuneRequest = serde_json::from_str(
            r#"{"train": [{"input": "a", "target": "b"}], "dropout": 0.9999999999999999}"#,
        )
        .unwrap();
        assert!(req.dropout.unwrap() < 1.0);
        let s = settings(
            &req,
            &TuneLimits::default(),
            &PromptLimits::default(),
            100,
            10,
        )
        .unwrap();
        assert_eq!(s.dropout, req.dropout);
        let req: TuneRequest =
            serde_json::from_str(r#"{"train": [{"input": "a", "target": "b"}], "dropout": 1.0}"#)
                .unwrap();
        let e = settings(
            &req,
            &TuneLimits::default(),
            &PromptLimits::default(),
            100,
            10,
        )
        .unwrap_err();
        assert_eq!(e.error_type(), "validation");
    }
}
