//! The engine proper: the model plus its prompt bank, and the passes over them that the decoder
//! ([`super::continuous`]) builds on: one encoder pass over `[prompt rows ; input]`, label
//! scoring, prompt registration and nearest tokens.
use std::collections::HashSet;
use std::sync::Arc;

use tch::Tensor;

use super::adapters::{AdapterBank, DEFAULT_ADAPTER_MEMORY_MB};
use super::bank::{PromptBank, PromptRows, PromptSlot};
use super::encoded::Encoded;
use super::error::EngineError;
use super::neighbors;
use super::rows::{BatchStats, RowInput};
use super::score::{self, LabelPair};
use super::task::TaskWeights;
use crate::model::int8::Int8Kernel;
use crate::model::profile::{span, Family};
use crate::model::{ModelError, T5Model};

/// The model plus its prompt and adapter banks.
pub struct Engine {
    model: T5Model,
    bank: PromptBank,
    adapters: AdapterBank,
    /// Set by the static runs ([`Engine::run_rows`], in continuous.rs).
    pub(super) last_stats: BatchStats,
}

impl Engine {
    /// Wraps a loaded model with an empty prompt bank on its device.
    pub fn new(model: T5Model) -> Result<Self, ModelError> {
        let opts = model.options();
        let bank = PromptBank::new(
            model.vocab_size(),
            model.config.d_model,
            opts.device,
            opts.kind,
        )?;
        Ok(Self {
            adapters: AdapterBank::new(opts.device, opts.kind, DEFAULT_ADAPTER_MEMORY_MB << 20),
            model,
            bank,
            last_stats: BatchStats::default(),
        })
    }

    /// The model.
    pub fn model(&self) -> &T5Model {
        &self.model
    }

    /// Packs the model's linear layers as int8 for the passes from now on (`--dtype int8`;
    /// again with another kernel replaces the packs).
    pub fn quantize_int8(&mut self, kernel: Int8Kernel) -> Result<(), EngineError> {
        Ok(self.model.quantize_int8(kernel)?)
    }

    /// The prompt bank.
    pub fn bank(&self) -> &PromptBank {
        &self.bank
    }

    /// The adapter bank.
    pub fn adapters(&self) -> &AdapterBank {
        &self.adapters
    }

    /// Cost of the last successful batch.
    pub fn last_stats(&self) -> &BatchStats {
        &self.last_stats
    }

    /// For each of a served prompt's rows, the `k` nearest of the first `vocab` vocabulary
    /// tokens by cosine similarity (paper §7).
    pub fn prompt_neighbors(
        &self,
        slot: &PromptSlot,
        k: usize,
        vocab: i64,
    ) -> Result<Vec<Vec<neighbors::Neighbor>>, EngineError> {
        let rows = self.bank.rows_of(slot)?;
        neighbors::nearest(self.model.shared(), &rows, k, vocab)
    }

    /// Makes room in the bank for `rows` more prompt rows at once.
    pub fn reserve_prompt_rows(&mut self, rows: usize) -> Result<(), ModelError> {
        self.bank.reserve(rows as i64)
    }

    /// Writes a prompt's encoder rows into the bank; the rows live while the slot does.
    pub fn register_prompt(&mut self, rows: &PromptRows) -> Result<Arc<PromptSlot>, ModelError> {
        #[cfg(debug_assertions)]
        if crate::fault::take(&crate::fault::PANIC_REGISTERS) {
            panic!("injected fault: registering a prompt panicked");
        }
        self.bank.insert(rows)
    }

    /// Registers a task: its prompt rows into the prompt bank and its adapter (if any) into
    /// the adapter bank; both live while the slot does.
    pub fn register_task(&mut self, task: &TaskWeights) -> Result<Arc<PromptSlot>, ModelError> {
        let Some(adapter) = &task.adapter else {
            return self.register_prompt(&task.rows);
        };
        let slot = self.adapters.register(adapter.clone())?;
        self.bank.insert_task(&task.rows, Some(slot))
    }

    /// The adapter bank, to budget.
    pub fn adapters_mut(&mut self) -> &mut AdapterBank {
        &mut self.adapters
    }

