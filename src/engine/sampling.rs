//! How a row picks its next token when it does not decode greedily: temperature, top-k and
//! top-p (nucleus) sampling, each row with its own parameters and its own seeded stream of
//! random numbers, all rows of a step in one set of tensor operations.
//!
//! A row's token depends only on its own logits, its parameters, its seed and how many tokens
//! it has generated: never on the other rows of the pass, so a seeded row answers the same
//! whatever shares its batch. The random number of step `n` is a hash of `(seed, n)`, not a
//! draw from a shared generator.
use tch::{Kind, Tensor};

use super::error::EngineError;

/// A row's sampling parameters. Greedy decoding is `None` on the row, not a temperature of 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Divides the logits before the softmax (> 0).
    pub temperature: f64,
    /// Keep the smallest set of most likely tokens whose probability reaches this (0, 1].
    pub top_p: f64,
    /// Keep at most this many most likely tokens (0: no limit).
    pub top_k: usize,
    /// Seeds the row's random numbers.
    pub seed: u64,
}

/// A generated token's log-probabilities (when its row asked for them).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's log-probability under the model (the softmax of the logits before any temperature).
    pub logprob: f32,
    /// The most likely tokens at this step and their log-probabilities, most likely first.
    pub top: Vec<(i64, f32)>,
}

/// A token sent to a streaming row's listener the step it is decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamToken {
    /// The token.
    pub token_id: i64,
    /// Its log-probabilities, when the row asked for them.
    pub logprobs: Option<TokenLogprob>,
}

/// Where a streaming row's tokens go.
pub type TokenSender = tokio::sync::mpsc::UnboundedSender<StreamToken>;

/// splitmix64: a fast, well-mixed 64-bit hash (Steele, Lea & Flood 2014).
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uniform number in [0, 1) a row with `seed` draws at generation step `step`.
pub fn uniform(seed: u64, step: usize) -> f64 {
    let bits = mix(mix(seed) ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A seed for a row whose request gave none: different for every call.
pub fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix(nanos ^ mix(COUNTER.fetch_add(1, Ordering::Relaxed)))
}

/// A sampling row of a step: its parameters and how many tokens it has generated.
pub struct SampleRow {
    /// The row's parameters.
    pub sampling: Sampling,
    /// Tokens generated before this step.
    pub step: usize,
}

/// Samples one token per row from `logits` [S, V] (the sampling rows' logits, in order).
/// Returns the tokens [S] (Int64, on the logits' device).
pub fn sample(logits: &Tensor, rows: &[SampleRow]) -> Result<Tensor, EngineError> {
    let device = logits.device();
    let vocab = logits.size()[1];
    let column = |v: Vec<f64>| -> Result<Tensor, EngineError> {
        Ok(Tensor::f_from_slice(&v)?
            .f_to_device(device)?
            .f_unsqueeze(1)?)
    };
    let temps = column(rows.iter().map(|r| r.sampling.temperature).collect())?;
    let top_p = column(rows.iter().map(|r| r.sampling.top_p).collect())?;
    let top_k = column(
        rows.iter()
            .map(|r| match r.sampling.top_k {
                0 => vocab as f64,
                k => k.min(vocab as usize) as f64,
            })
            .collect(),
    )?;
    let u = column(
        rows.iter()
            .map(|r| uniform(r.sampling.seed, r.step))
            .collect(),
    )?;
    // In f64: the cumulative sums over a 32k vocabulary then cannot drift a row's choice.
    let scaled = logits.f_to_kind(Kind::Double)?.f_div(&temps)?;
    let (sorted, order) = scaled.f_sort(-1, true)?;
    let probs = sorted.f_softmax(-1, Kind::Double)?;
    let cum = probs.f_cumsum(-1, Kind::Double)?;
    // A token is kept while the mass before it is below top_p (so the most likely always is)
    // and its rank is below top_k: both keep a prefix of the sorted order.
    let before = cum.f_sub(&probs)?;
    let rank = Tensor::f_arange(vocab, (Kind::Double, device))?.f_unsqueeze(0)?;
    let keep = before
        .f_lt_tensor(&top_p)?
        .f_logical_and(&rank.f_lt_tensor(&top_k)?)?;
    let kept = probs.f_mul(&keep.f_to_kind(Kind::Double)?)?;
    let kept_cum = kept.f_cumsum(-1, Kind::Double)?;
    let total = kept_cum.f_narrow(1, vocab - 1, 1)?;
    let target = u.f_mul(&total)?;
    // The first kept token whose cumulative mass exceeds the target.
    let last = keep
        .f_sum_dim_intlist(-1, true, Kind::Int64)?
        .f_sub_scalar(1)?;
    let choice = kept_cum
        .f_le_tensor(&target)?
        .f_sum_dim_intlist(-1, true, Kind::Int64)?
        .f_minimum(&last)?;
    Ok(order.f_gather(-1, &choice, false)?.f_squeeze_dim(-1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(temperature: f64, top_p: f64, top_k: usize, seed: u64) -> SampleRow {
        SampleRow {
            sampling: Sampling {
                temperature,
                top_p,
                top_k,
                seed,
            },
            step: 0,
        }
    }

    #[test]
    fn uniform_numbers_are_in_range_and_spread() {
        let draws: Vec<f64> = (0..10_000).map(|i| uniform(7, i)).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        assert_ne!(uniform(1, 0), uniform(2, 0));
        assert_eq!(uniform(3, 5), uniform(3, 5));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = Tensor::from_slice(&[0.1f32, 2.0, 0.3, 1.9, -1.0]).view([1, 5]);
        for seed in 0..50 {
            for r in [row(1.0, 1.0, 1, seed), row(1.0, 1e-9, 0, seed)] {
                let t = sample(&logits, &[r]).unwrap();
                assert_eq!(Vec::<i64>::try_from(&t).unwrap(), vec![1]);
            }
        }
    }

    #[test]
    fn sampling_follows_the_distribution_within_the_nucleus() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.8 keeps the first two only.
        let p = [0.5f64, 0.3, 0.15, 0.05];
        let logits = Tensor::from_slice(&p.map(|x| x.ln() as f32)).view([1, 4]);
        let mut counts = [0usize; 4];
        let n = 4000;
        for seed in 0..n {
            let t = sample(&logits, &[row(1.0, 0.8, 0, seed)]).unwrap();
            counts[Vec::<i64>::try_from(&t).unwrap()[0] as usize] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        let first = counts[0] as f64 / n as f64;
        assert!((first - 0.625).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn a_row_samples_the_same_whatever_else_is_in_the_step() {
        let a = Tensor::from_slice(&[0.2f32, 0.1, 0.4, 0.3, 0.0, 0.25]).view([1, 6]);
        let b = Tensor::from_slice(&[3.0f32, -2.0, 0.5, 0.1, 1.0, 0.0]).view([1, 6]);
        for seed in 0..100 {
            let alone = sample(&a, &[row(0.7, 0.9, 4, seed)]).unwrap();
            let both = sample(
                &Tensor::cat(&[&b, &a], 0),
                &[row(1.3, 0.5, 0, seed ^ 99), row(0.7, 0.9, 4, seed)],
            )
            .unwrap();
            assert_eq!(
                Vec::<i64>::try_from(&alone).unwrap()[0],
                Vec::<i64>::try_from(&both).unwrap()[1]
            );
        }
    }
}
