//! A prompt read through its nearest vocabulary tokens (paper §7): a prompt built from known
//! tokens' embeddings has exactly those tokens as nearest neighbours, over HTTP and from
//! `promptd neighbors`, and the labels among them are reported.
use crate::common;

use std::process::Command;

use promptd::model::{ModelOptions, T5Model, T5Tokenizer};
use serde_json::Value;

/// The demo model's embedding rows of `words`' first tokens, each scaled differently
/// (cosine ignores length), as a safetensors prompt; and the tokens' pieces.
fn prompt_of(words: &[&str]) -> (Vec<u8>, Vec<String>) {
    let dir = common::fixtures().join("models/demo-reviews");
    let model = T5Model::load(
        &dir,
        ModelOptions {
            device: tch::Device::Cpu,
            kind: tch::Kind::Float,
        },
    )
    .unwrap();
    let tokenizer = T5Tokenizer::from_dir(&dir, model.config.eos_ids()[0]).unwrap();
    let mut values = Vec::new();
    let mut pieces = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let id = tokenizer.encode(w).unwrap()[0];
        pieces.push(tokenizer.inner().id_to_token(id as u32).unwrap());
        let row: Vec<f32> = Vec::try_from(model.shared().get(id) * (0.5 + i as f64)).unwrap();
        values.extend(row);
    }
    let d = values.len() / words.len();
    let bytes = common::st_bytes(&[(
        "prompt_embeddings",
        safetensors::Dtype::F32,
        vec![words.len(), d],
        common::f32_bytes(&values),
    )]);
    (bytes, pieces)
}

fn check(report: &Value, pieces: &[String]) {
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), pieces.len());
    for (row, piece) in rows.iter().zip(pieces) {
        let first = &row["neighbors"][0];
        assert_eq!(first["token"], *piece, "{row}");
        assert!(
            (first["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-4,
            "{row}"
        );
        assert_eq!(row["neighbors"].as_array().unwrap().len(), 3);
    }
    // mixed and bread are rows of the prompt, salty is not (k = 3 may still bring it in by
    // chance: only its presence in the first place is certain to be absent).
    let labels = report["labels"].as_array().unwrap();
    assert_eq!(report["labels_from"], "query");
    let hit = |name: &str| labels.iter().find(|l| l["label"] == name).unwrap();
    assert_eq!(hit("mixed")["rows"][0], 0);
    assert_eq!(hit("bread")["rows"][0], 2);
    assert!(!hit("salty")["rows"]
        .as_array()
        .unwrap()
        .contains(&Value::from(0)));
}

const WORDS: [&str; 3] = ["mixed", "waitress", "bread"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_of_known_token_embeddings_has_those_tokens_as_neighbours() {
    let (bytes, pieces) = prompt_of(&WORDS);
    let server = common::inproc::Served::start(|c| {
        c.model = common::fixtures().join("models/demo-reviews");
    })
    .await;
    let client = reqwest::Client::new();
    let resp = client
        .put(server.url("/v1/prompts/known"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = client
        .get(server.url("/v1/prompts/known/neighbors?k=3&labels=mixed,bread,salty"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let report: Value = resp.json().await.unwrap();
    check(&report, &pieces);
    assert_eq!(report["prompt_version"], 1);
    assert_eq!(report["labels_found"], 2, "{report}");

    // Bad queries: 4xx JSON, nothing computed.
    for (query, want) in [
        ("k=0", 422),
        ("k=101", 422),
        ("k=x", 400),
        ("color=red", 400),
    ] {
        let resp = client
            .get(server.url(&format!("/v1/prompts/known/neighbors?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), want, "{query}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].is_string());
    }
    let resp = client
        .get(server.url("/v1/prompts/none/neighbors"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The offline command reads the same file the same way.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("known.safetensors");
    std::fs::write(&file, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_promptd"))
        .args(["neighbors", "--model"])
        .arg(common::fixtures().join("models/demo-reviews"))
        .arg("--prompt")
        .arg(&file)
        .args(["-k", "3", "--labels", "mixed,bread,salty", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline: Value = serde_json::from_slice(&out.stdout).unwrap();
    check(&offline, &pieces);
    assert_eq!(offline["rows"], report["rows"]);
    // Labels from the tuning report beside the prompt, and the text table.
    std::fs::create_dir(dir.path().join("reports")).unwrap();
    std::fs::write(
        dir.path().join("reports/known.json"),
        r#"{"labels": ["waitress", "salty"], "settings": {"labels": []}}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_promptd"))
        .args(["neighbors", "--model"])
        .arg(common::fixtures().join("models/demo-reviews"))
        .arg("--prompt")
        .arg(&file)
        .args(["-k", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("labels (report): 1 of 2 found"), "{text}");
    assert!(
        text.contains(&format!("   1: {} (1.00)", pieces[1])),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_promptd"))
        .args(["neighbors", "--model"])
        .arg(common::fixtures().join("models/demo-reviews"))
        .arg("--prompt")
        .arg(dir.path().join("missing.npy"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a prompt"));
    server.stop().await.unwrap();
}
