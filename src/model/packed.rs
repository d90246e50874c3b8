//! The real positions of a padded batch, for passes that skip the padding's per-position work.
use tch::{Kind, Tensor};

use super::error::ModelError;
use super::profile::{span, Family};

/// Where the real positions of a padded [B, S] batch sit in its flattened layout.
pub struct Packed {
    /// Indices into [B·S] of the real positions, in order [N] (int64, on the batch's device).
    pub positions: Tensor,
    /// For each of the B·S padded positions, its index among the real ones, or N for padding
    /// (a zero row appended when unpacking) [B·S].
    padded_from: Tensor,
    /// B.
    pub batch: i64,
    /// S.
    pub width: i64,
}

impl Packed {
    /// The real positions of `mask` [B, S] (0/1), or None when padding is under 5% of the
    /// batch (packing's copies would cost more than the padding).
    pub fn of(mask: &Tensor) -> Result<Option<Self>, ModelError> {
        let _span = span(Family::Gather);
        let (batch, width) = mask.size2()?;
        let positions = mask.f_reshape([-1])?.f_nonzero()?.f_squeeze_dim(1)?;
        let n = positions.size()[0];
        if n * 20 >= batch * width * 19 {
            return Ok(None);
        }
        let padded_from = Tensor::f_full([batch * width], n, (Kind::Int64, mask.device()))?
            .f_index_put_(
                &[Some(positions.shallow_clone())],
                &Tensor::f_arange(n, (Kind::Int64, mask.device()))?,
                false,
            )?;
        Ok(Some(Self {
            positions,
            padded_from,
            batch,
            width,
        }))
    }

    /// Rows `x` [B, S, ...] → its real positions [N, ...].
    pub fn pack(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let _span = span(Family::Gather);
        let mut shape = x.size();
        shape.splice(0..2, [self.batch * self.width]);
        Ok(x.f_reshape(shape.as_slice())?
            .f_index_select(0, &self.positions)?)
    }

    /// Packed rows `t` [N, ...] → the flattened padded layout [B·S, ...], zeros at padding
    /// (one gather from `t` plus a zero row: libtorch's CPU gather is several times faster
    /// than scattering into zeros).
    pub fn unpack(&self, t: &Tensor) -> Result<Tensor, ModelError> {
        let _span = span(Family::Gather);
        let mut zero = t.size();
        zero[0] = 1;
        let with_zero = Tensor::f_cat(
            &[
                t.shallow_clone(),
                Tensor::f_zeros(zero.as_slice(), (t.kind(), t.device()))?,
            ],
            0,
        )?;
        Ok(with_zero.f_index_select(0, &self.padded_from)?)
    }
}
