//! T5 modules, one struct per Hugging Face module, weight names as in its state dict.
use tch::{Kind, Tensor};

use super::adapters::{adapt_input, adapt_output, Adapt, Module, Part, Site};
use super::config::{Activation, T5Config};
use super::error::ModelError;
use super::matmul::Linear;
use super::matmul::Packing;
use super::packed::Packed;
use super::profile::{span, Family};
use super::weights::WeightSource;

/// `T5LayerNorm`: RMS norm without mean or bias, accumulated in f32.
pub struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    /// Loads `<prefix>.weight`.
    pub fn load(w: &dyn WeightSource, prefix: &str, cfg: &T5Config) -> Result<Self, ModelError> {
        Ok(Self {
            weight: w.get(&format!("{prefix}.weight"), &[cfg.d_model])?,
            eps: cfg.layer_norm_epsilon,
        })
    }

    /// Adds this module's weights to `out`.
    pub fn collect(&self, out: &mut Vec<Tensor>) {
        out.push(self.weight.shallow_clone());
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let _span = span(Family::LayerNorm);
        if !TRAINING.with(|t| t.get()) && super::kernels::rms_norm_takes(x, &self.weight) {
            return super::kernels::rms_norm(x, &self.weight, self.eps);
        }
        let x32 = x.f_to_kind(Kind::Float)?;
        let variance = x32
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, Kind::Float)?;
        let normed = x32.f_mul(&(variance + self.eps).f_rsqrt()?)?;
        Ok(self.weight.f_mul(&normed.f_to_kind(self.weight.kind())?)?)
    }
}

/// Training-mode dropout with probability `p` (identity when `p` is 0, as in every serving pass).
pub fn dropout(x: Tensor, p: f64) -> Result<Tensor, ModelError> {
    if p > 0.0 {
        // keep ~ U[0,1) >= p, scaled by 1 / (1 - p): the same distribution as torch's dropout,
        // drawn with the vectorised uniform generator (libtorch's CPU dropout measured ~12x slower here).
        let keep = x.f_rand_like()?.f_ge(p)?.f_to_kind(x.kind())?;
        Ok(x.f_mul(&keep)?.f_mul_scalar(1.0 / (1.0 - p))?)
    } else {
        Ok(x)
    }
}

/// `x @ weight.T` through the serving kernel ([`super::matmul`]); training keeps `linear`.
pub(super) fn linear(x: &Tensor, weight: &Tensor) -> Result<Tensor, ModelError> {
    let _span = span(Family::Matmul);
    super::matmul::linear(x, weight, TRAINING.with(|t| t.get()))
}

/// `x @ layer.T` through the layer's serving kernel (its int8 pack under `--dtype int8`).
pub(super) fn apply(x: &Tensor, layer: &Linear) -> Result<Tensor, ModelError> {
    let _span = span(Family::Matmul);
    layer.forward(x, TRAINING.with(|t| t.get()))
}

/// `x @ weight.T` at `site`, through the rows' adapters (IA3 on its input, LoRA and IA3 on
/// its output); the layer alone without them.
fn project(
    x: &Tensor,
    weight: &Linear,
    site: Site,
    ad: Option<&Adapt>,
) -> Result<Tensor, ModelError> {
    if ad.is_none() {
        return apply(x, weight);
    }
    let x = adapt_input(ad, site, x.shallow_clone())?;
    let y = apply(&x, weight)?;
    adapt_output(ad, site, &x, y)
}

fn activate(act: Activation, x: &Tensor) -> Result<Tensor, ModelError> {
    let _span = span(Family::Activation);
    Ok(match act {
        Activation::Relu => x.f_relu()?,
        Activation::Gelu => x.f_gelu("none")?,
        Activation::GeluTanh => x.f_gelu("tanh")?,
        Activation::Silu => x.f_silu()?,
    })
}

