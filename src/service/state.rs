//! The service's state: the handles every capability needs, and the limits it enforces.
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::Error;
use super::lifecycle::{self, Lifecycle};
use super::rows::RowLimits;
use crate::batcher::Batcher;
use crate::catalog::ensembles::Ensembles;
use crate::catalog::prompts::Registry;
use crate::engine::worker::EngineHandle;
use crate::metrics::{Metrics, Rejection, UNKNOWN_TASK};
use crate::model::T5Tokenizer;
use crate::tenants::{Caller, TenantSet};
use crate::tune::jobs::{JobState, JobTable};

/// Limits on requests, whatever door they come through.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Per-input limits (tokens, max_new_tokens, labels).
    pub row: RowLimits,
    /// Inputs per predict request.
    pub max_inputs: usize,
    /// Predict body size in bytes.
    pub max_body_bytes: usize,
    /// Prompt upload body size in bytes.
    pub max_prompt_bytes: usize,
    /// Time a predict request may take before it times out (zero: no limit).
    pub request_timeout: Duration,
    /// Longest URL (path and query), in bytes.
    pub max_uri_bytes: usize,
    /// Largest total of header names and values, in bytes.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            row: RowLimits::default(),
            max_inputs: 64,
            max_body_bytes: 1 << 20,
            max_prompt_bytes: 64 << 20,
            request_timeout: Duration::from_secs(60),
            max_uri_bytes: 8 << 10,
            max_header_bytes: 32 << 10,
        }
    }
}

/// The application: what every capability needs. Cheap to clone (handles only).
#[derive(Clone)]
pub struct Service {
    /// Served prompts.
    pub registry: Arc<Registry>,
    /// Served ensembles.
    pub ensembles: Arc<Ensembles>,
    /// The request queue.
    pub batcher: Arc<Batcher>,
    /// The engine thread.
    pub engine: EngineHandle,
    /// The model's tokenizer.
    pub tokenizer: Arc<T5Tokenizer>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// Where the server stands (the one readiness source).
    pub lifecycle: Arc<Lifecycle>,
    /// API keys, permissions and quotas (open when no tenants file).
    pub tenants: Arc<crate::tenants::Tenants>,
    /// Where prompt changes are recorded (None: not recorded).
    pub audit: Option<Arc<crate::prompts::audit::AuditLog>>,
    /// Tuning jobs.
    pub tuning: Arc<TuneService>,
    /// This replica's place in a fleet sharing an object store (None: a folder store).
    pub fleet: Option<Arc<crate::store::fleet::Fleet>>,
}

impl Service {
    /// Fails with `Unavailable` until the server is ready, once it drains, and once it failed.
    pub fn check_serving(&self) -> Result<(), Error> {
        match self.lifecycle.current() {
            lifecycle::Status::Ready => Ok(()),
            lifecycle::Status::Loading(what) => Err(Error::Unavailable(format!(
                "the server is starting ({what})"
            ))),
            other => Err(Error::Unavailable(other.why_not().unwrap_or_default())),
        }
    }

    /// The readiness status word and, when not ready, why.
    pub fn readiness(&self) -> (&'static str, Option<String>) {
        let status = self.lifecycle.current();
        (status.word(), status.why_not())
    }

    /// The caller behind an `Authorization` value (`Bearer <key>`); a refusal is counted.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, Error> {
        self.tenants.authenticate(authorization).map_err(|e| {
            self.metrics
                .tenant_rejection(None, Rejection::Unauthenticated);
            Error::from(e)
        })
    }

    /// `Forbidden`, counted by tenant.
    pub fn forbidden(&self, caller: &Caller, why: &str) -> Error {
        self.reject(caller, Rejection::Forbidden);
        Error::Forbidden(format!("tenant {:?}: {why}", caller.name()))
    }

    /// Counts a refusal of `caller` in `promptd_tenant_rejections_total`.
    pub fn reject(&self, caller: &Caller, reason: Rejection) {
        self.metrics.tenant_rejection(Some(caller.name()), reason);
    }

    /// `Forbidden` unless `caller` may predict with / see `task`.
    pub fn check_read(&self, caller: &Caller, set: &TenantSet, task: &str) -> Result<(), Error> {
        if caller.may_read(set, task) {
            Ok(())
        } else {
            Err(self.forbidden(caller, &format!("task {task:?} belongs to another tenant")))
        }
    }

    /// The Prometheus text of every metric, the tuning gauges brought up to date first.
    pub fn metrics_text(&self) -> String {
        self.tuning.update_metrics(&self.metrics);
        self.metrics.engine_times(&self.engine.times());
        if let Some(fleet) = &self.fleet {
            self.metrics.store.sync_age.set(fleet.sync_age_s());
        }
        self.metrics.render()
    }

    /// The `task` metric label of a request for `name` (a task, or an ensemble when
    /// `ensemble`): bounded, and the same for every unknown name.
    pub fn request_label(&self, name: &str, ensemble: bool) -> String {
        if ensemble {
            match self.ensembles.get(name) {
                Some(e) => self.metrics.task_label(&format!("ensemble:{}", e.name)),
                None => UNKNOWN_TASK.to_string(),
            }
        } else {
            match self.registry.get(name) {
                Some(_) => self.metrics.task_label(name),
                None => UNKNOWN_TASK.to_string(),
            }
        }
    }

    /// Counts a finished request under the task label `label` (`promptd_requests_total` by
    /// `status`, the status the front door answered, and its duration); `error` is logged when
    /// it is the server's fault.
    pub fn record_request(
        &self,
        label: &str,
        started: Instant,
        status: &str,
        error: Option<&Error>,
    ) {
        if let Some(e) = error.filter(|e| e.is_server_fault()) {
            tracing::warn!(%label, error = %e, "predict failed");
        }
        self.metrics
            .requests
            .with_label_values(&[label, status])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
    }
}

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
    /// Every replica's job records, when a fleet shares an object store.
    pub remote: Option<Arc<crate::store::jobs::RemoteJobs>>,
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
