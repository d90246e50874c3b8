//! `T5Block` and `T5Stack` (encoder and decoder), with the decoder's KV cache kept outside.
use tch::{Kind, Tensor};

use super::adapters::{Adapt, Part};
use super::config::T5Config;
use super::error::ModelError;
use super::layers::{
    dropout, position_bias, relative_position_bucket, T5Attention, T5LayerFF, T5LayerNorm,
};
use super::matmul::Packing;
use super::packed::Packed;
use super::profile::{span, Family};
use super::weights::WeightSource;

/// Keys and values of one decoder block. The self-attention buffers are allocated at the
/// columns the batch is planned to need and written in place, one column per step; rows may
/// be written over (a finished row's slot given to a newcomer) without copying the others.
pub struct LayerCache {
    /// Self-attention keys and values [B, H, capacity, d_kv] (None before the first step).
    pub self_kv: Option<(Tensor, Tensor)>,
    /// Cross-attention keys and values over the encoder output [B, H, S, d_kv].
    pub cross_kv: (Tensor, Tensor),
    /// Self-attention prefix keys and values [B, H, P, d_kv] (prefix tuning; zeros past a
    /// row's own prefix, which the bias masks).
    pub prefix_kv: Option<(Tensor, Tensor)>,
}

/// Where a decode step reads and writes a [`LayerCache`]'s self-attention buffers.
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    /// First buffer column the step attends to.
    pub first: i64,
    /// Buffer column the step writes (and attends to last).
    pub write: i64,
    /// Buffer columns to allocate when the cache has none yet.
    pub capacity: i64,
}

/// `t` with dimension 2 padded with zeros to `len`.
fn pad_dim2(t: &Tensor, len: i64) -> Result<Tensor, ModelError> {
    let mut shape = t.size();
    let have = shape[2];
    if have >= len {
        return Ok(t.shallow_clone());
    }
    shape[2] = len - have;
    let zeros = Tensor::f_zeros(shape.as_slice(), (t.kind(), t.device()))?;
    Ok(Tensor::f_cat(&[t.shallow_clone(), zeros], 2)?)
}

impl LayerCache {
    /// Keeps the batch rows in `keep` (int64 indices on the cache's device).
    pub fn select(&self, keep: &Tensor) -> Result<Self, ModelError> {
        let pick = |(k, v): &(Tensor, Tensor)| -> Result<(Tensor, Tensor), ModelError> {
            Ok((k.f_index_select(0, keep)?, v.f_index_select(0, keep)?))
        };
        Ok(Self {
            self_kv: self.self_kv.as_ref().map(pick).transpose()?,
            cross_kv: pick(&self.cross_kv)?,
            prefix_kv: self.prefix_kv.as_ref().map(pick).transpose()?,
        })
    }

    /// This cache's prefix widened to `width` positions, zeros for a cache without one
    /// (`like` gives the shape of a prefix).
    fn prefix_or_zeros(
        &self,
        like: &(Tensor, Tensor),
        width: i64,
    ) -> Result<(Tensor, Tensor), ModelError> {
        match &self.prefix_kv {
            Some((k, v)) => Ok((pad_dim2(k, width)?, pad_dim2(v, width)?)),
            None => {
                let mut shape = like.0.size();
                shape[0] = self.cross_kv.0.size()[0];
                shape[2] = width;
                let z = Tensor::f_zeros(shape.as_slice(), (like.0.kind(), like.0.device()))?;
                Ok((z.shallow_clone(), z))
            }
        }
    }

