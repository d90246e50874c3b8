//! The engine thread: one named OS thread owns the model and the prompt bank and runs jobs
//! one at a time; between jobs it steps the running decode batch (the one decoder: rows join it
//! at a step boundary, [`EngineHandle::join`]) and side work. Async code talks to it through
//! [`EngineHandle`]; every job carries its own reply channel. Prompt registration runs between
//! batches, so the bank has a single writer.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tch::{Device, Kind};
use tokio::sync::{oneshot, watch};

use super::bank::PromptSlot;
use super::continuous::{Admitted, Joining, Running};
use super::error::{guarded, EngineError};
use super::passes::Engine;
use super::side::SideWork;
use super::task::TaskWeights;
use crate::model::{ModelOptions, T5Model};

/// What the engine thread needs to start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Hugging Face T5 directory.
    pub model_dir: PathBuf,
    /// Device to run on.
    pub device: Device,
    /// Weight dtype.
    pub kind: Kind,
    /// Pack the linear layers as int8 for serving (`--dtype int8`).
    pub int8: bool,
    /// Padded encoder positions per forward pass.
    pub max_batch_tokens: u64,
    /// Device memory for adapters, in bytes (`--adapter-memory-mb`); the rest wait in host memory.
    pub adapter_memory: usize,
}

/// Engine life cycle, published on a watch channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    /// Loading the model.
    Loading,
    /// Taking jobs.
    Ready,
    /// The model failed to load (the reason).
    Failed(String),
    /// The thread has stopped.
    Stopped,
}

enum Job {
    Register {
        prompts: Vec<TaskWeights>,
        reply: oneshot::Sender<Vec<Result<Arc<PromptSlot>, EngineError>>>,
    },
    Join {
        rows: Vec<Joining>,
        reply: oneshot::Sender<(Admitted, Duration)>,
    },
    Reserve {
        rows: usize,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    /// Side work was submitted: stop waiting for a job.
    Wake,
    Neighbors {
        slot: Arc<PromptSlot>,
        k: usize,
        vocab: i64,
        reply: oneshot::Sender<NeighborsResult>,
    },
}

/// Each prompt row's nearest vocabulary tokens, or why they could not be computed.
pub type NeighborsResult = Result<Vec<Vec<super::neighbors::Neighbor>>, EngineError>;

/// Errors talking to the engine thread.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkerError {
    /// The thread is gone (failed to load, or shut down).
    #[error("the engine is not running")]
    Stopped,
}

/// Cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    /// Shared by every clone: the thread stops once the last clone is dropped.
    jobs: Arc<mpsc::Sender<Job>>,
    state: watch::Receiver<EngineState>,
    times: Arc<Times>,
}

/// Where the engine thread's serving time went, summed since it started (metrics read it).
#[derive(Default)]
struct Times {
    admissions: AtomicU64,
    admit_ns: AtomicU64,
    steps: AtomicU64,
    step_ns: AtomicU64,
    row_steps: AtomicU64,
}

/// The engine thread's serving work since it started: admissions (encoder passes, label
/// scores, merging into the running batch) and decode steps.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineTimes {
    /// Admissions of rows into the running batch.
    pub admissions: u64,
    /// Seconds spent admitting.
    pub admit_seconds: f64,
    /// Decode steps of the running batch.
    pub steps: u64,
    /// Seconds spent in decode steps.
    pub step_seconds: f64,
    /// Rows decoding, summed over steps.
    pub row_steps: u64,
}

