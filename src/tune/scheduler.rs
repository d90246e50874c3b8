//! Tuning jobs on the engine thread: one micro-step at a time (build the tuner, one optimizer
//! step, or one dev evaluation), taken between serving passes within a share of engine time,
//! or freely while nothing is being served. One copy of the weights, one thread on the device.
//! The scheduler is the engine's [`SideWork`]; jobs reach it through its own queue
//! ([`TuneQueue`]), which wakes the engine thread.
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::TuneError;
use super::jobs::{now_ms, Job, JobState};
use super::metric::ChunkedEval;
use super::tuner::{Prepared, TuneSettings, Tuned, Tuner};
use crate::engine::side::SideWork;
use crate::engine::worker::{EngineWaker, WorkerError};
use crate::engine::{guarded, Engine, EngineError, PromptSlot};
use crate::model::T5Tokenizer;

/// A job handed to the engine thread.
pub struct TuneWork {
    /// Status and cancel flag.
    pub job: Arc<Job>,
    /// The run's settings.
    pub settings: TuneSettings,
    /// Training and dev rows, tokenized (taken when the job starts).
    pub data: Option<Prepared>,
    /// The served model's tokenizer.
    pub tokenizer: Arc<T5Tokenizer>,
    /// The task's served prompt when the job started (scored on dev at the end).
    pub current: Option<Arc<PromptSlot>>,
    /// Where the ended job goes.
    pub done: oneshot::Sender<TuneFinished>,
}

/// A job the engine is done with.
pub struct TuneFinished {
    /// The job.
    pub job: Arc<Job>,
    /// The best prompt and scores, or why it failed; None when cancelled.
    pub result: Option<Result<FinishedPrompt, String>>,
}

/// What a successful job produced.
pub struct FinishedPrompt {
    /// The best prompt or adapter (by dev metric; the last one without dev).
    pub tuned: Tuned,
    /// Its dev metric.
    pub best_metric: Option<f64>,
    /// The task's served prompt's dev metric (None: no served prompt or no dev).
    pub current_metric: Option<f64>,
}

struct Active {
    work: TuneWork,
    tuner: Option<Tuner>,
    /// The task's served prompt being scored on dev once training has ended.
    baseline: Option<ChunkedEval>,
}

/// Where tuning jobs are submitted to the engine thread's [`TuneScheduler`].
#[derive(Clone)]
pub struct TuneQueue {
    jobs: mpsc::Sender<TuneWork>,
    engine: EngineWaker,
}

impl TuneQueue {
    /// The queue of the scheduler that `submitted` came from, run by the engine thread that
    /// `engine` wakes ([`crate::engine::worker::EngineHandle::waker`]). The queue does not keep
    /// that thread running.
    pub fn new(submitted: Submitted, engine: EngineWaker) -> Self {
        Self {
            jobs: submitted.0,
            engine,
        }
    }

    /// Hands a job to the engine thread, which steps it between serving passes. Fails when
    /// the engine thread has stopped (the job is then not run).
    pub fn submit(&self, work: TuneWork) -> Result<(), WorkerError> {
        self.jobs.send(work).map_err(|_| WorkerError::Stopped)?;
        // Queued first, then woken: the engine looks at the queue before it waits again.
        self.engine.wake()
    }
}

/// The sending end of a new scheduler's queue, for [`TuneQueue::new`].
pub struct Submitted(mpsc::Sender<TuneWork>);

/// Tuning jobs the engine thread runs between serving passes.
pub struct TuneScheduler {
    share: f64,
    /// Jobs submitted and not yet taken in (None once the engine has stopped).
    submitted: Option<mpsc::Receiver<TuneWork>>,
    jobs: VecDeque<Active>,
    tune_secs: f64,
    serve_secs: f64,
    last_decay: Instant,
    last_served: Instant,
    /// How long the latest turn took: the next one is assumed to take as long.
    last_turn_secs: f64,
}

/// Engine time older than this counts half (the share is enforced over the recent past).
const HALF_LIFE_S: f64 = 10.0;
/// Training rows (and dev rows) per engine turn: a turn holds the engine about as long as a
/// small serving pass, whatever the job's batch size (gradients accumulate across turns).
pub const ROWS_PER_TURN: usize = 4;
/// The engine counts as idle (tuning unthrottled) once it has served nothing for this long.
const IDLE_AFTER: Duration = Duration::from_millis(200);

impl TuneScheduler {
    /// A scheduler giving tuning at most `share` of engine time while serving is busy, and
    /// the sending end of its queue.
    pub fn new(share: f64) -> (Self, Submitted) {
        let (tx, rx) = mpsc::channel();
        let scheduler = Self {
            share: share.clamp(0.0, 1.0),
            submitted: Some(rx),
            jobs: VecDeque::new(),
            tune_secs: 0.0,
            serve_secs: 0.0,
            last_decay: Instant::now(),
            last_served: Instant::now(),
            last_turn_secs: 0.0,
        };
        (scheduler, Submitted(tx))
    }

