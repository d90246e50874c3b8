//! Rank classification: log-likelihood of each candidate label (its tokens then `</s>`).
use tch::{Kind, Tensor};

use super::encoded::Encoded;
use crate::model::adapters::AdapterTables;
use crate::model::{ModelError, T5Model};

/// Label pairs scored per decoder pass; bounds the [pairs, T, vocab] logits tensor.
const PAIRS_PER_PASS: usize = 64;

/// One (batch row, label token ids) pair to score.
pub struct LabelPair<'a> {
    /// Row of the encoder output.
    pub row: usize,
    /// Label ids including the trailing `</s>`.
    pub target: &'a [i64],
}

/// Sum of log p(target) under teacher forcing for each pair, in order.
pub(crate) fn score_labels(
    model: &T5Model,
    encoded: &Encoded,
    tables: &AdapterTables,
    pairs: &[LabelPair],
) -> Result<Vec<f64>, ModelError> {
    let mut scores = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(PAIRS_PER_PASS) {
        scores.extend(score_chunk(model, encoded, tables, chunk)?);
    }
    Ok(scores)
}

fn score_chunk(
    model: &T5Model,
    encoded: &Encoded,
    tables: &AdapterTables,
    pairs: &[LabelPair],
) -> Result<Vec<f64>, ModelError> {
    let device = encoded.out.device();
    let cfg = &model.config;
    let t = pairs
        .iter()
        .map(|p| p.target.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let n = pairs.len();
    // Right-padded: the decoder is causal, so padding after a label never changes its positions.
    let mut inputs = vec![cfg.pad_id(); n * t];
    let mut targets = vec![0i64; n * t];
    let mut weights = vec![0f32; n * t];
    for (i, pair) in pairs.iter().enumerate() {
        inputs[i * t] = cfg.decoder_start_id();
        for (j, &tok) in pair.target.iter().enumerate() {
            if j + 1 < pair.target.len() {
                inputs[i * t + j + 1] = tok;
            }
            targets[i * t + j] = tok;
            weights[i * t + j] = 1.0;
        }
    }
    let shape = [n as i64, t as i64];
    let rows: Vec<i64> = pairs.iter().map(|p| p.row as i64).collect();
    let rows = Tensor::f_from_slice(&rows)?.f_to_device(device)?;
    let enc = encoded.out.f_index_select(0, &rows)?;
    let enc_mask = encoded.mask.f_index_select(0, &rows)?;
    let ad = encoded
        .adapt(tables)
        .map(|ad| ad.select(&rows))
        .transpose()?;
    let inputs = Tensor::f_from_slice(&inputs)?
        .f_view(shape)?
        .f_to_device(device)?;
    let targets = Tensor::f_from_slice(&targets)?
        .f_view(shape)?
        .f_to_device(device)?;
    let weights = Tensor::f_from_slice(&weights)?
        .f_view(shape)?
        .f_to_device(device)?;
    let logits = model.decode_full(&inputs, &enc, &enc_mask, ad.as_ref())?;
    let logp = logits.f_log_softmax(-1, Kind::Float)?;
    let picked = logp
        .f_gather(-1, &targets.f_unsqueeze(-1)?, false)?
        .f_squeeze_dim(-1)?;
    let sums = picked
        .f_mul(&weights)?
        .f_sum_dim_intlist(-1, false, Kind::Double)?;
    Ok(Vec::try_from(&sums)?)
}
