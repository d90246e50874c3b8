//! The encoder output of a group of rows, what scoring and decoding start from.
use tch::Tensor;

use crate::model::adapters::{Adapt, AdapterTables};

/// Encoder output of a group of rows.
pub(crate) struct Encoded {
    /// [B, S, d]
    pub out: Tensor,
    /// 0/1 [B, S]
    pub mask: Tensor,
    /// S: the longest row's encoder positions.
    pub width: usize,
    /// Each row's adapter index [B] (None: no row has an adapter).
    pub adapters: Option<Tensor>,
}

impl Encoded {
    /// The rows' adapters over `tables` (None without any).
    pub fn adapt<'a>(&self, tables: &'a AdapterTables) -> Option<Adapt<'a>> {
        self.adapters
            .as_ref()
            .map(|index| Adapt::new(tables, index.shallow_clone()))
    }
}