    /// The widest prefix of `self` and `other`, and one prefix to shape zeros on.
    fn prefix_shape<'a>(&'a self, other: &'a LayerCache) -> Option<(&'a (Tensor, Tensor), i64)> {
        let like = self.prefix_kv.as_ref().or(other.prefix_kv.as_ref())?;
        let width = [&self.prefix_kv, &other.prefix_kv]
            .iter()
            .filter_map(|p| p.as_ref().map(|(k, _)| k.size()[2]))
            .max()
            .unwrap_or(0);
        Some((like, width))
    }

    /// Appends `fresh`'s rows (no self-attention keys yet) after this cache's: they get zero
    /// self-attention columns (masked by the caller) and cross keys padded to `enc_len`.
    pub fn append(self, fresh: LayerCache, enc_len: i64) -> Result<Self, ModelError> {
        let prefix_kv = match self.prefix_shape(&fresh) {
            None => None,
            Some((like, width)) => {
                let (a, b) = (
                    self.prefix_or_zeros(like, width)?,
                    fresh.prefix_or_zeros(like, width)?,
                );
                Some((
                    Tensor::f_cat(&[a.0, b.0], 0)?,
                    Tensor::f_cat(&[a.1, b.1], 0)?,
                ))
            }
        };
        let (ck, cv) = &self.cross_kv;
        let (fk, fv) = &fresh.cross_kv;
        let cross_kv = (
            Tensor::f_cat(&[pad_dim2(ck, enc_len)?, pad_dim2(fk, enc_len)?], 0)?,
            Tensor::f_cat(&[pad_dim2(cv, enc_len)?, pad_dim2(fv, enc_len)?], 0)?,
        );
        let self_kv = match self.self_kv {
            None => None,
            Some((k, v)) => {
                let mut shape = k.size();
                shape[0] = fk.size()[0];
                let zeros = Tensor::f_zeros(shape.as_slice(), (k.kind(), k.device()))?;
                Some((
                    Tensor::f_cat(&[k, zeros.shallow_clone()], 0)?,
                    Tensor::f_cat(&[v, zeros], 0)?,
                ))
            }
        };
        Ok(Self {
            self_kv,
            cross_kv,
            prefix_kv,
        })
    }

    /// Writes `fresh`'s rows (no self-attention keys yet) over the rows `slots` in place: their
    /// cross keys (padded to this cache's encoder length, which must cover theirs) and zeroed
    /// self-attention columns. The other rows are not touched.
    pub fn place(&mut self, fresh: &LayerCache, slots: &Tensor) -> Result<(), ModelError> {
        if let Some((like, width)) = self.prefix_shape(fresh) {
            let mut mine = self.prefix_or_zeros(like, width)?;
            let theirs = fresh.prefix_or_zeros(like, width)?;
            let _ = mine.0.f_index_copy_(0, slots, &theirs.0)?;
            let _ = mine.1.f_index_copy_(0, slots, &theirs.1)?;
            self.prefix_kv = Some(mine);
        }
        let width = self.cross_kv.0.size()[2];
        let (ck, cv) = &mut self.cross_kv;
        let _ = ck.f_index_copy_(0, slots, &pad_dim2(&fresh.cross_kv.0, width)?)?;
        let _ = cv.f_index_copy_(0, slots, &pad_dim2(&fresh.cross_kv.1, width)?)?;
        if let Some((k, v)) = &mut self.self_kv {
            let _ = k.f_index_fill_(0, slots, 0.0)?;
            let _ = v.f_index_fill_(0, slots, 0.0)?;
        }
        Ok(())
    }

    /// Pads the cross keys and values to `enc_len` encoder positions (a longer newcomer).
    pub fn widen(&mut self, enc_len: i64) -> Result<(), ModelError> {
        let (k, v) = &self.cross_kv;
        self.cross_kv = (pad_dim2(k, enc_len)?, pad_dim2(v, enc_len)?);
        Ok(())
    }

    /// Keeps the first `enc_len` encoder positions (a view).
    pub fn narrow_encoder(&mut self, enc_len: i64) -> Result<(), ModelError> {
        let (k, v) = &self.cross_kv;
        if k.size()[2] > enc_len {
            self.cross_kv = (k.f_narrow(2, 0, enc_len)?, v.f_narrow(2, 0, enc_len)?);
        }
        Ok(())
    }

    /// New self-attention buffers of `capacity` columns holding columns `from..from + len`
    /// of the old ones at 0..len.
    pub fn recolumn(&mut self, from: i64, len: i64, capacity: i64) -> Result<(), ModelError> {
        if let Some((k, v)) = &self.self_kv {
            let moved = |t: &Tensor| -> Result<Tensor, ModelError> {
                let mut shape = t.size();
                shape[2] = capacity;
                let out = Tensor::f_zeros(shape.as_slice(), (t.kind(), t.device()))?;
                out.f_narrow(2, 0, len)?
                    .f_copy_(&t.f_narrow(2, from, len)?)?;
                Ok(out)
            };
            self.self_kv = Some((moved(k)?, moved(v)?));
        }
        Ok(())
    }
}

