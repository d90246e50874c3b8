//! A T5 tokenizer built from SentencePiece's `spiece.model`, for folders without `tokenizer.json`.
//!
//! The result matches what transformers' T5 fast tokenizer builds from the same folder: the
//! model's Unigram pieces and scores followed by the `<extra_id_N>` sentinels in reverse order, the
//! model's precompiled character map as normalizer, whitespace split then `▁` prefixing, and the
//! control / user-defined pieces and configured special tokens as added tokens.
use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use serde_json::Value;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::Precompiled;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer};

use super::error::ModelError;

mod proto {
    include!(concat!(env!("OUT_DIR"), "/sentencepiece.rs"));
}
use proto::model_proto::sentence_piece::Type as PieceType;

/// Larger than any real SentencePiece model (mT5's is 4.3 MB); refuses to read a stray huge file.
const MAX_MODEL_BYTES: u64 = 256 << 20;
/// transformers' default number of `<extra_id_N>` sentinels.
const DEFAULT_EXTRA_IDS: u64 = 100;
/// More sentinels than any T5 uses; bounds what a config file can make us allocate.
const MAX_EXTRA_IDS: u64 = 100_000;

fn err(path: &Path, msg: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(format!("{}: {msg}", path.display()))
}

/// Builds the tokenizer of a model folder from its `spiece.model` and, when present,
/// `tokenizer_config.json`, `special_tokens_map.json` and `added_tokens.json`.
pub fn tokenizer_from_spiece(dir: &Path) -> Result<Tokenizer, ModelError> {
    let path = dir.join("spiece.model");
    let bytes = read_capped(&path, MAX_MODEL_BYTES)?;
    let model = proto::ModelProto::decode(bytes.as_slice())
        .map_err(|e| err(&path, format!("not a SentencePiece model: {e}")))?;
    let config = SpecialConfig::from_dir(dir)?;
    build(&path, &model, &config)
}

fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, ModelError> {
    let io = |e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > cap {
        return Err(err(
            path,
            format!("{len} bytes is over the {cap}-byte limit"),
        ));
    }
    std::fs::read(path).map_err(io)
}

fn build(
    path: &Path,
    model: &proto::ModelProto,
    config: &SpecialConfig,
) -> Result<Tokenizer, ModelError> {
    let trainer = model.trainer_spec.unwrap_or_default();
    if trainer.model_type() != proto::trainer_spec::ModelType::Unigram {
        return Err(err(
            path,
            format!(
                "model type {:?}: T5 tokenizers are Unigram models",
                trainer.model_type()
            ),
        ));
    }
    if model.pieces.is_empty() {
        return Err(err(path, "the model has no pieces"));
    }
    let unk_id = usize::try_from(trainer.unk_id())
        .ok()
        .filter(|&id| id < model.pieces.len())
        .ok_or_else(|| err(path, format!("unk_id {} is not a piece", trainer.unk_id())))?;

    let mut vocab: Vec<(String, f64)> = model
        .pieces
        .iter()
        .map(|p| (p.piece().to_string(), f64::from(p.score())))
        .collect();
    // Sentinels follow the pieces in reverse, so <extra_id_0> is the last id (32099 in T5).
    let sentinels: Vec<String> = (0..config.extra_ids)
        .rev()
        .map(|i| format!("<extra_id_{i}>"))
        .collect();
    vocab.extend(sentinels.iter().map(|s| (s.clone(), 0.0)));
    // transformers builds T5's Unigram without byte fallback whatever the model says.
    let unigram = Unigram::from(vocab, Some(unk_id), false).map_err(|e| err(path, e))?;

    let mut tokenizer = Tokenizer::new(unigram);
    let charsmap = model
        .normalizer_spec
        .as_ref()
        .map(|n| n.precompiled_charsmap())
        .unwrap_or_default();
    if !charsmap.is_empty() {
        check_charsmap(charsmap).map_err(|m| err(path, m))?;
        let precompiled = Precompiled::from(charsmap).map_err(|e| err(path, e))?;
        tokenizer.with_normalizer(Some(precompiled));
    }
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        WhitespaceSplit.into(),
        Metaspace::new('▁', PrependScheme::Always, true).into(),
    ])));
    tokenizer.with_decoder(Some(Metaspace::new('▁', PrependScheme::Always, true)));

    let added = added_tokens(model, &sentinels, config);
    let before = tokenizer.get_vocab_size(true);
    tokenizer.add_tokens(&added);
    check_added_ids(&tokenizer, before, config).map_err(|m| err(path, m))?;
    Ok(tokenizer)
}

