//! The dynamic batcher: a bounded queue of rows from any tasks, closed into mixed-task
//! batches by [`policy::Policy`] and joined to the engine's running decode batch (the one
//! decoder). How they join is an admission rule ([`Decode`]): under continuous batching (the
//! default) a batch joins as far as room allows; under static batching a batch joins only an
//! empty running batch, so it decodes to its end before the next one joins.
pub mod policy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

pub use policy::{Batching, PolicyConfig, Refused};

use crate::engine::worker::EngineHandle;
use crate::engine::Joining;
use crate::engine::{EngineError, RowInput, RowResult};
use crate::metrics::{BatchError, Metrics};
use policy::{Policy, Queued};

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

/// A row on its way to the engine, and where its answer goes.
struct PendingRow {
    row: RowInput,
    reply: oneshot::Sender<RowResult>,
}

impl PendingRow {
    fn is_cancelled(&self) -> bool {
        self.reply.is_closed() || self.row.is_cancelled()
    }
}

/// The rows that must ride in one pass together (one row, or one per ensemble member).
pub struct Pending {
    key: String,
    share: Share,
    rows: Vec<PendingRow>,
}

impl Queued for Pending {
    fn task(&self) -> &str {
        &self.key
    }
    fn tenant(&self) -> &str {
        &self.share.tenant
    }
    fn weight(&self) -> u32 {
        self.share.weight
    }
    fn cost(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.row.encoder_len())
            .max()
            .unwrap_or(0)
    }
    fn rows(&self) -> usize {
        self.rows.len()
    }
    fn is_cancelled(&self) -> bool {
        self.rows.iter().all(PendingRow::is_cancelled)
    }
}

/// Rows that join a forward pass together: `key` is their fairness key (the task, or the
/// ensemble), and they are never split across passes.
pub struct Unit {
    /// Fairness and queue-share key.
    pub key: String,
    /// The rows, answered in this order.
    pub rows: Vec<RowInput>,
}

/// A queued row's answer to come. Dropping it before the answer arrives (client gone,
/// timeout) cancels the row: unrun if still queued, decoding stopped at the next step if running.
pub struct Ticket {
    rx: oneshot::Receiver<RowResult>,
    cancel: Arc<AtomicBool>,
}

impl Ticket {
    /// Waits for the row's answer.
    pub async fn answer(&mut self) -> RowResult {
        (&mut self.rx).await.unwrap_or(Err(EngineError::Stopped))
    }

    /// Ends a running row's generation at the next decode step; it is still answered, with
    /// what it generated so far (a stop string was reached).
    pub fn finish_early(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// How the decoder batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Decode {
    /// Rows join the running decode batch at a step boundary and leave when they finish.
    #[default]
    Continuous,
    /// A batch joins only an empty running batch, so it decodes to its end before the next
    /// one joins (for comparisons).
    Static,
}

impl std::str::FromStr for Decode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "continuous" => Ok(Decode::Continuous),
            "static" => Ok(Decode::Static),
            other => Err(format!("{other:?}: expected continuous or static")),
        }
    }
}

/// The queue shared by request handlers and the batching loop.
pub struct Batcher {
    policy: Mutex<Policy<Pending>>,
    wake: Notify,
    metrics: Arc<Metrics>,
    decode: Decode,
    max_batch_size: usize,
    max_batch_tokens: u64,
    /// Rows one request may queue at all: the queue's and one key's share of it.
    max_request_rows: usize,
    /// Rows handed to the engine and not answered yet.
    in_engine: AtomicUsize,
    /// The same by tenant (tenants with none are absent).
    in_engine_by_tenant: Mutex<HashMap<Arc<str>, usize>>,
}

impl Batcher {
    /// An empty, open queue. Per-task batching always decodes statically (a running batch
    /// would otherwise take rows of other tasks).
    pub fn new(cfg: PolicyConfig, decode: Decode, metrics: Arc<Metrics>) -> Arc<Self> {
        metrics.queue_capacity.set(cfg.max_queue as i64);
        let decode = match cfg.batching {
            Batching::PerTask => Decode::Static,
            Batching::Mixed => decode,
        };
        Arc::new(Self {
            policy: Mutex::new(Policy::new(cfg)),
            wake: Notify::new(),
            metrics,
            decode,
            max_batch_size: cfg.max_batch_size,
            max_batch_tokens: cfg.max_batch_tokens,
            max_request_rows: cfg.max_queue.min(cfg.max_queue_per_task),
            in_engine: AtomicUsize::new(0),
            in_engine_by_tenant: Mutex::new(HashMap::new()),
        })
    }