/// `T5DenseActDense` (v1.0) or `T5DenseGatedActDense` (v1.1, Flan).
enum DenseReluDense {
    /// wo(act(wi(x)))
    Act { wi: Linear, wo: Linear },
    /// wo(act(wi_0(x)) * wi_1(x))
    Gated {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
}

/// `T5LayerFF`: pre-norm feed-forward with a residual.
pub struct T5LayerFF {
    dense: DenseReluDense,
    act: Activation,
    layer_norm: T5LayerNorm,
    /// (decoder, block): where adapters find this layer.
    at: (bool, usize),
}

impl T5LayerFF {
    /// Loads `<prefix>.DenseReluDense.*` and `<prefix>.layer_norm`.
    pub fn load(
        w: &dyn WeightSource,
        prefix: &str,
        cfg: &T5Config,
        at: (bool, usize),
    ) -> Result<Self, ModelError> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let p = format!("{prefix}.DenseReluDense");
        let get = |n: &str, shape: &[i64]| {
            Ok::<_, ModelError>(Linear::new(w.get(&format!("{p}.{n}.weight"), shape)?))
        };
        let dense = if cfg.is_gated() {
            DenseReluDense::Gated {
                wi_0: get("wi_0", &[f, d])?,
                wi_1: get("wi_1", &[f, d])?,
                wo: get("wo", &[d, f])?,
            }
        } else {
            DenseReluDense::Act {
                wi: get("wi", &[f, d])?,
                wo: get("wo", &[d, f])?,
            }
        };
        Ok(Self {
            dense,
            act: cfg.activation()?,
            layer_norm: T5LayerNorm::load(w, &format!("{prefix}.layer_norm"), cfg)?,
            at,
        })
    }

    /// Adds this module's weights to `out`.
    pub fn collect(&self, out: &mut Vec<Tensor>) {
        let weight = |l: &Linear| l.weight().shallow_clone();
        match &self.dense {
            DenseReluDense::Act { wi, wo } => out.extend([wi, wo].map(weight)),
            DenseReluDense::Gated { wi_0, wi_1, wo } => out.extend([wi_0, wi_1, wo].map(weight)),
        }
        self.layer_norm.collect(out);
    }

    /// Packs the linear layers' weights for serving passes.
    pub fn pack(&mut self, packing: Packing) -> Result<(), ModelError> {
        match &mut self.dense {
            DenseReluDense::Act { wi, wo } => {
                [wi, wo].into_iter().try_for_each(|l| l.pack(packing))
            }
            DenseReluDense::Gated { wi_0, wi_1, wo } => [wi_0, wi_1, wo]
                .into_iter()
                .try_for_each(|l| l.pack(packing)),
        }
    }

    /// `x @ weight.T` at `module` of this layer, through the rows' adapters.
    fn project(
        &self,
        x: &Tensor,
        weight: &Linear,
        module: Module,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        project(x, weight, self.site(module), ad)
    }

    fn site(&self, module: Module) -> Site {
        Site {
            decoder: self.at.0,
            layer: self.at.1,
            part: Part::FeedForward,
            module,
        }
    }

    /// x + FF(norm(x)); `drop` is the training dropout (0 when serving).
    pub fn forward(&self, x: &Tensor, drop: f64, ad: Option<&Adapt>) -> Result<Tensor, ModelError> {
        let h = self.layer_norm.forward(x)?;
        let out = match &self.dense {
            DenseReluDense::Act { wi, wo } => {
                let up = self.project(&h, wi, Module::Wi, ad)?;
                let inner = dropout(activate(self.act, &up)?, drop)?;
                self.project(&inner, wo, Module::Wo, ad)?
            }
            DenseReluDense::Gated { wi_0, wi_1, wo } => {
                let gate = activate(self.act, &self.project(&h, wi_0, Module::Wi0, ad)?)?;
                let up = self.project(&h, wi_1, Module::Wi1, ad)?;
                let gated = {
                    let _span = span(Family::Activation);
                    gate.f_mul(&up)?
                };
                let inner = dropout(gated, drop)?;
                self.project(&inner, wo, Module::Wo, ad)?
            }
        };
        Ok(x.f_add(&dropout(out, drop)?)?)
    }
}