/// Self-attention keys and values after a row prefix's (prefix tuning), if any.
fn with_prefix(
    prefix: Option<&(Tensor, Tensor)>,
    k: Tensor,
    v: Tensor,
) -> Result<(Tensor, Tensor), ModelError> {
    match prefix {
        None => Ok((k, v)),
        Some((pk, pv)) => Ok((
            Tensor::f_cat(&[pk.shallow_clone(), k], 2)?,
            Tensor::f_cat(&[pv.shallow_clone(), v], 2)?,
        )),
    }
}

/// `T5Block`: self-attention, cross-attention (decoder only), feed-forward; all pre-norm residual.
pub struct T5Block {
    self_attn: T5Attention,
    self_norm: T5LayerNorm,
    cross: Option<(T5Attention, T5LayerNorm)>,
    ff: T5LayerFF,
}

/// Replaces ±inf in f16 hidden states as transformers does, so f16 checkpoints stay finite.
fn clamp_half(x: Tensor) -> Result<Tensor, ModelError> {
    if x.kind() != Kind::Half {
        return Ok(x);
    }
    let max = 65504.0;
    let any_inf = x.f_isinf()?.f_any()?.f_int64_value(&[])? != 0;
    let bound = if any_inf { max - 1000.0 } else { max };
    Ok(x.f_clamp(-bound, bound)?)
}

impl T5Block {
    fn load(
        w: &dyn WeightSource,
        prefix: &str,
        cfg: &T5Config,
        is_decoder: bool,
        index: usize,
    ) -> Result<Self, ModelError> {
        let first = index == 0;
        let self_attn = T5Attention::load(
            w,
            &format!("{prefix}.layer.0.SelfAttention"),
            cfg,
            first,
            (is_decoder, index, Part::SelfAttention),
        )?;
        let self_norm = T5LayerNorm::load(w, &format!("{prefix}.layer.0.layer_norm"), cfg)?;
        let (cross, ff_index) = if is_decoder {
            let attn = T5Attention::load(
                w,
                &format!("{prefix}.layer.1.EncDecAttention"),
                cfg,
                false,
                (is_decoder, index, Part::CrossAttention),
            )?;
            let norm = T5LayerNorm::load(w, &format!("{prefix}.layer.1.layer_norm"), cfg)?;
            (Some((attn, norm)), 2)
        } else {
            (None, 1)
        };
        let ff = T5LayerFF::load(
            w,
            &format!("{prefix}.layer.{ff_index}"),
            cfg,
            (is_decoder, index),
        )?;
        Ok(Self {
            self_attn,
            self_norm,
            cross,
            ff,
        })
    }

    fn pack(&mut self, packing: Packing) -> Result<(), ModelError> {
        self.self_attn.pack(packing)?;
        if let Some((attn, _)) = &mut self.cross {
            attn.pack(packing)?;
        }
        self.ff.pack(packing)
    }

    fn collect(&self, out: &mut Vec<Tensor>) {
        self.self_attn.collect(out);
        self.self_norm.collect(out);
        if let Some((attn, norm)) = &self.cross {
            attn.collect(out);
            norm.collect(out);
        }
        self.ff.collect(out);
    }

