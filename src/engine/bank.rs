//! The prompt bank: every loaded prompt's rows in one device table, addressed as virtual token
//! ids after the vocabulary (`vocab_size + offset + r`), so one gather builds a mixed-task batch.
use std::sync::Arc;

use parking_lot::Mutex;
use tch::{Device, Kind, Tensor};

use super::adapters::AdapterSlot;
use crate::model::ModelError;

/// A matrix of prompt rows, f32, row-major: what the engine serves for a task.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRows {
    /// Number of rows (virtual tokens).
    pub rows: usize,
    /// Row width (d_model).
    pub cols: usize,
    /// rows × cols values.
    pub values: Vec<f32>,
}

/// A contiguous range of bank rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First row.
    pub offset: i64,
    /// Rows.
    pub len: i64,
}

/// A task's place in the banks: its prompt rows (maybe none) and its adapter (maybe none).
/// Both are freed when the last holder drops it, so a queued or running batch keeps what it
/// references alive.
#[derive(Debug)]
pub struct PromptSlot {
    region: Region,
    vocab_size: i64,
    released: Arc<Mutex<Vec<Region>>>,
    /// The task's adapter in the adapter bank.
    pub adapter: Option<AdapterSlot>,
}

impl PromptSlot {
    /// Prompt rows.
    pub fn len(&self) -> usize {
        self.region.len as usize
    }

    /// Whether the slot holds no rows (a task served by its adapter alone).
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }

    /// The bank id of the task's adapter, if it has one.
    pub fn adapter_id(&self) -> Option<u64> {
        self.adapter.as_ref().map(AdapterSlot::id)
    }

    /// The virtual token ids that stand for this prompt's rows.
    pub fn virtual_ids(&self) -> impl Iterator<Item = i64> + '_ {
        let first = self.vocab_size + self.region.offset;
        first..first + self.region.len
    }
}

impl Drop for PromptSlot {
    fn drop(&mut self) {
        if self.region.len > 0 {
            self.released.lock().push(self.region);
        }
    }
}

/// Device table of prompt rows with a first-fit free list; grows by a quarter at a time.
pub struct PromptBank {
    table: Tensor,
    capacity: i64,
    free: Vec<Region>,
    released: Arc<Mutex<Vec<Region>>>,
    vocab_size: i64,
    d_model: i64,
    device: Device,
    kind: Kind,
}

const INITIAL_ROWS: i64 = 256;
/// The bank grows in whole multiples of this many rows.
const GROW_ROWS: i64 = 256;

impl PromptBank {
    /// An empty bank for a model of `d_model` with `vocab_size` real tokens.
    pub fn new(
        vocab_size: i64,
        d_model: i64,
        device: Device,
        kind: Kind,
    ) -> Result<Self, ModelError> {
        let table = Tensor::f_zeros([INITIAL_ROWS, d_model], (kind, device))?;
        Ok(Self {
            table,
            capacity: INITIAL_ROWS,
            free: vec![Region {
                offset: 0,
                len: INITIAL_ROWS,
            }],
            released: Arc::new(Mutex::new(Vec::new())),
            vocab_size,
            d_model,
            device,
            kind,
        })
    }

    /// Rows in use.
    pub fn used_rows(&self) -> i64 {
        self.capacity - self.free.iter().map(|r| r.len).sum::<i64>()
    }

    /// Rows allocated on the device.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Returns regions of dropped slots to the free list. Call between batches.
    pub fn reclaim(&mut self) {
        let released: Vec<Region> = std::mem::take(&mut *self.released.lock());
        for region in released {
            self.free.push(region);
        }
        self.free.sort_by_key(|r| r.offset);
        let mut merged: Vec<Region> = Vec::with_capacity(self.free.len());
        for r in self.free.drain(..) {
            match merged.last_mut() {
                Some(last) if last.offset + last.len == r.offset => last.len += r.len,
                _ => merged.push(r),
            }
        }
        self.free = merged;
    }

    /// Copies `rows` into a free region and returns its slot.
    pub fn insert(&mut self, rows: &PromptRows) -> Result<Arc<PromptSlot>, ModelError> {
        self.insert_task(rows, None)
    }

