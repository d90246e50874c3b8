//! Training and evaluation data: JSON lines `{"input": "...", "target": "..."}`, tokenized
//! into encoder ids and `labels` (target + `</s>`) as Hugging Face's T5 training expects.
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use tch::{Device, Tensor};

use super::error::TuneError;
use crate::model::T5Tokenizer;

/// One labelled example.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// The model's input text.
    pub input: String,
    /// The text the model should produce.
    pub target: String,
}

/// Reads a JSONL file of examples; blank lines are skipped, a bad line is an error naming
/// the file and the line.
pub fn load_jsonl(path: &Path) -> Result<Vec<Example>, TuneError> {
    let io = |source| TuneError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut rows = Vec::new();
    for (n, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(io)?;
        let bad = |why: String| TuneError::BadRow {
            path: path.to_path_buf(),
            line: n + 1,
            why,
        };
        let text = std::str::from_utf8(&line).map_err(|_| bad("not valid UTF-8".into()))?;
        if text.trim().is_empty() {
            continue;
        }
        let example: Example = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "{e} (each line must be {{\"input\": \"...\", \"target\": \"...\"}})"
            ))
        })?;
        rows.push(example);
    }
    if rows.is_empty() {
        return Err(TuneError::Data(format!(
            "{}: no examples (expected JSON lines {{\"input\": ..., \"target\": ...}})",
            path.display()
        )));
    }
    Ok(rows)
}

/// An example as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    /// Input ids ending with `</s>`.
    pub input_ids: Vec<i64>,
    /// Target ids ending with `</s>`.
    pub labels: Vec<i64>,
}

/// Tokenizes `text` with `</s>` and cuts it to `max` tokens, keeping the final `</s>`.
pub fn tokenize_capped(
    tokenizer: &T5Tokenizer,
    text: &str,
    max: usize,
) -> Result<(Vec<i64>, bool), TuneError> {
    let mut ids = tokenizer.encode(text)?;
    let cut = ids.len() > max;
    if cut {
        let eos = *ids.last().expect("encode appends </s>");
        ids.truncate(max.max(1) - 1);
        ids.push(eos);
    }
    Ok((ids, cut))
}

/// Tokenizes examples; inputs and targets longer than the caps are truncated (counted in the
/// second value).
pub fn tokenize(
    tokenizer: &T5Tokenizer,
    examples: &[Example],
    max_input_tokens: usize,
    max_target_tokens: usize,
) -> Result<(Vec<TokenizedExample>, usize), TuneError> {
    let mut truncated = 0;
    let mut out = Vec::with_capacity(examples.len());
    for ex in examples {
        let (input_ids, cut_in) = tokenize_capped(tokenizer, &ex.input, max_input_tokens)?;
        let (labels, cut_out) = tokenize_capped(tokenizer, &ex.target, max_target_tokens)?;
        truncated += usize::from(cut_in || cut_out);
        out.push(TokenizedExample { input_ids, labels });
    }
    Ok((out, truncated))
}

/// A training batch on the device: right-padded input ids and mask, labels padded with -100.
pub struct Batch {
    /// [B, S] input ids (padding: `pad_id`).
    pub input_ids: Tensor,
    /// [B, S] 0/1.
    pub mask: Tensor,
    /// [B, T] target ids, -100 where padded.
    pub labels: Tensor,
    /// Real (unpadded) input plus target tokens, for tokens/s.
    pub tokens: usize,
}

impl Batch {
    /// Pads `rows` into tensors on `device`.
    pub fn new(rows: &[&TokenizedExample], pad_id: i64, device: Device) -> Result<Self, TuneError> {
        let b = rows.len();
        let s = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(1);
        let t = rows.iter().map(|r| r.labels.len()).max().unwrap_or(1);
        let mut ids = vec![pad_id; b * s];
        let mut mask = vec![0i64; b * s];
        let mut labels = vec![-100i64; b * t];
        let mut tokens = 0;
        for (i, row) in rows.iter().enumerate() {
            ids[i * s..i * s + row.input_ids.len()].copy_from_slice(&row.input_ids);
            mask[i * s..i * s + row.input_ids.len()].fill(1);
            labels[i * t..i * t + row.labels.len()].copy_from_slice(&row.labels);
            tokens += row.input_ids.len() + row.labels.len();
        }
        let to = |v: &[i64], cols: usize| -> Result<Tensor, TuneError> {
            Ok(Tensor::f_from_slice(v)?
                .f_view([b as i64, cols as i64])?
                .f_to_device(device)?)
        };
        Ok(Self {
            input_ids: to(&ids, s)?,
            mask: to(&mask, s)?,
            labels: to(&labels, t)?,
            tokens,
        })
    }
}
