//! Tuning jobs on the running server: their status and curves (shared between the engine
//! thread, which steps them, and the routes, which show them), and their records on disk under
//! `<prompts>/.tune-jobs/` so a restart reports an interrupted job as failed instead of losing it.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::curve::Curve;
use super::error::TuneError;
use super::output::write_atomic;

/// Folder of job records inside the prompts folder (hidden: never read as a prompt).
pub const JOBS_DIR: &str = ".tune-jobs";

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, waiting for the engine.
    Queued,
    /// Taking steps between serving passes.
    Running,
    /// Done; its prompt is the task's new version.
    Succeeded,
    /// Done, but it scored worse on dev than the task's current prompt: kept for `promote`.
    Candidate,
    /// Failed (the error says why; a restart fails jobs that were running).
    Failed,
    /// Cancelled by its owner.
    Cancelled,
}

impl JobState {
    /// Every state, for metrics.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Candidate,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Candidate => "candidate",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job still runs (or will).
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }
}

/// What `GET /v1/tune-jobs/{id}` shows.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobStatus {
    /// Job id.
    pub id: String,
    /// The task it tunes.
    pub task: String,
    /// The tenant that started it (`-` on an open server).
    pub tenant: String,
    /// queued | running | succeeded | candidate | failed | cancelled
    pub state: JobState,
    /// Steps taken.
    pub step: usize,
    /// Steps it will take unless it stops early.
    pub total_steps: usize,
    /// Latest training loss.
    pub loss: Option<f64>,
    /// The dev metric's name.
    pub metric: String,
    /// Latest dev metric.
    pub dev_metric: Option<f64>,
    /// Best dev metric so far (the prompt kept).
    pub best_metric: Option<f64>,
    /// The step of the best dev metric.
    pub best_step: Option<usize>,
    /// The task's current prompt on the same dev set (measured when the job ends).
    pub current_metric: Option<f64>,
    /// Seconds left at the recent pace (running jobs).
    pub eta_seconds: Option<f64>,
    /// Engine seconds spent on this job.
    pub engine_seconds: f64,
    /// The task version the job installed.
    pub version: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Milliseconds since the Unix epoch, once ended.
    pub finished_ms: Option<u64>,
    /// The replica (host name) running the job.
    #[serde(default)]
    pub replica: String,
    /// When the running replica last recorded the job (every few seconds while it runs).
    #[serde(default)]
    pub heartbeat_ms: u64,
    /// The task's labels: the `labels` given, else the distinct targets when they are few
    /// enough to be a label set (what `GET /v1/prompts/{task}/neighbors` looks for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// What the job tunes: prompt, lora or ia3 (records from before adapters: prompt).
    #[serde(default = "prompt_method")]
    pub method: String,
}

fn prompt_method() -> String {
    "prompt".into()
}

/// A running job's record is rewritten at least this often; a record of another replica's
/// job that is older than [`STALE_AFTER_MS`] means that replica stopped without ending it.
pub const HEARTBEAT_MS: u64 = 10_000;
/// See [`HEARTBEAT_MS`].
pub const STALE_AFTER_MS: u64 = 6 * HEARTBEAT_MS;

/// This replica's name: the host name (a Kubernetes pod keeps it across container restarts).
pub fn replica_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One job: its status, curves and cancel flag, shared by the engine thread and the routes.
#[derive(Debug)]
pub struct Job {
    /// The status, updated after each step.
    pub status: Mutex<JobStatus>,
    /// Set by `DELETE`: the engine drops the job at its next turn.
    pub cancel: AtomicBool,
    /// Loss and dev metric so far; None for a job recorded before this server started, until
    /// [`JobTable::curve`] reads it back.
    curve: Mutex<Option<Curve>>,
}

impl Job {
    fn new(status: JobStatus, curve: Option<Curve>) -> Self {
        Self {
            status: Mutex::new(status),
            cancel: AtomicBool::new(false),
            curve: Mutex::new(curve),
        }
    }

    /// A snapshot of the status.
    pub fn snapshot(&self) -> JobStatus {
        self.status.lock().clone()
    }

    /// Changes the curve (the engine thread appends each step's point).
    pub fn update_curve(&self, f: impl FnOnce(&mut Curve)) {
        f(self.curve.lock().get_or_insert_with(Curve::default));
    }
}

