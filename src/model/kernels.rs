//! promptd's own CPU kernels for f32 serving passes (`kernels.cpp`), where libtorch's calls cost
//! more than the work: a linear layer over a decode step's few rows (a matrix-vector product
//! bound by reading the weight), T5's RMS norm in one pass instead of five ops, and a decode
//! step's one-query attention in one pass over each head's cache.
use std::ffi::{c_char, c_void};

use tch::{Device, Kind, Tensor};

use super::error::ModelError;

extern "C" {
    fn promptd_few_rows_max() -> i64;
    fn promptd_few_rows_linear(
        x: *const c_void,
        weight: *const c_void,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn promptd_one_query_attention(
        q: *const c_void,
        keys: *const c_void,
        values: *const c_void,
        bias: *const c_void,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn promptd_rms_norm(
        x: *const c_void,
        weight: *const c_void,
        eps: f64,
        error: *mut *mut c_char,
    ) -> *mut c_void;
}

/// The most rows [`few_rows_linear`] takes.
pub fn few_rows_max() -> i64 {
    // SAFETY: a constant.
    unsafe { promptd_few_rows_max() }
}

/// A tensor a shim returned, or its error.
fn owned(out: *mut c_void, error: *mut c_char, what: &str) -> Result<Tensor, ModelError> {
    if out.is_null() {
        return Err(super::int8::shim_error(error, what));
    }
    // SAFETY: a non-null result is a new at::Tensor that `Tensor::from_ptr` owns (and frees).
    Ok(unsafe { Tensor::from_ptr(out as *mut _) })
}

/// `x @ weight.T` for f32 CPU `x` [rows, in] with 1 ≤ rows ≤ [`few_rows_max`] and the plain
/// f32 CPU `weight` [out, in]. Each output sums in one order whatever the rows or threads.
pub fn few_rows_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor, ModelError> {
    let mut error = std::ptr::null_mut();
    // SAFETY: `x` and `weight` live through the call, which only reads them.
    let out = unsafe {
        promptd_few_rows_linear(
            x.as_ptr() as *const c_void,
            weight.as_ptr() as *const c_void,
            &mut error,
        )
    };
    owned(out, error, "few-rows linear")
}

/// Whether [`rms_norm`] takes `x` and `weight`: f32 on the CPU, no gradients.
pub fn rms_norm_takes(x: &Tensor, weight: &Tensor) -> bool {
    x.device() == Device::Cpu
        && weight.device() == Device::Cpu
        && x.kind() == Kind::Float
        && weight.kind() == Kind::Float
        && !x.requires_grad()
        && !weight.requires_grad()
}

/// T5's RMS norm over the last dimension of `x`, as transformers' `T5LayerNorm` computes it in
/// f32: `weight * (x * rsqrt(mean(x²) + eps))`, bit for bit (the mean is libtorch's own).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor, ModelError> {
    let mut error = std::ptr::null_mut();
    // SAFETY: `x` and `weight` live through the call, which only reads them.
    let out = unsafe {
        promptd_rms_norm(
            x.as_ptr() as *const c_void,
            weight.as_ptr() as *const c_void,
            eps,
            &mut error,
        )
    };
    owned(out, error, "rms norm")
}

/// Whether [`one_query_attention`] takes these: a decode step's one query per row and head,
/// all f32 on the CPU, no gradients.
pub fn one_query_attention_takes(q: &Tensor, keys: &Tensor, values: &Tensor) -> bool {
    q.dim() == 4
        && q.size()[2] == 1
        && [q, keys, values]
            .iter()
            .all(|t| t.device() == Device::Cpu && t.kind() == Kind::Float && !t.requires_grad())
}

/// `softmax(q Kᵀ + bias) V` for queries [B, H, 1, dk] over keys and values [B, H, S, dk] with
/// an additive f32 `bias` broadcastable to [B, H, 1, S], unscaled (T5): each (row, head) in one
/// pass over its cache, alone, so a row's result does not depend on its batch.
pub fn one_query_attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    bias: &Tensor,
) -> Result<Tensor, ModelError> {
    let mut error = std::ptr::null_mut();
    // SAFETY: the tensors live through the call, which only reads them.
    let out = unsafe {
        promptd_one_query_attention(
            q.as_ptr() as *const c_void,
            keys.as_ptr() as *const c_void,
            values.as_ptr() as *const c_void,
            bias.as_ptr() as *const c_void,
            &mut error,
        )
    };
    owned(out, error, "one-query attention")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of their own (libtorch's generator is shared with tests running in parallel).
    fn fill(shape: &[i64], shift: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        Tensor::arange(n, (Kind::Float, Device::Cpu))
            .f_mul_scalar(0.37)
            .unwrap()
            .f_add_scalar(shift)
            .unwrap()
            .sin()
            .view(shape)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn few_rows_linear_matches_torch_and_each_row_is_the_row_alone() {
        let _guard = tch::no_grad_guard();
        // Widths that end in a partial block of 16 and of 8, and one narrower than a block.
        for (out, inner) in [(48, 32), (37, 517), (5, 7), (300, 2048)] {
            let w = fill(&[out, inner], 0.5);
            let x = fill(&[few_rows_max(), inner], 1.5);
            let all = few_rows_linear(&x, &w).unwrap();
            assert_eq!(all.size(), vec![few_rows_max(), out]);
            let want = x.linear::<Tensor>(&w, None);
            let diff = max_diff(&all, &want);
            assert!(diff < 1e-4 * (inner as f64).sqrt(), "{out}x{inner}: {diff}");
            for rows in 1..=few_rows_max() {
                let some = few_rows_linear(&x.narrow(0, 0, rows), &w).unwrap();
                assert!(
                    some.equal(&all.narrow(0, 0, rows)),
                    "{out}x{inner}, {rows} rows"
                );
            }
        }
        // A strided input is taken as its values.
        let w = fill(&[48, 32], 0.5);
        let x = fill(&[32, 2], 1.0).tr();
        assert!(
            max_diff(
                &few_rows_linear(&x, &w).unwrap(),
                &x.linear::<Tensor>(&w, None)
            ) < 1e-4
        );
    }

    #[test]
    fn few_rows_linear_refuses_what_it_does_not_take() {
        let w = fill(&[8, 16], 0.0);
        for (x, says) in [
            (fill(&[few_rows_max() + 1, 16], 0.0), "rows"),
            (fill(&[1, 15], 0.0), "width"),
            (fill(&[1, 16], 0.0).to_kind(Kind::Double), "f32"),
            (fill(&[16], 0.0), "2-D"),
        ] {
            let e = few_rows_linear(&x, &w).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn rms_norm_is_t5s_ops_bit_for_bit() {
        let _guard = tch::no_grad_guard();
        for shape in [vec![1i64, 512], vec![3, 7, 64], vec![5, 33]] {
            let d = *shape.last().unwrap();
            let x = fill(&shape, 0.25).f_mul_scalar(3.0).unwrap();
            let w = fill(&[d], 2.0);
            let eps = 1e-6;
            let got = rms_norm(&x, &w, eps).unwrap();
            let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
            let want = &w * (&x * (variance + eps).rsqrt());
            assert_eq!(got.size(), shape);
            assert!(got.equal(&want), "{shape:?}: {}", max_diff(&got, &want));
            // Each row alone is the same row in the batch, bit for bit.
            let flat = x.view([-1, d]);
            let first = rms_norm(&flat.narrow(0, 0, 1), &w, eps).unwrap();
            assert!(first.equal(&got.view([-1, d]).narrow(0, 0, 1)));
        }
        let e = rms_norm(&fill(&[2, 8], 0.0), &fill(&[7], 0.0), 1e-6)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rms norm"), "{e}");
    }

    #[test]
    fn one_query_attention_matches_the_math_and_each_row_is_the_row_alone() {
        let _guard = tch::no_grad_guard();
        // Head widths with a tail past the vector blocks, T5's 64, and 64 + a block of 8.
        for dk in [20i64, 64, 72] {
            one_query_attention_case(dk);
        }
        assert!(!one_query_attention_takes(
            &fill(&[1, 1, 2, 4], 0.0),
            &fill(&[1, 1, 3, 4], 0.0),
            &fill(&[1, 1, 3, 4], 0.0)
        ));
        let e = one_query_attention(
            &fill(&[1, 1, 1, 4], 0.0),
            &fill(&[1, 1, 3, 4], 0.0),
            &fill(&[1, 1, 2, 4], 0.0),
            &fill(&[1, 1, 1, 3], 0.0),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("one-query attention"), "{e}");
    }

    fn one_query_attention_case(dk: i64) {
        let _guard = tch::no_grad_guard();
        let (b, h, s, cap) = (5i64, 3i64, 11i64, 16i64);
        let q = fill(&[b, h, 1, dk], 0.1);
        // Keys and values as a cache's narrowed columns (strided), the bias per row and head
        // with masked positions (T5's padding and late joiners), and one broadcast over rows.
        let keys = fill(&[b, h, cap, dk], 0.7).narrow(2, 2, s);
        let values = fill(&[b, h, cap, dk], 1.9).narrow(2, 2, s);
        let masked = f64::from(f32::MIN);
        let per_row = fill(&[b, h, 1, s], 0.3)
            .f_mul_scalar(4.0)
            .unwrap()
            .narrow(3, 0, s);
        let _ = per_row.narrow(0, 1, 1).narrow(3, 0, 4).fill_(masked);
        let _ = per_row.narrow(0, 3, 1).narrow(3, 7, 4).fill_(masked);
        for bias in [per_row, fill(&[1, h, 1, s], 2.0)] {
            let got = one_query_attention(&q, &keys, &values, &bias).unwrap();
            let scores = q.matmul(&keys.transpose(2, 3)) + &bias;
            let want = scores.softmax(-1, Kind::Float).matmul(&values);
            assert_eq!(got.size(), want.size());
            let diff = max_diff(&got, &want);
            assert!(diff < 1e-5, "{diff}");
            for row in 0..b {
                let one = |t: &Tensor| {
                    if t.size()[0] == 1 {
                        t.shallow_clone()
                    } else {
                        t.narrow(0, row, 1)
                    }
                };
                let alone = one_query_attention(
                    &q.narrow(0, row, 1),
                    &keys.narrow(0, row, 1),
                    &values.narrow(0, row, 1),
                    &one(&bias),
                )
                .unwrap();
                assert!(alone.equal(&got.narrow(0, row, 1)), "row {row}");
            }
        }
    }
}