/// `T5Attention`: unscaled dot-product attention; the relative position bias (first block of
/// each stack only) is folded into the additive bias the caller passes in.
pub struct T5Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    n_heads: i64,
    d_kv: i64,
    /// `relative_attention_bias.weight` [num_buckets, n_heads], first block only.
    pub relative_attention_bias: Option<Tensor>,
    /// (decoder, block, part): where adapters find this layer.
    at: (bool, usize, Part),
}

impl T5Attention {
    /// Loads `<prefix>.{q,k,v,o}` and, if asked, `<prefix>.relative_attention_bias`.
    pub fn load(
        w: &dyn WeightSource,
        prefix: &str,
        cfg: &T5Config,
        has_bias: bool,
        at: (bool, usize, Part),
    ) -> Result<Self, ModelError> {
        let inner = cfg.num_heads * cfg.d_kv;
        let d = cfg.d_model;
        let get = |n: &str, shape: &[i64]| w.get(&format!("{prefix}.{n}.weight"), shape);
        let relative_attention_bias = if has_bias {
            Some(get(
                "relative_attention_bias",
                &[cfg.relative_attention_num_buckets, cfg.num_heads],
            )?)
        } else {
            None
        };
        Ok(Self {
            q: Linear::new(get("q", &[inner, d])?),
            k: Linear::new(get("k", &[inner, d])?),
            v: Linear::new(get("v", &[inner, d])?),
            o: Linear::new(get("o", &[d, inner])?),
            n_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            relative_attention_bias,
            at,
        })
    }

    /// Adds this module's weights to `out`.
    pub fn collect(&self, out: &mut Vec<Tensor>) {
        out.extend([&self.q, &self.k, &self.v, &self.o].map(|l| l.weight().shallow_clone()));
        out.extend(
            self.relative_attention_bias
                .iter()
                .map(Tensor::shallow_clone),
        );
    }

