//! A model folder's tokenizer (`tokenizer.json`, else `spiece.model`) through the `tokenizers`
//! crate, with T5's trailing `</s>`.
use std::path::Path;

use super::error::ModelError;

/// A T5 tokenizer: encodes text and appends `</s>`; decodes without special tokens.
pub struct T5Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_id: i64,
    /// Bytes of the vocabulary's longest piece: no token stands for more text than this.
    longest_piece: usize,
    /// Tokens known, added ones included: the `tokenizers` crate rebuilds its whole vocabulary
    /// map to count them (milliseconds for 32k pieces), so it is counted once here.
    vocab_size: usize,
}

impl T5Tokenizer {
    /// Loads `tokenizer.json`; `eos_id` is appended to every encoded input.
    pub fn from_file(path: &Path, eos_id: i64) -> Result<Self, ModelError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self::new(inner, eos_id))
    }

    fn new(inner: tokenizers::Tokenizer, eos_id: i64) -> Self {
        let vocab = inner.get_vocab(true);
        let longest_piece = vocab.keys().map(String::len).max().unwrap_or(1).max(1);
        let vocab_size = vocab.len();
        Self {
            inner,
            eos_id,
            longest_piece,
            vocab_size,
        }
    }

    /// Tokens the tokenizer knows, added (special) ones included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Loads the tokenizer of a model folder: `tokenizer.json` when present, else one built from
    /// `spiece.model` as transformers does. The one rule every caller uses.
    pub fn from_dir(dir: &Path, eos_id: i64) -> Result<Self, ModelError> {
        let source = TokenizerSource::of(dir);
        if let Some(s) = source {
            tracing::info!(dir = %dir.display(), source = s.file_name(), "loading tokenizer");
        }
        match source {
            Some(TokenizerSource::Json) => Self::from_file(&dir.join("tokenizer.json"), eos_id),
            Some(TokenizerSource::SentencePiece) => Ok(Self::new(
                super::spiece::tokenizer_from_spiece(dir)?,
                eos_id,
            )),
            None => Err(ModelError::Tokenizer(format!(
                "{}: neither tokenizer.json nor spiece.model found",
                dir.display()
            ))),
        }
    }

    /// The underlying `tokenizers` tokenizer (e.g. to save it as `tokenizer.json`).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Longest text, in bytes, that can encode to at most `tokens` tokens: every token stands
    /// for at most the vocabulary's longest piece. Text over it is refused without tokenizing it
    /// (only a normaliser that removes text, such as collapsing runs of spaces, could bring it
    /// under).
    pub fn max_text_bytes(&self, tokens: usize) -> usize {
        tokens.saturating_mul(self.longest_piece)
    }

    /// Token ids of `text` followed by `</s>`.
    ///
    /// The tokenizer's own post-processor is bypassed so the result is the same whether or not
    /// the file declares T5's `$A </s>` template.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, ModelError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Text of `ids`, special tokens skipped; ids outside the vocabulary are skipped too.
    pub fn decode(&self, ids: &[i64]) -> Result<String, ModelError> {
        let vocab = self.vocab_size as i64;
        let ids: Vec<u32> = ids
            .iter()
            .filter(|&&i| (0..vocab).contains(&i))
            .map(|&i| i as u32)
            .collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The id appended to every input (`</s>`), which also ends generation.
    pub fn eos_id(&self) -> i64 {
        self.eos_id
    }

    /// A token's vocabulary piece, SentencePiece's word-start `▁` shown as a space; empty for
    /// an id outside the vocabulary.
    pub fn piece(&self, id: i64) -> String {
        u32::try_from(id)
            .ok()
            .and_then(|id| self.inner.id_to_token(id))
            .map(|p| p.replace('\u{2581}', " "))
            .unwrap_or_default()
    }

    /// Ids of the vocabulary's ordinary tokens, lowest first: the base vocabulary without any
    /// special or added token (for SentencePiece models, the most frequent pieces come first).
    pub fn ordinary_ids(&self) -> Vec<i64> {
        let added = self.inner.get_added_tokens_decoder();
        (0..self.inner.get_vocab_size(false) as u32)
            .filter(|id| !added.contains_key(id))
            .map(i64::from)
            .collect()
    }
}

/// Which file a model folder's tokenizer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerSource {
    /// `tokenizer.json` (the `tokenizers` library's own format).
    Json,
    /// `spiece.model`, converted as transformers' T5 fast tokenizer does.
    SentencePiece,
}

impl TokenizerSource {
    /// The source `T5Tokenizer::from_dir` uses for `dir`, if any.
    pub fn of(dir: &Path) -> Option<Self> {
        if dir.join("tokenizer.json").is_file() {
            Some(Self::Json)
        } else if dir.join("spiece.model").is_file() {
            Some(Self::SentencePiece)
        } else {
            None
        }
    }

    /// The file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Json => "tokenizer.json",
            Self::SentencePiece => "spiece.model",
        }
    }
}