    /// [`PromptBank::insert`] for a task that may also have an adapter (and then no rows).
    pub fn insert_task(
        &mut self,
        rows: &PromptRows,
        adapter: Option<AdapterSlot>,
    ) -> Result<Arc<PromptSlot>, ModelError> {
        if rows.rows == 0 && adapter.is_some() {
            return Ok(Arc::new(PromptSlot {
                region: Region { offset: 0, len: 0 },
                vocab_size: self.vocab_size,
                released: self.released.clone(),
                adapter,
            }));
        }
        if rows.cols as i64 != self.d_model || rows.rows == 0 {
            return Err(ModelError::Config(format!(
                "prompt [{}, {}] does not fit a bank of width {}",
                rows.rows, rows.cols, self.d_model
            )));
        }
        self.reclaim();
        let len = rows.rows as i64;
        let region = match self.take_free(len) {
            Some(region) => region,
            None => {
                self.grow(len)?;
                self.take_free(len)
                    .expect("grow leaves a free tail of at least len rows")
            }
        };
        let src = Tensor::f_from_slice(&rows.values)?
            .f_view([len, self.d_model])?
            .f_to_kind(self.kind)?
            .f_to_device(self.device)?;
        self.table.f_narrow(0, region.offset, len)?.f_copy_(&src)?;
        Ok(Arc::new(PromptSlot {
            region,
            vocab_size: self.vocab_size,
            released: self.released.clone(),
            adapter,
        }))
    }

    /// Makes room for `rows` more rows in one growth (a batch of registrations), so loading
    /// many prompts does not grow the table step by step.
    pub fn reserve(&mut self, rows: i64) -> Result<(), ModelError> {
        self.reclaim();
        let free: i64 = self.free.iter().map(|r| r.len).sum();
        if free >= rows {
            return Ok(());
        }
        self.grow(rows)
    }

    fn take_free(&mut self, len: i64) -> Option<Region> {
        let i = self.free.iter().position(|r| r.len >= len)?;
        let r = self.free[i];
        if r.len == len {
            self.free.remove(i);
        } else {
            self.free[i] = Region {
                offset: r.offset + len,
                len: r.len - len,
            };
        }
        Some(Region {
            offset: r.offset,
            len,
        })
    }

    fn grow(&mut self, need: i64) -> Result<(), ModelError> {
        let tail_free = self
            .free
            .last()
            .filter(|r| r.offset + r.len == self.capacity)
            .map_or(0, |r| r.len);
        // Grow by a quarter (not doubling: the bank is most of a large server's host or device
        // memory for prompts, and a quarter bounds the slack at 1.25x), or to fit `need`.
        let fit = self.capacity - tail_free + need;
        let capacity = (self.capacity + self.capacity / 4).max(fit);
        let capacity = (capacity + GROW_ROWS - 1) / GROW_ROWS * GROW_ROWS;
        // Uninitialised: rows past the used ones are never read (ids of real tokens gather row 0
        // and then take the vocabulary row), and untouched host pages cost no memory.
        let table = Tensor::f_empty([capacity, self.d_model], (self.kind, self.device))?;
        table.f_narrow(0, 0, self.capacity)?.f_copy_(&self.table)?;
        self.free.push(Region {
            offset: self.capacity,
            len: capacity - self.capacity,
        });
        self.table = table;
        self.capacity = capacity;
        self.reclaim();
        Ok(())
    }

    /// A slot's rows [len, d] (a view of the table).
    pub fn rows_of(&self, slot: &PromptSlot) -> Result<Tensor, ModelError> {
        Ok(self
            .table
            .f_narrow(0, slot.region.offset, slot.region.len)?)
    }

