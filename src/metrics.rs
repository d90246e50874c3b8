//! Prometheus metrics. Every series lives in this struct's own registry (fresh per test).
//!
//! Cardinality: the `task` label takes at most `max_task_labels` distinct values. The first
//! registered tasks to see traffic get their own label; every later task is counted under
//! `task="_other"`, and requests for tasks that do not exist under `task="_unknown"`, so
//! neither thousands of tasks nor a client guessing names can grow the series count.
use std::collections::HashSet;

use parking_lot::Mutex;
use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
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
    /// Rows per forward pass: per encoder pass of the rows joining the running batch.
    pub batch_size: Histogram,
    /// Distinct tasks per forward pass: per encoder pass of the rows joining.
    pub batch_tasks: Histogram,
    /// Rows decoding together, observed each time rows join the running batch.
    pub decode_rows: Histogram,
    /// Distinct tasks among the rows decoding together, observed as `decode_rows` is.
    pub decode_tasks: Histogram,
    /// Engine time per admission into the running batch (encoder, scoring and merge), under
    /// static decoding too (its decoding is not in it).
    pub batch_duration: Histogram,
    /// Rows waiting in the queue.
    pub queue_depth: IntGauge,
    /// Rows handed to the engine and not answered yet (decoding, or about to join).
    pub engine_rows: IntGauge,
    /// Rows the queue holds before requests get 429.
    pub queue_capacity: IntGauge,
    /// 1 while /readyz answers 200, else 0 (set at each scrape).
    pub ready: IntGauge,
    /// Prompts currently served.
    pub prompts_loaded: IntGauge,
    /// LoRA, IA3 and prefix adapters on the device.
    pub adapters_resident: IntGauge,
    /// Adapters registered (on the device or waiting in host memory).
    pub adapters_registered: IntGauge,
    /// Bytes of the adapters on the device.
    pub adapter_resident_bytes: IntGauge,
    /// Adapters loaded onto the device.
    pub adapter_loads: IntCounter,
    /// Adapters moved off the device (least recently used, to fit --adapter-memory-mb).
    pub adapter_evictions: IntCounter,
    /// Prompt uploads and deletes by result.
    prompt_uploads: IntCounterVec,
    /// Prompt changes picked up from the folder by result.
    prompt_reloads: IntCounterVec,
    /// Tokens generated.
    pub generated_tokens: IntCounter,
    /// Engine batches that failed, by error type.
    batch_errors: IntCounterVec,
    /// Prompt changes (the audit log's entries) by tenant and action.
    prompt_changes: IntCounterVec,
    /// Requests refused by tenant quotas and permissions, by tenant and reason.
    tenant_rejections: IntCounterVec,
    /// Audit entries that could not be written.
    pub audit_errors: IntCounter,
    /// Reloads of the tenants file by result.
    tenant_reloads: IntCounterVec,
    /// Tuning jobs by state (set at each scrape).
    pub tune_jobs: IntGaugeVec,
    /// Tuning optimizer steps taken.
    pub tune_steps: Counter,
    /// Engine seconds spent on tuning jobs.
    pub tune_engine_seconds: Counter,
    /// Decode steps of the running batch (set at each scrape).
    pub decode_steps: Counter,
    /// Engine seconds in decode steps (set at each scrape).
    pub decode_seconds: Counter,
    /// Rows decoding, summed over decode steps (set at each scrape).
    pub decode_row_steps: Counter,
    /// Where a predict request's time went outside the engine's own work, by phase: `validate`
    /// (tokenizing and checks), `wait` (queued, admitted and decoded: from the queue to the
    /// last row's answer) and `respond` (detokenizing and building the answer).
    pub request_phase: HistogramVec,
    /// Latest training loss of each queued or running job (series leave when jobs end).
    pub tune_loss: GaugeVec,
    /// Open HTTP connections.
    pub http_connections: IntGauge,
    /// HTTP connections closed at once because --max-connections were open.
    pub http_connections_refused: IntCounter,
    /// Open gRPC connections.
    pub grpc_connections: IntGauge,
    /// gRPC connections closed at once because --max-connections were open.
    pub grpc_connections_refused: IntCounter,
    /// The object store (`--store s3://…`).
    pub store: StoreMetrics,
}

/// Most distinct `tenant` label values; later tenants count as `_other`.
pub const MAX_TENANT_LABELS: usize = 64;

/// Defines a closed set of label values: an enum with its label string and every value, so a
/// typo in a label is a compile error and every series exists from the first scrape.
macro_rules! label_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }
        }
    };
}

label_set!(
    /// Results of prompt uploads and deletes through the API.
    UploadResult {
        /// A new task.
        Created => "created",
        /// A new version of a task.
        Replaced => "replaced",
        /// Refused as the client's mistake (4xx).
        Invalid => "invalid",
        /// Failed on the server's side (5xx).
        Error => "error",
        /// A task deleted.
        Deleted => "deleted",
    }
);