    fn cross_part(&self) -> Result<&(T5Attention, T5LayerNorm), ModelError> {
        self.cross
            .as_ref()
            .ok_or_else(|| ModelError::Weights("encoder block used as decoder".into()))
    }

    /// Encoder block, or decoder block over a whole target sequence (no cache); `drop` is the
    /// training dropout (0 when serving).
    fn forward(
        &self,
        x: &Tensor,
        self_bias: &Tensor,
        cross: Option<(&LayerCache, &Tensor)>,
        drop: f64,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        let h = self.self_norm.forward(x)?;
        let (k, v) = self.self_attn.key_values(&h, ad)?;
        let prefix = cross.and_then(|(cache, _)| cache.prefix_kv.as_ref());
        let (k, v) = with_prefix(prefix, k, v)?;
        let attended = self.self_attn.attend(&h, &k, &v, self_bias, drop, ad)?;
        let mut x = clamp_half(x.f_add(&dropout(attended, drop)?)?)?;
        if let Some((
            LayerCache {
                cross_kv: (ck, cv), ..
            },
            cross_bias,
        )) = cross
        {
            let (attn, norm) = self.cross_part()?;
            let h = norm.forward(&x)?;
            let attended = attn.attend(&h, ck, cv, cross_bias, drop, ad)?;
            x = clamp_half(x.f_add(&dropout(attended, drop)?)?)?;
        }
        clamp_half(self.ff.forward(&x, drop, ad)?)
    }

    /// Encoder block over packed rows `x` [N, d] (serving: no dropout).
    fn forward_packed(
        &self,
        x: &Tensor,
        rows: &Packed,
        bias: &Tensor,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        let h = self.self_norm.forward(x)?;
        let attended = self.self_attn.attend_packed(&h, rows, bias, ad)?;
        let x = clamp_half(x.f_add(&attended)?)?;
        clamp_half(self.ff.forward(&x, 0.0, ad)?)
    }

    /// Decoder block for the newest position only, writing its keys/values into `cache` at
    /// `cols.write` and attending to `cols.first..=cols.write`.
    fn step(
        &self,
        x: &Tensor,
        self_bias: &Tensor,
        cross_bias: &Tensor,
        cache: &mut LayerCache,
        cols: Columns,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        let h = self.self_norm.forward(x)?;
        let (k_new, v_new) = self.self_attn.key_values(&h, ad)?;
        let (k, v) = {
            let _span = span(Family::KvCache);
            if cache.self_kv.is_none() {
                let mut shape = k_new.size();
                shape[2] = cols.capacity.max(cols.write + 1);
                let zeros = || Tensor::f_zeros(shape.as_slice(), (k_new.kind(), k_new.device()));
                cache.self_kv = Some((zeros()?, zeros()?));
            }
            let (kb, vb) = cache.self_kv.as_ref().expect("allocated above");
            kb.f_narrow(2, cols.write, 1)?.f_copy_(&k_new)?;
            vb.f_narrow(2, cols.write, 1)?.f_copy_(&v_new)?;
            let attended = cols.write + 1 - cols.first;
            let (k, v) = (
                kb.f_narrow(2, cols.first, attended)?,
                vb.f_narrow(2, cols.first, attended)?,
            );
            with_prefix(cache.prefix_kv.as_ref(), k, v)?
        };
        let attended = self.self_attn.attend(&h, &k, &v, self_bias, 0.0, ad)?;
        let mut x = clamp_half(x.f_add(&attended)?)?;
        let (attn, norm) = self.cross_part()?;
        let h = norm.forward(&x)?;
        let (ck, cv) = &cache.cross_kv;
        x = clamp_half(x.f_add(&attn.attend(&h, ck, cv, cross_bias, 0.0, ad)?)?)?;
        clamp_half(self.ff.forward(&x, 0.0, ad)?)
    }
}

