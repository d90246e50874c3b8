//! `T5ForConditionalGeneration`: shared embedding, encoder, decoder, LM head.
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::config::T5Config;
use super::profile::{span, Family};
use super::stack::{min_value, LayerCache, T5Stack};
use super::weights::{WeightSource, Weights};
use super::ModelError;

/// Where and in which dtype the model lives.
#[derive(Debug, Clone, Copy)]
pub struct ModelOptions {
    /// Device for every weight and activation.
    pub device: Device,
    /// Weight and activation dtype (norms and softmax still accumulate in f32).
    pub kind: Kind,
}

/// A frozen T5 encoder–decoder.
pub struct T5Model {
    /// The checkpoint's configuration.
    pub config: T5Config,
    shared: Tensor,
    pub(crate) encoder: T5Stack,
    decoder: T5Stack,
    lm_head: Tensor,
    lm_scale: Option<f64>,
    opts: ModelOptions,
}

/// Decoder state for a batch being generated; lives outside the model.
pub struct DecoderState {
    caches: Vec<LayerCache>,
    cross_bias: Tensor,
    /// Decoder position bias of the last planned step, [1, H, 1, steps]. The bias depends only
    /// on key − query, so step t's bias is its last t + 1 columns; computed once per batch.
    self_bias: Tensor,
    /// Rows that joined a running batch (continuous batching) have cache columns from before
    /// their first step: this additive bias [B, 1, 1, step] masks them (None: no such rows).
    /// Key j of query `step` is at relative position j − step for every row, so the position
    /// bias stays shared; only the mask differs per row.
    self_pad: Option<Tensor>,
    /// Self-attention cache columns (the next token's position for rows that started at 0).
    pub step: i64,
}

impl DecoderState {
    /// Keeps only the batch rows in `keep` (indices into the current batch).
    pub fn select(&self, keep: &Tensor) -> Result<Self, ModelError> {
        let _span = span(Family::KvCache);
        Ok(Self {
            caches: self
                .caches
                .iter()
                .map(|c| c.select(keep))
                .collect::<Result<_, _>>()?,
            cross_bias: self.cross_bias.f_index_select(0, keep)?,
            self_bias: self.self_bias.shallow_clone(),
            self_pad: self
                .self_pad
                .as_ref()
                .map(|p| p.f_index_select(0, keep))
                .transpose()?,
            step: self.step,
        })
    }

    /// Rows in the batch.
    pub fn rows(&self) -> i64 {
        self.cross_bias.size()[0]
    }

    /// Encoder positions the cross-attention covers.
    pub fn encoder_len(&self) -> i64 {
        self.cross_bias.size()[3]
    }

    /// Appends the rows of `fresh` (a state that has not decoded yet) after this state's rows.
    /// The newcomers get this state's cache columns as masked padding, and the shorter encoder
    /// output is padded and masked too, so each row attends to exactly what it would alone.
    pub fn merge(self, fresh: DecoderState) -> Result<Self, ModelError> {
        if fresh.step != 0 {
            return Err(ModelError::Config(
                "only a state that has not decoded can join a running batch".into(),
            ));
        }
        let _span = span(Family::KvCache);
        let (b_old, b_new) = (self.rows(), fresh.rows());
        let cols = self.step;
        let s = self.encoder_len().max(fresh.encoder_len());
        let like = &self.cross_bias;
        let (kind, device) = (like.kind(), like.device());
        let masked = super::stack::min_value(kind);
        let self_pad = Tensor::f_cat(
            &[
                match self.self_pad {
                    Some(p) => p,
                    None => Tensor::f_zeros([b_old, 1, 1, cols], (kind, device))?,
                },
                Tensor::f_full([b_new, 1, 1, cols], masked, (kind, device))?,
            ],
            0,
        )?;
        let caches = self
            .caches
            .into_iter()
            .zip(fresh.caches)
            .map(|(old, new)| old.merge(new, s, cols))
            .collect::<Result<_, _>>()?;
        let cross_bias = Tensor::f_cat(
            &[
                pad_last(&self.cross_bias, s, masked)?,
                pad_last(&fresh.cross_bias, s, masked)?,
            ],
            0,
        )?;
        let longer = |a: Tensor, b: Tensor| if a.size()[3] >= b.size()[3] { a } else { b };
        Ok(Self {
            caches,
            cross_bias,
            self_bias: longer(self.self_bias, fresh.self_bias),
            self_pad: Some(self_pad),
            step: cols,
        })
    }

    /// Drops the first `cols` self-attention columns (padding no remaining row uses) and keeps
    /// `encoder_len` encoder positions (the longest remaining row's).
    pub fn trim(&mut self, cols: i64, encoder_len: i64) -> Result<(), ModelError> {
        let _span = span(Family::KvCache);
        let cols = cols.clamp(0, self.step);
        let keep_enc = encoder_len.clamp(1, self.encoder_len());
        for cache in &mut self.caches {
            cache.trim(cols, keep_enc)?;
        }
        if let Some(pad) = &self.self_pad {
            self.self_pad = Some(pad.f_narrow(3, cols, self.step - cols)?);
        }
        self.cross_bias = self.cross_bias.f_narrow(3, 0, keep_enc)?;
        self.step -= cols;
        Ok(())
    }
}