    /// Takes in the jobs submitted since the last call.
    fn take_submitted(&mut self) {
        let Some(rx) = &self.submitted else {
            return;
        };
        self.jobs.extend(rx.try_iter().map(|work| Active {
            work,
            tuner: None,
            baseline: None,
        }));
    }

    fn decay(&mut self) {
        let dt = self.last_decay.elapsed().as_secs_f64();
        self.last_decay = Instant::now();
        let f = 0.5f64.powf(dt / HALF_LIFE_S);
        self.tune_secs *= f;
        self.serve_secs *= f;
    }
}

impl SideWork for TuneScheduler {
    /// Whether any job waits for steps.
    fn has_work(&mut self) -> bool {
        self.take_submitted();
        !self.jobs.is_empty()
    }

    /// Records engine time spent serving (`busy`: there was serving work).
    fn note_serving(&mut self, spent: Duration, busy: bool) {
        self.decay();
        self.serve_secs += spent.as_secs_f64();
        if busy {
            self.last_served = Instant::now();
        }
    }

    /// Whether a tuning micro-step may run now: freely once the engine has been idle for a
    /// moment, else only while tuning's recent share of engine time is within the limit.
    fn may_step(&mut self, idle: bool) -> bool {
        if !self.has_work() {
            return false;
        }
        if idle && self.last_served.elapsed() >= IDLE_AFTER {
            return true;
        }
        self.decay();
        // Counting the coming turn too, so one long turn cannot overshoot the share.
        let tune = self.tune_secs + self.last_turn_secs;
        tune <= self.share * (tune + self.serve_secs)
    }

    /// Runs one micro-step of the next job (round robin) and returns the time it took.
    fn step(&mut self, engine: &mut Engine) -> Duration {
        let started = Instant::now();
        let Some(mut active) = self.jobs.pop_front() else {
            return Duration::ZERO;
        };
        let outcome = guarded(|| {
            micro_step(&mut active, engine).map_err(|e| EngineError::Decode(e.to_string()))
        });
        let spent = started.elapsed();
        {
            let mut s = active.work.job.status.lock();
            s.engine_seconds += spent.as_secs_f64();
        }
        match outcome {
            Ok(None) => self.jobs.push_back(active),
            Ok(Some(result)) => finish(active, result),
            Err(e) => {
                let why = match e {
                    EngineError::Decode(why) => why,
                    other => other.to_string(),
                };
                finish(active, Some(Err(why)));
            }
        }
        self.decay();
        self.tune_secs += spent.as_secs_f64();
        self.last_turn_secs = spent.as_secs_f64();
        tracing::debug!(
            turn_ms = spent.as_secs_f64() * 1e3,
            tune_s = self.tune_secs,
            serve_s = self.serve_secs,
            "tuning turn"
        );
        spent
    }

    /// Fails every job, queued ones too, and closes the queue (the engine is stopping).
    fn fail_all(&mut self, why: &str) {
        self.take_submitted();
        // Closed: a later submission fails in its submitter.
        self.submitted = None;
        for active in self.jobs.drain(..) {
            finish(active, Some(Err(why.to_string())));
        }
    }
}

type StepResult = Result<Option<Option<Result<FinishedPrompt, String>>>, TuneError>;

/// One unit of work for a job; `Some(result)` when the job has ended. Dev evaluations run a
/// batch of rows per unit, so one unit never holds the engine much longer than a training step.
fn micro_step(active: &mut Active, engine: &mut Engine) -> StepResult {
    let Active {
        work,
        tuner,
        baseline,
    } = active;
    if work.job.cancel.load(Ordering::Acquire) {
        return Ok(Some(None));
    }
    let Some(tuner) = tuner.as_mut() else {
        let Some(data) = work.data.take() else {
            return Ok(Some(Some(Err("the job has no data".into()))));
        };
        let built = match Tuner::from_prepared(
            engine.model(),
            &work.tokenizer,
            work.settings.clone(),
            data,
        ) {
            Ok(t) => t,
            Err(e) => return Ok(Some(Some(Err(e.to_string())))),
        };
        let mut s = work.job.status.lock();
        s.state = JobState::Running;
        s.total_steps = built.total_steps();
        drop(s);
        *tuner = Some(built);
        return Ok(None);
    };
    let chunk = ROWS_PER_TURN;
    if tuner.eval_due() {
        tuner.evaluate_chunk(engine, &work.tokenizer, chunk)?;
        update_status(work, tuner);
        return Ok(None);
    }
    if tuner.finished() {
        let current = match (&work.current, tuner.dev_set()) {
            (Some(slot), Some(dev)) => {
                let eval = baseline.get_or_insert_with(|| ChunkedEval::new(Some(slot.clone())));
                let budget = tuner.settings().max_batch_tokens;
                match eval.step(engine, &work.tokenizer, dev, chunk, budget)? {
                    None => return Ok(None),
                    Some(o) => Some(o.value),
                }
            }
            _ => None,
        };
        // The served model's path is not known here: the config leaves it out.
        let tuned = tuner.best_output("")?;
        return Ok(Some(Some(Ok(FinishedPrompt {
            tuned,
            best_metric: tuner.best().map(|(_, m)| m),
            current_metric: current,
        }))));
    }
    match tuner.train_micro_step(engine.model(), ROWS_PER_TURN) {
        Ok(_) => {}
        Err(e @ TuneError::Diverged { .. }) => return Ok(Some(Some(Err(e.to_string())))),
        Err(e) => return Err(e),
    }
    update_status(work, tuner);
    Ok(None)
}