    /// Queues rows `(task, row)` of one tenant all together or not at all; one ticket per row.
    pub fn submit(
        &self,
        rows: Vec<(String, RowInput)>,
        share: &Share,
    ) -> Result<Vec<Ticket>, Refused> {
        let units = rows
            .into_iter()
            .map(|(key, row)| Unit {
                key,
                rows: vec![row],
            })
            .collect();
        Ok(self
            .submit_units(units, share)?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Queues units of one tenant all together or not at all; one ticket per row, per unit.
    /// A unit's rows ride in one forward pass.
    pub fn submit_units(
        &self,
        units: Vec<Unit>,
        share: &Share,
    ) -> Result<Vec<Vec<Ticket>>, Refused> {
        let mut tickets = Vec::with_capacity(units.len());
        let pending = units
            .into_iter()
            .map(|unit| {
                let mut unit_tickets = Vec::with_capacity(unit.rows.len());
                let rows = unit
                    .rows
                    .into_iter()
                    .map(|mut row| {
                        let (reply, rx) = oneshot::channel();
                        let cancel = Arc::new(AtomicBool::new(false));
                        row.cancel = Some(cancel.clone());
                        unit_tickets.push(Ticket { rx, cancel });
                        PendingRow { row, reply }
                    })
                    .collect();
                tickets.push(unit_tickets);
                Pending {
                    key: unit.key,
                    share: share.clone(),
                    rows,
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

    /// Rows per forward pass: the most rows one unit may have.
    pub fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }

    /// Padded encoder positions per forward pass: a unit must fit within it to ride in one pass.
    pub fn max_batch_tokens(&self) -> u64 {
        self.max_batch_tokens
    }

    /// The most rows one request can ever queue (--max-queue, and --max-queue-per-task for
    /// its task or ensemble): more would be refused however long the client waited.
    pub fn max_request_rows(&self) -> usize {
        self.max_request_rows
    }

    /// Rows waiting.
    pub fn queue_len(&self) -> usize {
        self.policy.lock().len()
    }

    /// Stops taking rows; what is queued is still run, then [`Batcher::batching_loop`] returns.
    pub fn close(&self) {
        self.policy.lock().close();
        self.wake.notify_one();
    }

    /// Closes the queue and drops every waiting row, so its request is answered at once
    /// ([`EngineError::Stopped`], a 503) instead of waiting for its timeout. For when the batching
    /// loop is gone; returns how many rows were waiting.
    pub fn abandon(&self) -> usize {
        let units = self.policy.lock().abandon();
        self.metrics.queue_depth.set(0);
        units.iter().map(Queued::rows).sum()
    }

    /// The batching loop: whenever rows may join the running decode batch ([`Batcher::room`]),
    /// forms a batch of at most that many when it is due and hands it to the engine, which
    /// merges it at the next step. Rows that arrive meanwhile wait for the next batch.
    pub async fn batching_loop(self: Arc<Self>, engine: EngineHandle) {
        loop {
            #[cfg(debug_assertions)]
            if crate::fault::take(&crate::fault::PANIC_BATCHER) {
                panic!("injected fault: the batching loop panicked");
            }
            let room = self.room();
            let (batch, deadline, finished, held) = {
                let mut policy = self.policy.lock();
                let now = Instant::now();
                let mut batch = policy.next_batch_within(now, room);
                if batch.is_none() && room == 0 && self.decode == Decode::Continuous {
                    // The running batch is full: a tenant with no row in it joins anyway
                    // (fair share must not wait for another tenant's flood to finish).
                    let running = self.in_engine_by_tenant.lock();
                    batch = policy
                        .next_for_absent_tenants(|t| !running.contains_key(t), self.max_batch_size);
                }
                self.metrics.queue_depth.set(policy.len() as i64);
                let finished = policy.is_closed() && policy.is_empty();
                let held = policy.held_for_room(now, room);
                (batch, policy.next_deadline(), finished, held)
            };
            if let Some(batch) = batch {
                self.join(&engine, batch).await;
                continue;
            }
            if finished && self.in_engine.load(Ordering::Acquire) == 0 {
                return;
            }
            match deadline {
                // With no room (or too little for a waiting ensemble), only an answered row
                // (which wakes us) can change anything.
                Some(d) if room > 0 && !held => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                _ => self.wake.notified().await,
            }
        }
    }

    /// Rows a batch formed now may have. Continuous: the places the running batch has free.
    /// Static: a whole batch once the running batch is empty, else none.
    fn room(&self) -> usize {
        let in_engine = self.in_engine.load(Ordering::Acquire);
        match self.decode {
            Decode::Continuous => self.max_batch_size.saturating_sub(in_engine),
            Decode::Static if in_engine == 0 => self.max_batch_size,
            Decode::Static => 0,
        }
    }

    /// Hands a batch to the running decode batch; each row's answer is forwarded when it comes.
    async fn join(self: &Arc<Self>, engine: &EngineHandle, batch: Vec<policy::Waiting<Pending>>) {
        let now = Instant::now();
        let mut rows = Vec::with_capacity(batch.len());
        let pending = batch.into_iter().flat_map(|waiting| {
            let waited = (now - waiting.enqueued).as_secs_f64();
            let tenant = waiting.item.share.tenant.clone();
            (waiting.item.rows.into_iter()).map(move |p| (waited, tenant.clone(), p))
        });
        for (waited, tenant, p) in pending {
            self.metrics.queue_wait.observe(waited);
            *self
                .in_engine_by_tenant
                .lock()
                .entry(tenant.clone())
                .or_insert(0) += 1;
            let (reply, rx) = oneshot::channel();
            rows.push(Joining { row: p.row, reply });
            let to = p.reply;
            let this = self.clone();
            self.in_engine.fetch_add(1, Ordering::AcqRel);
            self.metrics.engine_rows.inc();
            tokio::spawn(async move {
                let out = match rx.await {
                    Ok(out) => {
                        if let Ok(o) = &out {
                            this.metrics
                                .generated_tokens
                                .inc_by(o.token_ids.len() as u64);
                        }
                        if let Err(e) = &out {
                            this.count_error(e);
                        }
                        out
                    }
                    Err(_) => Err(EngineError::Stopped),
                };
                let _ = to.send(out);
                {
                    let mut running = this.in_engine_by_tenant.lock();
                    if let Some(n) = running.get_mut(&tenant) {
                        *n -= 1;
                        if *n == 0 {
                            running.remove(&tenant);
                        }
                    }
                }
                this.in_engine.fetch_sub(1, Ordering::AcqRel);
                this.metrics.engine_rows.dec();
                this.wake.notify_one();
            });
        }
        if let Ok((admitted, elapsed)) = engine.join(rows).await {
            self.metrics.batch_duration.observe(elapsed.as_secs_f64());
            self.metrics.adapter_bank(&admitted.adapters);
            for pass in &admitted.passes {
                self.metrics.batch_size.observe(pass.rows as f64);
                self.metrics.batch_tasks.observe(pass.tasks as f64);
            }
            if admitted.live_rows > 0 {
                self.metrics.decode_rows.observe(admitted.live_rows as f64);
                self.metrics
                    .decode_tasks
                    .observe(admitted.live_tasks as f64);
            }
        }
        // A stopped engine drops the rows' senders: their forwarders answer `Stopped`.
    }

    /// Counts an error the engine answered a row with.
    fn count_error(&self, e: &EngineError) {
        let kind = match e {
            EngineError::InvalidRow { .. } => BatchError::InvalidRow,
            EngineError::Model(_) => BatchError::Model,
            EngineError::Panic(_) => BatchError::Panic,
            EngineError::Decode(_) => BatchError::Decode,
            // Not an answer: the engine is gone, which readiness reports.
            EngineError::Stopped => return,
        };
        self.metrics.batch_error(kind);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::engine::side::SideWork;
    use crate::engine::worker::{self, EngineConfig};
    use crate::engine::Engine;

    /// No side work.
    struct Idle;

    impl SideWork for Idle {
        fn has_work(&mut self) -> bool {
            false
        }
        fn note_serving(&mut self, _: Duration, _: bool) {}
        fn may_step(&mut self, _: bool) -> bool {
            false
        }
        fn step(&mut self, _: &mut Engine) -> Duration {
            Duration::ZERO
        }
        fn fail_all(&mut self, _: &str) {}
    }

    fn batcher(decode: Decode) -> Arc<Batcher> {
        let cfg = PolicyConfig {
            max_batch_size: 4,
            max_wait: Duration::ZERO,
            ..PolicyConfig::default()
        };
        Batcher::new(cfg, decode, Arc::new(Metrics::new(10)))
    }

    fn row(i: i64) -> (String, RowInput) {
        let row = RowInput {
            prompt: None,
            input_ids: vec![3 + i, 10 + i, 20 + i, 1],
            max_new_tokens: 12,
            labels: Vec::new(),
            cancel: None,
            sequence_logprob: false,
            ..Default::default()
        };
        (format!("task{i}"), row)
    }

    /// The engine thread over the tiny f32 fixture, loaded.
    async fn tiny_engine() -> EngineHandle {
        let config = EngineConfig {
            int8: false,
            model_dir: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/models/t5-v1_1-tiny"),
            device: tch::Device::Cpu,
            kind: tch::Kind::Float,
            max_batch_tokens: 4096,
            adapter_memory: crate::engine::adapters::DEFAULT_ADAPTER_MEMORY_MB << 20,
        };
        // The thread stops once the last handle is dropped.
        let (engine, _thread) = worker::spawn(config, Box::new(Idle)).unwrap();
        engine.ready().await.unwrap();
        engine
    }

    #[test]
    fn static_decoding_admits_only_into_an_empty_running_batch() {
        let continuous = batcher(Decode::Continuous);
        let fixed = batcher(Decode::Static);
        for (b, busy, room) in [(&continuous, 1, 3), (&fixed, 1, 0), (&fixed, 0, 4)] {
            b.in_engine.store(busy, Ordering::Release);
            assert_eq!(b.room(), room);
        }
    }

    /// Two batches under static decoding: the second joins once the first has finished, and
    /// every row is answered as under continuous decoding.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_static_batch_decodes_alone_and_answers_as_continuous_does() {
        let engine = tiny_engine().await;
        let mut answers = Vec::new();
        for decode in [Decode::Static, Decode::Continuous] {
            let batcher = batcher(decode);
            tokio::spawn(batcher.clone().batching_loop(engine.clone()));
            let mut tickets = batcher
                .submit((0..2).map(row).collect(), &Share::default())
                .unwrap();
            // The first batch is in the engine before the second row is queued.
            while batcher.metrics.decode_rows.get_sample_count() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tickets.extend(batcher.submit(vec![row(2)], &Share::default()).unwrap());
            let mut tokens = Vec::new();
            for t in &mut tickets {
                tokens.push(t.answer().await.unwrap().token_ids);
            }
            if decode == Decode::Static {
                // The rows decoding together when each batch joined: its own rows only.
                let live = &batcher.metrics.decode_rows;
                assert_eq!((live.get_sample_count(), live.get_sample_sum()), (2, 3.0));
            }
            answers.push(tokens);
        }
        assert_eq!(answers[0], answers[1]);
    }

    /// A flood of one tenant fills the running batch and the queue; a row of another tenant
    /// sent after it joins at the next step boundary, not after the flood's rows finish: it is
    /// answered before the flood's later rows (an order, not a timing).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_tenants_row_joins_a_batch_full_of_anothers_flood() {
        let engine = tiny_engine().await;
        let batcher = Batcher::new(
            PolicyConfig {
                max_batch_size: 4,
                max_wait: Duration::ZERO,
                ..PolicyConfig::default()
            },
            Decode::Continuous,
            Arc::new(Metrics::new(10)),
        );
        tokio::spawn(batcher.clone().batching_loop(engine.clone()));
        let share = |tenant: &str| Share {
            tenant: Arc::from(tenant),
            weight: 1,
        };
        let long = |i: i64| {
            let (task, mut row) = row(i);
            row.max_new_tokens = 40;
            (task, row)
        };
        let flood = batcher
            .submit((0..40).map(long).collect(), &share("flood"))
            .unwrap();
        // The running batch is full of the flood (room 0) before the quiet row comes.
        while batcher.room() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut quiet = batcher.submit(vec![row(99)], &share("quiet")).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let mut waits = Vec::new();
        for mut t in flood {
            let done = done.clone();
            waits.push(tokio::spawn(async move {
                t.answer().await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        quiet[0].answer().await.unwrap();
        let flood_answered = done.load(Ordering::SeqCst);
        // Without the join it waits for a flood row to finish; the first four finish together.
        assert!(
            flood_answered < 4,
            "{flood_answered} flood rows were answered before the quiet row"
        );
        for w in waits {
            w.await.unwrap();
        }
    }
}
