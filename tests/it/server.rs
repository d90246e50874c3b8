//! The real server on ephemeral ports: concurrency against `promptd predict`, hot swaps under
//! load, two replicas sharing a folder and client disconnects in-process; restart, SIGTERM and
//! a failing start as `promptd serve` processes.
use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::inproc::Served;
use common::{copy_dir, fixtures, metric, metrics, run_predict, TestServer, Urls};
use promptd::server::ServerConfig;
use serde_json::{json, Value};

const MODEL: &str = "t5-v1_1-tiny";

fn model_dir() -> PathBuf {
    fixtures().join("models").join(MODEL)
}

fn fixture_prompts() -> PathBuf {
    fixtures().join("prompts").join(MODEL)
}

/// `promptd predict` answers for `(task, input, max_new_tokens, labels)` lines.
fn offline(lines: &[(String, String, usize, Vec<String>)]) -> Vec<Value> {
    let stdin: String = lines
        .iter()
        .map(|(task, input, n, labels)| {
            let mut v = json!({"task": task, "input": input, "max_new_tokens": n});
            if !labels.is_empty() {
                v["labels"] = json!(labels);
            }
            format!("{v}\n")
        })
        .collect();
    let (m, p) = (model_dir(), fixture_prompts());
    let (out, stderr, ok) = run_predict(
        &[
            "--model".as_ref(),
            m.as_os_str(),
            "--prompts".as_ref(),
            p.as_os_str(),
        ],
        stdin.as_bytes(),
    );
    assert!(ok, "{stderr}");
    out
}

/// Same tokens and text; label scores equal up to float rounding from different batching.
fn assert_same_output(got: &Value, want: &Value, what: &str) {
    assert_eq!(got["token_ids"], want["token_ids"], "{what}");
    assert_eq!(got["text"], want["text"], "{what}");
    match (got["scores"].as_array(), want["scores"].as_array()) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            assert_eq!(g.len(), w.len(), "{what}");
            for (g, w) in g.iter().zip(w) {
                let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{what}: {g} vs {w}"
                );
            }
            assert_eq!(got["label"], want["label"], "{what}");
        }
        _ => panic!("{what}: scores present on one side only"),
    }
}

