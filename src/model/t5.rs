//! `T5ForConditionalGeneration`: shared embedding, encoder, decoder, LM head.
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::adapters::{Adapt, AdapterTables};
use super::config::T5Config;
use super::error::ModelError;
use super::int8::Int8Kernel;
use super::matmul::Packing;
use super::profile::{span, Family};
use super::stack::{min_value, Columns, LayerCache, T5Stack};
use super::weights::{WeightSource, Weights};

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
    /// The head packed as int8 (`--dtype int8`).
    lm_head_packed: Option<super::matmul::Linear>,
    lm_scale: Option<f64>,
    opts: ModelOptions,
}

/// Decoder state for a batch being generated; lives outside the model.
///
/// Self-attention columns are counted from the batch's first step ("absolute" columns: a row
/// that joins at step 7 writes its first keys at column 7). The caches hold the columns from
/// `base` in buffers of `capacity` columns written in place; a step attends to the columns from
/// `first` (those before are padding for every row still decoding). Rows never move: a
/// finished row's slot can be given to a newcomer ([`DecoderState::place`]) and only
/// [`DecoderState::select`] copies the batch.
pub struct DecoderState {
    caches: Vec<LayerCache>,
    /// Additive mask over the encoder positions [B, 1, 1, S].
    cross_bias: Tensor,
    /// Decoder position bias for up to `planned` attended columns, [1, H, 1, planned]. The
    /// bias depends only on key − query, so a step attending to n columns uses the last n;
    /// computed once per batch.
    self_bias: Tensor,
    /// Rows that joined a running batch have buffer columns from before their first step:
    /// this additive mask [B, 1, 1, capacity] hides them (None: no such row). Key j of a
    /// step's query is at relative position j − step for every row, so the position bias
    /// stays shared; only the mask differs per row.
    self_pad: Option<Tensor>,
    /// Self-attention buffer columns (allocated at the first step).
    capacity: i64,
    /// Absolute column of buffer column 0.
    base: i64,
    /// First absolute column a step attends to.
    first: i64,
    /// Steps since the batch started: the absolute column the next step writes.
    pub step: i64,
    /// Each row's adapter index [B] (int64; None: no row has an adapter).
    adapters: Option<Tensor>,
    /// Rows with a decoder prefix (prefix tuning): each row's prefix length [B] and the step
    /// it started at [B] (int64); the prefix keys live in the caches.
    prefix: Option<(Tensor, Tensor)>,
}