/// Pads the last dimension of `t` to `len` with `value`.
fn pad_last(t: &Tensor, len: i64, value: f64) -> Result<Tensor, ModelError> {
    let mut shape = t.size();
    let have = *shape.last().expect("a dimension");
    if have >= len {
        return Ok(t.shallow_clone());
    }
    *shape.last_mut().expect("a dimension") = len - have;
    let fill = Tensor::f_full(shape.as_slice(), value, (t.kind(), t.device()))?;
    Ok(Tensor::f_cat(&[t.shallow_clone(), fill], -1)?)
}

impl T5Model {
    /// Loads `config.json` and the weights (safetensors or pytorch_model.bin) from a Hugging
    /// Face directory.
    pub fn load(dir: &Path, opts: ModelOptions) -> Result<Self, ModelError> {
        let config = T5Config::from_dir(dir)?;
        let w = Weights::open(dir, opts.device, opts.kind)?;
        tracing::info!(
            dir = %dir.display(),
            weights = w.layout().file_name(),
            files = w.files().count(),
            "loading weights"
        );
        Self::from_weights(config, &w, opts)
    }

    /// Checks that `dir` would load (config, every tensor's name, shape and dtype) without
    /// reading any weight.
    pub fn check(dir: &Path) -> Result<T5Config, ModelError> {
        let config = T5Config::from_dir(dir)?;
        let w = Weights::open_dry_run(dir)?;
        let opts = ModelOptions {
            device: tch::Device::Cpu,
            kind: tch::Kind::Float,
        };
        Ok(Self::from_weights(config, &w, opts)?.config)
    }

    /// A model of `config`'s shapes with random weights made directly on `opts`' device in its
    /// dtype (no files, no host copy): for measuring shapes whose checkpoints are not at hand.
    pub fn synthetic(config: T5Config, opts: ModelOptions, seed: i64) -> Result<Self, ModelError> {
        let source = super::random::Synthetic::new(opts, seed);
        Self::from_weights(config, &source, opts)
    }

    pub(crate) fn from_weights(
        config: T5Config,
        w: &dyn WeightSource,
        opts: ModelOptions,
    ) -> Result<Self, ModelError> {
        let emb_shape = [config.vocab_size, config.d_model];
        let shared_name = [
            "shared.weight",
            "encoder.embed_tokens.weight",
            "decoder.embed_tokens.weight",
        ]
        .into_iter()
        .find(|n| w.contains(n))
        .ok_or_else(|| ModelError::MissingTensor("shared.weight".into()))?;
        let shared = w.get(shared_name, &emb_shape)?;
        let encoder = T5Stack::load(w, &config, false)?;
        let decoder = T5Stack::load(w, &config, true)?;
        // An lm_head in the file wins (untied v1.1/Flan); otherwise it is the shared embedding.
        // A tied model's .bin also stores the head under its own name: reuse, don't copy.
        let lm_head = if w.contains("lm_head.weight") && !w.is_alias("lm_head.weight", shared_name)
        {
            w.get("lm_head.weight", &emb_shape)?
        } else {
            shared.shallow_clone()
        };
        let lm_scale = config
            .scale_decoder_outputs()
            .then(|| (config.d_model as f64).powf(-0.5));
        Ok(Self {
            config,
            shared,
            encoder,
            decoder,
            lm_head,
            lm_scale,
            opts,
        })
    }