impl Times {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Wakes the engine thread after side work was submitted ([`EngineHandle::waker`]). It does
/// not keep the thread running: once every handle is gone, waking fails.
#[derive(Clone)]
pub struct EngineWaker(Weak<mpsc::Sender<Job>>);

impl EngineWaker {
    /// Makes the engine thread take in the submitted side work; fails once the thread has
    /// stopped taking jobs (or is stopping: every handle is gone).
    pub fn wake(&self) -> Result<(), WorkerError> {
        let jobs = self.0.upgrade().ok_or(WorkerError::Stopped)?;
        jobs.send(Job::Wake).map_err(|_| WorkerError::Stopped)
    }
}

/// Starts the engine thread. It loads the model, then takes jobs, stepping `side` between
/// serving passes, until every handle is dropped.
pub fn spawn(
    cfg: EngineConfig,
    side: Box<dyn SideWork>,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (jobs, rx) = mpsc::channel::<Job>();
    let (state_tx, state) = watch::channel(EngineState::Loading);
    let times = Arc::new(Times::default());
    let counted = times.clone();
    let thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine_thread(cfg, side, rx, state_tx, &counted))?;
    let jobs = Arc::new(jobs);
    Ok((EngineHandle { jobs, state, times }, thread))
}

fn engine_thread(
    cfg: EngineConfig,
    mut side: Box<dyn SideWork>,
    jobs: mpsc::Receiver<Job>,
    state: watch::Sender<EngineState>,
    times: &Times,
) {
    let _guard = tch::no_grad_guard();
    let started = Instant::now();
    let opts = ModelOptions {
        device: cfg.device,
        kind: cfg.kind,
    };
    let engine = T5Model::load(&cfg.model_dir, opts)
        .and_then(|mut model| {
            model.pack_for_serving(cfg.int8)?;
            Ok(model)
        })
        .and_then(Engine::new);
    let mut engine = match engine {
        Ok(mut e) => {
            e.adapters_mut().set_budget(cfg.adapter_memory);
            e
        }
        Err(e) => {
            tracing::error!("model failed to load: {e}");
            state.send_replace(EngineState::Failed(e.to_string()));
            return;
        }
    };
    tracing::info!(
        model = %cfg.model_dir.display(),
        device = ?cfg.device,
        dtype = ?cfg.kind,
        secs = started.elapsed().as_secs_f64(),
        "model loaded"
    );
    state.send_replace(EngineState::Ready);
    let mut running = Running::new(engine.model());
    loop {
        // Between decode steps, take every job that waits; with nothing decoding and no side
        // work, wait for one.
        let job = if running.is_empty() && !side.has_work() {
            match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            }
        } else if running.is_empty() && !side.may_step(true) {
            // Side work waits for its share or for the engine to be idle a moment: wait for a job
            // a little instead of spinning.
            match jobs.recv_timeout(Duration::from_millis(10)) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match jobs.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) if running.is_empty() => break,
                Err(mpsc::TryRecvError::Disconnected) => None,
            }
        };
        let idle = job.is_none() && running.is_empty();
        let busy = !idle;
        let serving = Instant::now();
        match job {
            // The side work takes in what was submitted when asked for work next.
            Some(Job::Wake) => {}
            Some(Job::Register { prompts, reply }) => {
                // Like every job, inside guarded(): a panic fails this job, not the thread.
                let rows = prompts.iter().map(|p| p.rows.rows).sum();
                if let Err(e) = guarded(|| Ok(engine.reserve_prompt_rows(rows)?)) {
                    tracing::warn!(rows, "could not reserve prompt bank rows: {e}");
                }
                let slots = prompts
                    .iter()
                    .map(|p| guarded(|| Ok(engine.register_task(p)?)))
                    .collect();
                let _ = reply.send(slots);
            }
            Some(Job::Neighbors {
                slot,
                k,
                vocab,
                reply,
            }) => {
                let _ = reply.send(guarded(|| engine.prompt_neighbors(&slot, k, vocab)));
            }
            Some(Job::Reserve { rows, reply }) => {
                let _ = reply.send(guarded(|| Ok(engine.reserve_prompt_rows(rows)?)));
            }
            Some(Job::Join { rows, reply }) => {
                let t = Instant::now();
                let admitted = running.admit(&mut engine, rows, cfg.max_batch_tokens);
                let elapsed = t.elapsed();
                Times::add(&times.admissions, 1);
                Times::add(&times.admit_ns, elapsed.as_nanos() as u64);
                let _ = reply.send((admitted, elapsed));
            }
            None => {}
        }
        if !running.is_empty() {
            // Counted before the step: it answers the rows that finish.
            Times::add(&times.steps, 1);
            Times::add(&times.row_steps, running.len() as u64);
            let t = Instant::now();
            running.step(&engine);
            Times::add(&times.step_ns, t.elapsed().as_nanos() as u64);
        }
        side.note_serving(serving.elapsed(), busy);
        if side.may_step(idle) {
            side.step(&mut engine);
        }
    }
    // Closed first: a submission either fails to wake the engine (its submitter fails it) or
    // is already queued, and is failed here.
    drop(jobs);
    side.fail_all("the server stopped before the job ended");
    state.send_replace(EngineState::Stopped);
    tracing::info!("engine stopped");
}