/// The charsmap is a double-array trie (its byte size first) then the normalized strings.
/// `spm_precompiled` trusts the size for an allocation and, when normalizing, indexes the trie
/// and slices the strings without bounds checks: a corrupt map would panic on some request's
/// text. So walk every state a lookup can reach and check each index it would use.
fn check_charsmap(map: &[u8]) -> Result<(), String> {
    let head: [u8; 4] = map
        .get(..4)
        .and_then(|h| h.try_into().ok())
        .ok_or("precompiled_charsmap is shorter than its header")?;
    let trie = u32::from_le_bytes(head) as usize;
    if trie == 0 || !trie.is_multiple_of(4) || trie > map.len() - 4 {
        return Err(format!(
            "precompiled_charsmap declares a {trie}-byte trie in {} bytes",
            map.len()
        ));
    }
    let units: Vec<usize> = map[4..4 + trie]
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let normalized = std::str::from_utf8(&map[4 + trie..])
        .map_err(|_| "precompiled_charsmap strings are not UTF-8")?;
    // Unit layout as spm_precompiled (and darts-clone) reads it.
    let label = |u: usize| u & ((1 << 31) | 0xff);
    let offset = |u: usize| (u >> 10) << ((u & (1 << 9)) >> 6);
    let has_leaf = |u: usize| (u >> 8) & 1 == 1;
    let value = |u: usize| u & ((1 << 31) - 1);
    let bad = || "precompiled_charsmap trie is corrupt".to_string();
    let mut todo = vec![offset(units[0])];
    let mut seen = std::collections::HashSet::new();
    while let Some(node) = todo.pop() {
        if !seen.insert(node) {
            continue;
        }
        for c in 1..=255usize {
            let pos = node ^ c;
            let unit = *units.get(pos).ok_or_else(bad)?;
            if label(unit) != c {
                continue;
            }
            let next = pos ^ offset(unit);
            if has_leaf(unit) {
                let v = value(*units.get(next).ok_or_else(bad)?);
                if !normalized.is_char_boundary(v) {
                    return Err(bad());
                }
            }
            todo.push(next);
        }
    }
    Ok(())
}

/// Added tokens in the order transformers adds them; a token is special when any source says so.
fn added_tokens(
    model: &proto::ModelProto,
    sentinels: &[String],
    config: &SpecialConfig,
) -> Vec<AddedToken> {
    let mut order: Vec<String> = Vec::new();
    let mut special: HashMap<String, bool> = HashMap::new();
    let mut push = |content: &str, is_special: bool| {
        if content.is_empty() {
            return;
        }
        match special.get_mut(content) {
            Some(s) => *s |= is_special,
            None => {
                order.push(content.to_string());
                special.insert(content.to_string(), is_special);
            }
        }
    };
    // The model's control and user-defined pieces, unless the folder lists its own additional
    // special tokens: then transformers takes that list instead.
    if config.additional.is_empty() {
        for p in &model.pieces {
            match p.r#type() {
                PieceType::Control => push(p.piece(), true),
                PieceType::UserDefined => push(p.piece(), false),
                _ => {}
            }
        }
    }
    for t in config
        .named
        .iter()
        .chain(&config.additional)
        .chain(sentinels.iter().rev())
    {
        push(t, true);
    }
    for (t, _) in &config.added_ids {
        push(t, false);
    }
    order
        .into_iter()
        .map(|content| {
            let is_special = special[&content];
            // SentencePiece matches these before normalizing; so does transformers.
            AddedToken::from(content, is_special).normalized(false)
        })
        .collect()
}

/// `added_tokens.json` pins ids; tokens beyond the pieces must land exactly there.
fn check_added_ids(
    tokenizer: &Tokenizer,
    before: usize,
    config: &SpecialConfig,
) -> Result<(), String> {
    for (token, id) in &config.added_ids {
        let got = tokenizer.token_to_id(token);
        if got.map(u64::from) != Some(*id) {
            return Err(format!(
                "added_tokens.json gives {token:?} id {id}, but it gets {got:?} after the \
                 {before} pieces and sentinels"
            ));
        }
    }
    Ok(())
}

/// What the JSON files beside `spiece.model` say about special tokens.
#[derive(Debug, Default)]
struct SpecialConfig {
    /// `<extra_id_N>` sentinels to add.
    extra_ids: u64,
    /// eos / unk / pad tokens.
    named: Vec<String>,
    /// `additional_special_tokens` / `extra_special_tokens`.
    additional: Vec<String>,
    /// `added_tokens.json`, by id.
    added_ids: Vec<(String, u64)>,
}