label_set!(
    /// Results of picking up a change in the prompts folder.
    ReloadResult {
        /// A source loaded.
        Loaded => "loaded",
        /// A task whose files are gone.
        Removed => "removed",
        /// A source that failed to load.
        Invalid => "invalid",
    }
);

label_set!(
    /// Why engine work failed.
    BatchError {
        /// A malformed row (caught before tensors).
        InvalidRow => "invalid_row",
        /// The model failed.
        Model => "model",
        /// A panic (a bug).
        Panic => "panic",
        /// A decode step failed.
        Decode => "decode",
    }
);

label_set!(
    /// Results of reloading the tenants file.
    TenantsReload {
        /// The new version is in force.
        Loaded => "loaded",
        /// The new version is invalid; the previous one stays.
        Invalid => "invalid",
    }
);

label_set!(
    /// Why a tenant's request was refused.
    Rejection {
        /// No valid API key.
        Unauthenticated => "unauthenticated",
        /// Another tenant's task, or an admin route.
        Forbidden => "forbidden",
        /// A quota waiting will not lift.
        QuotaExceeded => "quota_exceeded",
        /// The request rate or in-flight cap.
        RateLimited => "rate_limited",
    }
);

label_set!(
    /// Prompt changes recorded in the audit log.
    ChangeAction {
        /// A new task.
        Create => "create",
        /// A new version.
        Replace => "replace",
        /// A task deleted.
        Delete => "delete",
    }
);

/// Metrics of the object store a fleet shares (all zero with a folder store).
#[derive(Clone)]
pub struct StoreMetrics {
    /// 1 while the last store request succeeded, else 0.
    pub up: IntGauge,
    /// Seconds since this replica last confirmed its catalogs match the store (set at scrape).
    pub sync_age: Gauge,
    /// Manifest written (by any replica) → applied here.
    pub sync_lag: Histogram,
    /// Store requests by operation and outcome.
    requests: IntCounterVec,
    /// Objects refused because their bytes did not match their hash.
    pub corrupt_objects: IntCounter,
}

label_set!(
    /// Operations on the object store.
    StoreOp {
        /// A catalog manifest read (conditional).
        GetManifest => "get_manifest",
        /// A catalog manifest write (conditional).
        PutManifest => "put_manifest",
        /// A content-addressed object read.
        GetObject => "get_object",
        /// A content-addressed object write.
        PutObject => "put_object",
        /// A listing.
        List => "list",
        /// A removal.
        Delete => "delete",
        /// A replica's heartbeat record written.
        Heartbeat => "heartbeat",
        /// A record read or written (tuning jobs, tenants, audit).
        Record => "record",
    }
);

label_set!(
    /// Outcomes of object store requests.
    StoreOutcome {
        /// Done.
        Ok => "ok",
        /// A conditional read found nothing new (304).
        NotModified => "not_modified",
        /// A conditional write lost a race (412) or found the object present.
        PreconditionFailed => "precondition_failed",
        /// No such object.
        NotFound => "not_found",
        /// The store failed or could not be reached.
        Error => "error",
    }
);

impl StoreMetrics {
    /// Counts one store request.
    pub fn request(&self, op: StoreOp, outcome: StoreOutcome) {
        self.requests
            .with_label_values(&[op.as_str(), outcome.as_str()])
            .inc();
    }
}

fn buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, count).expect("static bucket layout")
}

/// Creates metrics and registers them in one step. Names and label sets are static, so a
/// failure is a bug caught by every test that builds [`Metrics`].
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: prometheus::Result<C>) -> C {
        let c = c.expect("valid metric");
        self.0
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help))
    }

    fn float_counter(&self, name: &str, help: &str) -> Counter {
        self.add(Counter::new(name, help))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }

    /// A counter over one closed label; every value starts at zero.
    fn closed_counters(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
    ) -> IntCounterVec {
        let c = self.counters(name, help, &[label]);
        for v in values {
            c.with_label_values(&[v]);
        }
        c
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    fn float_gauges(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(name, help), labels))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        ))
    }

    fn histograms(&self, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
        self.add(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        ))
    }
}

