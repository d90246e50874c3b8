//! What a prompt "means" (paper §7): for each prompt row, the vocabulary tokens whose input
//! embeddings are nearest by cosine similarity: the normalised rows times the embedding table,
//! divided by each token's norm, a chunk of vocabulary per matmul, on the model's device, in f32.
use tch::{Kind, Tensor};

use super::error::EngineError;

/// Vocabulary rows compared per matmul. A bf16 / f16 table is read in f32 a chunk at a time
/// (T5-XXL: 8,192 × 4,096 × 4 bytes = 134 MB at once, not its whole 32k vocabulary's 526 MB);
/// an f32 table is used in place, never copied.
const CHUNK: i64 = 8_192;

/// A vocabulary token near a prompt row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// Token id.
    pub id: i64,
    /// Cosine similarity between the row and the token's embedding.
    pub cosine: f32,
}

/// For each row of `rows` [P, d], the `k` tokens among the first `vocab` rows of `table`
/// [V, d] with the highest cosine similarity, best first.
pub fn nearest(
    table: &Tensor,
    rows: &Tensor,
    k: usize,
    vocab: i64,
) -> Result<Vec<Vec<Neighbor>>, EngineError> {
    let vocab = vocab.min(table.size()[0]);
    let k = (k as i64).min(vocab);
    if k <= 0 || rows.size()[0] == 0 {
        return Ok(vec![Vec::new(); rows.size()[0].max(0) as usize]);
    }
    let norms = |t: &Tensor| -> Result<Tensor, EngineError> {
        Ok(t.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
            .f_clamp_min(1e-12)?)
    };
    let rows = rows.f_to_kind(Kind::Float)?;
    let rows = rows.f_div(&norms(&rows)?)?;
    let (mut values, mut indices) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < vocab {
        let n = CHUNK.min(vocab - start);
        let chunk = table.f_narrow(0, start, n)?.f_to_kind(Kind::Float)?;
        // [P, n] dot products over [1, n] token norms: no normalised copy of the chunk.
        let sims = rows
            .f_matmul(&chunk.f_transpose(0, 1)?)?
            .f_div(&norms(&chunk)?.f_transpose(0, 1)?)?;
        let (v, i) = sims.f_topk(k.min(n), -1, true, true)?;
        values.push(v);
        indices.push(i.f_add_scalar(start)?);
        start += n;
    }
    let (values, indices) = if values.len() == 1 {
        (values.remove(0), indices.remove(0))
    } else {
        let (v, at) = Tensor::f_cat(&values, 1)?.f_topk(k, -1, true, true)?;
        (v, Tensor::f_cat(&indices, 1)?.f_gather(1, &at, false)?)
    };
    let values: Vec<Vec<f32>> = Vec::try_from(&values.f_to_device(tch::Device::Cpu)?)?;
    let indices: Vec<Vec<i64>> = Vec::try_from(&indices.f_to_device(tch::Device::Cpu)?)?;
    Ok(values
        .into_iter()
        .zip(indices)
        .map(|(v, i)| {
            i.into_iter()
                .zip(v)
                .map(|(id, cosine)| Neighbor { id, cosine })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_built_from_token_embeddings_find_those_tokens() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(3);
        let table = Tensor::randn([40_000, 128], (Kind::Float, tch::Device::Cpu));
        // Row 0 is token 7 scaled (cosine ignores length); row 1 is token 39,999 (in the
        // second chunk) plus some of token 5.
        let rows = Tensor::stack(
            &[table.get(7) * 3.0, table.get(39_999) + table.get(5) * 0.8],
            0,
        );
        let got = nearest(&table, &rows, 3, 40_000).unwrap();
        assert_eq!(got[0][0].id, 7);
        assert!((got[0][0].cosine - 1.0).abs() < 1e-5);
        assert_eq!(got[1][0].id, 39_999);
        assert!(got[1].iter().any(|n| n.id == 5), "{:?}", got[1]);
        assert!(got[1][0].cosine >= got[1][1].cosine && got[1][1].cosine >= got[1][2].cosine);
        // Tokens past `vocab` (padding rows of the embedding) are never answers.
        let got = nearest(&table, &rows, 2, 30_000).unwrap();
        assert!(got[1].iter().all(|n| n.id < 30_000));
        assert_eq!(got[1].len(), 2);
    }
}
