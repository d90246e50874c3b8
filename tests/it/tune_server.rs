//! Tuning jobs on a running server: a job becomes the task's next version and is served with
//! other tasks; bad requests get 4xx JSON and change nothing; a restart fails an interrupted job
//! with its reason; a job worse than the current prompt waits as a candidate for `promote`.
use crate::common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::inproc::Served;
use common::{fixtures, metric, metrics, TestServer, Urls};
use serde_json::{json, Value};

const MODEL: &str = "t5-v1_1-tiny";

fn model_dir() -> PathBuf {
    fixtures().join("models").join(MODEL)
}

fn rows() -> Vec<Value> {
    std::fs::read_to_string(fixtures().join("tune").join(MODEL).join("train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn start_job(
    client: &reqwest::Client,
    server: &impl Urls,
    task: &str,
    body: Value,
) -> String {
    let r = client
        .post(server.url(&format!("/v1/tasks/{task}/tune")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"]["state"], "queued");
    v["job"].as_str().unwrap().to_string()
}

async fn get_json(client: &reqwest::Client, server: &impl Urls, path: &str) -> Value {
    let r = client.get(server.url(path)).send().await.unwrap();
    r.json().await.unwrap()
}

async fn job(client: &reqwest::Client, server: &impl Urls, id: &str) -> Value {
    client
        .get(server.url(&format!("/v1/tune-jobs/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_until(
    client: &reqwest::Client,
    server: &impl Urls,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = job(client, server, id).await;
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "job stuck: {v}\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ended(v: &Value) -> bool {
    !matches!(v["state"].as_str(), Some("queued" | "running"))
}

/// Cancels job `id` (202) and waits until it has ended.
async fn cancel(client: &reqwest::Client, server: &impl Urls, id: &str) -> Value {
    let r = client
        .delete(server.url(&format!("/v1/tune-jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    wait_until(client, server, id, ended).await
}

async fn predict(client: &reqwest::Client, server: &impl Urls, task: &str, input: &str) -> Value {
    let r = client
        .post(server.url(&format!("/v1/tasks/{task}/predict")))
        .json(&json!({"inputs": input, "max_new_tokens": 6, "labels": ["positive", "negative"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_becomes_the_next_version_and_is_served_with_other_tasks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("prompts").join(MODEL).join("task03.npy"),
        dir.path().join("other.npy"),
    )
    .unwrap();
    let server = Served::start_in(dir, |_| {}).await;
    let client = reqwest::Client::new();
    let body = json!({"train": rows(), "dev": rows(), "prompt_length": 4, "steps": 6,
                      "eval_every": 3, "metric": "rank-accuracy", "init": "sampled-vocab"});
    let id = start_job(&client, &server, "learned", body).await;
    let v = wait_until(&client, &server, &id, ended).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["version"], 1);
    assert_eq!(v["step"], 6);
    assert!(v["best_metric"].as_f64().is_some());
    let info: Value = get_json(&client, &server, "/v1/prompts/learned").await;
    assert_eq!(info["version"], 1);
    assert_eq!(info["prompt_length"], 4);
    // Its nearest words name the job's labels (the distinct targets) as the ones to look for.
    let near = get_json(&client, &server, "/v1/prompts/learned/neighbors?k=2").await;
    assert_eq!(near["labels_from"], "tuning job", "{near}");
    assert_eq!(
        near["labels"].as_array().unwrap().len(),
        v["labels"].as_array().unwrap().len()
    );
    assert_eq!(near["rows"].as_array().unwrap().len(), 4);
    // The tuned task and another one answer together, each as it would alone.
    let alone = predict(&client, &server, "learned", "its engine vector it server").await;
    let (a, b) = tokio::join!(
        predict(&client, &server, "learned", "its engine vector it server"),
        predict(&client, &server, "other", "kernel time this who model from"),
    );
    let (a, alone) = (&a["outputs"][0], &alone["outputs"][0]);
    for key in ["token_ids", "text", "label"] {
        assert_eq!(a[key], alone[key], "{key}");
    }
    for (x, y) in a["scores"]
        .as_array()
        .unwrap()
        .iter()
        .zip(alone["scores"].as_array().unwrap())
    {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{x} vs {y}");
    }
    assert_eq!(b["task"], "other");
    // A job that scores worse on dev than the task's current prompt waits as a candidate. The
    // dev targets are the labels the current prompt itself ranks first, so it scores 1.0 there.
    let labels = json!(["positive", "negative", "neutral"]);
    let inputs: Vec<String> = rows()
        .iter()
        .map(|r| r["input"].as_str().unwrap().to_string())
        .collect();
    let mut dev = Vec::new();
    for input in &inputs {
        let r: Value = client
            .post(server.url("/v1/tasks/learned/predict"))
            .json(&json!({"inputs": input, "max_new_tokens": 0, "labels": labels}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        dev.push(json!({"input": input, "target": r["outputs"][0]["label"]}));
    }
    let body = json!({"train": rows(), "dev": dev, "prompt_length": 4, "steps": 1,
                      "init": "random-uniform", "optimizer": "sgd", "lr": 1e-9,
                      "metric": "rank-accuracy", "labels": labels});
    let id2 = start_job(&client, &server, "learned", body).await;
    let v2 = wait_until(&client, &server, &id2, ended).await;
    assert_eq!(v2["state"], "candidate", "{v2}");
    assert_eq!(v2["current_metric"], 1.0);
    assert!(v2["best_metric"].as_f64().unwrap() < 1.0);
    assert!(v2["version"].is_null());
    let info: Value = get_json(&client, &server, "/v1/prompts/learned").await;
    assert_eq!(info["version"], 1, "a candidate is not installed");
    let r = client
        .post(server.url(&format!("/v1/tune-jobs/{id2}/promote")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["version"], 2);
    let info: Value = get_json(&client, &server, "/v1/prompts/learned").await;
    assert_eq!(info["version"], 2);
    let r = client
        .post(server.url(&format!("/v1/tune-jobs/{id2}/promote")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let list: Value = get_json(&client, &server, "/v1/tune-jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    let text = metrics(&client, &server).await;
    assert_eq!(metric(&text, "promptd_tune_jobs{state=\"succeeded\"}"), 2.0);
    assert!(metric(&text, "promptd_tune_steps_total") >= 7.0);
    assert!(metric(&text, "promptd_tune_engine_seconds_total") > 0.0);
}

/// `GET /v1/tune-jobs/{id}/curve.svg`: status and body (the SVG, or the JSON error's text).
async fn curve(client: &reqwest::Client, server: &impl Urls, id: &str) -> (u16, String, String) {
    let r = client
        .get(server.url(&format!("/v1/tune-jobs/{id}/curve.svg")))
        .send()
        .await
        .unwrap();
    let kind = r.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    (r.status().as_u16(), kind, r.text().await.unwrap())
}

/// Stroke of the loss and dev series in the picture (`promptd::tune::curve`'s colours).
const LOSS_STROKE: &str = "stroke=\"#1F77B4\"";
const DEV_STROKE: &str = "stroke=\"#FF7F0E\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jobs_curve_is_drawn_while_it_runs_and_after_it_ends() {
    let server = Served::start(|_| {}).await;
    let client = reqwest::Client::new();
    let body = json!({"train": rows(), "dev": rows(), "prompt_length": 4, "steps": 20000,
                      "eval_every": 2, "metric": "rank-accuracy"});
    let id = start_job(&client, &server, "drawn", body).await;
    let running = |v: &Value| v["state"] == "running" && v["step"].as_u64() >= Some(3);
    let v = wait_until(&client, &server, &id, running).await;
    let (status, kind, svg) = curve(&client, &server, &id).await;
    assert_eq!((status, kind.as_str()), (200, "image/svg+xml"), "{svg}");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.contains(&format!("tuning job {id}: task drawn, running")),
        "{svg}"
    );
    assert!(
        svg.contains(LOSS_STROKE) && svg.contains(DEV_STROKE),
        "{svg}"
    );
    assert!(svg.contains("best rank-accuracy"), "{svg}");
    assert!(v["step"].as_u64().unwrap() < 20000);
    // Cancelled, it still answers with the curve it got to.
    let v = cancel(&client, &server, &id).await;
    let (status, _, svg) = curve(&client, &server, &id).await;
    assert_eq!(status, 200);
    let title = format!("task drawn, cancelled, step {} of 20000", v["step"]);
    assert!(svg.contains(&title), "{title}: {svg}");
    assert!(svg.contains(LOSS_STROKE));
    // An unknown job: the JSON error every job route gives.
    let (status, kind, text) = curve(&client, &server, "tj-nope").await;
    assert_eq!((status, kind.as_str()), (404, "application/json"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error_type"], "unknown_job", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lora_and_ia3_jobs_install_adapters_and_a_worse_one_waits_as_a_candidate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("prompts").join(MODEL).join("task03.npy"),
        dir.path().join("learned.npy"),
    )
    .unwrap();
    let server = Served::start_in(dir, |_| {}).await;
    let client = reqwest::Client::new();
    let lora = json!({"train": rows(), "method": "lora", "lora_rank": 2, "lora_targets": ["q", "v", "wo"],
                      "optimizer": "adam", "lr": 0.01, "steps": 4});
    let ia3 =
        json!({"train": rows(), "method": "ia3", "optimizer": "adam", "lr": 0.01, "steps": 4});
    for (task, body, kind) in [("low-rank", lora, "lora"), ("scaled", ia3, "ia3")] {
        let id = start_job(&client, &server, task, body).await;
        let v = wait_until(&client, &server, &id, ended).await;
        assert_eq!(
            (v["state"].as_str(), v["method"].as_str()),
            (Some("succeeded"), Some(kind)),
            "{v}"
        );
        assert_eq!(v["version"], 1);
        let info = get_json(&client, &server, &format!("/v1/prompts/{task}")).await;
        assert_eq!(info["kind"], kind, "{info}");
        assert_eq!(info["version"], 1);
        let out = predict(&client, &server, task, "its engine vector it server").await;
        assert_eq!(out["task"], task);
    }
    let info = get_json(&client, &server, "/v1/prompts/low-rank").await;
    assert_eq!(info["adapter"]["rank"], 2, "{info}");
    assert_eq!(info["adapter"]["modules"], json!(["q", "v", "wo"]));
    // A LoRA that changes nothing (B starts at zero; one step of lr 1e-9) against a prompt that
    // scores 1.0 on dev (its own top labels): a candidate, installed by promote from its one file.
    let labels = json!(["positive", "negative", "neutral"]);
    let mut dev = Vec::new();
    for row in rows() {
        let r: Value = client
            .post(server.url("/v1/tasks/learned/predict"))
            .json(&json!({"inputs": row["input"], "max_new_tokens": 0, "labels": labels}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        dev.push(json!({"input": row["input"], "target": r["outputs"][0]["label"]}));
    }
    let body = json!({"train": rows(), "dev": dev, "steps": 1, "method": "lora", "optimizer": "sgd",
                      "lr": 1e-9, "metric": "rank-accuracy", "labels": labels});
    let id = start_job(&client, &server, "learned", body).await;
    let v = wait_until(&client, &server, &id, ended).await;
    assert_eq!(v["state"], "candidate", "{v}");
    assert_eq!(v["current_metric"], 1.0);
    let info = get_json(&client, &server, "/v1/prompts/learned").await;
    assert_eq!(info["kind"], "prompt");
    let r = client
        .post(server.url(&format!("/v1/tune-jobs/{id}/promote")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let info = get_json(&client, &server, "/v1/prompts/learned").await;
    assert_eq!(
        (info["kind"].as_str(), info["version"].as_u64()),
        (Some("lora"), Some(2)),
        "{info}"
    );
    assert_eq!(info["adapter"]["rank"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_job_requests_get_4xx_json_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start_in(dir, |c| c.tune.max_steps = 50).await;
    let client = reqwest::Client::new();
    let ok = json!({"train": rows(), "steps": 2, "prompt_length": 4});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(&str, Value, u16)> = vec![
        ("t", json!({"train": []}), 422),
        ("t", json!({"dev": rows()}), 422),
        ("t", with("steps", json!(51)), 422),
        ("t", with("steps", json!(0)), 422),
        ("t", with("prompt_length", json!(0)), 422),
        ("t", with("prompt_length", json!(100000)), 422),
        ("t", with("init", json!("file:/etc/passwd")), 422),
        ("t", with("init", json!("bogus")), 422),
        ("t", with("optimizer", json!("lamb")), 422),
        ("t", with("lr", json!(-1.0)), 422),
        ("t", with("metric", json!("bleu")), 422),
        ("t", with("batch_size", json!(0)), 422),
        ("t", with("dropout", json!(1.5)), 422),
        (
            "t",
            with("init", json!(format!("text:{}", "word ".repeat(20000)))),
            422,
        ),
        (
            "t",
            {
                let mut b = with("metric", json!("rank-accuracy"));
                b["labels"] = json!(vec!["x"; 300]);
                b
            },
            422,
        ),
        ("t", with("surprise", json!(1)), 422),
        // Adapter jobs: a method, its own fields only, a rank within --max-lora-rank, targets
        // that name layers of the served model.
        ("t", with("method", json!("dora")), 422),
        ("t", with("method", json!("lora")), 422),
        ("t", with("lora_rank", json!(4)), 422),
        (
            "t",
            json!({"train": rows(), "method": "lora", "lora_rank": 0}),
            422,
        ),
        (
            "t",
            json!({"train": rows(), "method": "lora", "lora_rank": 65}),
            422,
        ),
        (
            "t",
            json!({"train": rows(), "method": "lora", "lora_targets": ["nothing"]}),
            422,
        ),
        (
            "t",
            json!({"train": rows(), "method": "lora", "lora_targets": []}),
            422,
        ),
        (
            "t",
            json!({"train": rows(), "method": "lora", "ia3_targets": ["k"]}),
            422,
        ),
        (
            "t",
            json!({"train": rows(), "method": "ia3", "lora_alpha": 4.0}),
            422,
        ),
        (
            "t",
            json!({"train": rows(), "method": "ia3", "ia3_feedforward": ["wi_1"]}),
            422,
        ),
        ("t", with("train", json!([{"input": "x"}])), 422),
        ("bad%20name", ok.clone(), 400),
    ];
    for (task, body, want) in cases {
        let r = client
            .post(server.url(&format!("/v1/tasks/{task}/tune")))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, want, "{body}: {v}");
        assert!(
            v["error"].as_str().is_some() && v["error_type"].as_str().is_some(),
            "{v}"
        );
    }
    let r = client
        .post(server.url("/v1/tasks/t/tune"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    for (method, path, want) in [
        ("GET", "/v1/tune-jobs/nope", 404),
        ("DELETE", "/v1/tune-jobs/nope", 404),
        ("POST", "/v1/tune-jobs/nope/promote", 404),
    ] {
        let r = client
            .request(method.parse().unwrap(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{method} {path}");
    }
    let list: Value = get_json(&client, &server, "/v1/tune-jobs").await;
    assert_eq!(list["jobs"], json!([]));
    let prompts: Value = get_json(&client, &server, "/v1/prompts").await;
    assert_eq!(prompts["prompts"], json!([]));
    // Cancel: the job ends cancelled, installs nothing, and cannot be cancelled twice.
    let id = start_job(&client, &server, "t", with("steps", json!(50))).await;
    let v = cancel(&client, &server, &id).await;
    assert_eq!(v["state"], "cancelled");
    let r = client
        .delete(server.url(&format!("/v1/tune-jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let r = client
        .post(server.url(&format!("/v1/tune-jobs/{id}/promote")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let r = client
        .get(server.url("/v1/prompts/t"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_fails_the_interrupted_job_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = TestServer::start(&model_dir(), dir.path(), &[]);
    let body = json!({"train": rows(), "steps": 20000, "prompt_length": 4});
    let id = start_job(&client, &server, "long", body).await;
    wait_until(&client, &server, &id, |v| v["step"].as_u64() > Some(2)).await;
    // kill -9: no chance to record anything on the way out.
    Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    let _ = server.wait();
    let server = TestServer::start(&model_dir(), dir.path(), &[]);
    let v = job(&client, &server, &id).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("restart"), "{v}");
    let (status, _, svg) = curve(&client, &server, &id).await;
    assert_eq!(status, 200);
    assert!(svg.contains("task long, failed"), "{svg}");
    let r = client
        .get(server.url("/v1/prompts/long"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Nothing half-written next to the prompts.
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

use std::process::Command;
