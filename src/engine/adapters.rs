//! The adapter bank: adapters resident on the device up to a memory budget, in the model's
//! per-site tables ([`AdapterTables`], one index each), the rest in host memory. A pass loads the
//! adapters of its rows between passes (evicting the least recently used ones no live row
//! needs), so a row whose adapter is not resident waits for the load; it never fails for it.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use tch::{Device, Kind};

use crate::model::adapters::{AdapterTables, AdapterWeights};
use crate::model::ModelError;

/// A registered adapter: its host copy and its id in the bank. Dropped by its last holder
/// (the catalog's entry and the rows using it), it leaves the device at the next pass.
#[derive(Debug)]
pub struct AdapterSlot {
    id: u64,
    weights: Arc<AdapterWeights>,
    bytes: usize,
    released: Arc<Mutex<Vec<u64>>>,
}

impl AdapterSlot {
    /// The bank's id for it.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for AdapterSlot {
    fn drop(&mut self) {
        self.released.lock().push(self.id);
    }
}

/// An adapter on the device.
struct Resident {
    index: i64,
    bytes: usize,
    used: u64,
}

/// The bank's state, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdapterStats {
    /// Adapters on the device.
    pub resident: usize,
    /// Their bytes (parameters × the model's element size).
    pub resident_bytes: usize,
    /// Adapters registered (on the device or in host memory).
    pub registered: usize,
    /// Loads onto the device since the engine started.
    pub loads: u64,
    /// Evictions from the device since the engine started.
    pub evictions: u64,
}

/// The tables plus which adapters are resident where.
pub struct AdapterBank {
    tables: AdapterTables,
    free: Vec<i64>,
    resident: HashMap<u64, Resident>,
    registered: usize,
    released: Arc<Mutex<Vec<u64>>>,
    next_id: u64,
    budget: usize,
    clock: u64,
    elt: usize,
    stats: AdapterStats,
}

/// Default device memory for adapters (`--adapter-memory-mb`).
pub const DEFAULT_ADAPTER_MEMORY_MB: usize = 1024;

impl AdapterBank {
    /// An empty bank on `device` in `kind`, holding up to `budget` bytes of adapters there.
    pub fn new(device: Device, kind: Kind, budget: usize) -> Self {
        Self {
            tables: AdapterTables::new(device, kind),
            free: Vec::new(),
            resident: HashMap::new(),
            registered: 0,
            released: Arc::new(Mutex::new(Vec::new())),
            next_id: 1,
            budget,
            clock: 0,
            elt: kind.elt_size_in_bytes(),
            stats: AdapterStats::default(),
        }
    }

    /// The tables passes read.
    pub fn tables(&self) -> &AdapterTables {
        &self.tables
    }

    /// Where the bank stands.
    pub fn stats(&self) -> AdapterStats {
        AdapterStats {
            resident: self.resident.len(),
            registered: self.registered,
            ..self.stats
        }
    }

    /// Sets the device budget in bytes (takes effect at the next load).
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
    }

    /// Registers an adapter; it goes to the device now when it fits the budget, else at the
    /// first pass that needs it.
    pub fn register(&mut self, weights: Arc<AdapterWeights>) -> Result<AdapterSlot, ModelError> {
        self.reclaim()?;
        let slot = AdapterSlot {
            id: self.next_id,
            bytes: weights.parameters() * self.elt,
            weights,
            released: self.released.clone(),
        };
        self.next_id += 1;
        self.registered += 1;
        if self.stats.resident_bytes + slot.bytes <= self.budget {
            self.load(&slot)?;
        }
        Ok(slot)
    }

    /// Takes dropped adapters off the device. Call between passes.
    pub fn reclaim(&mut self) -> Result<(), ModelError> {
        let released: Vec<u64> = std::mem::take(&mut *self.released.lock());
        for id in released {
            self.registered -= 1;
            self.unload(id)?;
        }
        Ok(())
    }

    /// The table index of `slot`'s adapter, loading it first when it is not on the device
    /// (evicting least recently used adapters outside `pinned`, the ids live rows use, until
    /// it fits the budget; over the budget when every resident adapter is pinned).
    pub fn ensure(&mut self, slot: &AdapterSlot, pinned: &HashSet<u64>) -> Result<i64, ModelError> {
        self.clock += 1;
        if let Some(r) = self.resident.get_mut(&slot.id) {
            r.used = self.clock;
            return Ok(r.index);
        }
        if !self.fit(slot.bytes, pinned)? {
            tracing::warn!(
                budget = self.budget,
                resident = self.stats.resident_bytes,
                "every resident adapter is in use: loading one more over --adapter-memory-mb"
            );
        }
        self.load(slot)
    }

    /// Evicts least recently used adapters outside `pinned` until `more` bytes fit the
    /// budget; false when they cannot (everything left is pinned).
    pub fn fit(&mut self, more: usize, pinned: &HashSet<u64>) -> Result<bool, ModelError> {
        while self.stats.resident_bytes + more > self.budget {
            let victim = self
                .resident
                .iter()
                .filter(|(id, _)| !pinned.contains(id))
                .min_by_key(|(_, r)| r.used)
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                return Ok(false);
            };
            self.unload(victim)?;
            self.stats.evictions += 1;
        }
        Ok(true)
    }

    fn load(&mut self, slot: &AdapterSlot) -> Result<i64, ModelError> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let have = self.tables.capacity();
                self.tables.reserve(have + (have / 2).max(4))?;
                self.free.extend((have..self.tables.capacity()).rev());
                self.free.pop().expect("grown")
            }
        };
        if let Err(e) = self.tables.write(index, &slot.weights) {
            // A half-written index is cleared before it is offered again.
            self.tables.clear(index)?;
            self.free.push(index);
            return Err(e);
        }
        self.resident.insert(
            slot.id,
            Resident {
                index,
                bytes: slot.bytes,
                used: self.clock,
            },
        );
        self.stats.resident_bytes += slot.bytes;
        self.stats.loads += 1;
        Ok(index)
    }

    fn unload(&mut self, id: u64) -> Result<(), ModelError> {
        if let Some(r) = self.resident.remove(&id) {
            self.tables.clear(r.index)?;
            self.free.push(r.index);
            self.stats.resident_bytes -= r.bytes;
        }
        Ok(())
    }
}
