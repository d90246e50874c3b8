//! One pass's rows over the adapter tables: each row's factors gathered by its index.
//!
//! Two ways to apply many LoRAs in one batch ([`LoraKernel`]): gather every row's factors and
//! run two batched matmuls over the rows (Punica's BGMV), or group the rows by adapter and
//! run two matmuls per group (S-LoRA's / Punica's SGMV). BENCHMARKS.md §16 measures both.
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Tensor};

use super::sites::Site;
use super::tables::{AdapterTables, LoraTable};
use super::weights::PrefixRows;
use crate::model::error::ModelError;
use crate::model::packed::Packed;
use crate::model::profile::{span, Family};

/// How a pass applies the rows' LoRA factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LoraKernel {
    /// Each row's factors gathered, two batched matmuls over all rows (BGMV).
    #[default]
    Gathered,
    /// Rows grouped by adapter, two matmuls per adapter in the batch (SGMV).
    Grouped,
}

/// Set once by the command line, like the CPU matmul kernel.
static GROUPED: AtomicBool = AtomicBool::new(false);

/// Selects how this process applies LoRA factors.
pub fn set_lora_kernel(kernel: LoraKernel) {
    GROUPED.store(kernel == LoraKernel::Grouped, Ordering::Relaxed);
}

/// The adapters of one pass's rows: each row's index into the tables, and how the rows are
/// laid out in the activations the layers see.
pub struct Adapt<'a> {
    tables: &'a AdapterTables,
    /// [B] int64: each row's adapter (0: none).
    index: Tensor,
    /// Activations are packed rows ([N, features]): the layout and each position's adapter.
    packed: Option<(&'a Packed, Tensor)>,
}

impl<'a> Adapt<'a> {
    /// Rows with adapters `index` [B] (int64 on the tables' device), activations [B, T, …].
    pub fn new(tables: &'a AdapterTables, index: Tensor) -> Self {
        Self {
            tables,
            index,
            packed: None,
        }
    }

    /// Each row's adapter index [B].
    pub fn index(&self) -> &Tensor {
        &self.index
    }

    /// The rows' decoder prefixes (None when none has one).
    pub fn prefix(&self) -> Result<Option<PrefixRows>, ModelError> {
        self.tables.prefix_rows(&self.index)
    }

    /// The same rows, for activations packed as `rows` ([N, …]).
    pub fn packed(&self, rows: &'a Packed) -> Result<Adapt<'a>, ModelError> {
        let row_of = rows.positions.f_div_scalar_mode(rows.width, "floor")?;
        Ok(Adapt {
            tables: self.tables,
            index: self.index.shallow_clone(),
            packed: Some((rows, self.index.f_index_select(0, &row_of)?)),
        })
    }

    /// Rows `pick` [B'] of these rows (row layout).
    pub fn select(&self, pick: &Tensor) -> Result<Adapt<'a>, ModelError> {
        Ok(Adapt::new(self.tables, self.index.f_index_select(0, pick)?))
    }

    /// Per-row (or per-position) IA3 factors of a table, shaped to multiply `x`.
    fn scales(&self, table: &Tensor, x: &Tensor) -> Result<Tensor, ModelError> {
        let _span = span(Family::Gather);
        Ok(match &self.packed {
            Some((_, positions)) => table.f_index_select(0, positions)?,
            None => {
                let per_row = table.f_index_select(0, &self.index)?;
                let mut shape = vec![1i64; x.dim()];
                shape[0] = per_row.size()[0];
                *shape.last_mut().expect("at least 2-D") = per_row.size()[1];
                per_row.f_view(shape.as_slice())?
            }
        })
    }

    /// `x` scaled by the rows' IA3 factors on the input of `site`.
    pub fn input(&self, site: Site, x: Tensor) -> Result<Tensor, ModelError> {
        match self.tables.ia3.get(&(site, true)) {
            Some(table) => Ok(x.f_mul(&self.scales(table, &x)?)?),
            None => Ok(x),
        }
    }

    /// The output `y` of `site` for input `x`, plus the rows' LoRA updates, times their IA3
    /// output factors.
    pub fn output(&self, site: Site, x: &Tensor, y: Tensor) -> Result<Tensor, ModelError> {
        let y = match self.tables.lora.get(&site) {
            Some(table) => y.f_add(&self.lora(table, x)?)?,
            None => y,
        };
        match self.tables.ia3.get(&(site, false)) {
            Some(table) => Ok(y.f_mul(&self.scales(table, &y)?)?),
            None => Ok(y),
        }
    }

    /// `x @ A.T @ B.T` with each row's factors, by the process's [`LoraKernel`].
    fn lora(&self, table: &LoraTable, x: &Tensor) -> Result<Tensor, ModelError> {
        let _span = span(Family::Matmul);
        let rows = match &self.packed {
            Some((packed, _)) => {
                let inputs = x.size()[1];
                packed
                    .unpack(x)?
                    .f_view([packed.batch, packed.width, inputs])?
            }
            None if x.dim() == 2 => x.f_unsqueeze(1)?,
            None => x.shallow_clone(),
        };
        let delta = if GROUPED.load(Ordering::Relaxed) {
            self.grouped(table, &rows)?
        } else {
            let (a, b) = (
                table.a.f_index_select(0, &self.index)?,
                table.b.f_index_select(0, &self.index)?,
            );
            rows.f_bmm(&a)?.f_bmm(&b)?
        };
        match &self.packed {
            Some((packed, _)) => {
                let outputs = delta.size()[2];
                packed.pack(&delta.f_reshape([packed.batch, packed.width, outputs])?)
            }
            None if x.dim() == 2 => Ok(delta.f_squeeze_dim(1)?),
            None => Ok(delta),
        }
    }
}

impl Adapt<'_> {
    /// SGMV: the rows of each adapter in the batch together, one pair of matmuls per adapter;
    /// `rows` [B, T, in] → [B, T, out].
    fn grouped(&self, table: &LoraTable, rows: &Tensor) -> Result<Tensor, ModelError> {
        let index: Vec<i64> = Vec::try_from(self.index.f_to_device(Device::Cpu)?)?;
        let mut adapters = index.clone();
        adapters.sort_unstable();
        adapters.dedup();
        let (b, t) = (rows.size()[0], rows.size()[1]);
        let outputs = table.b.size()[2];
        let mut out = Tensor::f_zeros([b, t, outputs], (rows.kind(), rows.device()))?;
        for adapter in adapters.into_iter().filter(|&a| a != 0) {
            let members: Vec<i64> = (0..b).filter(|&i| index[i as usize] == adapter).collect();
            let members = Tensor::f_from_slice(&members)?.f_to_device(rows.device())?;
            let delta = rows
                .f_index_select(0, &members)?
                .f_matmul(&table.a.f_select(0, adapter)?)?
                .f_matmul(&table.b.f_select(0, adapter)?)?;
            out = out.f_index_add(0, &members, &delta)?;
        }
        Ok(out)
    }
}

/// `y` through `ad` at `site` (nothing without adapters).
pub fn adapt_output(
    ad: Option<&Adapt>,
    site: Site,
    x: &Tensor,
    y: Tensor,
) -> Result<Tensor, ModelError> {
    match ad {
        Some(ad) => ad.output(site, x, y),
        None => Ok(y),
    }
}

/// `x` through `ad`'s input scales at `site` (nothing without adapters).
pub fn adapt_input(ad: Option<&Adapt>, site: Site, x: Tensor) -> Result<Tensor, ModelError> {
    match ad {
        Some(ad) => ad.input(site, x),
        None => Ok(x),
    }
}