impl DecoderState {
    /// Keeps only the batch rows in `keep` (indices into the current batch); copies them.
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
            adapters: self
                .adapters
                .as_ref()
                .map(|a| a.f_index_select(0, keep))
                .transpose()?,
            prefix: self
                .prefix
                .as_ref()
                .map(|(lens, start)| -> Result<_, ModelError> {
                    Ok((
                        lens.f_index_select(0, keep)?,
                        start.f_index_select(0, keep)?,
                    ))
                })
                .transpose()?,
            ..*self
        })
    }

    /// Each row's prefix length and start step, zeros where the state has none.
    fn prefix_rows(&self) -> Result<(Tensor, Tensor), ModelError> {
        match &self.prefix {
            Some((lens, start)) => Ok((lens.shallow_clone(), start.shallow_clone())),
            None => {
                let zeros =
                    Tensor::f_zeros([self.rows()], (Kind::Int64, self.cross_bias.device()))?;
                Ok((zeros.shallow_clone(), zeros))
            }
        }
    }

    /// A fresh state's prefix lengths, its rows starting at this state's step.
    fn newcomers_prefix(&self, fresh: &DecoderState) -> Result<(Tensor, Tensor), ModelError> {
        let (lens, _) = fresh.prefix_rows()?;
        let start = lens.f_full_like(self.step)?;
        Ok((lens, start))
    }

    /// Each row's adapter index, zeros where the state has none.
    fn adapter_index(&self) -> Result<Tensor, ModelError> {
        match &self.adapters {
            Some(a) => Ok(a.shallow_clone()),
            None => Ok(Tensor::f_zeros(
                [self.rows()],
                (Kind::Int64, self.cross_bias.device()),
            )?),
        }
    }

    /// Rows in the batch.
    pub fn rows(&self) -> i64 {
        self.cross_bias.size()[0]
    }

    /// Encoder positions the cross-attention covers.
    pub fn encoder_len(&self) -> i64 {
        self.cross_bias.size()[3]
    }

    fn allocated(&self) -> bool {
        self.caches.iter().any(|c| c.self_kv.is_some())
    }

    /// The self-attention mask of `n` rows joining now: buffer columns before this step masked.
    fn newcomer_pad(&self, n: i64) -> Result<Tensor, ModelError> {
        let like = &self.cross_bias;
        let (kind, device) = (like.kind(), like.device());
        let before = Tensor::f_arange(self.capacity, (Kind::Int64, device))?
            .f_lt(self.step - self.base)?
            .f_view([1, 1, 1, self.capacity])?;
        Ok(Tensor::f_zeros([1, 1, 1, self.capacity], (kind, device))?
            .f_masked_fill(&before, min_value(kind))?
            .f_expand([n, 1, 1, self.capacity], false)?
            .f_contiguous()?)
    }

    /// Whether newcomers need a mask: buffer columns written before this step.
    fn joining_late(&self) -> bool {
        self.step > self.base || self.self_pad.is_some()
    }

    fn check_fresh(fresh: &DecoderState) -> Result<(), ModelError> {
        if fresh.step != 0 || fresh.allocated() {
            return Err(ModelError::Config(
                "only a state that has not decoded can join a running batch".into(),
            ));
        }
        Ok(())
    }

    /// Appends the rows of `fresh` (a state that has not decoded yet) after this state's rows.
    /// The newcomers get this state's cache columns as masked padding, and the shorter encoder
    /// output is padded and masked too, so each row attends to exactly what it would alone.
    pub fn append(self, fresh: DecoderState) -> Result<Self, ModelError> {
        Self::check_fresh(&fresh)?;
        let _span = span(Family::KvCache);
        let b_old = self.rows();
        let s = self.encoder_len().max(fresh.encoder_len());
        let masked = min_value(self.cross_bias.kind());
        let capacity = if self.allocated() {
            self.capacity
        } else {
            self.capacity.max(fresh.capacity)
        };
        let self_pad = if self.joining_late() {
            let old = match &self.self_pad {
                Some(p) => p.shallow_clone(),
                None => Tensor::f_zeros(
                    [b_old, 1, 1, self.capacity],
                    (self.cross_bias.kind(), self.cross_bias.device()),
                )?,
            };
            Some(Tensor::f_cat(&[old, self.newcomer_pad(fresh.rows())?], 0)?)
        } else {
            None
        };
        let prefix = match (&self.prefix, &fresh.prefix) {
            (None, None) => None,
            _ => {
                let (lens, start) = self.prefix_rows()?;
                let (new_lens, new_start) = self.newcomers_prefix(&fresh)?;
                Some((
                    Tensor::f_cat(&[lens, new_lens], 0)?,
                    Tensor::f_cat(&[start, new_start], 0)?,
                ))
            }
        };
        let adapters = match (&self.adapters, &fresh.adapters) {
            (None, None) => None,
            _ => Some(Tensor::f_cat(
                &[self.adapter_index()?, fresh.adapter_index()?],
                0,
            )?),
        };
        let caches = self
            .caches
            .into_iter()
            .zip(fresh.caches)
            .map(|(old, new)| old.append(new, s))
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
            adapters,
            prefix,
            caches,
            cross_bias,
            self_bias: longer(self.self_bias, fresh.self_bias),
            self_pad,
            capacity,
            ..self
        })
    }

    /// Writes the rows of `fresh` (a state that has not decoded yet) over this state's rows
    /// `slots` (finished rows' slots), in place, as [`DecoderState::append`] would set them up;
    /// the other rows are not copied.
    pub fn place(&mut self, fresh: DecoderState, slots: &[i64]) -> Result<(), ModelError> {
        Self::check_fresh(&fresh)?;
        if fresh.rows() != slots.len() as i64 {
            return Err(ModelError::Config(format!(
                "{} rows for {} slots",
                fresh.rows(),
                slots.len()
            )));
        }
        let _span = span(Family::KvCache);
        let masked = min_value(self.cross_bias.kind());
        let idx = Tensor::f_from_slice(slots)?.f_to_device(self.cross_bias.device())?;
        let s = fresh.encoder_len();
        if s > self.encoder_len() {
            for cache in &mut self.caches {
                cache.widen(s)?;
            }
            self.cross_bias = pad_last(&self.cross_bias, s, masked)?;
        }
        for (cache, new) in self.caches.iter_mut().zip(&fresh.caches) {
            cache.place(new, &idx)?;
        }
        let width = self.encoder_len();
        let _ =
            self.cross_bias
                .f_index_copy_(0, &idx, &pad_last(&fresh.cross_bias, width, masked)?)?;
        if !self.allocated() {
            self.capacity = self.capacity.max(fresh.capacity);
        }
        if self.joining_late() {
            let pad = self.newcomer_pad(slots.len() as i64)?;
            let all = match self.self_pad.take() {
                Some(p) => p,
                None => Tensor::f_zeros(
                    [self.rows(), 1, 1, self.capacity],
                    (pad.kind(), pad.device()),
                )?,
            };
            let mut all = all;
            let _ = all.f_index_copy_(0, &idx, &pad)?;
            self.self_pad = Some(all);
        }
        if self.prefix.is_some() || fresh.prefix.is_some() {
            let (mut lens, mut start) = self.prefix_rows()?;
            let (new_lens, new_start) = self.newcomers_prefix(&fresh)?;
            let _ = lens.f_index_copy_(0, &idx, &new_lens)?;
            let _ = start.f_index_copy_(0, &idx, &new_start)?;
            self.prefix = Some((lens, start));
        }
        if self.adapters.is_some() || fresh.adapters.is_some() {
            let mut all = self.adapter_index()?;
            let _ = all.f_index_copy_(0, &idx, &fresh.adapter_index()?)?;
            self.adapters = Some(all);
        }
        if fresh.self_bias.size()[3] > self.self_bias.size()[3] {
            self.self_bias = fresh.self_bias;
        }
        Ok(())
    }

    /// Stops attending to the columns before absolute column `first` (padding for every row
    /// still decoding). Copies nothing.
    pub fn trim_to(&mut self, first: i64) {
        self.first = first.clamp(self.first, self.step);
    }

    /// Keeps the first `encoder_len` encoder positions (the longest remaining row's); a view.
    pub fn narrow_encoder(&mut self, encoder_len: i64) -> Result<(), ModelError> {
        let keep = encoder_len.clamp(1, self.encoder_len());
        for cache in &mut self.caches {
            cache.narrow_encoder(keep)?;
        }
        self.cross_bias = self.cross_bias.f_narrow(3, 0, keep)?;
        Ok(())
    }

    /// Makes room for `more` steps: when the buffers cannot hold them, new ones hold the
    /// attended columns at their start, with room for `more` (at least doubling).
    fn reserve(&mut self, more: i64) -> Result<(), ModelError> {
        let needed = self.step - self.base + more;
        if !self.allocated() {
            self.capacity = self.capacity.max(needed);
            return Ok(());
        }
        if needed <= self.capacity {
            return Ok(());
        }
        let _span = span(Family::KvCache);
        let live = self.step - self.first;
        let from = self.first - self.base;
        let capacity = (live + more).max(2 * live);
        for cache in &mut self.caches {
            cache.recolumn(from, live, capacity)?;
        }
        if let Some(pad) = &self.self_pad {
            let out = Tensor::f_zeros([self.rows(), 1, 1, capacity], (pad.kind(), pad.device()))?;
            out.f_narrow(3, 0, live)?
                .f_copy_(&pad.f_narrow(3, from, live)?)?;
            self.self_pad = Some(out);
        }
        self.capacity = capacity;
        self.base = self.first;
        Ok(())
    }
}

