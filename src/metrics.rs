//! Prometheus metrics. Every series lives in this struct's own registry (fresh per test).
//!
//! Cardinality: the `task` label takes at most `max_task_labels` distinct values. The first
//! registered tasks to see traffic get their own label; every later task is counted under
//! `task="_other"`, and requests for tasks that do not exist under `task="_unknown"`, so
//! neither thousands of tasks nor a client guessing names can grow the series count.
use std::collections::HashSet;

use parking_lot::Mutex;
use prometheus::{
    Counter, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label for tasks beyond the labelled set.
pub const OTHER_TASK: &str = "_other";
/// Label for tasks that are not registered.
pub const UNKNOWN_TASK: &str = "_unknown";

/// All server metrics.
pub struct Metrics {
    registry: Registry,
    task_labels: TaskLabels,
    tenant_labels: TaskLabels,
    /// Predict requests by task and HTTP status.
    pub requests: IntCounterVec,
    /// Predict request latency by task.
    pub request_duration: HistogramVec,
    /// Time a row waited in the queue before its forward pass started.
    pub queue_wait: Histogram,
    /// Rows per forward pass (continuous batching: per encoder pass of the rows joining).
    pub batch_size: Histogram,
    /// Distinct tasks per forward pass (continuous batching: per encoder pass).
    pub batch_tasks: Histogram,
    /// Rows decoding together, observed each time rows join the running batch.
    pub decode_rows: Histogram,
    /// Distinct tasks among the rows decoding together, observed as `decode_rows` is.
    pub decode_tasks: Histogram,
    /// Engine time per static batch (encoder, decoding and scoring), or per admission into the
    /// running batch (encoder, scoring and merge) under continuous batching.
    pub batch_duration: Histogram,
    /// Rows waiting in the queue.
    pub queue_depth: IntGauge,
    /// Rows the queue holds before requests get 429.
    pub queue_capacity: IntGauge,
    /// 1 while /readyz answers 200, else 0 (set at each scrape).
    pub ready: IntGauge,
    /// Prompts currently served.
    pub prompts_loaded: IntGauge,
    /// Prompt uploads and deletes by result.
    pub prompt_uploads: IntCounterVec,
    /// Prompt changes picked up from the folder by result.
    pub prompt_reloads: IntCounterVec,
    /// Tokens generated.
    pub generated_tokens: IntCounter,
    /// Engine batches that failed, by error type.
    pub batch_errors: IntCounterVec,
    /// Prompt changes (the audit log's entries) by tenant and action.
    pub prompt_changes: IntCounterVec,
    /// Requests refused by tenant quotas and permissions, by tenant and reason.
    pub tenant_rejections: IntCounterVec,
    /// Audit entries that could not be written.
    pub audit_errors: IntCounter,
    /// Reloads of the tenants file by result.
    pub tenant_reloads: IntCounterVec,
    /// Tuning jobs by state (set at each scrape).
    pub tune_jobs: IntGaugeVec,
    /// Tuning optimizer steps taken.
    pub tune_steps: Counter,
    /// Engine seconds spent on tuning jobs.
    pub tune_engine_seconds: Counter,
    /// Latest training loss of each queued or running job (series leave when jobs end).
    pub tune_loss: GaugeVec,
    /// Open HTTP connections.
    pub http_connections: IntGauge,
    /// HTTP connections closed at once because --max-connections were open.
    pub http_connections_refused: IntCounter,
}

/// Most distinct `tenant` label values; later tenants count as `_other`.
pub const MAX_TENANT_LABELS: usize = 64;

fn buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, count).expect("static bucket layout")
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new(max_task_labels: usize) -> Self {
        let registry = Registry::new();
        let seconds = buckets(0.001, 2.0, 16); // 1 ms .. 33 s
        let requests = IntCounterVec::new(
            Opts::new(
                "promptd_requests_total",
                "Predict requests by task and HTTP status",
            ),
            &["task", "status"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "promptd_request_duration_seconds",
                "Predict request latency, from arrival to reply",
            )
            .buckets(seconds.clone()),
            &["task"],
        )
        .expect("valid metric");
        let queue_wait = Histogram::with_opts(
            HistogramOpts::new(
                "promptd_queue_wait_seconds",
                "Time a row waited in the queue before its forward pass",
            )
            .buckets(seconds.clone()),
        )
        .expect("valid metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("promptd_batch_size", "Rows per forward pass")
                .buckets(buckets(1.0, 2.0, 13)),
        )
        .expect("valid metric");
        let batch_tasks = Histogram::with_opts(
            HistogramOpts::new(
                "promptd_batch_tasks",
                "Distinct tasks (prompts) per forward pass",
            )
            .buckets(buckets(1.0, 2.0, 13)),
        )
        .expect("valid metric");
        let decode_rows = Histogram::with_opts(
            HistogramOpts::new(
                "promptd_decode_rows",
                "Rows decoding together, observed each time rows join the running batch",
            )
            .buckets(buckets(1.0, 2.0, 13)),
        )
        .expect("valid metric");
        let decode_tasks = Histogram::with_opts(
            HistogramOpts::new(
                "promptd_decode_tasks",
                "Distinct tasks among the rows decoding together, observed as promptd_decode_rows",
            )
            .buckets(buckets(1.0, 2.0, 13)),
        )
        .expect("valid metric");
        let batch_duration = Histogram::with_opts(
            HistogramOpts::new(
                "promptd_batch_duration_seconds",
                "Engine time per static batch including decoding, or per admission into the running batch",
            )
            .buckets(seconds),
        )
        .expect("valid metric");
        let queue_depth =
            IntGauge::new("promptd_queue_depth", "Rows waiting in the queue").expect("valid");
        let queue_capacity = IntGauge::new(
            "promptd_queue_capacity",
            "Rows the queue holds before requests get 429",
        )
        .expect("valid");
        let ready = IntGauge::new(
            "promptd_ready",
            "1 while the server is ready to serve, else 0",
        )
        .expect("valid");
        let prompts_loaded =
            IntGauge::new("promptd_prompts_loaded", "Prompts currently served").expect("valid");
        let prompt_uploads = IntCounterVec::new(
            Opts::new(
                "promptd_prompt_uploads_total",
                "Prompt uploads and deletes through the API by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let prompt_reloads = IntCounterVec::new(
            Opts::new(
                "promptd_prompt_reloads_total",
                "Prompt changes picked up from the prompts folder by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let generated_tokens =
            IntCounter::new("promptd_generated_tokens_total", "Tokens generated").expect("valid");
        let batch_errors = IntCounterVec::new(
            Opts::new(
                "promptd_batch_errors_total",
                "Forward passes that failed, by error type",
            ),
            &["error_type"],
        )
        .expect("valid metric");
        let prompt_changes = IntCounterVec::new(
            Opts::new(
                "promptd_prompt_changes_total",
                "Prompt changes written to the audit log, by tenant and action",
            ),
            &["tenant", "action"],
        )
        .expect("valid metric");
        let tenant_rejections = IntCounterVec::new(
            Opts::new(
                "promptd_tenant_rejections_total",
                "Requests refused by tenant permissions and quotas, by tenant and reason",
            ),
            &["tenant", "reason"],
        )
        .expect("valid metric");
        let audit_errors = IntCounter::new(
            "promptd_audit_errors_total",
            "Prompt changes whose audit entry could not be written",
        )
        .expect("valid");
        let tenant_reloads = IntCounterVec::new(
            Opts::new(
                "promptd_tenant_reloads_total",
                "Reloads of the tenants file by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let tune_jobs = IntGaugeVec::new(
            Opts::new("promptd_tune_jobs", "Tuning jobs by state"),
            &["state"],
        )
        .expect("valid metric");
        let tune_steps = Counter::new("promptd_tune_steps_total", "Tuning optimizer steps taken")
            .expect("valid metric");
        let tune_engine_seconds = Counter::new(
            "promptd_tune_engine_seconds_total",
            "Engine seconds spent on tuning jobs (steps and dev evaluations)",
        )
        .expect("valid metric");
        let tune_loss = GaugeVec::new(
            Opts::new(
                "promptd_tune_loss",
                "Latest training loss of each queued or running tuning job",
            ),
            &["job"],
        )
        .expect("valid metric");
        let http_connections =
            IntGauge::new("promptd_http_connections", "Open HTTP connections").expect("valid");
        let http_connections_refused = IntCounter::new(
            "promptd_http_connections_refused_total",
            "HTTP connections closed on accept because --max-connections were open",
        )
        .expect("valid");
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(http_connections.clone()),
            Box::new(http_connections_refused.clone()),
            Box::new(tune_jobs.clone()),
            Box::new(tune_steps.clone()),
            Box::new(tune_engine_seconds.clone()),
            Box::new(tune_loss.clone()),
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(queue_wait.clone()),
            Box::new(batch_size.clone()),
            Box::new(batch_tasks.clone()),
            Box::new(decode_rows.clone()),
            Box::new(decode_tasks.clone()),
            Box::new(batch_duration.clone()),
            Box::new(queue_depth.clone()),
            Box::new(queue_capacity.clone()),
            Box::new(ready.clone()),
            Box::new(prompts_loaded.clone()),
            Box::new(prompt_uploads.clone()),
            Box::new(prompt_reloads.clone()),
            Box::new(generated_tokens.clone()),
            Box::new(batch_errors.clone()),
            Box::new(prompt_changes.clone()),
            Box::new(tenant_rejections.clone()),
            Box::new(audit_errors.clone()),
            Box::new(tenant_reloads.clone()),
        ];
        for c in collectors {
            registry.register(c).expect("metric names are unique");
        }
        // Closed label sets start at zero, so dashboards and `rate()` alerts see every series
        // from the first scrape instead of only after the first event.
        for result in ["created", "replaced", "deleted", "invalid", "error"] {
            prompt_uploads.with_label_values(&[result]);
        }
        for result in ["loaded", "removed", "invalid"] {
            prompt_reloads.with_label_values(&[result]);
        }
        for kind in ["invalid_row", "model", "panic", "decode"] {
            batch_errors.with_label_values(&[kind]);
        }
        for result in ["loaded", "invalid"] {
            tenant_reloads.with_label_values(&[result]);
        }
        Self {
            registry,
            task_labels: TaskLabels::new(max_task_labels),
            tenant_labels: TaskLabels::new(MAX_TENANT_LABELS),
            prompt_changes,
            tenant_rejections,
            audit_errors,
            tenant_reloads,
            tune_jobs,
            tune_steps,
            tune_engine_seconds,
            tune_loss,
            http_connections,
            http_connections_refused,
            requests,
            request_duration,
            queue_wait,
            batch_size,
            batch_tasks,
            decode_rows,
            decode_tasks,
            batch_duration,
            queue_depth,
            queue_capacity,
            ready,
            prompts_loaded,
            prompt_uploads,
            prompt_reloads,
            generated_tokens,
            batch_errors,
        }
    }

    /// The `task` label value for a registered task (bounded, see the module docs).
    pub fn task_label(&self, task: &str) -> String {
        self.task_labels.label(task)
    }

    /// The `tenant` label value (tenants come from the operator's file; bounded all the same).
    pub fn tenant_label(&self, tenant: &str) -> String {
        self.tenant_labels.label(tenant)
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Hands out at most `max` distinct task labels, first come first served.
struct TaskLabels {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl TaskLabels {
    fn new(max: usize) -> Self {
        Self {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    fn label(&self, task: &str) -> String {
        let mut seen = self.seen.lock();
        if seen.contains(task) {
            return task.to_string();
        }
        if seen.len() < self.max {
            seen.insert(task.to_string());
            return task.to_string();
        }
        OTHER_TASK.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_labels_are_bounded() {
        let m = Metrics::new(2);
        assert_eq!(m.task_label("a"), "a");
        assert_eq!(m.task_label("b"), "b");
        assert_eq!(m.task_label("c"), OTHER_TASK);
        assert_eq!(m.task_label("a"), "a");
        for i in 0..1000 {
            let label = m.task_label(&format!("t{i}"));
            m.requests.with_label_values(&[&label, "200"]).inc();
        }
        let text = m.render();
        assert!(text.contains("promptd_requests_total{status=\"200\",task=\"_other\"} 1000"));
        assert_eq!(text.matches("promptd_requests_total{").count(), 1);
    }
}