fn update_status(work: &TuneWork, tuner: &Tuner) {
    {
        let mut s = work.job.status.lock();
        s.step = tuner.step();
        s.loss = tuner.last_loss();
        s.dev_metric = tuner.last_metric();
        (s.best_step, s.best_metric) = tuner.best().unzip();
        let left = tuner.total_steps().saturating_sub(tuner.step());
        s.eta_seconds =
            (tuner.step() > 0).then(|| s.engine_seconds / tuner.step() as f64 * left as f64);
    }
    work.job.update_curve(|c| c.catch_up(tuner));
}

fn finish(active: Active, result: Option<Result<FinishedPrompt, String>>) {
    if let Some(t) = &active.tuner {
        update_status(&active.work, t);
    }
    {
        let mut s = active.work.job.status.lock();
        s.eta_seconds = None;
        // A job the server already failed (shutting down) keeps that state.
        if result.is_none() && s.state.is_active() {
            s.state = JobState::Cancelled;
            s.finished_ms = Some(now_ms());
        }
        if let Some(Err(why)) = &result {
            s.state = JobState::Failed;
            s.error = Some(why.clone());
            s.finished_ms = Some(now_ms());
        }
    }
    let job = active.work.job.clone();
    let _ = active.work.done.send(TuneFinished { job, result });
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use tch::{Device, Kind};

    use super::*;
    use crate::engine::worker::{self, EngineConfig, EngineHandle};
    use crate::model::T5Config;
    use crate::tune::jobs::JobTable;
    use crate::tune::tuner::Duration as Length;
    use crate::tune::Example;

    fn model_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/t5-v1_1-tiny")
    }

    /// A scheduler on an engine thread over `model`, the queue into it, and the engine.
    fn start(model: PathBuf) -> (TuneQueue, EngineHandle, std::thread::JoinHandle<()>) {
        let (scheduler, submitted) = TuneScheduler::new(0.25);
        let config = EngineConfig {
            int8: false,
            model_dir: model,
            device: Device::Cpu,
            kind: Kind::Float,
            max_batch_tokens: 4096,
            adapter_memory: crate::engine::adapters::DEFAULT_ADAPTER_MEMORY_MB << 20,
        };
        let (engine, thread) = worker::spawn(config, Box::new(scheduler)).unwrap();
        (TuneQueue::new(submitted, engine.waker()), engine, thread)
    }

    /// A long job over two examples, recorded in `jobs`.
    fn long_job(jobs: &JobTable) -> (TuneWork, oneshot::Receiver<TuneFinished>) {
        let dir = model_dir();
        let eos = T5Config::from_dir(&dir).unwrap().eos_ids()[0];
        let tokenizer = Arc::new(T5Tokenizer::from_dir(&dir, eos).unwrap());
        let mut settings = TuneSettings::new(Length::Steps(1_000_000));
        settings.prompt_length = Some(2);
        let train = ["yes", "no"].map(|t| Example {
            input: format!("say {t}"),
            target: t.into(),
        });
        let data = Prepared::new(&tokenizer, &settings, &train, &[]).unwrap();
        let job = jobs
            .create("task", "tenant", 1_000_000, "accuracy")
            .unwrap();
        let (done, finished) = oneshot::channel();
        let work = TuneWork {
            job,
            settings,
            data: Some(data),
            tokenizer,
            current: None,
            done,
        };
        (work, finished)
    }

    #[test]
    fn a_job_submitted_to_a_stopped_engine_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = JobTable::open(dir.path()).unwrap();
        let (queue, _engine, thread) = start(dir.path().join("no-model"));
        thread.join().unwrap();
        let (work, _finished) = long_job(&jobs);
        assert!(matches!(queue.submit(work), Err(WorkerError::Stopped)));
    }

    #[test]
    fn a_job_still_queued_or_running_when_the_engine_stops_fails() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = JobTable::open(dir.path()).unwrap();
        let (queue, engine, thread) = start(model_dir());
        let (work, finished) = long_job(&jobs);
        let job = work.job.clone();
        queue.submit(work).unwrap();
        // The last engine handle (the queue does not keep the engine running): the engine
        // stops once it has seen the job, and a later job is refused.
        drop(engine);
        thread.join().unwrap();
        assert!(queue.submit(long_job(&jobs).0).is_err());
        let why = "the server stopped before the job ended";
        let ended = finished.blocking_recv().unwrap();
        assert!(matches!(ended.result, Some(Err(ref e)) if e == why));
        let status = job.snapshot();
        assert_eq!(status.state, JobState::Failed);
        assert_eq!(status.error.as_deref(), Some(why));
    }
}