    /// Embeds ids [B, L] where ids >= vocab_size are virtual prompt rows: two gathers joined
    /// by one `where`, so no vocabulary-sized table is ever concatenated per batch.
    pub fn embed(&self, shared: &Tensor, ids: &Tensor) -> Result<Tensor, ModelError> {
        let is_virtual = ids.f_ge(self.vocab_size)?;
        let vocab_ids = ids.f_clamp_max(self.vocab_size - 1)?;
        let vocab = Tensor::f_embedding(shared, &vocab_ids, -1, false, false)?;
        let bank_ids = ids
            .f_sub_scalar(self.vocab_size)?
            .f_clamp(0, self.capacity - 1)?;
        let bank = Tensor::f_embedding(&self.table, &bank_ids, -1, false, false)?;
        Ok(bank.f_where_self(&is_virtual.f_unsqueeze(-1)?, &vocab)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, d: usize, v: f32) -> PromptRows {
        PromptRows {
            rows: n,
            cols: d,
            values: vec![v; n * d],
        }
    }

    #[test]
    fn slots_reuse_and_grow() {
        let mut bank = PromptBank::new(10, 4, Device::Cpu, Kind::Float).unwrap();
        let a = bank.insert(&rows(100, 4, 1.0)).unwrap();
        let b = bank.insert(&rows(156, 4, 2.0)).unwrap();
        assert_eq!(bank.capacity(), 256);
        let c = bank.insert(&rows(10, 4, 3.0)).unwrap(); // doubles
        assert_eq!(bank.capacity(), 512);
        assert_eq!(c.virtual_ids().next(), Some(10 + 256));
        drop(a);
        let d = bank.insert(&rows(60, 4, 4.0)).unwrap(); // reuses a's rows
        assert_eq!(d.virtual_ids().next(), Some(10));
        assert_eq!(bank.used_rows(), 156 + 10 + 60);
        // Rows written before growth survive it.
        let ids = Tensor::from_slice(&[10 + 100i64, 10 + 256, 10]).view([1, 3]);
        let shared = Tensor::ones([10, 4], (Kind::Float, Device::Cpu))
            .f_mul_scalar(-1.0)
            .unwrap();
        let emb = bank.embed(&shared, &ids).unwrap();
        let firsts: Vec<f32> = Vec::try_from(emb.select(2, 0).view([-1])).unwrap();
        assert_eq!(firsts, vec![2.0, 3.0, 4.0]);
        drop((b, c, d));
        bank.reclaim();
        assert_eq!(bank.used_rows(), 0);
        assert_eq!(
            bank.free,
            vec![Region {
                offset: 0,
                len: 512
            }]
        );
    }

    #[test]
    fn growth_slack_stays_within_a_quarter_and_reserve_grows_once() {
        let mut bank = PromptBank::new(10, 2, Device::Cpu, Kind::Float).unwrap();
        let mut slots = Vec::new();
        for i in 1..=2000 {
            slots.push(bank.insert(&rows(20, 2, 1.0)).unwrap());
            let (used, cap) = (bank.used_rows() as f64, bank.capacity() as f64);
            assert!(
                cap <= (used * 1.25).max(256.0) + 256.0,
                "{i}: {cap} rows for {used}"
            );
        }
        bank.reserve(100_000).unwrap();
        let cap = bank.capacity();
        assert!(cap >= 40_000 + 100_000);
        for _ in 0..5000 {
            slots.push(bank.insert(&rows(20, 2, 1.0)).unwrap());
        }
        assert_eq!(
            bank.capacity(),
            cap,
            "the reserved room was used without growing"
        );
    }

    #[test]
    fn mixed_ids_gather_vocab_and_bank() {
        let mut bank = PromptBank::new(3, 2, Device::Cpu, Kind::Float).unwrap();
        let slot = bank
            .insert(&PromptRows {
                rows: 2,
                cols: 2,
                values: vec![7.0, 7.5, 8.0, 8.5],
            })
            .unwrap();
        let shared = Tensor::from_slice(&[0.0f32, 0.5, 1.0, 1.5, 2.0, 2.5]).view([3, 2]);
        let mut ids: Vec<i64> = slot.virtual_ids().collect();
        ids.extend([2, 0]);
        let emb = bank
            .embed(&shared, &Tensor::from_slice(&ids).view([1, 4]))
            .unwrap();
        let got: Vec<f32> = Vec::try_from(emb.view([-1])).unwrap();
        assert_eq!(got, vec![7.0, 7.5, 8.0, 8.5, 2.0, 2.5, 0.0, 0.5]);
    }
}
