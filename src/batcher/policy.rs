//! The batching policy: tenants share batch slots by weight (deficit round robin), and within a
//! tenant its tasks take turns unit by unit; a batch closes at max size or when its oldest unit
//! has waited max wait. A tenant with no row in a full running batch still joins it, one unit
//! at a time ([`Policy::next_for_absent_tenants`]). A unit is one row, or the rows of an ensemble input (one per member),
//! which join a pass together or not at all. Plain synchronous code, tested without a runtime.
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::within_token_budget;

/// What the policy needs to know about a queued row.
pub trait Queued {
    /// Fairness key (the task, or the ensemble).
    fn task(&self) -> &str;
    /// Encoder positions the unit's widest row takes (prompt + input), for the token budget.
    fn cost(&self) -> usize;
    /// Rows in the unit: they ride in the same pass, never split.
    fn rows(&self) -> usize {
        1
    }
    /// True once nobody waits for the answer (client gone, timed out): dropped unrun.
    fn is_cancelled(&self) -> bool;
    /// Fair-share key across tenants (one shared tenant by default).
    fn tenant(&self) -> &str {
        ""
    }
    /// The tenant's share: rows per round relative to other tenants with rows waiting.
    fn weight(&self) -> u32 {
        1
    }
}

/// Batch limits.
#[derive(Debug, Clone, Copy)]
pub struct PolicyConfig {
    /// Rows per forward pass.
    pub max_batch_size: usize,
    /// Longest a row waits for a fuller batch.
    pub max_wait: Duration,
    /// Rows the queue holds before refusing more.
    pub max_queue: usize,
    /// Rows one task may have waiting, so one task's flood cannot fill the queue for all.
    pub max_queue_per_task: usize,
    /// Padded encoder positions (rows × longest row) per forward pass.
    pub max_batch_tokens: u64,
    /// Whether rows of different tasks share a forward pass.
    pub batching: Batching,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_wait: Duration::from_millis(5),
            max_queue: 1024,
            max_queue_per_task: 512,
            max_batch_tokens: 32768,
            batching: Batching::Mixed,
        }
    }
}

/// Which rows may share a forward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Batching {
    /// Rows of any tasks share a pass (the product).
    #[default]
    Mixed,
    /// Only rows of one task share a pass, as a server without mixed-task batching would do
    /// (for comparisons).
    PerTask,
}

impl std::str::FromStr for Batching {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mixed" => Ok(Batching::Mixed),
            "per-task" => Ok(Batching::PerTask),
            other => Err(format!("{other:?}: expected mixed or per-task")),
        }
    }
}

/// Why rows were not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not enough room: `queued` rows wait, the queue holds `max`, `wanted` more were offered.
    Full {
        /// Rows waiting now.
        queued: usize,
        /// Queue capacity.
        max: usize,
        /// Rows offered.
        wanted: usize,
    },
    /// This task already has `queued` of the `max` rows one task may have waiting.
    TaskFull {
        /// The task.
        task: String,
        /// Its rows waiting now.
        queued: usize,
        /// Rows one task may have waiting.
        max: usize,
    },
    /// The server is shutting down.
    Closed,
}

/// A queued row and when it arrived.
#[derive(Debug)]
pub struct Waiting<T> {
    /// The row.
    pub item: T,
    /// When it was queued.
    pub enqueued: Instant,
}

/// One tenant's rows: per-task FIFOs and a ring of its tasks with rows waiting.
struct TenantQueue<T> {
    queues: HashMap<String, VecDeque<Waiting<T>>>,
    ring: VecDeque<String>,
    weight: u32,
    /// Rows left in the tenant's current turn; 0 when no turn is in progress.
    deficit: u32,
}

impl<T: Queued> TenantQueue<T> {
    fn new(weight: u32) -> Self {
        Self {
            queues: HashMap::new(),
            ring: VecDeque::new(),
            weight: weight.max(1),
            deficit: 0,
        }
    }

