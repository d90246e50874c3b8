//! The initial prompt (paper §3.2): class labels, sampled vocabulary, uniform noise, a prompt
//! file, or the embeddings of a text instruction.
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use super::error::TuneError;
use super::rng::Rng;
use crate::model::{T5Model, T5Tokenizer};
use crate::prompts::dir::{load_source, PromptSource};
use crate::prompts::{PromptLimits, PromptRows};

/// How many of the lowest ordinary ids count as "the most common tokens".
pub const COMMON_TOKENS: usize = 5000;

/// Where P starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitSpec {
    /// Embeddings of the label words (averaged over sub-tokens), one row per label; rows left
    /// over when there are fewer labels than rows come from `SampledVocab`.
    ClassLabels,
    /// Embeddings of tokens drawn from the most common 5,000.
    SampledVocab,
    /// Uniform in [-0.5, 0.5].
    RandomUniform,
    /// Any prompt file the server accepts (.safetensors, .npy, PEFT adapter folder).
    File(PathBuf),
    /// Embeddings of a text instruction's tokens (with `</s>`), repeated to fill P (as PEFT's
    /// TEXT init), or cut when longer.
    Text(String),
}

impl FromStr for InitSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: needs a path, e.g. file:prompt.safetensors".into());
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        if let Some(text) = s.strip_prefix("text:") {
            if text.trim().is_empty() {
                return Err("text: needs words, e.g. text:\"Classify the sentiment\"".into());
            }
            return Ok(Self::Text(text.to_string()));
        }
        match s {
            "class-labels" => Ok(Self::ClassLabels),
            "sampled-vocab" => Ok(Self::SampledVocab),
            "random-uniform" => Ok(Self::RandomUniform),
            other => Err(format!(
                "unknown init {other:?}: use class-labels, sampled-vocab, random-uniform, file:PATH or text:WORDS"
            )),
        }
    }
}

impl fmt::Display for InitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClassLabels => f.write_str("class-labels"),
            Self::SampledVocab => f.write_str("sampled-vocab"),
            Self::RandomUniform => f.write_str("random-uniform"),
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Text(t) => write!(f, "text:{t}"),
        }
    }
}

/// Rows of the prompt file named by `file:` init (its length decides the prompt length).
pub fn read_init_file(path: &std::path::Path, d_model: usize) -> Result<PromptRows, TuneError> {
    let source = if path.is_dir() {
        PromptSource::PeftDir(path.to_path_buf())
    } else {
        PromptSource::TensorFile(path.to_path_buf())
    };
    let limits = PromptLimits {
        max_rows: usize::MAX,
        ..PromptLimits::default()
    };
    let prompt = load_source(&source, d_model, &limits)?;
    if prompt.adapter.is_some() {
        return Err(TuneError::Settings(format!(
            "{} is a LoRA, IA3 or prefix adapter: a prompt's tuning starts from a soft prompt",
            path.display()
        )));
    }
    Ok(prompt.encoder)
}

/// Builds the initial P [rows, d_model] as f32 values.
pub fn initial_prompt(
    spec: &InitSpec,
    model: &T5Model,
    tokenizer: &T5Tokenizer,
    rows: usize,
    labels: &[String],
    rng: &mut Rng,
) -> Result<Vec<f32>, TuneError> {
    let d = model.config.d_model as usize;
    let embed = |ids: &[i64]| -> Result<Vec<f32>, TuneError> {
        let ids = Tensor::f_from_slice(ids)?.f_to_device(model.options().device)?;
        let rows = tch::no_grad(|| model.embed(&ids))?;
        Ok(Vec::<f32>::try_from(
            rows.f_to_kind(Kind::Float)?
                .f_to_device(Device::Cpu)?
                .f_flatten(0, -1)?,
        )?)
    };
    match spec {
        InitSpec::RandomUniform => Ok((0..rows * d)
            .map(|_| (rng.next_f64() - 0.5) as f32)
            .collect()),
        InitSpec::SampledVocab => embed(&sample_vocab(model, tokenizer, rows, rng)?),
        InitSpec::Text(text) => {
            let ids = tokenizer.encode(text)?;
            let cycled: Vec<i64> = ids.iter().copied().cycle().take(rows).collect();
            embed(&cycled)
        }
        InitSpec::File(path) => {
            let p = read_init_file(path, d)?;
            if p.rows != rows {
                return Err(TuneError::Init(format!(
                    "{} has {} rows but the prompt length is {rows}",
                    path.display(),
                    p.rows
                )));
            }
            Ok(p.values)
        }
        InitSpec::ClassLabels => {
            if labels.is_empty() {
                return Err(TuneError::Init(
                    "class-labels needs labels (--labels or targets in the data)".into(),
                ));
            }
            let mut values = Vec::with_capacity(rows * d);
            for label in labels.iter().take(rows) {
                let mut ids = tokenizer.encode(label)?;
                ids.pop(); // </s>
                if ids.is_empty() {
                    return Err(TuneError::Init(format!("label {label:?} has no tokens")));
                }
                let emb = embed(&ids)?;
                let n = ids.len() as f32;
                values.extend(
                    (0..d).map(|c| (0..ids.len()).map(|r| emb[r * d + c]).sum::<f32>() / n),
                );
            }
            let left = rows - values.len() / d;
            if left > 0 {
                values.extend(embed(&sample_vocab(model, tokenizer, left, rng)?)?);
            }
            Ok(values)
        }
    }
}

/// `n` ids drawn from the most common ordinary tokens (distinct while there are enough).
fn sample_vocab(
    model: &T5Model,
    tokenizer: &T5Tokenizer,
    n: usize,
    rng: &mut Rng,
) -> Result<Vec<i64>, TuneError> {
    let vocab = model.vocab_size();
    let mut pool: Vec<i64> = tokenizer
        .ordinary_ids()
        .into_iter()
        .filter(|&id| id < vocab)
        .take(COMMON_TOKENS)
        .collect();
    if pool.is_empty() {
        return Err(TuneError::Init(
            "the tokenizer has no ordinary tokens to sample".into(),
        ));
    }
    rng.shuffle(&mut pool);
    Ok(pool.iter().copied().cycle().take(n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("class-labels".parse(), Ok(InitSpec::ClassLabels));
        assert_eq!(
            "file:p.npy".parse(),
            Ok(InitSpec::File(PathBuf::from("p.npy")))
        );
        assert_eq!(
            "text:classify: this".parse(),
            Ok(InitSpec::Text("classify: this".into()))
        );
        assert!("file:".parse::<InitSpec>().is_err());
        assert!("vocab".parse::<InitSpec>().is_err());
    }
}