/// `T5Stack`: blocks plus the final norm; the first block owns the relative position bias.
pub struct T5Stack {
    blocks: Vec<T5Block>,
    final_layer_norm: T5LayerNorm,
    is_decoder: bool,
    cfg: T5Config,
}

impl T5Stack {
    /// Loads `encoder.*` or `decoder.*`.
    pub fn load(
        w: &dyn WeightSource,
        cfg: &T5Config,
        is_decoder: bool,
    ) -> Result<Self, ModelError> {
        let (name, layers) = if is_decoder {
            ("decoder", cfg.decoder_layers())
        } else {
            ("encoder", cfg.num_layers)
        };
        let blocks = (0..layers)
            .map(|i| T5Block::load(w, &format!("{name}.block.{i}"), cfg, is_decoder, i as usize))
            .collect::<Result<Vec<_>, _>>()?;
        let final_layer_norm = T5LayerNorm::load(w, &format!("{name}.final_layer_norm"), cfg)?;
        Ok(Self {
            blocks,
            final_layer_norm,
            is_decoder,
            cfg: cfg.clone(),
        })
    }

    /// Packs every block's linear layers for serving passes.
    pub fn pack(&mut self, packing: Packing) -> Result<(), ModelError> {
        self.blocks.iter_mut().try_for_each(|b| b.pack(packing))
    }

    /// Adds every weight of the stack to `out`.
    pub fn collect(&self, out: &mut Vec<Tensor>) {
        for block in &self.blocks {
            block.collect(out);
        }
        self.final_layer_norm.collect(out);
    }

    /// Relative position bias [1, H, tq, tk] for queries starting at `query_start` (zeros without blocks).
    pub fn position_bias(
        &self,
        query_start: i64,
        tq: i64,
        tk: i64,
        like: &Tensor,
    ) -> Result<Tensor, ModelError> {
        match self
            .blocks
            .first()
            .and_then(|b| b.self_attn.relative_attention_bias.as_ref())
        {
            Some(table) => position_bias(table, &self.cfg, !self.is_decoder, query_start, tq, tk),
            None => Ok(Tensor::f_zeros(
                [1, self.cfg.num_heads, tq, tk],
                (like.kind(), like.device()),
            )?),
        }
    }

    /// Encoder forward: `x` [B, S, d] embeddings, `mask_bias` [B, 1, 1, S] additive; `drop` is
    /// the training dropout (0 when serving).
    pub fn encode(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        drop: f64,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        let s = x.size()[1];
        let position = self.position_bias(0, s, s, x)?;
        let bias = {
            let _span = span(Family::PositionBias);
            position.f_add(mask_bias)?
        };
        let mut h = dropout(x.shallow_clone(), drop)?;
        for block in &self.blocks {
            h = block.forward(&h, &bias, None, drop, ad)?;
        }
        dropout(self.final_layer_norm.forward(&h)?, drop)
    }

    /// Encoder forward for serving, `mask` [B, S] 0/1: every per-position
    /// op (projections, norms, feed-forward) runs on the real positions only, so padding costs
    /// nothing but attention. Each real position's output is the padded path's (padding is
    /// masked in both); padding positions of the result are zeros. Falls back to [`encode`]
    /// when padding is under 5% of the batch (the packing copies would cost more) and when
    /// gradients flow (tuning keeps transformers' eager path).
    ///
    /// [`encode`]: T5Stack::encode
    pub fn encode_packed(
        &self,
        x: &Tensor,
        mask: &Tensor,
        mask_bias: &Tensor,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        let (batch, width, d) = x.size3()?;
        let rows = match Packed::of(mask)? {
            Some(rows) if !x.requires_grad() => rows,
            _ => return self.encode(x, mask_bias, 0.0, ad),
        };
        let ad = ad.map(|a| a.packed(&rows)).transpose()?;
        let position = self.position_bias(0, width, width, x)?;
        let bias = {
            let _span = span(Family::PositionBias);
            position.f_add(mask_bias)?
        };
        let mut h = rows.pack(x)?;
        for block in &self.blocks {
            h = block.forward_packed(&h, &rows, &bias, ad.as_ref())?;
        }
        let h = self.final_layer_norm.forward(&h)?;
        Ok(rows.unpack(&h)?.f_view([batch, width, d])?)
    }