    fn push(&mut self, w: Waiting<T>) {
        let task = w.item.task();
        if !self.queues.contains_key(task) {
            self.queues.insert(task.to_string(), VecDeque::new());
            self.ring.push_back(task.to_string());
        }
        self.queues
            .get_mut(task)
            .expect("inserted above")
            .push_back(w);
    }

    fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The next unit, one task after another in ring order, whose cost and rows `fit`; the
    /// ring resumes after the task served.
    fn pop_fitting(&mut self, fits: impl Fn(usize, usize) -> bool) -> Option<Waiting<T>> {
        for _ in 0..self.ring.len() {
            let task = self.ring.pop_front()?;
            let queue = self.queues.get_mut(&task).expect("ring tasks have queues");
            let taken = match queue.front() {
                Some(front) if fits(front.item.cost(), front.item.rows()) => queue.pop_front(),
                _ => None,
            };
            if queue.is_empty() {
                self.queues.remove(&task);
            } else {
                self.ring.push_back(task);
            }
            if taken.is_some() {
                return taken;
            }
        }
        None
    }

    /// Drops cancelled units; returns the rows dropped.
    fn drop_cancelled(&mut self) -> usize {
        let mut dropped = 0;
        for queue in self.queues.values_mut() {
            queue.retain(|w| {
                let gone = w.item.is_cancelled();
                if gone {
                    dropped += w.item.rows();
                }
                !gone
            });
        }
        if dropped > 0 {
            let queues = &self.queues;
            self.ring
                .retain(|t| queues.get(t).is_some_and(|q| !q.is_empty()));
            self.queues.retain(|_, q| !q.is_empty());
        }
        dropped
    }
}

/// Tenants with rows waiting, served by deficit round robin.
pub struct Policy<T> {
    cfg: PolicyConfig,
    tenants: HashMap<String, TenantQueue<T>>,
    ring: VecDeque<String>,
    len: usize,
    closed: bool,
}

impl<T: Queued> Policy<T> {
    /// An empty, open queue.
    pub fn new(cfg: PolicyConfig) -> Self {
        Self {
            cfg,
            tenants: HashMap::new(),
            ring: VecDeque::new(),
            len: 0,
            closed: false,
        }
    }

    /// Rows waiting (including cancelled ones not yet dropped).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Refuses new rows from now on; queued rows are still served, without waiting.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Closes the queue and hands back every waiting row (nobody will serve them).
    pub fn abandon(&mut self) -> Vec<T> {
        self.closed = true;
        self.len = 0;
        self.ring.clear();
        std::mem::take(&mut self.tenants)
            .into_values()
            .flat_map(|t| t.queues.into_values())
            .flatten()
            .map(|w| w.item)
            .collect()
    }

    /// Queues all `items` or none of them.
    pub fn push_all(&mut self, items: Vec<T>, now: Instant) -> Result<(), Refused> {
        if self.closed {
            return Err(Refused::Closed);
        }
        let wanted: usize = items.iter().map(Queued::rows).sum();
        if self.len + wanted > self.cfg.max_queue {
            self.drop_cancelled();
            if self.len + wanted > self.cfg.max_queue {
                return Err(Refused::Full {
                    queued: self.len,
                    max: self.cfg.max_queue,
                    wanted,
                });
            }
        }
        if let Some(refused) = self.task_over_share(&items) {
            self.drop_cancelled();
            if self.task_over_share(&items).is_some() {
                return Err(refused);
            }
        }
        for item in items {
            let (tenant, weight) = (item.tenant(), item.weight());
            if !self.tenants.contains_key(tenant) {
                self.tenants
                    .insert(tenant.to_string(), TenantQueue::new(weight));
                self.ring.push_back(tenant.to_string());
            }
            let queue = self.tenants.get_mut(tenant).expect("inserted above");
            // A reloaded tenants file takes effect from the tenant's next row.
            queue.weight = weight.max(1);
            self.len += item.rows();
            queue.push(Waiting {
                item,
                enqueued: now,
            });
        }
        Ok(())
    }