    /// Packs q, k, v and o for serving passes.
    pub fn pack(&mut self, packing: Packing) -> Result<(), ModelError> {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o]
            .into_iter()
            .try_for_each(|l| l.pack(packing))
    }

    /// `x @ weight.T` at `module` of this layer, through the rows' adapters.
    fn project(
        &self,
        x: &Tensor,
        weight: &Linear,
        module: Module,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        let (decoder, layer, part) = self.at;
        let site = Site {
            decoder,
            layer,
            part,
            module,
        };
        project(x, weight, site, ad)
    }

    /// [B, T, d] → [B, H, T, d_kv]
    fn split_heads(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (b, t) = (x.size()[0], x.size()[1]);
        Ok(x.f_view([b, t, self.n_heads, self.d_kv])?
            .f_transpose(1, 2)?)
    }

    /// Packed projections [N, H·d_kv] → the padded layout [B, H, S, d_kv], zeros at padding.
    fn unpack(&self, t: Tensor, rows: &Packed) -> Result<Tensor, ModelError> {
        let inner = self.n_heads * self.d_kv;
        self.split_heads(&rows.unpack(&t)?.f_view([rows.batch, rows.width, inner])?)
    }

    /// Keys and values of packed rows `x` [N, d], in the padded layout (zeros at padding).
    pub fn key_values_packed(
        &self,
        x: &Tensor,
        rows: &Packed,
        ad: Option<&Adapt>,
    ) -> Result<(Tensor, Tensor), ModelError> {
        Ok((
            self.unpack(self.project(x, &self.k, Module::K, ad)?, rows)?,
            self.unpack(self.project(x, &self.v, Module::V, ad)?, rows)?,
        ))
    }

    /// Projects keys and values of `x` (for a cache or for cross-attention).
    pub fn key_values(
        &self,
        x: &Tensor,
        ad: Option<&Adapt>,
    ) -> Result<(Tensor, Tensor), ModelError> {
        Ok((
            self.split_heads(&self.project(x, &self.k, Module::K, ad)?)?,
            self.split_heads(&self.project(x, &self.v, Module::V, ad)?)?,
        ))
    }

    /// Self-attention over packed rows: `x` [N, d] holds the real positions of a [B, S] batch,
    /// at `rows.positions` of its flattened [B·S] layout. Projections run on the N real
    /// positions only; scores run on the padded layout (padding is zeros there, and masked by
    /// `bias` [B, H, S, S] as before). Returns [N, d]. Serving only (fused attention).
    pub fn attend_packed(
        &self,
        x: &Tensor,
        rows: &Packed,
        bias: &Tensor,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        let inner = self.n_heads * self.d_kv;
        let q = self.unpack(self.project(x, &self.q, Module::Q, ad)?, rows)?;
        let (k, v) = self.key_values_packed(x, rows, ad)?;
        let attended = {
            let _span = span(Family::Attention);
            fused(&q, &k, &v, bias)?
        };
        let out = {
            let _span = span(Family::Gather);
            attended
                .f_transpose(1, 2)?
                .f_reshape([rows.batch * rows.width, inner])?
                .f_index_select(0, &rows.positions)?
        };
        self.project(&out, &self.o, Module::O, ad)
    }

    /// Attention of `x` over (keys, values) with an additive `bias` broadcastable to [B, H, T, S];
    /// `drop` is the training dropout on the attention weights (0 when serving).
    pub fn attend(
        &self,
        x: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        bias: &Tensor,
        drop: f64,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        let (b, t) = (x.size()[0], x.size()[1]);
        let q = self.split_heads(&self.project(x, &self.q, Module::Q, ad)?)?;
        let grads = q.requires_grad() || keys.requires_grad() || values.requires_grad();
        let attention = span(Family::Attention);
        let attended = if drop == 0.0 && !grads && !TRAINING.with(|t| t.get()) {
            fused(&q, keys, values, bias)?
        } else {
            // Tuning (gradients through the frozen model): scores, softmax and dropout by hand,
            // as transformers' eager attention computes them, so gradients match PyTorch's and a
            // step in parts equals the whole step.
            let scores = q.f_matmul(&keys.f_transpose(2, 3)?)?.f_add(bias)?;
            // Softmax accumulates in f32 so bf16/f16 weights stay stable.
            let weights = dropout(
                scores
                    .f_softmax(-1, Kind::Float)?
                    .f_to_kind(values.kind())?,
                drop,
            )?;
            weights.f_matmul(values)?
        };
        std::mem::drop(attention);
        let out = attended
            .f_transpose(1, 2)?
            .f_reshape([b, t, self.n_heads * self.d_kv])?;
        self.project(&out, &self.o, Module::O, ad)
    }
}

/// Serving attention: fused (libtorch picks the kernel for the device). T5 adds the position
/// bias and the padding mask as one float mask, and does not scale scores.
/// A decode step's one query per row on the CPU in f32 takes promptd's own kernel
/// ([`super::kernels::one_query_attention`]).
fn fused(q: &Tensor, keys: &Tensor, values: &Tensor, bias: &Tensor) -> Result<Tensor, ModelError> {
    let mask = if bias.kind() == q.kind() {
        bias.shallow_clone()
    } else {
        bias.f_to_kind(q.kind())?
    };
    if super::kernels::one_query_attention_takes(q, keys, values) {
        return super::kernels::one_query_attention(q, keys, values, &mask);
    }
    Ok(Tensor::f_scaled_dot_product_attention(
        q,
        keys,
        values,
        Some(&mask),
        0.0,
        false,
        1.0,
        false,
    )?)
}