    /// Every weight of the model (shallow handles), e.g. to prove tuning never changes one.
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut out = vec![self.shared.shallow_clone(), self.lm_head.shallow_clone()];
        self.encoder.collect(&mut out);
        self.decoder.collect(&mut out);
        out
    }

    /// Device and dtype.
    pub fn options(&self) -> ModelOptions {
        self.opts
    }

    /// Rows of the vocabulary embedding (ids at or past this are virtual prompt tokens).
    pub fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    /// The shared (vocabulary) embedding [vocab, d].
    pub fn shared(&self) -> &Tensor {
        &self.shared
    }

    /// Embeds token ids [B, S] → [B, S, d].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor, ModelError> {
        let _span = span(Family::Gather);
        Ok(Tensor::f_embedding(&self.shared, ids, -1, false, false)?)
    }

    /// Additive attention bias [B, 1, 1, S] from a 0/1 mask [B, S].
    pub fn mask_bias(&self, mask: &Tensor) -> Result<Tensor, ModelError> {
        let _span = span(Family::PositionBias);
        let masked = mask.f_eq(0)?.f_unsqueeze(1)?.f_unsqueeze(1)?;
        let zeros = Tensor::f_zeros(masked.size(), (self.opts.kind, self.opts.device))?;
        Ok(zeros.f_masked_fill(&masked, min_value(self.opts.kind))?)
    }

    /// Encoder over input embeddings [B, S, d] and a 0/1 mask [B, S]; padding positions cost
    /// no projection or feed-forward work (`T5Stack::encode_packed`) and come out as zeros.
    pub fn encode(&self, embeds: &Tensor, mask: &Tensor) -> Result<Tensor, ModelError> {
        self.encoder
            .encode_packed(embeds, mask, &self.mask_bias(mask)?)
    }

    /// Hugging Face's seq2seq training loss: the mean cross-entropy over every target token of
    /// `labels` [B, T] (padding is -100), teacher-forced from the labels shifted right, with
    /// training dropout `drop` (0 turns it off). Differentiable in `embeds` [B, S, d].
    pub fn seq2seq_loss(
        &self,
        embeds: &Tensor,
        mask: &Tensor,
        labels: &Tensor,
        drop: f64,
    ) -> Result<Tensor, ModelError> {
        let (rows, len) = (labels.size()[0], labels.size()[1]);
        let start = Tensor::f_full(
            [rows, 1],
            self.config.decoder_start_id(),
            (Kind::Int64, labels.device()),
        )?;
        let shifted = Tensor::f_cat(&[start, labels.f_narrow(1, 0, len - 1)?], 1)?;
        let decoder_ids = shifted.f_masked_fill(&shifted.f_eq(-100)?, self.config.pad_id())?;
        let mask_bias = self.mask_bias(mask)?;
        let h = super::layers::training(|| -> Result<Tensor, ModelError> {
            let encoder_out = self.encoder.encode(embeds, &mask_bias, drop)?;
            let caches = self.decoder.cross_caches(&encoder_out)?;
            let x = self.embed(&decoder_ids)?;
            self.decoder.decode_full(&x, &caches, &mask_bias, drop)
        })?;
        // Cross-entropy in f32 whatever the weights' dtype (bf16 logits lose the loss's digits).
        let logits = self.logits(&h)?.f_to_kind(Kind::Float)?;
        let vocab = logits.size()[2];
        Ok(logits.f_view([-1, vocab])?.f_cross_entropy_loss::<Tensor>(
            &labels.f_view([-1])?,
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )?)
    }

    /// Starts decoding up to `max_steps` tokens: cross-attention keys/values and the decoder's
    /// position bias are computed once here.
    pub fn start_decoder(
        &self,
        encoder_out: &Tensor,
        mask: &Tensor,
        max_steps: i64,
    ) -> Result<DecoderState, ModelError> {
        let steps = max_steps.max(1);
        Ok(DecoderState {
            caches: self.decoder.cross_caches_packed(encoder_out, mask)?,
            cross_bias: self.mask_bias(mask)?,
            self_bias: self
                .decoder
                .position_bias(steps - 1, 1, steps, encoder_out)?,
            self_pad: None,
            step: 0,
        })
    }

    /// Makes sure the precomputed decoder position bias covers `steps` cache columns.
    pub fn plan_decoder(&self, state: &mut DecoderState, steps: i64) -> Result<(), ModelError> {
        if state.self_bias.size()[3] < steps {
            state.self_bias = self
                .decoder
                .position_bias(steps - 1, 1, steps, &state.cross_bias)?;
        }
        Ok(())
    }

    /// One greedy step: `tokens` [B] (the previous token of each row) → logits [B, vocab].
    pub fn decode_step(
        &self,
        tokens: &Tensor,
        state: &mut DecoderState,
    ) -> Result<Tensor, ModelError> {
        let x = self.embed(&tokens.f_unsqueeze(1)?)?;
        let step = state.step;
        let planned = state.self_bias.size()[3];
        let bias = if step < planned {
            state.self_bias.f_narrow(3, planned - 1 - step, step + 1)?
        } else {
            self.decoder.position_bias(step, 1, step + 1, &x)?
        };
        let bias_span = span(Family::PositionBias);
        let bias = match state.self_pad.take() {
            None => bias,
            Some(pad) => {
                let rows = pad.size()[0];
                let own = Tensor::f_zeros([rows, 1, 1, 1], (pad.kind(), pad.device()))?;
                let pad = Tensor::f_cat(&[pad, own], 3)?;
                let bias = bias.f_add(&pad)?;
                state.self_pad = Some(pad);
                bias
            }
        };
        drop(bias_span);
        let h = self
            .decoder
            .decode_step(&x, &bias, &mut state.caches, &state.cross_bias)?;
        state.step += 1;
        self.logits(&h.f_squeeze_dim(1)?)
    }

    /// Teacher-forced decoder over `decoder_ids` [B, T] → logits [B, T, vocab].
    pub fn decode_full(
        &self,
        decoder_ids: &Tensor,
        encoder_out: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let caches = self.decoder.cross_caches(encoder_out)?;
        let x = self.embed(decoder_ids)?;
        let h = self
            .decoder
            .decode_full(&x, &caches, &self.mask_bias(mask)?, 0.0)?;
        self.logits(&h)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        let h = match self.lm_scale {
            Some(scale) => hidden.f_mul_scalar(scale)?,
            None => hidden.shallow_clone(),
        };
        let _span = span(Family::Matmul);
        Ok(h.f_linear::<Tensor>(&self.lm_head, None)?)
    }
}
