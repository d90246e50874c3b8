//! A folder with only `spiece.model` (plus the JSON files `save_pretrained` writes) tokenizes and
//! decodes exactly as transformers' T5 fast tokenizer does (fixtures: scripts/make_spiece_fixtures.py).
use std::path::{Path, PathBuf};

use crate::common;

use promptd::model::{T5Tokenizer, TokenizerSource};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spiece")
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<i64>,
    decoded: String,
}

/// A model folder: the shared spiece.model plus the variant's JSON files.
fn variant_dir(variant: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("spiece.model"),
        dir.path().join("spiece.model"),
    )
    .unwrap();
    for entry in std::fs::read_dir(fixtures().join(variant)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

#[test]
fn ids_and_decoding_match_transformers() {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let expected: std::collections::BTreeMap<String, Vec<Case>> =
        serde_json::from_str(&text).unwrap();
    assert_eq!(expected.len(), 5);
    let mut failures = Vec::new();
    for (variant, cases) in &expected {
        let dir = variant_dir(variant);
        assert_eq!(
            TokenizerSource::of(dir.path()),
            Some(TokenizerSource::SentencePiece)
        );
        let tok = T5Tokenizer::from_dir(dir.path(), 1).unwrap();
        for case in cases {
            let ids = tok.encode(&case.text).unwrap();
            if ids != case.ids {
                failures.push(format!(
                    "{variant} {:?}: ids {ids:?}, transformers {:?}",
                    case.text, case.ids
                ));
            }
            let decoded = tok.decode(&case.ids).unwrap();
            if decoded != case.decoded {
                failures.push(format!(
                    "{variant} {:?}: decoded {decoded:?}, transformers {:?}",
                    case.text, case.decoded
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn tokenizer_json_wins_over_spiece_model() {
    let dir = variant_dir("bare");
    let json = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/t5-v1_0-tiny/tokenizer.json");
    std::fs::copy(json, dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(TokenizerSource::of(dir.path()), Some(TokenizerSource::Json));
    T5Tokenizer::from_dir(dir.path(), 1).unwrap();
}

#[test]
fn missing_or_broken_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = T5Tokenizer::from_dir(dir.path(), 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("spiece.model"), "{err}");

    let dir = variant_dir("saved");
    let cfg = dir.path().join("tokenizer_config.json");
    std::fs::write(&cfg, "{\"extra_ids\": -3}").unwrap();
    let err = T5Tokenizer::from_dir(dir.path(), 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("extra_ids"), "{err}");
    std::fs::write(&cfg, "{not json").unwrap();
    assert!(T5Tokenizer::from_dir(dir.path(), 1).is_err());

    // A truncated model is an error, never a panic.
    let dir = variant_dir("bare");
    let model = std::fs::read(fixtures().join("spiece.model")).unwrap();
    for cut in [1, 100, model.len() / 2, model.len() - 1] {
        std::fs::write(dir.path().join("spiece.model"), &model[..cut]).unwrap();
        let _ = T5Tokenizer::from_dir(dir.path(), 1);
    }
}

#[test]
fn saved_as_tokenizer_json_it_still_matches() {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let expected: std::collections::BTreeMap<String, Vec<Case>> =
        serde_json::from_str(&text).unwrap();
    let dir = variant_dir("saved");
    let tok = T5Tokenizer::from_dir(dir.path(), 1).unwrap();
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("tokenizer.json");
    tok.inner().save(&json, false).unwrap();
    let reloaded = T5Tokenizer::from_file(&json, 1).unwrap();
    for case in &expected["saved"] {
        assert_eq!(
            reloaded.encode(&case.text).unwrap(),
            case.ids,
            "{:?}",
            case.text
        );
        assert_eq!(reloaded.decode(&case.ids).unwrap(), case.decoded);
    }
}

/// The layout the older T5 1.1 / LM-adapted releases ship: config.json + pytorch_model.bin +
/// spiece.model, no tokenizer.json, no safetensors. Tokens and label scores equal transformers'.
#[test]
fn spiece_and_bin_model_folder_matches_transformers() {
    let dir = variant_dir("saved");
    for f in ["config.json", "pytorch_model.bin"] {
        std::fs::copy(fixtures().join("model").join(f), dir.path().join(f)).unwrap();
    }
    // No prompt folder is named "none": rows run without a prompt.
    let mut loaded = common::load_from(dir.path(), "none");
    let text = std::fs::read_to_string(fixtures().join("model.jsonl")).unwrap();
    let cases: Vec<common::Case> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cases.len(), 8);
    for case in &cases {
        assert_eq!(
            loaded.tokenizer.encode(&case.input).unwrap(),
            case.input_ids
        );
        let out = loaded.run(&[case]);
        common::assert_matches(case, &out[0], "spiece + .bin");
        assert_eq!(loaded.tokenizer.decode(&case.token_ids).unwrap(), case.text);
    }
}

/// A model with no precompiled charsmap (normalization_rule_name=identity): no normalizer.
#[test]
fn identity_normalization_model_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("identity");
    std::fs::copy(src.join("spiece.model"), dir.path().join("spiece.model")).unwrap();
    let text = std::fs::read_to_string(src.join("expected.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
    let tok = T5Tokenizer::from_dir(dir.path(), 1).unwrap();
    for case in &cases {
        assert_eq!(tok.encode(&case.text).unwrap(), case.ids, "{:?}", case.text);
        assert_eq!(
            tok.decode(&case.ids).unwrap(),
            case.decoded,
            "{:?}",
            case.text
        );
    }
}
