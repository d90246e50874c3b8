//! The dynamic batcher: a bounded queue of rows from any tasks, closed into mixed-task
//! batches by [`policy::Policy`] and run on the engine thread one batch at a time.
pub mod policy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

pub use policy::{Batching, PolicyConfig, Refused};

use crate::engine::worker::EngineHandle;
use crate::engine::{RowInput, RowOutput};
use crate::metrics::Metrics;
use policy::{Policy, Queued};

/// What a queued row gets back.
pub type RowReply = Result<RowOutput, RowError>;

/// Why a row produced no output.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RowError {
    /// The engine failed on this row.
    #[error("{0}")]
    Engine(String),
    /// The engine thread is gone.
    #[error("the engine is not running")]
    Stopped,
}

/// Whose rows these are, for the fair share across tenants.
#[derive(Debug, Clone)]
pub struct Share {
    /// Tenant name (empty on an open server).
    pub tenant: Arc<str>,
    /// Rows per round relative to other tenants.
    pub weight: u32,
}

impl Default for Share {
    fn default() -> Self {
        Self {
            tenant: Arc::from(""),
            weight: 1,
        }
    }
}

/// One row on its way to the engine.
pub struct Pending {
    task: String,
    share: Share,
    row: RowInput,
    reply: oneshot::Sender<RowReply>,
}

impl Queued for Pending {
    fn task(&self) -> &str {
        &self.task
    }
    fn tenant(&self) -> &str {
        &self.share.tenant
    }
    fn weight(&self) -> u32 {
        self.share.weight
    }
    fn cost(&self) -> usize {
        self.row.encoder_len()
    }
    fn is_cancelled(&self) -> bool {
        self.reply.is_closed() || self.row.is_cancelled()
    }
}

/// A queued row's answer to come. Dropping it before the answer arrives (client gone,
/// timeout) cancels the row: unrun if still queued, decoding stopped at the next step if running.
pub struct Ticket {
    rx: oneshot::Receiver<RowReply>,
    cancel: Arc<AtomicBool>,
}

impl Ticket {
    /// Waits for the row's answer.
    pub async fn answer(&mut self) -> RowReply {
        (&mut self.rx).await.unwrap_or(Err(RowError::Stopped))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// The queue shared by request handlers and the batching loop.
pub struct Batcher {
    policy: Mutex<Policy<Pending>>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// An empty, open queue.
    pub fn new(cfg: PolicyConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        metrics.queue_capacity.set(cfg.max_queue as i64);
        Arc::new(Self {
            policy: Mutex::new(Policy::new(cfg)),
            wake: Notify::new(),
            metrics,
        })
    }

    /// Queues rows `(task, row)` of one tenant all together or not at all; one ticket per row.
    pub fn submit(
        &self,
        rows: Vec<(String, RowInput)>,
        share: &Share,
    ) -> Result<Vec<Ticket>, Refused> {
        let mut tickets = Vec::with_capacity(rows.len());
        let pending = rows
            .into_iter()
            .map(|(task, mut row)| {
                let (reply, rx) = oneshot::channel();
                let cancel = Arc::new(AtomicBool::new(false));
                row.cancel = Some(cancel.clone());
                tickets.push(Ticket { rx, cancel });
                Pending {
                    task,
                    share: share.clone(),
                    row,
                    reply,
                }
            })
            .collect();
        {
            let mut policy = self.policy.lock();
            policy.push_all(pending, Instant::now())?;
            self.metrics.queue_depth.set(policy.len() as i64);
        }
        self.wake.notify_one();
        Ok(tickets)
    }

    /// Rows waiting.
    pub fn queue_len(&self) -> usize {
        self.policy.lock().len()
    }

    /// Stops taking rows; what is queued is still run, then [`Batcher::run`] returns.
    pub fn close(&self) {
        self.policy.lock().close();
        self.wake.notify_one();
    }

    /// The batching loop: forms each batch when it is due and waits for the engine to finish
    /// it before forming the next, so rows that arrive meanwhile join the next batch.
    pub async fn run(self: Arc<Self>, engine: EngineHandle) {
        loop {
            let (batch, deadline, finished) = {
                let mut policy = self.policy.lock();
                let batch = policy.next_batch(Instant::now());
                self.metrics.queue_depth.set(policy.len() as i64);
                let finished = policy.is_closed() && policy.is_empty();
                (batch, policy.next_deadline(), finished)
            };
            if let Some(batch) = batch {
                self.run_batch(&engine, batch).await;
                continue;
            }
            if finished {
                return;
            }
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    async fn run_batch(&self, engine: &EngineHandle, batch: Vec<policy::Waiting<Pending>>) {
        let now = Instant::now();
        let mut rows = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for waiting in batch {
            self.metrics
                .queue_wait
                .observe((now - waiting.enqueued).as_secs_f64());
            rows.push(waiting.item.row);
            replies.push(waiting.item.reply);
        }
        match engine.run(rows).await {
            Ok(done) => {
                self.metrics
                    .batch_duration
                    .observe(done.elapsed.as_secs_f64());
                for pass in &done.passes {
                    self.metrics.batch_size.observe(pass.rows as f64);
                    self.metrics.batch_tasks.observe(pass.tasks as f64);
                    self.metrics
                        .generated_tokens
                        .inc_by(pass.generated_tokens as u64);
                }
                for (reply, out) in replies.into_iter().zip(done.outputs) {
                    let out = out.map_err(|e| {
                        let kind = match e {
                            crate::engine::EngineError::InvalidRow { .. } => "invalid_row",
                            crate::engine::EngineError::Model(_) => "model",
                            crate::engine::EngineError::Panic(_) => "panic",
                        };
                        self.metrics.batch_errors.with_label_values(&[kind]).inc();
                        RowError::Engine(e.to_string())
                    });
                    let _ = reply.send(out);
                }
            }
            Err(_) => {
                for reply in replies {
                    let _ = reply.send(Err(RowError::Stopped));
                }
            }
        }
    }
}