    /// One encoder pass over `[prompt rows ; input]` for every row (right-padded); the rows'
    /// adapters are loaded first, keeping those of `live` (ids the running batch uses).
    pub(crate) fn encode_rows(
        &mut self,
        rows: &[RowInput],
        live: &HashSet<u64>,
    ) -> Result<Encoded, EngineError> {
        #[cfg(debug_assertions)]
        if crate::fault::take(&crate::fault::PANIC_PASSES) {
            panic!("injected fault: forward pass panicked");
        }
        self.check_rows(rows)?;
        let opts = self.model.options();
        let pad = self.model.config.pad_id();
        let width = rows.iter().map(RowInput::encoder_len).max().unwrap_or(1);
        let mut ids = vec![pad; rows.len() * width];
        let mut mask = vec![0i64; rows.len() * width];
        for (i, row) in rows.iter().enumerate() {
            let virtual_ids = row.prompt.iter().flat_map(|p| p.virtual_ids());
            for (j, id) in virtual_ids.chain(row.input_ids.iter().copied()).enumerate() {
                ids[i * width + j] = id;
                mask[i * width + j] = 1;
            }
        }
        let shape = [rows.len() as i64, width as i64];
        let copying = span(Family::HostCopy);
        let ids = Tensor::f_from_slice(&ids)?
            .f_view(shape)?
            .f_to_device(opts.device)?;
        let mask = Tensor::f_from_slice(&mask)?
            .f_view(shape)?
            .f_to_device(opts.device)?;
        drop(copying);
        let embeds = {
            let _span = span(Family::Gather);
            self.bank.embed(self.model.shared(), &ids)?
        };
        self.adapters.reclaim()?;
        let mut pinned = live.clone();
        pinned.extend(rows.iter().filter_map(|r| r.prompt.as_ref()?.adapter_id()));
        // A lowered budget takes effect here: what no row needs leaves first.
        self.adapters.fit(0, &pinned)?;
        let index = rows
            .iter()
            .map(
                |r| match r.prompt.as_ref().and_then(|p| p.adapter.as_ref()) {
                    Some(a) => self.adapters.ensure(a, &pinned),
                    None => Ok(0),
                },
            )
            .collect::<Result<Vec<i64>, ModelError>>()?;
        let adapters = if index.iter().any(|&i| i != 0) {
            Some(Tensor::f_from_slice(&index)?.f_to_device(opts.device)?)
        } else {
            None
        };
        let mut encoded = Encoded {
            out: Tensor::new(),
            mask,
            width,
            adapters,
        };
        let ad = encoded.adapt(self.adapters.tables());
        encoded.out = self.model.encode(&embeds, &encoded.mask, ad.as_ref())?;
        Ok(encoded)
    }

    /// Each row's label log-likelihoods: None without labels, empty when the row was cancelled.
    pub(crate) fn score_rows(
        &self,
        rows: &[RowInput],
        encoded: &Encoded,
    ) -> Result<Vec<Option<Vec<f64>>>, EngineError> {
        let pairs: Vec<LabelPair> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_cancelled())
            .flat_map(|(i, r)| {
                r.labels
                    .iter()
                    .map(move |l| LabelPair { row: i, target: l })
            })
            .collect();
        let mut scores =
            score::score_labels(&self.model, encoded, self.adapters.tables(), &pairs)?.into_iter();
        Ok(rows
            .iter()
            .map(|row| match (row.labels.is_empty(), row.is_cancelled()) {
                (true, _) => None,
                (false, true) => Some(Vec::new()),
                (false, false) => Some(scores.by_ref().take(row.labels.len()).collect()),
            })
            .collect())
    }

    fn check_rows(&self, rows: &[RowInput]) -> Result<(), EngineError> {
        let vocab = self.model.vocab_size();
        for (i, row) in rows.iter().enumerate() {
            let bad = |why: String| Err(EngineError::InvalidRow { row: i, why });
            if row.input_ids.is_empty() {
                return bad("empty input ids (need at least </s>)".into());
            }
            let ids = row.input_ids.iter().chain(row.labels.iter().flatten());
            if let Some(id) = ids.into_iter().find(|&&id| id < 0 || id >= vocab) {
                return bad(format!(
                    "token id {id} is outside the model's vocabulary of {vocab}"
                ));
            }
            if row.labels.iter().any(|l| l.is_empty()) {
                return bad("a label has no tokens (need at least </s>)".into());
            }
        }
        Ok(())
    }
}