thread_local! {
    /// Set while a training forward runs on this thread ([`training`]).
    static TRAINING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` as training: every attention takes transformers' eager ops, so a tuning step is
/// the same computation as PyTorch's whatever needs gradients (serving uses the fused kernel).
pub fn training<T>(f: impl FnOnce() -> T) -> T {
    let before = TRAINING.with(|t| t.replace(true));
    let out = f();
    TRAINING.with(|t| t.set(before));
    out
}

/// Relative position → bucket, exactly as transformers' `_relative_position_bucket`, as tensor ops.
pub fn relative_position_bucket(
    relative_position: &Tensor,
    bidirectional: bool,
    num_buckets: i64,
    max_distance: i64,
) -> Result<Tensor, ModelError> {
    let mut num_buckets = num_buckets;
    let mut buckets = relative_position.f_zeros_like()?;
    let distance = if bidirectional {
        num_buckets /= 2;
        buckets = buckets.f_add(
            &relative_position
                .f_gt(0)?
                .f_to_kind(Kind::Int64)?
                .f_mul_scalar(num_buckets)?,
        )?;
        relative_position.f_abs()?
    } else {
        relative_position.f_clamp_max(0)?.f_neg()?
    };
    let max_exact = num_buckets / 2;
    let is_small = distance.f_lt(max_exact)?;
    // Same float32 arithmetic as the reference: log(d / max_exact) / log(max_distance / max_exact) * n.
    let log_ratio = distance
        .f_to_kind(Kind::Float)?
        .f_div_scalar(max_exact as f64)?
        .f_log()?;
    let large = log_ratio
        .f_div_scalar((max_distance as f64 / max_exact as f64).ln())?
        .f_mul_scalar((num_buckets - max_exact) as f64)?
        .f_to_kind(Kind::Int64)?
        .f_add_scalar(max_exact)?
        .f_clamp_max(num_buckets - 1)?;
    Ok(buckets.f_add(&distance.f_where_self(&is_small, &large)?)?)
}

/// Position bias [1, H, Tq, Tk] for queries at `query_start..query_start+tq` over keys `0..tk`.
pub fn position_bias(
    table: &Tensor,
    cfg: &T5Config,
    bidirectional: bool,
    query_start: i64,
    tq: i64,
    tk: i64,
) -> Result<Tensor, ModelError> {
    let _span = span(Family::PositionBias);
    let device = table.device();
    let ctx = Tensor::f_arange_start(query_start, query_start + tq, (Kind::Int64, device))?
        .f_unsqueeze(1)?;
    let mem = Tensor::f_arange(tk, (Kind::Int64, device))?.f_unsqueeze(0)?;
    let rel = mem.f_sub(&ctx)?;
    let buckets = relative_position_bucket(
        &rel,
        bidirectional,
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
    )?;
    let values = Tensor::f_embedding(table, &buckets, -1, false, false)?; // [tq, tk, H]
    Ok(values.f_permute([2, 0, 1])?.f_unsqueeze(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets from transformers' `_relative_position_bucket` (num_buckets=32, max_distance=128).
    #[test]
    fn buckets_match_reference() {
        let rel = Tensor::from_slice(&[
            -200i64, -128, -127, -64, -20, -8, -7, -1, 0, 1, 7, 8, 20, 64, 127, 128, 500,
        ]);
        let bi: Vec<i64> =
            Vec::try_from(relative_position_bucket(&rel, true, 32, 128).unwrap()).unwrap();
        assert_eq!(
            bi,
            vec![15, 15, 15, 14, 10, 8, 7, 1, 0, 17, 23, 24, 26, 30, 31, 31, 31]
        );
        let uni: Vec<i64> =
            Vec::try_from(relative_position_bucket(&rel, false, 32, 128).unwrap()).unwrap();
        assert_eq!(
            uni,
            vec![31, 31, 31, 26, 17, 8, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
