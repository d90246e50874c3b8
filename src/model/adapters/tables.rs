//! The device tables of every resident adapter: one per site, adapter `i` at row `i`.
use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use super::sites::Site;
use super::weights::{AdapterWeights, PrefixRows};
use crate::model::error::ModelError;

/// A resident prefix: its length, and per decoder block keys and values [H, P, d_kv].
type PrefixTable = (i64, Vec<(Tensor, Tensor)>);

/// One site's LoRA table: A.T [capacity, in, r] and (scaled) B.T [capacity, r, out].
pub(super) struct LoraTable {
    pub(super) a: Tensor,
    pub(super) b: Tensor,
}

/// Every resident adapter's factors, one table per site; adapter `i` is row `i` of each.
pub struct AdapterTables {
    pub(super) lora: HashMap<Site, LoraTable>,
    pub(super) ia3: HashMap<(Site, bool), Tensor>,
    /// Prefixes by adapter index: length, and per decoder block keys and values [H, P, d_kv].
    prefix: HashMap<i64, PrefixTable>,
    capacity: i64,
    device: Device,
    kind: Kind,
}

/// `t` with dimension `dim` grown to `len`, the new part filled with `fill`.
fn grow(t: &Tensor, dim: i64, len: i64, fill: f64) -> Result<Tensor, ModelError> {
    let mut shape = t.size();
    let have = shape[dim as usize];
    if have >= len {
        return Ok(t.shallow_clone());
    }
    shape[dim as usize] = len - have;
    let more = Tensor::f_full(shape.as_slice(), fill, (t.kind(), t.device()))?;
    Ok(Tensor::f_cat(&[t.shallow_clone(), more], dim)?)
}

impl AdapterTables {
    /// Empty tables (only index 0, "no adapter") on `device` in `kind`.
    pub fn new(device: Device, kind: Kind) -> Self {
        Self {
            lora: HashMap::new(),
            ia3: HashMap::new(),
            prefix: HashMap::new(),
            capacity: 1,
            device,
            kind,
        }
    }

    /// Tables holding one LoRA at index 1 (index 0: none) built from its factor tensors
    /// `(site, A [r, in], B [out, r], scaling)` by differentiable ops, so a loss through them
    /// has gradients in A and B (tuning a LoRA).
    pub fn trainable_lora(
        factors: &[(Site, &Tensor, &Tensor, f64)],
        device: Device,
        kind: Kind,
    ) -> Result<Self, ModelError> {
        let mut tables = Self::new(device, kind);
        tables.capacity = 2;
        for (site, a, b, scaling) in factors {
            let a_t = a.f_to_kind(kind)?.f_tr()?;
            let b_t = b.f_to_kind(kind)?.f_mul_scalar(*scaling)?.f_tr()?;
            let table = LoraTable {
                a: Tensor::f_stack(&[a_t.f_zeros_like()?, a_t], 0)?,
                b: Tensor::f_stack(&[b_t.f_zeros_like()?, b_t], 0)?,
            };
            tables.lora.insert(*site, table);
        }
        Ok(tables)
    }

    /// Tables holding one IA3 adapter at index 1 (index 0: none) built from its vectors
    /// `(site, scales the input, factors [features])` by differentiable ops (tuning IA3).
    pub fn trainable_ia3(
        scales: &[(Site, bool, &Tensor)],
        device: Device,
        kind: Kind,
    ) -> Result<Self, ModelError> {
        let mut tables = Self::new(device, kind);
        tables.capacity = 2;
        for (site, input, v) in scales {
            let v = v.f_to_kind(kind)?;
            let table = Tensor::f_stack(&[v.f_ones_like()?, v], 0)?;
            tables.ia3.insert((*site, *input), table);
        }
        Ok(tables)
    }

    /// Adapter indices the tables hold (index 0 included).
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Whether no adapter was ever written.
    pub fn is_empty(&self) -> bool {
        self.lora.is_empty() && self.ia3.is_empty() && self.prefix.is_empty()
    }

