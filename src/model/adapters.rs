//! Per-row adapters in one pass: LoRA factors and IA3 scales of every resident adapter, kept in
//! one device table per site (the linear layer they act on), each adapter at one index of all
//! of them; a pass gathers each row's entries by its index (Punica's BGMV idea), so rows of
//! different adapters, ranks and kinds share every matmul of the frozen model.
//!
//! Index 0 is "no adapter": zero LoRA factors and unit IA3 scales, so a row without one (or
//! whose adapter does not touch a site) is computed exactly as the frozen model would.
use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use super::config::T5Config;
use super::error::ModelError;
use super::packed::Packed;
use super::profile::{span, Family};

/// The part of a T5 block a linear layer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// `layer.0.SelfAttention`.
    SelfAttention,
    /// `layer.1.EncDecAttention` (decoder only).
    CrossAttention,
    /// `layer.{1,2}.DenseReluDense`.
    FeedForward,
}

/// A linear layer of a T5 block, by its Hugging Face name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Module {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    O,
    /// Feed-forward input (v1.0).
    Wi,
    /// Gated feed-forward input, activated half (v1.1).
    Wi0,
    /// Gated feed-forward input, linear half (v1.1).
    Wi1,
    /// Feed-forward output.
    Wo,
}

impl Module {
    /// The Hugging Face name (`q`, `wi_0`, …).
    pub fn name(self) -> &'static str {
        match self {
            Module::Q => "q",
            Module::K => "k",
            Module::V => "v",
            Module::O => "o",
            Module::Wi => "wi",
            Module::Wi0 => "wi_0",
            Module::Wi1 => "wi_1",
            Module::Wo => "wo",
        }
    }

    /// Parses a Hugging Face module name.
    pub fn parse(name: &str) -> Option<Self> {
        ALL_MODULES.into_iter().find(|m| m.name() == name)
    }
}

/// Every linear layer name of a T5 block.
pub const ALL_MODULES: [Module; 8] = [
    Module::Q,
    Module::K,
    Module::V,
    Module::O,
    Module::Wi,
    Module::Wi0,
    Module::Wi1,
    Module::Wo,
];

/// One linear layer of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site {
    /// Decoder (else encoder) stack.
    pub decoder: bool,
    /// Block index in its stack.
    pub layer: usize,
    /// Attention or feed-forward.
    pub part: Part,
    /// Which projection.
    pub module: Module,
}

impl Site {
    /// The site of a Hugging Face module path such as `decoder.block.1.layer.1.EncDecAttention.q`
    /// (a `base_model.model.` prefix is allowed); None when it names no linear layer of T5.
    pub fn parse(path: &str) -> Option<Self> {
        let path = path.strip_prefix("base_model.model.").unwrap_or(path);
        let parts: Vec<&str> = path.split('.').collect();
        let [stack, "block", layer, "layer", sub, part, module] = parts.as_slice() else {
            return None;
        };
        let decoder = match *stack {
            "encoder" => false,
            "decoder" => true,
            _ => return None,
        };
        let layer: usize = layer.parse().ok()?;
        let sub: usize = sub.parse().ok()?;
        let module = Module::parse(module)?;
        let part = match (*part, sub, decoder) {
            ("SelfAttention", 0, _) => Part::SelfAttention,
            ("EncDecAttention", 1, true) => Part::CrossAttention,
            ("DenseReluDense", 1, false) | ("DenseReluDense", 2, true) => Part::FeedForward,
            _ => return None,
        };
        let attention = matches!(module, Module::Q | Module::K | Module::V | Module::O);
        (attention == (part != Part::FeedForward)).then_some(Self {
            decoder,
            layer,
            part,
            module,
        })
    }

    /// The Hugging Face module path (no prefix).
    pub fn path(&self) -> String {
        let (sub, part) = match (self.decoder, self.part) {
            (_, Part::SelfAttention) => (0, "SelfAttention"),
            (_, Part::CrossAttention) => (1, "EncDecAttention"),
            (false, Part::FeedForward) => (1, "DenseReluDense"),
            (true, Part::FeedForward) => (2, "DenseReluDense"),
        };
        let name = if self.decoder { "decoder" } else { "encoder" };
        format!(
            "{name}.block.{}.layer.{sub}.{part}.{}",
            self.layer,
            self.module.name()
        )
    }

    /// (input, output) features of this layer in a model of `shape`; None when the model has
    /// no such layer (a block past its stack, `wi` in a gated model).
    pub fn dims(&self, shape: &ModelShape) -> Option<(usize, usize)> {
        let layers = if self.decoder {
            shape.decoder_layers
        } else {
            shape.encoder_layers
        };
        if self.layer >= layers {
            return None;
        }
        let (d, inner, ff) = (shape.d_model, shape.inner, shape.d_ff);
        match (self.module, shape.gated) {
            (Module::Q | Module::K | Module::V, _) => Some((d, inner)),
            (Module::O, _) => Some((inner, d)),
            (Module::Wi, false) | (Module::Wi0 | Module::Wi1, true) => Some((d, ff)),
            (Module::Wo, _) => Some((ff, d)),
            _ => None,
        }
    }

    /// Every linear layer of a model of `shape`.
    pub fn all(shape: &ModelShape) -> Vec<Site> {
        let mut out = Vec::new();
        for (decoder, layers) in [(false, shape.encoder_layers), (true, shape.decoder_layers)] {
            for layer in 0..layers {
                let mut parts = vec![Part::SelfAttention, Part::FeedForward];
                if decoder {
                    parts.insert(1, Part::CrossAttention);
                }
                for part in parts {
                    for module in ALL_MODULES {
                        let site = Site {
                            decoder,
                            layer,
                            part,
                            module,
                        };
                        let attention = part != Part::FeedForward;
                        let is_attention_module =
                            matches!(module, Module::Q | Module::K | Module::V | Module::O);
                        if attention == is_attention_module && site.dims(shape).is_some() {
                            out.push(site);
                        }
                    }
                }
            }
        }
        out
    }
}

