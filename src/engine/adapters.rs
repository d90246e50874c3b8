//! The adapter bank: every loaded adapter's factors in the model's per-site tables
//! ([`AdapterTables`]), one index each, so a pass mixes adapters by gathering rows' indices.
use std::sync::Arc;

use parking_lot::Mutex;
use tch::{Device, Kind};

use super::bank::PromptRows;
use crate::model::adapters::{AdapterTables, AdapterWeights};
use crate::model::ModelError;

/// What the engine serves for a task: soft prompt rows (maybe none) and an adapter (maybe none).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskWeights {
    /// Rows prepended to the encoder input (0 rows: none).
    pub rows: PromptRows,
    /// Changes to the frozen model's layers.
    pub adapter: Option<Arc<AdapterWeights>>,
}

impl From<PromptRows> for TaskWeights {
    fn from(rows: PromptRows) -> Self {
        Self {
            rows,
            adapter: None,
        }
    }
}

/// An adapter's index in the tables. The index is cleared and reused only after the last
/// holder drops it, so a queued or running batch keeps the factors it references.
#[derive(Debug)]
pub struct AdapterSlot {
    index: i64,
    released: Arc<Mutex<Vec<i64>>>,
}

impl AdapterSlot {
    /// The index rows of this adapter gather.
    pub fn index(&self) -> i64 {
        self.index
    }
}

impl Drop for AdapterSlot {
    fn drop(&mut self) {
        self.released.lock().push(self.index);
    }
}

/// The tables plus which indices are free.
pub struct AdapterBank {
    tables: AdapterTables,
    free: Vec<i64>,
    released: Arc<Mutex<Vec<i64>>>,
    resident: usize,
}

impl AdapterBank {
    /// An empty bank on `device` in `kind`.
    pub fn new(device: Device, kind: Kind) -> Self {
        Self {
            tables: AdapterTables::new(device, kind),
            free: Vec::new(),
            released: Arc::new(Mutex::new(Vec::new())),
            resident: 0,
        }
    }

    /// The tables passes read.
    pub fn tables(&self) -> &AdapterTables {
        &self.tables
    }

    /// Adapters held.
    pub fn resident(&self) -> usize {
        self.resident
    }

    /// Clears the indices of dropped slots for reuse. Call between passes.
    pub fn reclaim(&mut self) -> Result<(), ModelError> {
        let released: Vec<i64> = std::mem::take(&mut *self.released.lock());
        for index in released {
            self.tables.clear(index)?;
            self.free.push(index);
            self.resident -= 1;
        }
        Ok(())
    }

    /// Writes `w` at a free index (growing the tables by half when none is free).
    pub fn insert(&mut self, w: &AdapterWeights) -> Result<AdapterSlot, ModelError> {
        self.reclaim()?;
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let have = self.tables.capacity();
                self.tables.reserve(have + (have / 2).max(4))?;
                self.free.extend((have..self.tables.capacity()).rev());
                self.free.pop().expect("grown")
            }
        };
        if let Err(e) = self.tables.write(index, w) {
            // A half-written index is cleared before it is offered again.
            self.tables.clear(index)?;
            self.free.push(index);
            return Err(e);
        }
        self.resident += 1;
        Ok(AdapterSlot {
            index,
            released: self.released.clone(),
        })
    }
}