/// Called with every record written (a fleet copies it to its object store).
pub type Mirror = Box<dyn Fn(&JobStatus) + Send + Sync>;

/// Every job this server knows, with their records on disk.
pub struct JobTable {
    dir: PathBuf,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    next: AtomicU64,
    replica: String,
    mirror: Mutex<Option<Arc<Mirror>>>,
}

impl JobTable {
    /// Opens `<prompts>/.tune-jobs`, loading every record; jobs that were queued or running
    /// when the server stopped are marked failed (and rewritten) with that reason.
    pub fn open(prompts_dir: &Path) -> Result<Self, TuneError> {
        Self::open_as(prompts_dir, replica_name())
    }

    /// [`JobTable::open`] for the replica named `replica` (a fleet's replica id).
    pub fn open_as(prompts_dir: &Path, replica: String) -> Result<Self, TuneError> {
        let dir = prompts_dir.join(JOBS_DIR);
        let io = |source| TuneError::Io {
            path: dir.clone(),
            source,
        };
        let mut jobs = HashMap::new();
        // Created with the first job: a server that never tunes leaves the folder as it was.
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    dir,
                    jobs: Mutex::new(jobs),
                    next: AtomicU64::new(0),
                    replica,
                    mirror: Mutex::new(None),
                })
            }
            Err(e) => return Err(io(e)),
        };
        for entry in entries {
            let path = entry.map_err(io)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(text) = std::fs::read(&path) else {
                continue;
            };
            let Ok(mut status) = serde_json::from_slice::<JobStatus>(&text) else {
                tracing::warn!(path = %path.display(), "skipping an unreadable tuning job record");
                continue;
            };
            // Another replica's job is its own business until its record goes stale.
            let others_live = status.replica != replica
                && now_ms().saturating_sub(status.heartbeat_ms) < STALE_AFTER_MS;
            if status.state.is_active() && !others_live {
                status.state = JobState::Failed;
                status.error = Some(format!(
                    "interrupted by a server restart at step {} of {}",
                    status.step, status.total_steps
                ));
                status.finished_ms = Some(now_ms());
                status.eta_seconds = None;
                write_record(&dir, &status)?;
            }
            let id = status.id.clone();
            jobs.insert(id, Arc::new(Job::new(status, None)));
        }
        Ok(Self {
            dir,
            jobs: Mutex::new(jobs),
            next: AtomicU64::new(0),
            replica,
            mirror: Mutex::new(None),
        })
    }

    /// Calls `mirror` with every record written from now on.
    pub fn set_mirror(&self, mirror: Mirror) {
        *self.mirror.lock() = Some(Arc::new(mirror));
    }

    fn mirrored(&self, status: &JobStatus) {
        let mirror = self.mirror.lock().clone();
        if let Some(m) = mirror {
            m(status);
        }
    }

    /// A new queued job for `task`, recorded on disk before it is returned.
    pub fn create(
        &self,
        task: &str,
        tenant: &str,
        total_steps: usize,
        metric: &str,
    ) -> Result<Arc<Job>, TuneError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("tj-{}-{n}", now_ms());
        let status = JobStatus {
            id: id.clone(),
            task: task.to_string(),
            tenant: tenant.to_string(),
            state: JobState::Queued,
            step: 0,
            total_steps,
            loss: None,
            metric: metric.to_string(),
            dev_metric: None,
            best_metric: None,
            best_step: None,
            current_metric: None,
            eta_seconds: None,
            engine_seconds: 0.0,
            version: None,
            error: None,
            created_ms: now_ms(),
            finished_ms: None,
            replica: self.replica.clone(),
            heartbeat_ms: now_ms(),
            labels: Vec::new(),
            method: prompt_method(),
        };
        write_record(&self.dir, &status)?;
        self.mirrored(&status);
        let job = Arc::new(Job::new(status, Some(Curve::new(metric, total_steps))));
        self.jobs.lock().insert(id, job.clone());
        Ok(job)
    }

    /// A job by id.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().get(id).cloned()
    }

    /// Every job, oldest first.
    pub fn all(&self) -> Vec<JobStatus> {
        let mut out: Vec<JobStatus> = self.jobs.lock().values().map(|j| j.snapshot()).collect();
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        out
    }

    /// This replica's name (as recorded in its jobs).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Jobs of `tenant` that are queued or running.
    pub fn active_for(&self, tenant: &str) -> usize {
        self.jobs
            .lock()
            .values()
            .filter(|j| {
                let s = j.status.lock();
                s.state.is_active() && s.tenant == tenant
            })
            .count()
    }

    /// Jobs in each state.
    pub fn counts(&self) -> HashMap<JobState, usize> {
        let mut out = HashMap::new();
        for job in self.jobs.lock().values() {
            *out.entry(job.status.lock().state).or_default() += 1;
        }
        out
    }

    /// Fails every queued or running job with `why` (the server is stopping) and stops them.
    pub fn fail_active(&self, why: &str) {
        let jobs: Vec<Arc<Job>> = self.jobs.lock().values().cloned().collect();
        for job in jobs {
            {
                let mut s = job.status.lock();
                if !s.state.is_active() {
                    continue;
                }
                s.state = JobState::Failed;
                s.error = Some(format!("{why} (at step {} of {})", s.step, s.total_steps));
                s.finished_ms = Some(now_ms());
                s.eta_seconds = None;
            }
            job.cancel.store(true, Ordering::Release);
            if let Err(e) = self.persist(&job) {
                tracing::error!("recording tuning job: {e}");
            }
        }
    }

    /// Rewrites `job`'s record on disk (with a fresh heartbeat), and its curve.
    pub fn persist(&self, job: &Job) -> Result<(), TuneError> {
        let status = {
            let mut s = job.status.lock();
            s.heartbeat_ms = now_ms();
            s.clone()
        };
        let curve = job.curve.lock().clone();
        if let Some(curve) = curve {
            let text = serde_json::to_vec(&curve).map_err(|e| TuneError::Data(e.to_string()))?;
            write_atomic(&self.curve_path(&status.id), &text)?;
        }
        write_record(&self.dir, &status)?;
        self.mirrored(&status);
        Ok(())
    }

    /// `job`'s curve so far: read back from its file the first time for a job recorded before
    /// this server started (empty if it has none).
    pub fn curve(&self, job: &Job) -> Curve {
        if let Some(curve) = job.curve.lock().as_ref() {
            return curve.clone();
        }
        // Read with no lock held: the status lock is never taken under the curve's.
        let s = job.snapshot();
        let read = std::fs::read(self.curve_path(&s.id))
            .ok()
            .and_then(|text| serde_json::from_slice(&text).ok())
            .unwrap_or_else(|| Curve::new(&s.metric, s.total_steps));
        job.curve.lock().get_or_insert(read).clone()
    }

    /// Where job `id`'s curve is kept (not `.json`: [`JobTable::open`] reads those as records).
    fn curve_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.curve"))
    }

    /// Keeps a candidate prompt next to its job's record.
    pub fn save_candidate(&self, id: &str, bytes: &[u8]) -> Result<(), TuneError> {
        write_atomic(&self.candidate_path(id), bytes)
    }

    /// The candidate prompt file of job `id`.
    pub fn candidate_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.safetensors"))
    }
}