impl SpecialConfig {
    fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?;
        let map = read_json(&dir.join("special_tokens_map.json"))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let extra_ids = match tok_cfg.get("extra_ids") {
            None | Some(Value::Null) => DEFAULT_EXTRA_IDS,
            Some(v) => v.as_u64().filter(|&n| n <= MAX_EXTRA_IDS).ok_or_else(|| {
                err(
                    &cfg_path,
                    format!("extra_ids {v} is not 0..={MAX_EXTRA_IDS}"),
                )
            })?,
        };
        let mut named = Vec::new();
        for (key, default) in [
            ("eos_token", "</s>"),
            ("unk_token", "<unk>"),
            ("pad_token", "<pad>"),
        ] {
            let token = [&tok_cfg, &map]
                .into_iter()
                .find_map(|v| v.get(key).and_then(token_content))
                .unwrap_or_else(|| default.to_string());
            named.push(token);
        }
        let mut additional = Vec::new();
        for v in [&tok_cfg, &map] {
            for key in ["additional_special_tokens", "extra_special_tokens"] {
                if let Some(Value::Array(items)) = v.get(key) {
                    additional.extend(items.iter().filter_map(token_content));
                }
            }
        }
        let added_path = dir.join("added_tokens.json");
        let mut added_ids: Vec<(String, u64)> = match read_json(&added_path)? {
            Value::Null => Vec::new(),
            Value::Object(m) => m
                .into_iter()
                .map(|(k, v)| {
                    v.as_u64()
                        .map(|id| (k.clone(), id))
                        .ok_or_else(|| err(&added_path, format!("{k:?}: id {v} is not an integer")))
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(err(&added_path, "expected an object of token: id")),
        };
        added_ids.sort_by_key(|(_, id)| *id);
        Ok(Self {
            extra_ids,
            named,
            additional,
            added_ids,
        })
    }
}

/// A token as transformers writes it: a string, or an object with `content`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The file's JSON, or `Null` when it does not exist.
fn read_json(path: &Path) -> Result<Value, ModelError> {
    if !path.is_file() {
        return Ok(Value::Null);
    }
    let bytes = read_capped(path, 64 << 20)?;
    serde_json::from_slice(&bytes).map_err(|e| err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_model_bytes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for bytes in [
            &b""[..],
            b"\xff\xff\xff\xff",
            b"\x0a\x05\x0a\x08abc",
            b"\x0a\xff\xff\xff\xff\x0f",
            b"not a protobuf at all",
        ] {
            std::fs::write(dir.path().join("spiece.model"), bytes).unwrap();
            assert!(tokenizer_from_spiece(dir.path()).is_err(), "{bytes:?}");
        }
    }

    fn fixture_charsmap() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/spiece/spiece.model"
        );
        let model = proto::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
        model
            .normalizer_spec
            .unwrap()
            .precompiled_charsmap()
            .to_vec()
    }

    #[test]
    fn hostile_charsmap_is_refused() {
        for map in [
            &b"\x01"[..],
            b"\xff\xff\xff\x7f\0\0\0\0",
            b"\x03\0\0\0abc",
            b"\0\0\0\0",
        ] {
            assert!(check_charsmap(map).is_err(), "{map:?}");
        }
        // One unit whose transitions leave the array.
        assert!(check_charsmap(b"\x04\0\0\0abcd").is_err());
        // nmt_nfkc, the map T5's spiece.model carries, passes.
        check_charsmap(&fixture_charsmap()).unwrap();
    }

    #[test]
    fn a_charsmap_that_passes_never_panics_when_normalizing() {
        use tokenizers::{NormalizedString, Normalizer};
        let good = fixture_charsmap();
        let trie = u32::from_le_bytes(good[..4].try_into().unwrap()) as usize;
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut passed = 0;
        for _ in 0..100 {
            let mut map = good.clone();
            for _ in 0..2 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Mostly in the trie, where corruption bites.
                let i = 4 + (seed as usize) % trie.min(map.len() - 4);
                map[i] = (seed >> 40) as u8;
            }
            if check_charsmap(&map).is_err() {
                continue;
            }
            passed += 1;
            let p = Precompiled::from(&map).unwrap();
            for text in [
                "café １２３ ﬁ ½ 東京 🙂 e\u{301} ＡＢＣ",
                "\u{3000}x\u{ad}y\u{200b}",
            ] {
                let mut n = NormalizedString::from(text);
                let _ = p.normalize(&mut n);
            }
        }
        assert!(passed > 0, "some mutations must leave a usable map");
    }
}
