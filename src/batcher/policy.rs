//! The batching policy: per-task queues served round-robin, a batch closing at max size or
//! when its oldest row has waited max wait. Plain synchronous code, tested without a runtime.
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// What the policy needs to know about a queued row.
pub trait Queued {
    /// Fairness key (the task).
    fn task(&self) -> &str;
    /// Encoder positions the row takes (prompt + input), for the token budget.
    fn cost(&self) -> usize;
    /// True once nobody waits for the answer (client gone, timed out): dropped unrun.
    fn is_cancelled(&self) -> bool;
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
    /// Padded encoder positions (rows × longest row) per forward pass.
    pub max_batch_tokens: u64,
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

/// Per-task FIFO queues plus a ring of tasks with rows waiting.
pub struct Policy<T> {
    cfg: PolicyConfig,
    queues: HashMap<String, VecDeque<Waiting<T>>>,
    ring: VecDeque<String>,
    len: usize,
    closed: bool,
}

impl<T: Queued> Policy<T> {
    /// An empty, open queue.
    pub fn new(cfg: PolicyConfig) -> Self {
        Self {
            cfg,
            queues: HashMap::new(),
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

    /// Queues all `items` or none of them.
    pub fn push_all(&mut self, items: Vec<T>, now: Instant) -> Result<(), Refused> {
        if self.closed {
            return Err(Refused::Closed);
        }
        if self.len + items.len() > self.cfg.max_queue {
            self.drop_cancelled();
            if self.len + items.len() > self.cfg.max_queue {
                return Err(Refused::Full {
                    queued: self.len,
                    max: self.cfg.max_queue,
                    wanted: items.len(),
                });
            }
        }
        for item in items {
            let task = item.task();
            if !self.queues.contains_key(task) {
                self.queues.insert(task.to_string(), VecDeque::new());
                self.ring.push_back(task.to_string());
            }
            let queue = self.queues.get_mut(task).expect("inserted above");
            queue.push_back(Waiting {
                item,
                enqueued: now,
            });
            self.len += 1;
        }
        Ok(())
    }

    /// When the oldest waiting row reaches max wait (None when empty).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter_map(|q| q.front())
            .map(|w| w.enqueued + self.cfg.max_wait)
            .min()
    }

    /// The next batch if one is due: the queue holds a full batch, the oldest row has waited
    /// max wait, or the queue is closed. Rows are taken one per task in ring order, round after
    /// round, so a flooding task cannot keep others out; the ring resumes where it stopped.
    pub fn next_batch(&mut self, now: Instant) -> Option<Vec<Waiting<T>>> {
        self.drop_cancelled();
        if self.len == 0 {
            return None;
        }
        let due = self.len >= self.cfg.max_batch_size
            || self.closed
            || self.next_deadline().is_some_and(|d| d <= now);
        if !due {
            return None;
        }
        let mut batch: Vec<Waiting<T>> = Vec::with_capacity(self.cfg.max_batch_size);
        let mut widest = 0usize;
        loop {
            let mut took = false;
            for _ in 0..self.ring.len() {
                if batch.len() == self.cfg.max_batch_size {
                    break;
                }
                let Some(task) = self.ring.pop_front() else {
                    break;
                };
                let queue = self.queues.get_mut(&task).expect("ring tasks have queues");
                if let Some(front) = queue.front() {
                    let w = widest.max(front.item.cost());
                    let fits = (batch.len() as u64 + 1) * w as u64 <= self.cfg.max_batch_tokens;
                    if batch.is_empty() || fits {
                        batch.push(queue.pop_front().expect("front exists"));
                        widest = w;
                        took = true;
                    }
                }
                if queue.is_empty() {
                    self.queues.remove(&task);
                } else {
                    self.ring.push_back(task);
                }
            }
            if !took || batch.len() == self.cfg.max_batch_size || self.ring.is_empty() {
                break;
            }
        }
        self.len -= batch.len();
        Some(batch)
    }

    fn drop_cancelled(&mut self) {
        let mut dropped = 0;
        for queue in self.queues.values_mut() {
            let before = queue.len();
            queue.retain(|w| !w.item.is_cancelled());
            dropped += before - queue.len();
        }
        if dropped > 0 {
            self.len -= dropped;
            let queues = &self.queues;
            self.ring
                .retain(|t| queues.get(t).is_some_and(|q| !q.is_empty()));
            self.queues.retain(|_, q| !q.is_empty());
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
    }

    impl Queued for Row {
        fn task(&self) -> &str {
            &self.task
        }
        fn cost(&self) -> usize {
            self.cost
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
        }
    }

    fn cfg(max_batch_size: usize) -> PolicyConfig {
        PolicyConfig {
            max_batch_size,
            max_wait: Duration::from_millis(10),
            max_queue: 100,
            max_batch_tokens: 1 << 20,
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
    fn cancelled_rows_are_dropped_and_free_room() {
        let t0 = Instant::now();
        let mut p = Policy::new(PolicyConfig {
            max_queue: 2,
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