fn write_record(dir: &Path, status: &JobStatus) -> Result<(), TuneError> {
    std::fs::create_dir_all(dir).map_err(|source| TuneError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut text = serde_json::to_vec_pretty(status).map_err(|e| TuneError::Data(e.to_string()))?;
    text.push(b'\n');
    write_atomic(&dir.join(format!("{}.json", status.id)), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_curve_is_kept_with_its_record_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = JobTable::open(dir.path()).unwrap();
        let job = jobs.create("task", "tenant", 10, "accuracy").unwrap();
        job.update_curve(|c| {
            c.loss = vec![(1, 2.0), (2, 1.5)];
            c.dev = vec![(0, 0.25), (2, 0.5)];
            c.best = Some((2, 0.5));
        });
        jobs.persist(&job).unwrap();
        let id = job.snapshot().id;
        let again = JobTable::open(dir.path()).unwrap();
        assert_eq!(
            again.all().len(),
            1,
            "the curve file is not read as a record"
        );
        let drawn = again.curve(&again.get(&id).unwrap());
        assert_eq!(drawn, jobs.curve(&job));
        assert_eq!(drawn.loss.len(), 2);
        // A record without a curve file (written before curves were kept): an empty curve.
        std::fs::remove_file(jobs.curve_path(&id)).unwrap();
        let third = JobTable::open(dir.path()).unwrap();
        let empty = third.curve(&third.get(&id).unwrap());
        assert_eq!(empty, Curve::new("accuracy", 10));
    }
}
