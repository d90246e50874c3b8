//! LoRA and IA3 tasks through the HTTP API: uploaded like PEFT prompts (multipart or a folder),
//! answered as PEFT answers, reloaded from what was stored, and every unsupported option
//! refused with a 4xx that names it, storing nothing.
use crate::common;

use axum::http::StatusCode;
use common::inproc::{build_state, call, defaults, get, multipart_put, predict_req, setup};
use common::{fixtures, snapshot};
use promptd::server::load;
use serde_json::{json, Value};

const MODEL: &str = "t5-v1_1-tiny";

fn adapter_files(name: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = fixtures().join("adapters").join(MODEL).join(name);
    (
        std::fs::read(dir.join("adapter_config.json")).unwrap(),
        std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
    )
}

fn upload(task: &str, config: &[u8], weights: &[u8]) -> axum::http::Request<axum::body::Body> {
    multipart_put(
        task,
        &[
            ("adapter_config.json", config.to_vec()),
            ("adapter_model.safetensors", weights.to_vec()),
        ],
    )
}

/// PEFT's greedy tokens for the cases of `adapter` (`<name>` or a multitask `<name>.<t>`) in
/// the fixtures: (input, tokens, max_new_tokens).
fn peft_cases(adapter: &str) -> Vec<(String, Vec<i64>, usize)> {
    let (name, index) = match adapter.split_once('.') {
        Some((n, t)) => (n, json!(t.parse::<u64>().unwrap())),
        None => (adapter, Value::Null),
    };
    let text = std::fs::read_to_string(fixtures().join(format!("expected/adapters/{MODEL}.jsonl")))
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["adapter"] == json!(name) && v["task_index"] == index)
        .map(|v| {
            (
                v["input"].as_str().unwrap().to_string(),
                serde_json::from_value(v["token_ids"].clone()).unwrap(),
                v["max_new_tokens"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

async fn assert_answers_as_peft(state: &promptd::service::Service, task: &str, adapter: &str) {
    let cases = peft_cases(adapter);
    assert!(!cases.is_empty());
    for (input, tokens, max_new) in cases {
        let r = call(
            state,
            predict_req(task, json!({"inputs": input, "max_new_tokens": max_new})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(
            r.body["outputs"][0]["token_ids"],
            json!(tokens),
            "{task} ({adapter}) on {input:?}"
        );
    }
}

#[tokio::test]
async fn lora_and_ia3_upload_answer_as_peft_and_reload_from_the_folder() {
    let s = setup(defaults, true).await;
    for (task, adapter, kind) in [
        ("lq", "lora-qv", "lora"),
        ("ia", "ia3", "ia3"),
        ("pf", "prefix", "prefix"),
    ] {
        let (config, weights) = adapter_files(adapter);
        let r = call(&s.state, upload(task, &config, &weights)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(r.body["kind"], json!(kind));
        assert_eq!(r.body["prompt_length"], json!(0));
        assert_answers_as_peft(&s.state, task, adapter).await;
    }
    let m = s.state.metrics.render();
    for line in [
        "promptd_adapters_registered 3",
        "promptd_adapters_resident 3",
        "promptd_adapter_loads_total 3",
        "promptd_adapter_evictions_total 0",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    // A multitask adapter: one upload, one task per prompt.
    let (config, weights) = adapter_files("multitask");
    let r = call(&s.state, upload("mt", &config, &weights)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["task"], json!("mt.0"));
    assert!(
        r.body["notes"].to_string().contains("mt.0, mt.1, mt.2"),
        "{}",
        r.body
    );
    for t in 0..3 {
        assert_answers_as_peft(&s.state, &format!("mt.{t}"), &format!("multitask.{t}")).await;
    }
    let info = call(&s.state, get("/v1/prompts/lq")).await;
    assert_eq!(info.body["adapter"]["rank"], json!(4));
    assert_eq!(info.body["adapter"]["modules"], json!(["q", "v"]));
    // An adapter folder dropped into the prompts folder is served too.
    for (name, folder) in [("lora-all", "folder-lora"), ("multitask", "folder-mt")] {
        let src = fixtures().join("adapters").join(MODEL).join(name);
        let dst = s.dir.path().join(folder);
        std::fs::create_dir(&dst).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
    }
    // A second server over the same folder: the stored adapters and the folder one load.
    let again = build_state(s.dir.path(), defaults);
    tokio::spawn(again.batcher.clone().batching_loop(again.engine.clone()));
    load(
        &again.engine,
        &again.registry,
        &again.ensembles,
        &again.lifecycle,
    )
    .await
    .unwrap();
    assert_answers_as_peft(&again, "lq", "lora-qv").await;
    assert_answers_as_peft(&again, "ia", "ia3").await;
    assert_answers_as_peft(&again, "folder-lora", "lora-all").await;
    assert_answers_as_peft(&again, "folder-mt.2", "multitask.2").await;
    assert_answers_as_peft(&again, "mt.1", "multitask.1").await;
    // Nearest words describe soft prompts only.
    let r = call(&again, get("/v1/prompts/lq/neighbors")).await;
    assert!(r.status.is_client_error(), "{}: {}", r.status, r.body);
}

fn edit(config: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(config).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn unsupported_adapters_are_refused_by_name_and_store_nothing() {
    let s = setup(|c| c.prompt_limits.max_lora_rank = 4, true).await;
    let before = snapshot(s.dir.path());
    let (lora_cfg, lora_w) = adapter_files("lora-qv");
    let (all_cfg, all_w) = adapter_files("lora-all");
    let other_model = fixtures().join("adapters/t5-v1_0-tiny/lora-qv");
    let narrow_w = std::fs::read(other_model.join("adapter_model.safetensors")).unwrap();
    let (ia3_cfg, _) = adapter_files("ia3");
    let (enc_cfg, enc_w) = adapter_files("lora-enc-ko");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "DoRA",
            edit(&lora_cfg, |v| v["use_dora"] = json!(true)),
            lora_w.clone(),
            "use_dora",
        ),
        (
            "modules_to_save",
            edit(&lora_cfg, |v| v["modules_to_save"] = json!(["lm_head"])),
            lora_w.clone(),
            "modules_to_save",
        ),
        (
            "bias",
            edit(&lora_cfg, |v| v["bias"] = json!("lora_only")),
            lora_w.clone(),
            "bias",
        ),
        (
            "a target that matches nothing",
            edit(&lora_cfg, |v| v["target_modules"] = json!(["q", "dense"])),
            lora_w.clone(),
            "\"dense\"",
        ),
        (
            "shapes of another model",
            lora_cfg.clone(),
            narrow_w,
            "features",
        ),
        (
            "rank over --max-lora-rank",
            enc_cfg.clone(),
            enc_w.clone(),
            "max-lora-rank",
        ),
        (
            "config rank disagrees with the tensors",
            edit(&all_cfg, |v| v["r"] = json!(3)),
            all_w.clone(),
            "rank",
        ),
        (
            "LoRA tensors under an IA3 config",
            ia3_cfg,
            lora_w.clone(),
            "ia3_l",
        ),
        (
            "an unknown peft_type",
            edit(&lora_cfg, |v| v["peft_type"] = json!("LOHA")),
            lora_w.clone(),
            "LOHA",
        ),
    ];
    for (what, config, weights, names) in cases {
        let r = call(&s.state, upload("bad", &config, &weights)).await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {} {}",
            r.status,
            r.body
        );
        let error = r.body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(names),
            "{what}: {error:?} should name {names}"
        );
        assert_eq!(snapshot(s.dir.path()), before, "{what}: the folder changed");
        let gone = call(&s.state, get("/v1/prompts/bad")).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND, "{what}");
    }
}