/// The layer sizes of a T5 model: what an adapter's factors must fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Hidden width.
    pub d_model: usize,
    /// Attention width (heads × d_kv).
    pub inner: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Gated feed-forward (`wi_0`, `wi_1`) rather than `wi`.
    pub gated: bool,
    /// Encoder blocks.
    pub encoder_layers: usize,
    /// Decoder blocks.
    pub decoder_layers: usize,
}

impl ModelShape {
    /// The shape of a model of `cfg`.
    pub fn of(cfg: &T5Config) -> Self {
        Self {
            d_model: cfg.d_model as usize,
            inner: (cfg.num_heads * cfg.d_kv) as usize,
            heads: cfg.num_heads as usize,
            d_ff: cfg.d_ff as usize,
            gated: cfg.is_gated(),
            encoder_layers: cfg.num_layers as usize,
            decoder_layers: cfg.decoder_layers() as usize,
        }
    }
}

/// A LoRA update of one layer: `x @ A.T @ B.T`, the scaling folded into `b`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFactors {
    /// The layer.
    pub site: Site,
    /// Rank r.
    pub rank: usize,
    /// Input features.
    pub inputs: usize,
    /// Output features.
    pub outputs: usize,
    /// `lora_A.weight` [r, in], row-major.
    pub a: Vec<f32>,
    /// `lora_B.weight` × scaling [out, r], row-major.
    pub b: Vec<f32>,
}

/// An IA3 scale of one layer's input (feed-forward modules) or output.
#[derive(Debug, Clone, PartialEq)]
pub struct Ia3Scale {
    /// The layer.
    pub site: Site,
    /// Scales the layer's input (else its output).
    pub input: bool,
    /// One factor per feature.
    pub values: Vec<f32>,
}

/// Prefix keys and values of every decoder block's self-attention (prefix tuning).
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixWeights {
    /// Prefix positions P.
    pub len: usize,
    /// Attention heads.
    pub heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// For each decoder block: keys and values, each [heads, P, head_dim] row-major.
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
}

/// What an adapter changes in the frozen model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdapterWeights {
    /// LoRA updates.
    pub lora: Vec<LoraFactors>,
    /// IA3 scales.
    pub ia3: Vec<Ia3Scale>,
    /// A decoder self-attention prefix.
    pub prefix: Option<PrefixWeights>,
}

impl AdapterWeights {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.lora.is_empty() && self.ia3.is_empty() && self.prefix.is_none()
    }

    /// Parameters it holds.
    pub fn parameters(&self) -> usize {
        let prefix = self
            .prefix
            .as_ref()
            .map_or(0, |p| p.layers.iter().map(|(k, v)| k.len() + v.len()).sum());
        self.lora
            .iter()
            .map(|l| l.a.len() + l.b.len())
            .sum::<usize>()
            + self.ia3.iter().map(|s| s.values.len()).sum::<usize>()
            + prefix
    }
}

/// The prefix of each row of a batch, per decoder block (rows without one have length 0).
pub struct PrefixRows {
    /// Each row's prefix length [B] (int64).
    pub lens: Tensor,
    /// Per decoder block: keys and values [B, H, longest prefix, d_kv], zeros past a row's.
    pub kv: Vec<(Tensor, Tensor)>,
}

/// A resident prefix: its length, and per decoder block keys and values [H, P, d_kv].
type PrefixTable = (i64, Vec<(Tensor, Tensor)>);

/// One site's LoRA table: A.T [capacity, in, r] and (scaled) B.T [capacity, r, out].
struct LoraTable {
    a: Tensor,
    b: Tensor,
}

/// Every resident adapter's factors, one table per site; adapter `i` is row `i` of each.
pub struct AdapterTables {
    lora: HashMap<Site, LoraTable>,
    ia3: HashMap<(Site, bool), Tensor>,
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

    /// `x @ A.T @ B.T` with each row's factors: two batched matmuls over the rows.
    fn lora(&self, table: &LoraTable, x: &Tensor) -> Result<Tensor, ModelError> {
        let _span = span(Family::Matmul);
        let (a, b) = (
            table.a.f_index_select(0, &self.index)?,
            table.b.f_index_select(0, &self.index)?,
        );
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
        let delta = rows.f_bmm(&a)?.f_bmm(&b)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_parse_and_print_hugging_face_paths() {
        for path in [
            "encoder.block.0.layer.0.SelfAttention.q",
            "decoder.block.2.layer.1.EncDecAttention.v",
            "decoder.block.1.layer.2.DenseReluDense.wi_1",
            "encoder.block.3.layer.1.DenseReluDense.wo",
        ] {
            let site = Site::parse(path).unwrap();
            assert_eq!(site.path(), path);
            assert_eq!(Site::parse(&format!("base_model.model.{path}")), Some(site));
        }
        for bad in [
            "encoder.block.0.layer.1.EncDecAttention.q",
            "decoder.block.0.layer.1.DenseReluDense.wo",
            "encoder.block.0.layer.0.SelfAttention.wo",
            "encoder.block.x.layer.0.SelfAttention.q",
            "lm_head",
        ] {
            assert_eq!(Site::parse(bad), None, "{bad}");
        }
    }
}