fn strs<T: Copy>(all: &[T], f: fn(T) -> &'static str) -> Vec<&'static str> {
    all.iter().map(|&v| f(v)).collect()
}

impl Metrics {
    /// Publishes the adapter bank's state (the counters move by what the bank counted since).
    pub fn adapter_bank(&self, stats: &crate::engine::AdapterStats) {
        self.adapters_resident.set(stats.resident as i64);
        self.adapters_registered.set(stats.registered as i64);
        self.adapter_resident_bytes.set(stats.resident_bytes as i64);
        self.adapter_loads
            .inc_by(stats.loads.saturating_sub(self.adapter_loads.get()));
        self.adapter_evictions
            .inc_by(stats.evictions.saturating_sub(self.adapter_evictions.get()));
    }

    /// A fresh registry with every metric registered.
    pub fn new(max_task_labels: usize) -> Self {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let seconds = buckets(0.001, 2.0, 16); // 1 ms .. 33 s
        let rows = buckets(1.0, 2.0, 13); // 1 .. 4096
        Self {
            requests: r.counters(
                "promptd_requests_total",
                "Predict requests by task and HTTP status",
                &["task", "status"],
            ),
            request_duration: r.histograms(
                "promptd_request_duration_seconds",
                "Predict request latency, from arrival to reply",
                &seconds,
                &["task"],
            ),
            queue_wait: r.histogram(
                "promptd_queue_wait_seconds",
                "Time a row waited in the queue before its forward pass",
                &seconds,
            ),
            batch_size: r.histogram("promptd_batch_size", "Rows per forward pass", &rows),
            batch_tasks: r.histogram(
                "promptd_batch_tasks",
                "Distinct tasks (prompts) per forward pass",
                &rows,
            ),
            decode_rows: r.histogram(
                "promptd_decode_rows",
                "Rows decoding together, observed each time rows join the running batch",
                &rows,
            ),
            decode_tasks: r.histogram(
                "promptd_decode_tasks",
                "Distinct tasks among the rows decoding together, observed as promptd_decode_rows",
                &rows,
            ),
            batch_duration: r.histogram(
                "promptd_batch_duration_seconds",
                "Engine time per admission into the running batch (encoder, scoring and merge)",
                &seconds,
            ),
            queue_depth: r.gauge("promptd_queue_depth", "Rows waiting in the queue"),
            engine_rows: r.gauge(
                "promptd_engine_rows",
                "Rows handed to the engine and not answered yet (decoding, or about to join)",
            ),
            queue_capacity: r.gauge(
                "promptd_queue_capacity",
                "Rows the queue holds before requests get 429",
            ),
            ready: r.gauge(
                "promptd_ready",
                "1 while the server is ready to serve, else 0",
            ),
            prompts_loaded: r.gauge("promptd_prompts_loaded", "Prompts currently served"),
            adapters_resident: r.gauge(
                "promptd_adapters_resident",
                "LoRA, IA3 and prefix adapters on the device",
            ),
            adapters_registered: r.gauge(
                "promptd_adapters_registered",
                "Adapters registered, on the device or waiting in host memory",
            ),
            adapter_resident_bytes: r.gauge(
                "promptd_adapter_resident_bytes",
                "Bytes of the adapters on the device (--adapter-memory-mb)",
            ),
            adapter_loads: r.counter(
                "promptd_adapter_loads_total",
                "Adapters loaded onto the device",
            ),
            adapter_evictions: r.counter(
                "promptd_adapter_evictions_total",
                "Adapters moved off the device to fit --adapter-memory-mb",
            ),
            prompt_uploads: r.closed_counters(
                "promptd_prompt_uploads_total",
                "Prompt uploads and deletes through the API by result",
                "result",
                &strs(UploadResult::ALL, UploadResult::as_str),
            ),
            prompt_reloads: r.closed_counters(
                "promptd_prompt_reloads_total",
                "Prompt changes picked up from the prompts folder by result",
                "result",
                &strs(ReloadResult::ALL, ReloadResult::as_str),
            ),
            generated_tokens: r.counter("promptd_generated_tokens_total", "Tokens generated"),
            batch_errors: r.closed_counters(
                "promptd_batch_errors_total",
                "Forward passes that failed, by error type",
                "error_type",
                &strs(BatchError::ALL, BatchError::as_str),
            ),
            prompt_changes: r.counters(
                "promptd_prompt_changes_total",
                "Prompt changes written to the audit log, by tenant and action",
                &["tenant", "action"],
            ),
            tenant_rejections: r.counters(
                "promptd_tenant_rejections_total",
                "Requests refused by tenant permissions and quotas, by tenant and reason",
                &["tenant", "reason"],
            ),
            audit_errors: r.counter(
                "promptd_audit_errors_total",
                "Prompt changes whose audit entry could not be written",
            ),
            tenant_reloads: r.closed_counters(
                "promptd_tenant_reloads_total",
                "Reloads of the tenants file by result",
                "result",
                &strs(TenantsReload::ALL, TenantsReload::as_str),
            ),
            tune_jobs: r.gauges("promptd_tune_jobs", "Tuning jobs by state", &["state"]),
            tune_steps: r.float_counter("promptd_tune_steps_total", "Tuning optimizer steps taken"),
            tune_engine_seconds: r.float_counter(
                "promptd_tune_engine_seconds_total",
                "Engine seconds spent on tuning jobs (steps and dev evaluations)",
            ),
            decode_steps: r.float_counter(
                "promptd_decode_steps_total",
                "Decode steps of the running batch",
            ),
            decode_seconds: r.float_counter(
                "promptd_decode_seconds_total",
                "Engine seconds spent in decode steps",
            ),
            decode_row_steps: r.float_counter(
                "promptd_decode_row_steps_total",
                "Rows decoding, summed over decode steps (over promptd_decode_steps_total: rows per step)",
            ),
            request_phase: r.histograms(
                "promptd_request_phase_seconds",
                "Predict request time by phase: validate (tokenize, checks), wait (queue, admission and decoding until the last row's answer), respond (detokenize, build the answer)",
                &buckets(0.0001, 2.0, 20),
                &["phase"],
            ),
            tune_loss: r.float_gauges(
                "promptd_tune_loss",
                "Latest training loss of each queued or running tuning job",
                &["job"],
            ),
            http_connections: r.gauge("promptd_http_connections", "Open HTTP connections"),
            http_connections_refused: r.counter(
                "promptd_http_connections_refused_total",
                "HTTP connections closed on accept because --max-connections were open",
            ),
            grpc_connections: r.gauge("promptd_grpc_connections", "Open gRPC connections"),
            grpc_connections_refused: r.counter(
                "promptd_grpc_connections_refused_total",
                "gRPC connections closed on accept because --max-connections were open",
            ),
            store: StoreMetrics {
                up: r.gauge(
                    "promptd_store_up",
                    "1 while the last object store request succeeded, else 0",
                ),
                sync_age: r.add(Gauge::new(
                    "promptd_store_sync_age_seconds",
                    "Seconds since this replica last confirmed its catalogs match the store",
                )),
                sync_lag: r.histogram(
                    "promptd_store_sync_lag_seconds",
                    "Time from a manifest written (by any replica) to its change applied here",
                    &buckets(0.01, 2.0, 14),
                ),
                requests: {
                    let c = r.counters(
                        "promptd_store_requests_total",
                        "Object store requests by operation and outcome",
                        &["op", "outcome"],
                    );
                    for op in StoreOp::ALL {
                        c.with_label_values(&[op.as_str(), StoreOutcome::Ok.as_str()]);
                    }
                    c
                },
                corrupt_objects: r.counter(
                    "promptd_store_corrupt_objects_total",
                    "Store objects refused because their bytes did not match their hash",
                ),
            },
            task_labels: TaskLabels::new(max_task_labels),
            tenant_labels: TaskLabels::new(MAX_TENANT_LABELS),
            registry,
        }
    }

    /// Counts a prompt upload or delete through the API.
    pub fn prompt_upload(&self, result: UploadResult) {
        self.prompt_uploads
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// Counts a change picked up from the prompts folder.
    pub fn prompt_reload(&self, result: ReloadResult) {
        self.prompt_reloads
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// Counts failed engine work.
    pub fn batch_error(&self, kind: BatchError) {
        self.batch_errors.with_label_values(&[kind.as_str()]).inc();
    }

    /// Counts a reload of the tenants file.
    pub fn tenants_reload(&self, result: TenantsReload) {
        self.tenant_reloads
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// Counts a refused request of `tenant` (`None`: the caller is unknown).
    pub fn tenant_rejection(&self, tenant: Option<&str>, reason: Rejection) {
        let label = tenant.map_or_else(|| UNKNOWN_TASK.to_string(), |t| self.tenant_label(t));
        self.tenant_rejections
            .with_label_values(&[&label, reason.as_str()])
            .inc();
    }

    /// Counts a prompt change recorded for `tenant`.
    pub fn prompt_change(&self, tenant: &str, action: ChangeAction) {
        let label = self.tenant_label(tenant);
        self.prompt_changes
            .with_label_values(&[&label, action.as_str()])
            .inc();
    }

    /// The `task` label value for a registered task (bounded, see the module docs).
    pub fn task_label(&self, task: &str) -> String {
        self.task_labels.label(task)
    }

    /// The `tenant` label value (tenants come from the operator's file; bounded all the same).
    pub fn tenant_label(&self, tenant: &str) -> String {
        self.tenant_labels.label(tenant)
    }

    /// Brings the decode counters up to the engine thread's totals (at each scrape).
    pub fn engine_times(&self, t: &crate::engine::worker::EngineTimes) {
        for (counter, total) in [
            (&self.decode_steps, t.steps as f64),
            (&self.decode_seconds, t.step_seconds),
            (&self.decode_row_steps, t.row_steps as f64),
        ] {
            counter.inc_by((total - counter.get()).max(0.0));
        }
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