    /// Cross-attention keys/values of every decoder block over the encoder output.
    pub fn cross_caches(
        &self,
        encoder_out: &Tensor,
        ad: Option<&Adapt>,
    ) -> Result<Vec<LayerCache>, ModelError> {
        self.blocks
            .iter()
            .map(|b| {
                Ok(LayerCache {
                    self_kv: None,
                    cross_kv: b.cross_part()?.0.key_values(encoder_out, ad)?,
                    prefix_kv: None,
                })
            })
            .collect()
    }

    /// [`T5Stack::cross_caches`] over the real positions of `mask` [B, S] only (zeros at
    /// padding, which the cross-attention masks), when padding is worth skipping.
    pub fn cross_caches_packed(
        &self,
        encoder_out: &Tensor,
        mask: &Tensor,
        ad: Option<&Adapt>,
    ) -> Result<Vec<LayerCache>, ModelError> {
        let rows = match Packed::of(mask)? {
            Some(rows) if !encoder_out.requires_grad() => rows,
            _ => return self.cross_caches(encoder_out, ad),
        };
        let ad = ad.map(|a| a.packed(&rows)).transpose()?;
        let h = rows.pack(encoder_out)?;
        self.blocks
            .iter()
            .map(|b| {
                Ok(LayerCache {
                    self_kv: None,
                    cross_kv: b
                        .cross_part()?
                        .0
                        .key_values_packed(&h, &rows, ad.as_ref())?,
                    prefix_kv: None,
                })
            })
            .collect()
    }

    /// Decoder over whole target sequences `x` [B, T, d] (teacher forcing); `drop` is the
    /// training dropout (0 when serving).
    pub fn decode_full(
        &self,
        x: &Tensor,
        caches: &[LayerCache],
        cross_bias: &Tensor,
        drop: f64,
        ad: Option<&Adapt>,
        prefix_lens: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let (b, t) = (x.size()[0], x.size()[1]);
        let device = x.device();
        // Causal: key position > query position is masked.
        let future = Tensor::f_ones([t, t], (Kind::Bool, device))?.f_triu(1)?;
        let causal = Tensor::f_zeros([t, t], (x.kind(), device))?
            .f_masked_fill(&future, min_value(x.kind()))?;
        let mut bias = self.position_bias(0, t, t, x)?.f_add(&causal)?;
        let prefix = caches.first().and_then(|c| c.prefix_kv.as_ref());
        if let (Some((pk, _)), Some(lens)) = (prefix, prefix_lens) {
            let query = Tensor::f_arange(t, (Kind::Int64, device))?
                .f_unsqueeze(0)?
                .f_expand([b, t], false)?;
            let before = self.prefix_bias(lens, &query, pk.size()[2], x)?;
            let heads = bias.size()[1];
            bias = Tensor::f_cat(&[before, bias.f_expand([b, heads, t, t], false)?], 3)?;
        }
        let mut h = dropout(x.shallow_clone(), drop)?;
        for (block, cache) in self.blocks.iter().zip(caches) {
            h = block.forward(&h, &bias, Some((cache, cross_bias)), drop, ad)?;
        }
        dropout(self.final_layer_norm.forward(&h)?, drop)
    }

