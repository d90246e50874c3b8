//! `promptd predict` end to end: JSON lines in, JSON lines out, in order, errors per line.
use crate::common;

use std::process::{Command, Stdio};

use common::run_predict;

/// `promptd predict` on a fixture model with its fixture prompts.
fn predict(model: &str, args: &[&str], stdin: &[u8]) -> (Vec<serde_json::Value>, String, bool) {
    let fx = common::fixtures();
    let (m, p) = (
        fx.join("models").join(model),
        fx.join("prompts").join(model),
    );
    let mut all = vec![
        "--model".as_ref(),
        m.as_os_str(),
        "--prompts".as_ref(),
        p.as_os_str(),
    ];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    run_predict(&all, stdin)
}

#[test]
fn predict_matches_fixtures_in_input_order() {
    for model in common::model_names() {
        let cases = common::cases(&model);
        let input: String = cases
            .iter()
            .map(|c| {
                let mut line = serde_json::json!({"task": c.task, "input": c.input, "max_new_tokens": c.max_new_tokens});
                if !c.labels.is_empty() {
                    line["labels"] = serde_json::json!(c.labels);
                }
                format!("{line}\n")
            })
            .collect();
        // A batch size that does not divide the input count, so batches of mixed tasks differ in
        // size; then a token budget that splits batches further.
        for args in [
            &["--max-batch-size", "7"][..],
            &["--max-batch-size", "64", "--max-batch-tokens", "300"][..],
        ] {
            let (lines, stderr, ok) = predict(&model, args, input.as_bytes());
            assert!(ok, "{stderr}");
            assert_eq!(lines.len(), cases.len());
            for (c, l) in cases.iter().zip(&lines) {
                assert_eq!(l["input"], c.input.as_str());
                assert_eq!(l["task"], serde_json::json!(c.task));
                assert_eq!(l["text"], c.text.as_str());
                let ids: Vec<i64> = serde_json::from_value(l["token_ids"].clone()).unwrap();
                assert_eq!(ids, c.token_ids, "{model} {:?}", c.task);
                if c.labels.is_empty() {
                    assert!(l.get("scores").is_none());
                } else {
                    let scores: Vec<f64> = serde_json::from_value(l["scores"].clone()).unwrap();
                    for ((g, w), x) in scores.iter().zip(&c.scores).zip(&c.scores_f64) {
                        assert!(common::score_close(*g, *w, *x), "{g} vs {w} (f64 {x})");
                    }
                }
            }
        }
    }
}

#[test]
fn bad_lines_get_error_lines_and_the_rest_still_run() {
    let input = concat!(
        "{\"task\": \"task00\", \"input\": \"the quick fox\", \"max_new_tokens\": 4}\n",
        "{\"task\": \"nope\", \"input\": \"x\"}\n",
        "not json\n",
        "\n",
        "{\"task\": \"task01\", \"input\": \"a\", \"max_new_tokens\": 100000}\n",
        "{\"input\": \"plain model\", \"max_new_tokens\": 3}\n",
        "{\"task\": \"task02\", \"input\": \"x\", \"extra\": 1}\n",
    );
    let mut input = input.as_bytes().to_vec();
    input.extend_from_slice(b"{\"input\": \"\xff\xfe\"}\n");
    input.extend_from_slice(
        b"{\"task\": \"task03\", \"input\": \"last line, no newline\", \"max_new_tokens\": 2}",
    );
    input.extend_from_slice(b"\n{\"input\": \"x\", \"labels\": [\"a\", \"b\", \"c\"]}");
    let (lines, stderr, ok) = predict("t5-v1_0-tiny", &["--max-labels", "2"], &input);
    assert!(ok, "{stderr}");
    assert_eq!(lines.len(), 9, "{lines:?}");
    assert!(lines[8]["error"]
        .as_str()
        .unwrap()
        .contains("3 labels; the limit is 2"));
    assert!(lines[6]["error"].as_str().unwrap().contains("UTF-8"));
    assert_eq!(lines[7]["token_ids"].as_array().unwrap().len(), 2);
    assert!(lines[0].get("error").is_none());
    assert_eq!(lines[0]["token_ids"].as_array().unwrap().len(), 4);
    assert!(lines[1]["error"]
        .as_str()
        .unwrap()
        .contains("unknown task \"nope\""));
    assert!(lines[2]["error"].as_str().unwrap().contains("invalid JSON"));
    assert!(lines[3]["error"]
        .as_str()
        .unwrap()
        .contains("max_new_tokens 100000"));
    assert_eq!(lines[4]["task"], serde_json::Value::Null);
    assert!(lines[4].get("error").is_none());
    assert!(lines[5]["error"].as_str().unwrap().contains("extra"));
}

#[test]
fn unusable_model_dir_fails_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_promptd"))
        .args(["predict", "--model", "/nonexistent/model"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model/config.json"));
}

#[test]
fn a_broken_prompt_file_is_named_in_its_tasks_errors() {
    let fx = common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fx.join("prompts/t5-v1_0-tiny/task03.npy"),
        dir.path().join("good.npy"),
    )
    .unwrap();
    // The other model's prompt: wrong width for this model.
    std::fs::copy(
        fx.join("prompts/t5-v1_1-tiny/task03.npy"),
        dir.path().join("wide.npy"),
    )
    .unwrap();
    let model = fx.join("models/t5-v1_0-tiny");
    let (lines, stderr, ok) = run_predict(
        &[
            "--model".as_ref(),
            model.as_os_str(),
            "--prompts".as_ref(),
            dir.path().as_os_str(),
        ],
        b"{\"task\": \"wide\", \"input\": \"a\"}\n{\"task\": \"good\", \"input\": \"a\", \"max_new_tokens\": 2}\n",
    );
    assert!(ok, "{stderr}");
    let err = lines[0]["error"].as_str().unwrap();
    assert!(
        err.contains("failed to load") && err.contains("wide.npy") && err.contains("d_model 32"),
        "{err}"
    );
    assert_eq!(lines[1]["token_ids"].as_array().unwrap().len(), 2);
    assert!(stderr.contains("skipping prompt"));
}

#[test]
fn a_row_the_engine_rejects_fails_alone_not_its_batch() {
    // v1.0 model with the v1.1 tokenizer: some inputs tokenize past the model's vocabulary.
    let fx = common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fx.join("models/t5-v1_0-tiny").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(
        fx.join("models/t5-v1_1-tiny/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let vocab = 136; // t5-v1_0-tiny's config vocab_size
    let tok =
        promptd::model::T5Tokenizer::from_file(&dir.path().join("tokenizer.json"), 1).unwrap();
    let words = ["the", "a", "of", "model", "prompt", "yes", "q", "xylophone"];
    let ok = words
        .iter()
        .find(|w| tok.encode(w).unwrap().iter().all(|&i| i < vocab))
        .unwrap();
    let bad = words
        .iter()
        .find(|w| tok.encode(w).unwrap().iter().any(|&i| i >= vocab))
        .unwrap();
    let input = format!(
        "{{\"input\": \"{ok}\", \"max_new_tokens\": 2}}\n{{\"input\": \"{bad}\"}}\n{{\"input\": \"{ok}\", \"max_new_tokens\": 3}}\n"
    );
    let (lines, stderr, ok) = run_predict(
        &["--model".as_ref(), dir.path().as_os_str()],
        input.as_bytes(),
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        lines[0]["token_ids"].as_array().unwrap().len(),
        2,
        "{lines:?}"
    );
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("outside the model's vocabulary"),
        "{lines:?}"
    );
    assert_eq!(lines[2]["token_ids"].as_array().unwrap().len(), 3);
}