async fn get_json(client: &reqwest::Client, server: &impl Urls, path: &str) -> Value {
    let r = client.get(server.url(path)).send().await.unwrap();
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_over_16_tasks_equal_offline_predict() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_prompts(), dir.path());
    let server = Served::start_in(dir, |c| {
        c.policy.max_batch_size = 32;
        c.policy.max_wait = Duration::from_millis(200);
    })
    .await;
    let lines: Vec<(String, String, usize, Vec<String>)> = (0..64)
        .map(|i| {
            let labels = if i % 4 == 0 {
                vec![
                    "yes".to_string(),
                    "no".to_string(),
                    "maybe later".to_string(),
                ]
            } else {
                vec![]
            };
            (
                format!("task{:02}", i % 16),
                format!(
                    "request {i}: the quick brown fox {}",
                    "jumps ".repeat(i % 7)
                ),
                1 + i % 9,
                labels,
            )
        })
        .collect();
    let want = offline(&lines);

    let client = reqwest::Client::new();
    let mut handles = Vec::new();
    for (task, input, n, labels) in lines.clone() {
        let (client, url) = (
            client.clone(),
            server.url(&format!("/v1/tasks/{task}/predict")),
        );
        handles.push(tokio::spawn(async move {
            let mut body = json!({"inputs": input, "max_new_tokens": n});
            if !labels.is_empty() {
                body["labels"] = json!(labels);
            }
            let r = client.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(body["task"], json!(lines[i].0));
        assert_eq!(body["prompt_version"], json!(1));
        assert_same_output(&body["outputs"][0], &want[i], &format!("request {i}"));
    }

    let m = metrics(&client, &server).await;
    let passes = metric(&m, "promptd_batch_tasks_count");
    let single_task = metric(&m, "promptd_batch_tasks_bucket{le=\"1\"}");
    let rows = metric(&m, "promptd_batch_size_sum");
    let tasks = metric(&m, "promptd_batch_tasks_sum");
    eprintln!(
        "64 requests over 16 tasks: {passes} forward passes, mean batch size {:.1}, mean tasks per pass {:.1}, largest-bucket detail below\n{}",
        rows / passes,
        tasks / passes,
        m.lines()
            .filter(|l| l.starts_with("promptd_batch_size_bucket") || l.starts_with("promptd_batch_tasks_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(rows, 64.0, "every request ran exactly once");
    assert!(
        passes > single_task,
        "no forward pass held more than one task:\n{m}"
    );
    assert_eq!(metric(&m, "promptd_requests_total{status=\"200\""), 64.0);
}

/// Raw prompt files of three fixture tasks, standing in for three prompt versions.
fn versions() -> Vec<(&'static str, Vec<u8>)> {
    let p = fixture_prompts();
    vec![
        ("task03", std::fs::read(p.join("task03.npy")).unwrap()),
        (
            "task11",
            std::fs::read(p.join("task11.safetensors")).unwrap(),
        ),
        ("task07", std::fs::read(p.join("task07.npy")).unwrap()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_under_load_never_fails_or_mixes_versions() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        Served::start_over(dir.path(), |c| c.policy.max_wait = Duration::from_millis(2)).await;
    let client = reqwest::Client::new();
    let inputs = [
        "alpha beta",
        "a much longer input about gamma and delta",
        "x",
    ];
    let files = versions();
    let lines: Vec<_> = files
        .iter()
        .flat_map(|(task, _)| {
            inputs
                .iter()
                .map(move |i| (task.to_string(), i.to_string(), 6, vec![]))
        })
        .collect();
    let want = offline(&lines);
    let expected = |source: usize, input: usize| &want[source * inputs.len() + input];

    // version number -> which file it was
    let served: Arc<parking_lot::Mutex<HashMap<u64, usize>>> = Arc::default();
    let put = |client: reqwest::Client, source: usize| {
        let (url, body) = (server.url("/v1/prompts/hot"), files[source].1.clone());
        let served = served.clone();
        async move {
            let r = client.put(url).body(body).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            let info: Value = r.json().await.unwrap();
            served
                .lock()
                .insert(info["version"].as_u64().unwrap(), source);
        }
    };
    put(client.clone(), 0).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (client, url) = (client.clone(), server.url("/v1/tasks/hot/predict"));
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = c;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let which = n % 3;
                n += 1;
                let body = json!({"inputs": [inputs[which], inputs[(which + 1) % 3]], "max_new_tokens": 6});
                let r = client.post(&url).json(&body).send().await.unwrap();
                let status = r.status().as_u16();
                seen.push((which, status, r.json::<Value>().await.unwrap()));
            }
            seen
        }));
    }
    // Swap until enough traffic has seen enough versions (time-boxed for slow machines).
    let mut swaps = 0;
    let give_up = Instant::now() + Duration::from_secs(60);
    while swaps < 24 && Instant::now() < give_up {
        for source in [1, 2, 0] {
            put(client.clone(), source).await;
            swaps += 1;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let r = client
            .delete(server.url("/v1/prompts/hot"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        tokio::time::sleep(Duration::from_millis(30)).await;
        put(client.clone(), 0).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let served = served.lock().clone();
    let (mut ok, mut missing) = (0, 0);
    for h in clients {
        for (which, status, body) in h.await.unwrap() {
            match status {
                200 => {
                    let version = body["prompt_version"].as_u64().unwrap();
                    let source = served[&version];
                    for (k, out) in body["outputs"].as_array().unwrap().iter().enumerate() {
                        let input = (which + k) % 3;
                        assert_same_output(
                            out,
                            expected(source, input),
                            &format!("version {version} input {input}"),
                        );
                    }
                    ok += 1;
                }
                404 => missing += 1, // between a DELETE and the next PUT
                other => panic!("status {other}: {body}"),
            }
        }
    }
    eprintln!("{swaps} swaps; {ok} answers checked, {missing} 404s during deletes");
    assert!(
        ok >= 20,
        "too little traffic: {ok} answers over {swaps} swaps"
    );
    let m = metrics(&client, &server).await;
    assert_eq!(metric(&m, "promptd_requests_total{status=\"5"), 0.0, "{m}");
}

fn multipart_peft(dir: &Path) -> reqwest::multipart::Form {
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    reqwest::multipart::Form::new()
        .part(
            "adapter_model.safetensors",
            reqwest::multipart::Part::bytes(read("adapter_model.safetensors"))
                .file_name("adapter_model.safetensors"),
        )
        .part(
            "adapter_config.json",
            reqwest::multipart::Part::bytes(read("adapter_config.json"))
                .file_name("adapter_config.json"),
        )
}

async fn predict(client: &reqwest::Client, server: &impl Urls, task: &str) -> (u16, Value) {
    let r = client
        .post(server.url(&format!("/v1/tasks/{task}/predict")))
        .json(&json!({"inputs": ["shared volume", "second input"], "max_new_tokens": 5}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Polls until `cond` holds on the answer for `task` (up to 10 s).
async fn eventually(
    client: &reqwest::Client,
    server: &impl Urls,
    task: &str,
    cond: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = predict(client, server, task).await;
        if cond(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_sharing_a_folder_see_each_others_changes() {
    // Two servers in this process, one folder: each sees the other's writes only through it.
    let dir = tempfile::tempdir().unwrap();
    let watch = |c: &mut ServerConfig| c.watch_interval = Duration::from_millis(200);
    let a = Served::start_over(dir.path(), watch).await;
    let b = Served::start_over(dir.path(), watch).await;
    let client = reqwest::Client::new();

    let r = client
        .put(a.url("/v1/prompts/shared"))
        .multipart(multipart_peft(&fixture_prompts().join("task00")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let (_, from_a) = predict(&client, &a, "shared").await;
    let from_b = eventually(&client, &b, "shared", |s, _| s == 200).await;
    assert_eq!(from_a, from_b);

    // A replacement through B reaches A with B's version number.
    let r = client
        .put(b.url("/v1/prompts/shared"))
        .body(std::fs::read(fixture_prompts().join("task11.safetensors")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, from_b) = predict(&client, &b, "shared").await;
    assert_eq!(from_b["prompt_version"], json!(2));
    let from_a = eventually(&client, &a, "shared", |_, v| {
        v["prompt_version"] == json!(2)
    })
    .await;
    assert_eq!(from_a, from_b);

    // A file an operator drops in is served by both; a delete through A reaches B.
    std::fs::copy(
        fixture_prompts().join("task03.npy"),
        dir.path().join("dropped.npy"),
    )
    .unwrap();
    eventually(&client, &a, "dropped", |s, _| s == 200).await;
    eventually(&client, &b, "dropped", |s, _| s == 200).await;
    let r = client
        .delete(a.url("/v1/prompts/shared"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    eventually(&client, &b, "shared", |s, _| s == 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_serves_everything_uploaded_before() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = TestServer::start(&model_dir(), dir.path(), &[]);
    let files = versions();
    for (task, bytes) in &files {
        let r = client
            .put(server.url(&format!("/v1/prompts/up-{task}")))
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let r = client
        .put(server.url("/v1/prompts/up-peft"))
        .multipart(multipart_peft(&fixture_prompts().join("task00")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let list_before = get_json(&client, &server, "/v1/prompts").await;
    let mut before = Vec::new();
    for task in ["up-task03", "up-task11", "up-task07", "up-peft"] {
        before.push(predict(&client, &server, task).await);
    }
    assert!(server.terminate().success());

    let server = TestServer::start(&model_dir(), dir.path(), &[]);
    let list_after = get_json(&client, &server, "/v1/prompts").await;
    let strip = |v: &Value| -> Vec<Value> {
        v["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.as_object_mut().unwrap().remove("loaded_at");
                p
            })
            .collect()
    };
    assert_eq!(strip(&list_before), strip(&list_after));
    for (i, task) in ["up-task03", "up-task11", "up-task07", "up-peft"]
        .iter()
        .enumerate()
    {
        assert_eq!(predict(&client, &server, task).await, before[i], "{task}");
    }
}

/// A server over the fixture prompts that runs one row per forward pass: slow on purpose.
fn one_row_per_pass() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_prompts(), dir.path());
    let server = TestServer::start(
        &model_dir(),
        dir.path(),
        // 64 one-row passes outlast the default drain (30 s) and request timeout (60 s) on a
        // loaded machine (ten minutes seen with two cores and a load of 9): no request timeout,
        // so only the drain's generous bound can fail the queued request.
        &[
            "--max-batch-size",
            "1",
            "--max-new-tokens-limit",
            "256",
            "--shutdown-timeout-s",
            "1800",
            "--request-timeout-ms",
            "0",
        ],
    );
    (dir, server)
}

/// A predict body with 64 inputs.
fn many_inputs(prefix: &str, max_new_tokens: usize) -> Value {
    let inputs: Vec<String> = (0..64).map(|i| format!("{prefix} {i}")).collect();
    json!({"inputs": inputs, "max_new_tokens": max_new_tokens})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_queued_work_then_exits_zero() {
    let (_dir, server) = one_row_per_pass();
    let client = reqwest::Client::new();
    let url = server.url("/v1/tasks/task01/predict");
    let request = tokio::spawn({
        let client = client.clone();
        async move {
            let r = client
                .post(url)
                .json(&many_inputs("slow input", 64))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    // Wait until the rows are queued, then ask the server to stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &metrics(&client, &server).await,
        "promptd_queue_wait_seconds_count",
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "request never reached the queue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.signal_term();
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 64);
    let logs = server.logs();
    let exit = server.wait();
    assert!(exit.success(), "exit {exit:?}; log:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_stops_costing_work() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_prompts(), dir.path());
    let server = Served::start_in(dir, |c| {
        c.policy.max_batch_size = 1;
        c.limits.row.max_new_tokens_limit = 256;
    })
    .await;
    let client = reqwest::Client::new();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let r = impatient
        .post(server.url("/v1/tasks/task02/predict"))
        .json(&many_inputs("abandoned input", 256))
        .send()
        .await;
    assert!(
        r.is_err(),
        "the request should have outlived the client: {r:?}"
    );
    // The queue empties without running the remaining rows.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics(&client, &server).await;
        if metric(&m, "promptd_queue_depth") == 0.0 {
            let ran = metric(&m, "promptd_batch_size_sum");
            assert!(ran < 64.0, "all {ran} rows ran for a client that left");
            eprintln!("{ran} of 64 rows ran before the client left");
            break;
        }
        assert!(Instant::now() < deadline, "queue never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the server still answers.
    let (status, _) = predict(&client, &server, "task02").await;
    assert_eq!(status, 200);
}

#[test]
fn a_model_that_fails_to_load_exits_non_zero_with_the_reason() {
    let model = tempfile::tempdir().unwrap();
    for name in ["config.json", "tokenizer.json"] {
        std::fs::copy(model_dir().join(name), model.path().join(name)).unwrap();
    }
    let prompts = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_promptd"))
        .arg("serve")
        .arg("--model")
        .arg(model.path())
        .arg("--prompts")
        .arg(prompts.path())
        .args(["--addr", "127.0.0.1:0", "--grpc-addr", "off"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("model failed to load"), "{stderr}");
    assert!(
        stderr.contains("safetensors"),
        "the reason names the missing weights: {stderr}"
    );
}
