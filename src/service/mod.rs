//! The application, transport-free: every capability is one method on [`Service`] (predict,
//! ensembles, prompt writes, neighbours, tuning jobs, model readiness), and every front door
//! (HTTP, gRPC, KServe v2, the CLI) calls the same methods, as text-generation-inference's
//! `Infer` is called by each of its routers. Errors are one [`Error`] enum; each front door
//! keeps its own table from it to status codes. Nothing here knows axum, tonic or HTTP.
pub mod combine;
pub mod ensembles;
pub mod error;
pub mod lifecycle;
pub mod models;
pub mod neighbors;
pub mod predict;
pub mod prompts;
pub mod rows;
pub mod tuning;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use error::Error;
pub use lifecycle::Lifecycle;

use crate::batcher::Batcher;
use crate::catalog::ensembles::Ensembles;
use crate::catalog::prompts::Registry;
use crate::engine::worker::EngineHandle;
use crate::metrics::{Metrics, Rejection, UNKNOWN_TASK};
use crate::model::T5Tokenizer;
use crate::tenants::{Caller, TenantSet};
use rows::RowLimits;

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
    pub tuning: Arc<tuning::TuneService>,
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