    /// The prefixes of rows with adapters `index` [B] (None when none of them has one).
    pub fn prefix_rows(&self, index: &Tensor) -> Result<Option<PrefixRows>, ModelError> {
        if self.prefix.is_empty() {
            return Ok(None);
        }
        let rows: Vec<i64> = Vec::try_from(index.f_to_device(Device::Cpu)?)?;
        let found: Vec<Option<&PrefixTable>> = rows.iter().map(|i| self.prefix.get(i)).collect();
        let Some((_, first)) = found.iter().flatten().next() else {
            return Ok(None);
        };
        let width = found.iter().flatten().map(|(p, _)| *p).max().unwrap_or(0);
        let lens: Vec<i64> = found.iter().map(|f| f.map_or(0, |(p, _)| *p)).collect();
        let mut kv = Vec::with_capacity(first.len());
        for layer in 0..first.len() {
            let (h, d) = (first[layer].0.size()[0], first[layer].0.size()[2]);
            let zeros = Tensor::f_zeros([h, width, d], (self.kind, self.device))?;
            let pick = |value: bool| -> Result<Tensor, ModelError> {
                let per_row = found
                    .iter()
                    .map(|f| match f {
                        Some((_, layers)) => {
                            let (k, v) = &layers[layer];
                            grow(if value { v } else { k }, 1, width, 0.0)
                        }
                        None => Ok(zeros.shallow_clone()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Tensor::f_stack(&per_row, 0)?)
            };
            kv.push((pick(false)?, pick(true)?));
        }
        Ok(Some(PrefixRows {
            lens: Tensor::f_from_slice(&lens)?.f_to_device(self.device)?,
            kv,
        }))
    }

    /// Bytes the tables take on the device.
    pub fn bytes(&self) -> i64 {
        let size = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        self.lora
            .values()
            .map(|t| size(&t.a) + size(&t.b))
            .sum::<i64>()
            + self.ia3.values().map(size).sum::<i64>()
            + self
                .prefix
                .values()
                .flat_map(|(_, layers)| layers.iter().map(|(k, v)| size(k) + size(v)))
                .sum::<i64>()
    }

    /// Makes room for indices below `capacity`.
    pub fn reserve(&mut self, capacity: i64) -> Result<(), ModelError> {
        if capacity <= self.capacity {
            return Ok(());
        }
        for table in self.lora.values_mut() {
            table.a = grow(&table.a, 0, capacity, 0.0)?;
            table.b = grow(&table.b, 0, capacity, 0.0)?;
        }
        for table in self.ia3.values_mut() {
            *table = grow(table, 0, capacity, 1.0)?;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Writes `w` at `index` (which must be below the capacity and cleared).
    pub fn write(&mut self, index: i64, w: &AdapterWeights) -> Result<(), ModelError> {
        if index <= 0 || index >= self.capacity {
            return Err(ModelError::Config(format!(
                "adapter index {index} outside 1..{}",
                self.capacity
            )));
        }
        let (cap, opts) = (self.capacity, (self.kind, self.device));
        for f in &w.lora {
            let (i, o, r) = (f.inputs as i64, f.outputs as i64, f.rank as i64);
            let table = match self.lora.remove(&f.site) {
                Some(t) => t,
                None => LoraTable {
                    a: Tensor::f_zeros([cap, i, r], opts)?,
                    b: Tensor::f_zeros([cap, r, o], opts)?,
                },
            };
            // A wider rank pads every other adapter's factors with zeros (same product).
            let table = LoraTable {
                a: grow(&table.a, 2, r, 0.0)?,
                b: grow(&table.b, 1, r, 0.0)?,
            };
            let a = Tensor::f_from_slice(&f.a)?.f_view([r, i])?.f_tr()?;
            let b = Tensor::f_from_slice(&f.b)?.f_view([o, r])?.f_tr()?;
            let put = |dst: &Tensor, src: &Tensor, dim: i64| -> Result<(), ModelError> {
                dst.f_select(0, index)?
                    .f_narrow(dim, 0, src.size()[dim as usize])?
                    .f_copy_(src)?;
                Ok(())
            };
            put(&table.a, &a, 1)?;
            put(&table.b, &b, 0)?;
            self.lora.insert(f.site, table);
        }
        if let Some(p) = &w.prefix {
            let (h, len, d) = (p.heads as i64, p.len as i64, p.head_dim as i64);
            let layers = p
                .layers
                .iter()
                .map(|(k, v)| {
                    let t = |x: &[f32]| -> Result<Tensor, ModelError> {
                        Ok(Tensor::f_from_slice(x)?
                            .f_view([h, len, d])?
                            .f_to_kind(self.kind)?
                            .f_to_device(self.device)?)
                    };
                    Ok((t(k)?, t(v)?))
                })
                .collect::<Result<Vec<_>, ModelError>>()?;
            self.prefix.insert(index, (len, layers));
        }
        for s in &w.ia3 {
            let key = (s.site, s.input);
            let dim = s.values.len() as i64;
            let table = match self.ia3.remove(&key) {
                Some(t) => t,
                None => Tensor::f_ones([cap, dim], opts)?,
            };
            table
                .f_select(0, index)?
                .f_copy_(&Tensor::f_from_slice(&s.values)?)?;
            self.ia3.insert(key, table);
        }
        Ok(())
    }

    /// Resets `index` to "no adapter".
    pub fn clear(&mut self, index: i64) -> Result<(), ModelError> {
        self.prefix.remove(&index);
        for t in self.lora.values_mut() {
            let _ = t.a.f_select(0, index)?.f_zero_()?;
            let _ = t.b.f_select(0, index)?.f_zero_()?;
        }
        for t in self.ia3.values_mut() {
            let _ = t.f_select(0, index)?.f_fill_(1.0)?;
        }
        Ok(())
    }
}