    /// The additive bias [B, H, T, width] of rows' prefix keys (prefix tuning) for queries
    /// at row positions `query` [B, T]: as transformers places a prefix of P_b positions
    /// before the decoder's tokens, prefix key i of row b is at relative position
    /// i − (P_b + q); keys past a row's own prefix are masked. `lens` [B] holds P_b.
    pub fn prefix_bias(
        &self,
        lens: &Tensor,
        query: &Tensor,
        width: i64,
        like: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let _span = span(Family::PositionBias);
        let device = lens.device();
        let keys = Tensor::f_arange(width, (Kind::Int64, device))?.f_view([1, 1, width])?;
        let lens = lens.f_view([-1, 1, 1])?;
        let rel = keys.f_sub(&lens.f_add(&query.f_unsqueeze(-1)?)?)?; // [B, T, width]
        let (b, t) = (rel.size()[0], rel.size()[1]);
        let values = match self
            .blocks
            .first()
            .and_then(|b| b.self_attn.relative_attention_bias.as_ref())
        {
            Some(table) => {
                let buckets = relative_position_bucket(
                    &rel,
                    false,
                    self.cfg.relative_attention_num_buckets,
                    self.cfg.relative_attention_max_distance,
                )?;
                Tensor::f_embedding(table, &buckets, -1, false, false)?.f_permute([0, 3, 1, 2])?
            }
            None => Tensor::f_zeros(
                [b, self.cfg.num_heads, t, width],
                (like.kind(), like.device()),
            )?,
        };
        let past = keys.f_ge_tensor(&lens)?.f_unsqueeze(1)?; // [B, 1, 1, width]
        Ok(values
            .f_to_kind(like.kind())?
            .f_masked_fill(&past, min_value(like.kind()))?)
    }

    /// Decoder for one new position of every row; `x` [B, 1, d], `self_bias` [B or 1, H, 1,
    /// attended columns].
    pub fn decode_step(
        &self,
        x: &Tensor,
        self_bias: &Tensor,
        caches: &mut [LayerCache],
        cross_bias: &Tensor,
        cols: Columns,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        let mut h = x.shallow_clone();
        for (block, cache) in self.blocks.iter().zip(caches.iter_mut()) {
            h = block.step(&h, self_bias, cross_bias, cache, cols, ad)?;
        }
        self.final_layer_norm.forward(&h)
    }
}

/// The additive "masked" value: the dtype's lowest finite number, as transformers uses.
pub fn min_value(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use crate::model::random::Shape;
    use crate::model::{ModelOptions, T5Model};

    #[test]
    fn packed_encoder_equals_the_padded_one_at_every_real_position() {
        let _guard = tch::no_grad_guard();
        let opts = ModelOptions {
            device: Device::Cpu,
            kind: Kind::Float,
        };
        let model = T5Model::synthetic(Shape::Mini.config(), opts, 5).unwrap();
        let lengths = [10i64, 4, 7, 1];
        let (b, s) = (lengths.len() as i64, 10);
        tch::manual_seed(11);
        let embeds = Tensor::randn([b, s, 128], (Kind::Float, Device::Cpu));
        let mask: Vec<i64> = lengths
            .iter()
            .flat_map(|&len| (0..s).map(move |j| (j < len) as i64))
            .collect();
        let mask = Tensor::from_slice(&mask).view([b, s]);
        let bias = model.mask_bias(&mask).unwrap();
        let padded = model.encoder.encode(&embeds, &bias, 0.0, None).unwrap();
        // 33% padding: the packed path runs.
        let packed = model.encode(&embeds, &mask, None).unwrap();
        let real = mask.unsqueeze(-1).to_kind(Kind::Float);
        let diff = ((&padded - &packed) * &real).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
        let pad = packed
            .f_mul(&real.f_neg().unwrap().f_add_scalar(1.0).unwrap())
            .unwrap()
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(pad, 0.0);
        // And each row alone (no padding: the padded path) gives its own rows.
        for (i, &len) in lengths.iter().enumerate() {
            let one = embeds.narrow(0, i as i64, 1).narrow(1, 0, len);
            let alone = model
                .encode(
                    &one,
                    &Tensor::ones([1, len], (Kind::Int64, Device::Cpu)),
                    None,
                )
                .unwrap();
            let batched = packed.narrow(0, i as i64, 1).narrow(1, 0, len);
            let diff = (&alone - &batched).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "row {i}: {diff}");
        }
    }
}