/// Puts the rows' decoder prefixes (prefix tuning) into `caches`; returns each row's prefix
/// length and start step (0), or None when no row has one.
fn with_prefix(
    caches: &mut [LayerCache],
    ad: Option<&Adapt>,
) -> Result<Option<(Tensor, Tensor)>, ModelError> {
    let Some(rows) = ad.map(Adapt::prefix).transpose()?.flatten() else {
        return Ok(None);
    };
    if rows.kv.len() != caches.len() {
        return Err(ModelError::Config(format!(
            "a prefix of {} decoder blocks for a decoder of {}",
            rows.kv.len(),
            caches.len()
        )));
    }
    for (cache, kv) in caches.iter_mut().zip(rows.kv) {
        cache.prefix_kv = Some(kv);
    }
    let start = rows.lens.f_zeros_like()?;
    Ok(Some((rows.lens, start)))
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

    pub(crate) fn from_weights(
        config: T5Config,
        w: &dyn WeightSource,
        opts: ModelOptions,
    ) -> Result<Self, ModelError> {
        if opts.device == Device::Cpu {
            super::host::keep_freed_blocks();
        }
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
            lm_head_packed: None,
            lm_scale,
            opts,
        })
    }

    /// Packs every linear layer of both stacks and the LM head as int8 for serving passes on
    /// the CPU (`--dtype int8`): per-output-channel weights, activations quantized per call and
    /// row. The embedding lookup, norms and attention stay f32, and so does every pass with
    /// gradients (tuning). At one row the head was most of a decode step's weight reads: 9.3 →
    /// 5.9 ms per token on t5-small's shape once it is packed too.
    /// `kernel` auto times fbgemm and oneDNN on each distinct weight shape first.
    pub fn quantize_int8(&mut self, kernel: Int8Kernel) -> Result<(), ModelError> {
        self.pack(Packing::Int8(kernel))
    }

    /// Packs the model for serving: int8 when `int8` (`--dtype int8`, with `--int8-kernel`'s
    /// engine), else an f32 model on the CPU reordered for oneDNN when `--cpu-matmul` is
    /// few-rows (the default, onednn-packed above two rows) or onednn-packed; anything else runs
    /// unpacked.
    pub fn pack_for_serving(&mut self, int8: bool) -> Result<(), ModelError> {
        if int8 {
            self.quantize_int8(super::int8::int8_kernel())
        } else if self.opts.device == Device::Cpu
            && self.opts.kind == Kind::Float
            && matches!(
                super::matmul::cpu_matmul(),
                super::matmul::CpuMatmul::OnednnPacked | super::matmul::CpuMatmul::FewRows
            )
        {
            self.pack(Packing::Onednn)
        } else {
            Ok(())
        }
    }

    /// Packs every linear layer of both stacks and the LM head for serving passes on the CPU
    /// (from f32 weights); training passes keep the plain weights.
    pub fn pack(&mut self, packing: Packing) -> Result<(), ModelError> {
        if self.opts.device != Device::Cpu || self.opts.kind != Kind::Float {
            return Err(ModelError::Config(format!(
                "packed layers ({packing:?}) run on the CPU from f32 weights; this model is {:?} on {:?}",
                self.opts.kind, self.opts.device
            )));
        }
        self.encoder.pack(packing)?;
        self.decoder.pack(packing)?;
        let mut head = super::matmul::Linear::new(self.lm_head.shallow_clone());
        head.pack(packing)?;
        self.lm_head_packed = Some(head);
        Ok(())
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

    /// Encoder over input embeddings [B, S, d] and a 0/1 mask [B, S], each row through its
    /// adapter in `ad`; padding positions cost no projection or feed-forward work
    /// (`T5Stack::encode_packed`) and come out as zeros.
    pub fn encode(
        &self,
        embeds: &Tensor,
        mask: &Tensor,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        self.encoder
            .encode_packed(embeds, mask, &self.mask_bias(mask)?, ad)
    }

    /// Hugging Face's seq2seq training loss: the mean cross-entropy over every target token of
    /// `labels` [B, T] (padding is -100), teacher-forced from the labels shifted right, with
    /// training dropout `drop` (0 turns it off), each row through its adapter in `ad`.
    /// Differentiable in `embeds` [B, S, d] and in the tensors `ad`'s tables were built from.
    pub fn seq2seq_loss(
        &self,
        embeds: &Tensor,
        mask: &Tensor,
        labels: &Tensor,
        drop: f64,
        ad: Option<&Adapt>,
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
            let encoder_out = self.encoder.encode(embeds, &mask_bias, drop, ad)?;
            let caches = self.decoder.cross_caches(&encoder_out, ad)?;
            let x = self.embed(&decoder_ids)?;
            self.decoder
                .decode_full(&x, &caches, &mask_bias, drop, ad, None)
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

    /// Starts decoding up to `max_steps` tokens, each row through its adapter in `ad`:
    /// cross-attention keys/values and the decoder's position bias are computed once here.
    pub fn start_decoder(
        &self,
        encoder_out: &Tensor,
        mask: &Tensor,
        max_steps: i64,
        ad: Option<&Adapt>,
    ) -> Result<DecoderState, ModelError> {
        let steps = max_steps.max(1);
        let mut caches = self.decoder.cross_caches_packed(encoder_out, mask, ad)?;
        let prefix = with_prefix(&mut caches, ad)?;
        Ok(DecoderState {
            adapters: ad.map(|a| a.index().shallow_clone()),
            prefix,
            caches,
            cross_bias: self.mask_bias(mask)?,
            self_bias: self
                .decoder
                .position_bias(steps - 1, 1, steps, encoder_out)?,
            self_pad: None,
            capacity: steps,
            base: 0,
            first: 0,
            step: 0,
        })
    }

    /// Makes sure the state can take `more` steps: buffer room for their columns, and the
    /// precomputed position bias covering the columns the last of them attends to.
    pub fn plan_decoder(&self, state: &mut DecoderState, more: i64) -> Result<(), ModelError> {
        let more = more.max(1);
        state.reserve(more)?;
        let attended = state.step - state.first + more;
        if state.self_bias.size()[3] < attended {
            state.self_bias =
                self.decoder
                    .position_bias(attended - 1, 1, attended, &state.cross_bias)?;
        }
        Ok(())
    }

    /// One greedy step: `tokens` [B] (the previous token of each row) → logits [B, vocab];
    /// rows with adapters read them from `tables`.
    pub fn decode_step(
        &self,
        tokens: &Tensor,
        state: &mut DecoderState,
        tables: &AdapterTables,
    ) -> Result<Tensor, ModelError> {
        let ad = state
            .adapters
            .as_ref()
            .map(|index| Adapt::new(tables, index.shallow_clone()));
        let x = self.embed(&tokens.f_unsqueeze(1)?)?;
        state.reserve(1)?;
        let attended = state.step + 1 - state.first;
        let planned = state.self_bias.size()[3];
        let bias = if attended <= planned {
            state.self_bias.f_narrow(3, planned - attended, attended)?
        } else {
            self.decoder.position_bias(attended - 1, 1, attended, &x)?
        };
        let cols = Columns {
            first: state.first - state.base,
            write: state.step - state.base,
            capacity: state.capacity,
        };
        let bias = match &state.self_pad {
            None => bias,
            Some(pad) => {
                let _span = span(Family::PositionBias);
                bias.f_add(&pad.f_narrow(3, cols.first, attended)?)?
            }
        };
        let prefix = state.caches.first().and_then(|c| c.prefix_kv.as_ref());
        let bias = match (&state.prefix, prefix) {
            (Some((lens, start)), Some((pk, _))) => {
                let rows = lens.size()[0];
                let query = start.f_neg()?.f_add_scalar(state.step)?.f_unsqueeze(1)?;
                let before = self
                    .decoder
                    .prefix_bias(lens, &query, pk.size()[2], &bias)?;
                let heads = before.size()[1];
                let after = bias.f_expand([rows, heads, 1, attended], false)?;
                Tensor::f_cat(&[before, after], 3)?
            }
            _ => bias,
        };
        let h = self.decoder.decode_step(
            &x,
            &bias,
            &mut state.caches,
            &state.cross_bias,
            cols,
            ad.as_ref(),
        )?;
        state.step += 1;
        self.logits(&h.f_squeeze_dim(1)?)
    }

    /// Teacher-forced decoder over `decoder_ids` [B, T] → logits [B, T, vocab], each row
    /// through its adapter in `ad`.
    pub fn decode_full(
        &self,
        decoder_ids: &Tensor,
        encoder_out: &Tensor,
        mask: &Tensor,
        ad: Option<&Adapt>,
    ) -> Result<Tensor, ModelError> {
        let mut caches = self.decoder.cross_caches(encoder_out, ad)?;
        let prefix = with_prefix(&mut caches, ad)?;
        let x = self.embed(decoder_ids)?;
        let lens = prefix.as_ref().map(|(lens, _)| lens);
        let h = self
            .decoder
            .decode_full(&x, &caches, &self.mask_bias(mask)?, 0.0, ad, lens)?;
        self.logits(&h)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        let h = match self.lm_scale {
            Some(scale) => hidden.f_mul_scalar(scale)?,
            None => hidden.shallow_clone(),
        };
        match &self.lm_head_packed {
            Some(head) => super::layers::apply(&h, head),
            None => super::layers::linear(&h, &self.lm_head),
        }
    }
}