    /// The first task that `items` would take past its share of the queue.
    fn task_over_share(&self, items: &[T]) -> Option<Refused> {
        let max = self.cfg.max_queue_per_task;
        let mut wanted: HashMap<(&str, &str), usize> = HashMap::new();
        for item in items {
            *wanted.entry((item.tenant(), item.task())).or_default() += item.rows();
        }
        wanted.into_iter().find_map(|((tenant, task), n)| {
            let queued = self
                .tenants
                .get(tenant)
                .and_then(|t| t.queues.get(task))
                .map_or(0, |q| q.iter().map(|w| w.item.rows()).sum());
            (queued + n > max).then(|| Refused::TaskFull {
                task: task.to_string(),
                queued,
                max,
            })
        })
    }

    /// When the oldest waiting row reaches max wait (None when empty).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tenants
            .values()
            .flat_map(|t| t.queues.values())
            .filter_map(|q| q.front())
            .map(|w| w.enqueued + self.cfg.max_wait)
            .min()
    }

    /// The next batch if one is due: the queue holds a full batch, the oldest row has waited
    /// max wait, or the queue is closed. Each tenant in turn takes up to `weight` rows (its
    /// tasks alternating row by row); a turn cut short by a full batch resumes in the next
    /// batch, so shares hold across batches and a flood cannot keep anyone out.
    pub fn next_batch(&mut self, now: Instant) -> Option<Vec<Waiting<T>>> {
        self.next_batch_within(now, self.cfg.max_batch_size)
    }

    /// [`Policy::next_batch`] when only `room` rows fit (the rest of the batch is still
    /// decoding, under continuous batching): due once `room` rows wait or the oldest has
    /// waited max wait, and at most `room` rows. A unit of several rows that has waited max
    /// wait goes first; while it does not fit in `room`, nothing else is admitted (see
    /// [`Policy::held_for_room`]), so smaller units can never starve it.
    pub fn next_batch_within(&mut self, now: Instant, room: usize) -> Option<Vec<Waiting<T>>> {
        self.drop_cancelled();
        let room = room.min(self.cfg.max_batch_size);
        if self.len == 0 || room == 0 || self.held_for_room(now, room) {
            return None;
        }
        let due = self.len >= room || self.closed || self.next_deadline().is_some_and(|d| d <= now);
        if !due {
            return None;
        }
        if self.cfg.batching == Batching::PerTask {
            return Some(self.next_single_task_batch(room));
        }
        let max = room;
        let budget = self.cfg.max_batch_tokens;
        let mut batch: Vec<Waiting<T>> = Vec::with_capacity(max);
        let (mut rows, mut widest) = (0usize, 0usize);
        if let Some((tenant, task)) = self.overdue_group(now) {
            let w = self.pop_from(&tenant, &task);
            rows = w.item.rows();
            widest = w.item.cost();
            if let Some(t) = self.tenants.get_mut(&tenant) {
                t.deficit = t.deficit.saturating_sub(rows as u32);
            }
            batch.push(w);
        }
        // Tenants visited in a row without taking anything: all of them means nothing fits.
        let mut idle = 0;
        while rows < max && !self.ring.is_empty() && idle < self.ring.len() {
            let name = self.ring.front().expect("not empty").clone();
            let tenant = self.tenants.get_mut(&name).expect("ring tenants exist");
            if tenant.deficit == 0 {
                tenant.deficit = tenant.weight;
            }
            let mut took = 0;
            while tenant.deficit > 0 && rows < max {
                let fits = |cost: usize, k: usize| {
                    rows + k <= max && within_token_budget(rows, k, widest.max(cost), budget)
                };
                let Some(w) = tenant.pop_fitting(fits) else {
                    break;
                };
                widest = widest.max(w.item.cost());
                rows += w.item.rows();
                tenant.deficit = tenant.deficit.saturating_sub(w.item.rows() as u32);
                batch.push(w);
                took += 1;
            }
            idle = if took == 0 { idle + 1 } else { 0 };
            if tenant.is_empty() {
                self.tenants.remove(&name);
                self.ring.pop_front();
            } else if tenant.deficit == 0 || took == 0 {
                self.ring.rotate_left(1);
            }
            // Otherwise the batch filled mid-turn: the tenant stays first for the next batch.
        }
        self.len -= rows;
        Some(batch)
    }

    /// With the running batch full: the head unit of each tenant that `absent` says has no row
    /// in it, at most `max_rows` rows in all, taken at once. One tenant's flood filling every
    /// slot cannot keep another tenant out until its rows finish: the running batch grows past
    /// its size by at most one unit per such tenant.
    pub fn next_for_absent_tenants(
        &mut self,
        absent: impl Fn(&str) -> bool,
        max_rows: usize,
    ) -> Option<Vec<Waiting<T>>> {
        self.drop_cancelled();
        if self.cfg.batching == Batching::PerTask {
            return None;
        }
        let budget = self.cfg.max_batch_tokens;
        let names: Vec<String> = self.ring.iter().filter(|n| absent(n)).cloned().collect();
        let mut batch = Vec::new();
        let (mut rows, mut widest) = (0usize, 0usize);
        for name in names {
            let tenant = self.tenants.get_mut(&name).expect("ring tenants exist");
            let fits = |cost: usize, k: usize| {
                rows + k <= max_rows && within_token_budget(rows, k, widest.max(cost), budget)
            };
            if let Some(w) = tenant.pop_fitting(fits) {
                widest = widest.max(w.item.cost());
                rows += w.item.rows();
                batch.push(w);
            }
            if tenant.is_empty() {
                self.tenants.remove(&name);
                self.ring.retain(|x| x != &name);
            }
        }
        self.len -= rows;
        (!batch.is_empty()).then_some(batch)
    }

    /// Whether admission waits for room: the oldest unit of several rows has waited max
    /// wait and needs more than `room` rows. The batching loop then waits for rows to finish
    /// instead of for a deadline.
    pub fn held_for_room(&self, now: Instant, room: usize) -> bool {
        self.overdue_group(now)
            .and_then(|(tenant, task)| self.tenants.get(&tenant)?.queues.get(&task)?.front())
            .is_some_and(|w| w.item.rows() > room.min(self.cfg.max_batch_size))
    }

    /// The tenant and task of the oldest unit of several rows at the head of its queue that
    /// has waited max wait.
    fn overdue_group(&self, now: Instant) -> Option<(String, String)> {
        self.tenants
            .iter()
            .flat_map(|(name, t)| t.queues.iter().map(move |(task, q)| (name, task, q)))
            .filter_map(|(name, task, q)| q.front().map(|w| (name, task, w)))
            .filter(|(_, _, w)| w.item.rows() > 1 && w.enqueued + self.cfg.max_wait <= now)
            .min_by_key(|(_, _, w)| w.enqueued)
            .map(|(name, task, _)| (name.clone(), task.clone()))
    }

    /// Takes the head unit of a tenant's task queue, dropping emptied queues from the rings.
    fn pop_from(&mut self, tenant: &str, task: &str) -> Waiting<T> {
        let t = self.tenants.get_mut(tenant).expect("the tenant has rows");
        let queue = t.queues.get_mut(task).expect("the task has rows");
        let w = queue.pop_front().expect("the queue has a head");
        if queue.is_empty() {
            t.queues.remove(task);
            t.ring.retain(|x| x != task);
        }
        if t.is_empty() {
            self.tenants.remove(tenant);
            self.ring.retain(|x| x != tenant);
        }
        w
    }

    /// Per-task batching: the next task in ring order (tenants, then their tasks) fills the
    /// batch alone.
    fn next_single_task_batch(&mut self, max: usize) -> Vec<Waiting<T>> {
        let budget = self.cfg.max_batch_tokens;
        let name = self.ring.pop_front().expect("rows wait");
        let tenant = self.tenants.get_mut(&name).expect("ring tenants exist");
        let task = tenant
            .ring
            .pop_front()
            .expect("tenants in the ring have rows");
        let queue = tenant
            .queues
            .get_mut(&task)
            .expect("ring tasks have queues");
        let mut batch: Vec<Waiting<T>> = Vec::with_capacity(max);
        let (mut rows, mut widest) = (0usize, 0usize);
        while let Some(front) = queue.front() {
            let (w, k) = (widest.max(front.item.cost()), front.item.rows());
            if (rows > 0 && rows + k > max) || !within_token_budget(rows, k, w, budget) {
                break;
            }
            batch.push(queue.pop_front().expect("front exists"));
            widest = w;
            rows += k;
        }
        if queue.is_empty() {
            tenant.queues.remove(&task);
        } else {
            tenant.ring.push_back(task);
        }
        if tenant.is_empty() {
            self.tenants.remove(&name);
        } else {
            self.ring.push_back(name);
        }
        self.len -= rows;
        batch
    }

    fn drop_cancelled(&mut self) {
        let mut dropped = 0;
        for tenant in self.tenants.values_mut() {
            dropped += tenant.drop_cancelled();
        }
        if dropped > 0 {
            self.len -= dropped;
            let tenants = &self.tenants;
            self.ring
                .retain(|t| tenants.get(t).is_some_and(|q| !q.is_empty()));
            self.tenants.retain(|_, q| !q.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    #[derive(Debug)]
    struct Row {
        task: String,
        id: usize,
        cost: usize,
        cancelled: Rc<Cell<bool>>,
        tenant: String,
        weight: u32,
        /// Rows in this unit (an ensemble input has one per member).
        rows: usize,
    }

    impl Queued for Row {
        fn task(&self) -> &str {
            &self.task
        }
        fn tenant(&self) -> &str {
            &self.tenant
        }
        fn weight(&self) -> u32 {
            self.weight
        }
        fn cost(&self) -> usize {
            self.cost
        }
        fn rows(&self) -> usize {
            self.rows
        }
        fn is_cancelled(&self) -> bool {
            self.cancelled.get()
        }
    }

    fn row(task: &str, id: usize) -> Row {
        Row {
            task: task.into(),
            id,
            cost: 4,
            cancelled: Rc::new(Cell::new(false)),
            tenant: String::new(),
            weight: 1,
            rows: 1,
        }
    }

    fn unit(task: &str, id: usize, rows: usize) -> Row {
        Row {
            rows,
            ..row(task, id)
        }
    }

    #[test]
    fn a_unit_rides_whole_and_counts_its_rows() {
        let t0 = Instant::now();
        let mut p = Policy::new(cfg(4));
        p.push_all(vec![row("a", 0), unit("ens", 1, 3), row("b", 2)], t0)
            .unwrap();
        assert_eq!(p.len(), 5, "rows, not units");
        let later = t0 + Duration::from_millis(20);
        // The overdue unit goes first; one more row fits beside it.
        let b = p.next_batch(later).unwrap();
        assert_eq!(ids(&b), [("ens".into(), 1), ("a".into(), 0)]);
        assert_eq!(p.len(), 1);
        assert_eq!(ids(&p.next_batch(later).unwrap()), [("b".into(), 2)]);
    }

    #[test]
    fn a_unit_larger_than_the_room_holds_admission_until_it_fits() {
        let t0 = Instant::now();
        let mut p = Policy::new(PolicyConfig {
            max_queue: 1000,
            max_queue_per_task: 1000,
            ..cfg(8)
        });
        p.push_all(vec![unit("ens", 0, 5)], t0).unwrap();
        p.push_all((1..20).map(|i| row("flood", i)).collect(), t0)
            .unwrap();
        let late = t0 + Duration::from_millis(20);
        // Three rows of room (five still decoding): single rows would fit, but the overdue
        // unit waits first, and nothing passes it.
        assert!(p.held_for_room(late, 3));
        assert!(p.next_batch_within(late, 3).is_none());
        // Before max wait it does not hold anything back.
        assert!(!p.held_for_room(t0, 3));
        let b = p.next_batch_within(late, 8).unwrap();
        assert_eq!(b[0].item.task, "ens");
        assert_eq!(b.iter().map(|w| w.item.rows).sum::<usize>(), 8);
        assert!(!p.held_for_room(late, 1), "no unit waits any more");
    }

    #[test]
    fn per_task_batching_keeps_units_whole() {
        let mut p = Policy::new(PolicyConfig {
            batching: Batching::PerTask,
            ..cfg(5)
        });
        let now = Instant::now();
        p.push_all((0..3).map(|i| unit("ens", i, 2)).collect(), now)
            .unwrap();
        let later = now + Duration::from_secs(1);
        assert_eq!(
            ids(&p.next_batch(later).unwrap()),
            [("ens".into(), 0), ("ens".into(), 1)]
        );
        assert_eq!(ids(&p.next_batch(later).unwrap()), [("ens".into(), 2)]);
        assert!(p.is_empty());
    }

    #[test]
    fn queue_limits_count_a_units_rows() {
        let t0 = Instant::now();
        let mut p = Policy::new(PolicyConfig {
            max_queue: 6,
            max_queue_per_task: 4,
            ..cfg(8)
        });
        p.push_all(vec![unit("ens", 0, 3)], t0).unwrap();
        assert!(matches!(
            p.push_all(vec![unit("ens", 1, 2)], t0),
            Err(Refused::TaskFull {
                queued: 3,
                max: 4,
                ..
            })
        ));
        assert!(matches!(
            p.push_all(vec![unit("other", 1, 4)], t0),
            Err(Refused::Full {
                queued: 3,
                max: 6,
                wanted: 4
            })
        ));
    }

    fn tenant_row(tenant: &str, weight: u32, task: &str, id: usize) -> Row {
        Row {
            tenant: tenant.into(),
            weight,
            ..row(task, id)
        }
    }

    fn tenants_of(batch: &[Waiting<Row>]) -> String {
        batch.iter().map(|w| w.item.tenant.as_str()).collect()
    }

    #[test]
    fn per_task_batching_never_mixes_tasks() {
        let mut p = Policy::new(PolicyConfig {
            batching: Batching::PerTask,
            ..cfg(4)
        });
        let now = Instant::now();
        let rows: Vec<_> = (0..10).map(|i| row(["a", "b", "c"][i % 3], i)).collect();
        p.push_all(rows, now).unwrap();
        let mut batches = Vec::new();
        while let Some(b) = p.next_batch(now + Duration::from_secs(1)) {
            batches.push(ids(&b));
        }
        let tasks: Vec<Vec<String>> = batches
            .iter()
            .map(|b| b.iter().map(|(t, _)| t.clone()).collect())
            .collect();
        assert_eq!(tasks, [vec!["a"; 4], vec!["b"; 3], vec!["c"; 3]]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_tenant_with_nothing_running_joins_a_full_batch_one_unit_at_a_time() {
        let mut p = Policy::new(PolicyConfig {
            max_queue: 1000,
            max_queue_per_task: 1000,
            ..cfg(4)
        });
        let now = Instant::now();
        let flood: Vec<_> = (0..8).map(|i| tenant_row("flood", 1, "f", i)).collect();
        p.push_all(flood, now).unwrap();
        p.push_all(vec![tenant_row("quiet", 1, "q", 100)], now)
            .unwrap();
        p.push_all(vec![tenant_row("other", 1, "o", 200)], now)
            .unwrap();
        p.push_all(vec![tenant_row("other", 1, "o", 201)], now)
            .unwrap();
        // The flood fills the running batch; quiet and other have nothing in it: one unit
        // each, the flood none (it is running).
        let absent = |t: &str| t != "flood";
        let b = p.next_for_absent_tenants(absent, 4).unwrap();
        let mut got = ids(&b);
        got.sort();
        assert_eq!(got, [("o".into(), 200), ("q".into(), 100)]);
        assert_eq!(p.len(), 9);
        // At most `max_rows` rows.
        assert_eq!(
            ids(&p.next_for_absent_tenants(|_| true, 1).unwrap()).len(),
            1
        );
        assert!(p.next_for_absent_tenants(|_| false, 4).is_none());
        assert_eq!(p.len(), 8);
    }

    #[test]
    fn tenants_share_slots_by_weight_across_batches() {
        let mut p = Policy::new(PolicyConfig {
            max_queue: 1000,
            max_queue_per_task: 1000,
            ..cfg(2)
        });
        let now = Instant::now();
        let a: Vec<_> = (0..60).map(|i| tenant_row("a", 3, "ta", i)).collect();
        let b: Vec<_> = (0..60).map(|i| tenant_row("b", 1, "tb", i)).collect();
        p.push_all(a, now).unwrap();
        p.push_all(b, now).unwrap();
        // Turns of 3 and 1 rows, cut by two-row batches and resumed in the next one.
        let order: String = (0..8)
            .map(|_| tenants_of(&p.next_batch(now).unwrap()))
            .collect();
        assert_eq!(order, "aaabaaabaaabaaab");
    }

    #[test]
    fn a_tenant_with_many_tasks_gets_one_tenants_share() {
        let mut p = Policy::new(PolicyConfig {
            max_queue: 1000,
            max_queue_per_task: 1000,
            ..cfg(10)
        });
        let now = Instant::now();
        let many: Vec<_> = (0..200)
            .map(|i| tenant_row("flood", 1, &format!("t{}", i % 50), i))
            .collect();
        p.push_all(many, now).unwrap();
        p.push_all(
            vec![
                tenant_row("quiet", 1, "q", 0),
                tenant_row("quiet", 1, "q", 1),
            ],
            now,
        )
        .unwrap();
        let batch = p.next_batch(now).unwrap();
        assert_eq!(
            tenants_of(&batch).matches("quiet").count(),
            2,
            "{}",
            tenants_of(&batch)
        );
        // The flooding tenant's rows still alternate over its tasks.
        let flood_tasks: Vec<_> = batch
            .iter()
            .filter(|w| w.item.tenant == "flood")
            .map(|w| w.item.task.clone())
            .collect();
        assert_eq!(
            flood_tasks,
            ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"]
        );
    }

    fn cfg(max_batch_size: usize) -> PolicyConfig {
        PolicyConfig {
            max_batch_size,
            max_wait: Duration::from_millis(10),
            max_queue: 100,
            max_queue_per_task: 100,
            max_batch_tokens: 1 << 20,
            batching: Batching::Mixed,
        }
    }

    fn ids(batch: &[Waiting<Row>]) -> Vec<(String, usize)> {
        batch
            .iter()
            .map(|w| (w.item.task.clone(), w.item.id))
            .collect()
    }

    #[test]
    fn closes_at_max_size_or_max_wait() {
        let t0 = Instant::now();
        let mut p = Policy::new(cfg(3));
        p.push_all(vec![row("a", 0), row("b", 1)], t0).unwrap();
        assert!(p.next_batch(t0).is_none(), "not full, not old");
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert!(p.next_batch(t0 + Duration::from_millis(9)).is_none());
        let b = p.next_batch(t0 + Duration::from_millis(10)).unwrap();
        assert_eq!(b.len(), 2);
        assert!(p.is_empty());
        p.push_all((0..4).map(|i| row("a", i)).collect(), t0)
            .unwrap();
        assert_eq!(
            p.next_batch(t0).unwrap().len(),
            3,
            "full batch goes at once"
        );
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn flood_cannot_starve_other_tasks() {
        let t0 = Instant::now();
        let mut p = Policy::new(PolicyConfig {
            max_queue: 1000,
            max_queue_per_task: 1000,
            ..cfg(4)
        });
        p.push_all((0..200).map(|i| row("flood", i)).collect(), t0)
            .unwrap();
        p.push_all(vec![row("b", 0), row("c", 0)], t0).unwrap();
        let first = ids(&p.next_batch(t0).unwrap());
        assert!(first.contains(&("b".into(), 0)) && first.contains(&("c".into(), 0)));
        assert_eq!(first.iter().filter(|(t, _)| t == "flood").count(), 2);
        // Flood rows keep FIFO order.
        let flood: Vec<usize> = first
            .iter()
            .filter(|(t, _)| t == "flood")
            .map(|x| x.1)
            .collect();
        assert_eq!(flood, vec![0, 1]);
    }

    #[test]
    fn ring_resumes_where_it_stopped() {
        let t0 = Instant::now();
        let mut p = Policy::new(cfg(2));
        for t in ["a", "b", "c", "d"] {
            p.push_all(vec![row(t, 0), row(t, 1)], t0).unwrap();
        }
        let tasks =
            |b: Vec<Waiting<Row>>| -> Vec<String> { b.into_iter().map(|w| w.item.task).collect() };
        assert_eq!(tasks(p.next_batch(t0).unwrap()), ["a", "b"]);
        assert_eq!(tasks(p.next_batch(t0).unwrap()), ["c", "d"]);
        assert_eq!(tasks(p.next_batch(t0).unwrap()), ["a", "b"]);
    }

    #[test]
    fn bounded_queue_is_all_or_nothing() {
        let t0 = Instant::now();
        let mut p = Policy::new(PolicyConfig {
            max_queue: 3,
            max_queue_per_task: 3,
            ..cfg(8)
        });
        p.push_all(vec![row("a", 0), row("a", 1)], t0).unwrap();
        let err = p.push_all(vec![row("b", 0), row("b", 1)], t0).unwrap_err();
        assert_eq!(
            err,
            Refused::Full {
                queued: 2,
                max: 3,
                wanted: 2
            }
        );
        assert_eq!(p.len(), 2);
        p.push_all(vec![row("b", 0)], t0).unwrap();
        p.close();
        assert_eq!(p.push_all(vec![row("c", 0)], t0), Err(Refused::Closed));
        assert_eq!(p.next_batch(t0).unwrap().len(), 3, "closed queue flushes");
    }

    #[test]
    fn one_task_cannot_take_more_than_its_share_of_the_queue() {
        let t0 = Instant::now();
        let mut p = Policy::new(PolicyConfig {
            max_queue: 10,
            max_queue_per_task: 3,
            ..cfg(8)
        });
        p.push_all(vec![row("flood", 0), row("flood", 1)], t0)
            .unwrap();
        let err = p
            .push_all(vec![row("flood", 2), row("flood", 3)], t0)
            .unwrap_err();
        assert_eq!(
            err,
            Refused::TaskFull {
                task: "flood".into(),
                queued: 2,
                max: 3
            }
        );
        // All or nothing: a request mixing a full task with another queues neither.
        assert!(p
            .push_all(vec![row("b", 0), row("flood", 2), row("flood", 3)], t0)
            .is_err());
        assert_eq!(p.len(), 2);
        p.push_all(vec![row("flood", 2)], t0).unwrap();
        p.push_all(vec![row("b", 0), row("c", 0), row("b", 1)], t0)
            .unwrap();
        assert_eq!(p.len(), 6);
    }

    #[test]
    fn cancelled_rows_are_dropped_and_free_room() {
        let t0 = Instant::now();
        let mut p = Policy::new(PolicyConfig {
            max_queue: 2,
            max_queue_per_task: 2,
            ..cfg(8)
        });
        let gone = row("a", 0);
        let flag = gone.cancelled.clone();
        p.push_all(vec![gone, row("b", 0)], t0).unwrap();
        flag.set(true);
        p.push_all(vec![row("c", 0)], t0).unwrap();
        let b = p.next_batch(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(ids(&b), [("b".into(), 0), ("c".into(), 0)]);
    }

    #[test]
    fn token_budget_limits_a_batch() {
        let t0 = Instant::now();
        let mut p = Policy::new(PolicyConfig {
            max_batch_tokens: 10,
            ..cfg(8)
        });
        let mut long = row("a", 0);
        long.cost = 9;
        p.push_all(vec![long, row("b", 0), row("c", 0)], t0)
            .unwrap();
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            p.next_batch(later).unwrap().len(),
            1,
            "9 + padding to 9 > 10"
        );
        assert_eq!(p.next_batch(later).unwrap().len(), 2);
    }
}