impl EngineHandle {
    /// The engine thread's serving work so far.
    pub fn times(&self) -> EngineTimes {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EngineTimes {
            admissions: get(&self.times.admissions),
            admit_seconds: get(&self.times.admit_ns) as f64 * 1e-9,
            steps: get(&self.times.steps),
            step_seconds: get(&self.times.step_ns) as f64 * 1e-9,
            row_steps: get(&self.times.row_steps),
        }
    }

    /// Current engine state.
    pub fn state(&self) -> EngineState {
        if self.state.has_changed().is_err() {
            return EngineState::Stopped;
        }
        self.state.borrow().clone()
    }

    /// The engine's state changes (the sender closes when the thread exits).
    pub fn subscribe(&self) -> watch::Receiver<EngineState> {
        self.state.clone()
    }

    /// Waits until the model is loaded; the error says why it failed.
    pub async fn ready(&self) -> Result<(), String> {
        let mut rx = self.state.clone();
        loop {
            match rx.borrow_and_update().clone() {
                EngineState::Ready => return Ok(()),
                EngineState::Failed(why) => return Err(why),
                EngineState::Stopped => return Err("engine stopped".into()),
                EngineState::Loading => {}
            }
            if rx.changed().await.is_err() {
                return Err("engine thread exited".into());
            }
        }
    }

    /// Adds rows to the running decode batch at the next step boundary (continuous batching).
    /// Returns once they are admitted (encoded and merged) with the admission's cost; each row
    /// is answered on its own channel when it finishes.
    pub async fn join(&self, rows: Vec<Joining>) -> Result<(Admitted, Duration), WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Join { rows, reply })
            .map_err(|_| WorkerError::Stopped)?;
        rx.await.map_err(|_| WorkerError::Stopped)
    }

    /// Makes room in the prompt bank for `rows` more rows at once (before loading many).
    pub async fn reserve(&self, rows: usize) -> Result<Result<(), EngineError>, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Reserve { rows, reply })
            .map_err(|_| WorkerError::Stopped)?;
        rx.await.map_err(|_| WorkerError::Stopped)
    }

    /// Each row of a served prompt's `k` nearest vocabulary tokens among the first `vocab`
    /// (one job between passes on the engine thread).
    pub async fn neighbors(
        &self,
        slot: Arc<PromptSlot>,
        k: usize,
        vocab: i64,
    ) -> Result<NeighborsResult, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Neighbors {
                slot,
                k,
                vocab,
                reply,
            })
            .map_err(|_| WorkerError::Stopped)?;
        rx.await.map_err(|_| WorkerError::Stopped)
    }

    /// What wakes the engine thread when side work is submitted (without keeping it running).
    pub fn waker(&self) -> EngineWaker {
        EngineWaker(Arc::downgrade(&self.jobs))
    }

    /// Writes tasks' prompt rows and adapters into the banks; one result per task, in order.
    pub async fn register(
        &self,
        prompts: Vec<TaskWeights>,
    ) -> Result<Vec<Result<Arc<PromptSlot>, EngineError>>, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Register { prompts, reply })
            .map_err(|_| WorkerError::Stopped)?;
        rx.await.map_err(|_| WorkerError::Stopped)
    }
}
