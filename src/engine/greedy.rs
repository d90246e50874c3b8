//! Greedy decoding with per-row `max_new_tokens` and per-row stop at `</s>`; finished rows
//! leave the batch at once so they stop costing decode work.
use tch::{Kind, Tensor};

use crate::model::{ModelError, T5Model};

/// Which rows are still decoding and what each has produced. Pure bookkeeping, no tensors.
#[derive(Debug)]
pub struct GreedyRows {
    /// Original row index of each position in the live batch.
    active: Vec<usize>,
    max_new: Vec<usize>,
    outputs: Vec<Vec<i64>>,
    eos: Vec<i64>,
}

impl GreedyRows {
    /// Rows with `max_new[i] == 0` never decode.
    pub fn new(max_new: &[usize], eos: &[i64]) -> Self {
        Self {
            active: (0..max_new.len()).filter(|&i| max_new[i] > 0).collect(),
            max_new: max_new.to_vec(),
            outputs: vec![Vec::new(); max_new.len()],
            eos: eos.to_vec(),
        }
    }

    /// Original indices of the live rows, in batch order.
    pub fn active(&self) -> &[usize] {
        &self.active
    }

    /// Whether every row has finished.
    pub fn is_done(&self) -> bool {
        self.active.is_empty()
    }

    /// Records one token per live row. Returns the batch positions to keep when a row
    /// finished (or was cancelled: `cancelled(row)` is asked with the original index).
    pub fn push(&mut self, next: &[i64], cancelled: &dyn Fn(usize) -> bool) -> Option<Vec<i64>> {
        debug_assert_eq!(next.len(), self.active.len());
        let mut keep = Vec::with_capacity(self.active.len());
        for (pos, (&row, &token)) in self.active.iter().zip(next).enumerate() {
            self.outputs[row].push(token);
            let done = self.eos.contains(&token)
                || self.outputs[row].len() >= self.max_new[row]
                || cancelled(row);
            if !done {
                keep.push(pos);
            }
        }
        if keep.len() == self.active.len() {
            return None;
        }
        self.active = keep.iter().map(|&p| self.active[p]).collect();
        Some(keep.into_iter().map(|p| p as i64).collect())
    }

    /// Generated ids per original row (ending with `</s>` when it was produced).
    pub fn into_outputs(self) -> Vec<Vec<i64>> {
        self.outputs
    }
}

/// Greedy outputs plus the decode work they cost.
#[derive(Debug, Default)]
pub struct Generated {
    /// Generated ids per row.
    pub outputs: Vec<Vec<i64>>,
    /// Decoder steps run.
    pub steps: usize,
    /// Sum over steps of the rows still in the batch (the decode work actually done).
    pub row_steps: usize,
}

/// Greedy-decodes every row of `encoder_out` [B, S, d] up to its own `max_new[i]` tokens.
pub fn generate(
    model: &T5Model,
    encoder_out: &Tensor,
    mask: &Tensor,
    max_new: &[usize],
    cancelled: &dyn Fn(usize) -> bool,
) -> Result<Generated, ModelError> {
    let cfg = &model.config;
    let mut rows = GreedyRows::new(max_new, &cfg.eos_ids());
    if rows.is_done() {
        return Ok(Generated {
            outputs: rows.into_outputs(),
            ..Generated::default()
        });
    }
    let (mut decode_steps, mut row_steps) = (0, 0);
    let device = encoder_out.device();
    let steps = max_new.iter().copied().max().unwrap_or(1) as i64;
    let mut state = if rows.active().len() == max_new.len() {
        model.start_decoder(encoder_out, mask, steps)?
    } else {
        let live: Vec<i64> = rows.active().iter().map(|&i| i as i64).collect();
        let live = Tensor::f_from_slice(&live)?.f_to_device(device)?;
        model.start_decoder(
            &encoder_out.f_index_select(0, &live)?,
            &mask.f_index_select(0, &live)?,
            steps,
        )?
    };
    let mut tokens = Tensor::f_full(
        [rows.active().len() as i64],
        cfg.decoder_start_id(),
        (Kind::Int64, device),
    )?;
    loop {
        decode_steps += 1;
        row_steps += rows.active().len();
        let logits = model.decode_step(&tokens, &mut state)?;
        let next = logits.f_argmax(-1, false)?;
        let next_host: Vec<i64> = Vec::try_from(&next)?;
        match rows.push(&next_host, cancelled) {
            None => tokens = next,
            Some(keep) => {
                if rows.is_done() {
                    break;
                }
                let keep = Tensor::f_from_slice(&keep)?.f_to_device(device)?;
                state = state.select(&keep)?;
                tokens = next.f_index_select(0, &keep)?;
            }
        }
    }
    Ok(Generated {
        outputs: rows.into_outputs(),
        steps: decode_steps,
        row_steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: usize) -> bool {
        false
    }

    #[test]
    fn cancelled_rows_leave_at_the_next_step() {
        let mut rows = GreedyRows::new(&[5, 5, 5], &[1]);
        assert_eq!(rows.push(&[7, 8, 9], &never), None);
        assert_eq!(rows.push(&[7, 8, 9], &|row| row == 1), Some(vec![0, 2]));
        assert_eq!(rows.active(), &[0, 2]);
    }

    #[test]
    fn rows_leave_at_eos_or_their_own_limit() {
        let mut rows = GreedyRows::new(&[3, 0, 1, 5], &[1]);
        assert_eq!(rows.active(), &[0, 2, 3]);
        // Row 2 hits its limit of 1.
        assert_eq!(rows.push(&[7, 8, 9], &never), Some(vec![0, 2]));
        assert_eq!(rows.active(), &[0, 3]);
        // Row 3 emits </s>.
        assert_eq!(rows.push(&[4, 1], &never), Some(vec![0]));
        assert_eq!(rows.push(&[5], &never), Some(vec![]));
        assert!(rows.is_done());
        assert_eq!(
            rows.into_outputs(),
            vec![vec![7, 4, 5], vec![], vec![8], vec![9, 1]]
        );
    }

    #[test]
    fn nothing_leaves_without_a_finish() {
        let mut rows = GreedyRows::new(&[4, 4], &[1, 2]);
        assert_eq!(rows.push(&[5, 6], &never), None);
        assert_eq!(rows.push(&[2, 6], &never), Some(vec![1]));
        assert_eq!(rows.into_outputs()[0], vec![5, 2]);
    }
}
