//! A fleet of replicas sharing prompts and ensembles through a real S3 server: SeaweedFS,
//! started by the harness (`common::seaweed`) on loopback. Replicas are `promptd serve`
//! processes with `--store s3://promptd/<prefix>`. Covers convergence and `?wait=fleet`,
//! fleet-wide versions, concurrent writers, a corrupt object, a store outage, kill -9 in the
//! middle of uploads, and a replica starting against 10,000 prompts.
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::inproc::model_dir;
use super::common::seaweed::Seaweed;
use super::common::{metric, npy_filled, TestServer};

/// A replica of the fleet at `prefix`, polling every 200 ms.
fn replica(s3: &Seaweed, prefix: &str, id: &str) -> TestServer {
    replica_with(s3, prefix, id, &[])
}

/// [`replica`] with more flags.
fn replica_with(s3: &Seaweed, prefix: &str, id: &str, extra: &[&str]) -> TestServer {
    let url = s3.url(prefix);
    let mut args = vec![
        "--store",
        &url,
        "--store-poll-ms",
        "200",
        "--replica-id",
        id,
    ];
    args.extend_from_slice(extra);
    TestServer::start_with(&model_dir(), &args, &s3.env())
}

fn sha256(bytes: &[u8]) -> String {
    promptd::prompts::store::sha256_hex(bytes)
}

async fn put(
    client: &reqwest::Client,
    server: &TestServer,
    path: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let r = client
        .put(server.url(path))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, server: &TestServer, path: &str) -> (u16, Value) {
    let r = client.get(server.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls `check` every 50 ms until it holds; fails with `what` after `limit`.
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `promptd store …` with the store's environment; its exit status and stdout.
fn store_cli(s3: &Seaweed, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_promptd"))
        .arg("store")
        .args(args)
        .envs(s3.env())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_and_a_write_can_wait_for_the_fleet() {
    let s3 = Seaweed::start();
    let (a, b) = (replica(&s3, "converge", "a"), replica(&s3, "converge", "b"));
    let client = reqwest::Client::new();

    // Written on a, waited for: b serves it when the answer comes.
    let v1 = npy_filled(3, 0.1);
    let (status, body) = put(
        &client,
        &a,
        "/v1/prompts/alpha?wait=fleet&wait_ms=20000",
        v1.clone(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["fleet"]["behind"], json!([]), "{body}");
    let (status, seen) = get(&client, &b, "/v1/prompts/alpha").await;
    assert_eq!(status, 200);
    assert_eq!(seen["version"], 1);
    assert_eq!(seen["sha256"], sha256(&v1));

    // Predict answers name the version and its digest.
    let r: Value = client
        .post(b.url("/v1/tasks/alpha/predict"))
        .json(&json!({"inputs": ["hello"], "max_new_tokens": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["prompt_version"], 1);
    assert_eq!(r["prompt_sha256"], sha256(&v1));

    // Versions are fleet-wide: b's replacement is version 2 everywhere.
    let v2 = npy_filled(4, 0.2);
    let (status, body) = put(&client, &b, "/v1/prompts/alpha?wait=fleet", v2.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    let (_, seen) = get(&client, &a, "/v1/prompts/alpha").await;
    assert_eq!(
        (seen["version"].clone(), seen["prompt_length"].clone()),
        (json!(2), json!(4))
    );

    // A LoRA adapter travels the same way and answers the same on every replica.
    let dir = super::common::fixtures().join("adapters/t5-v1_1-tiny/lora-qv");
    let expected = std::fs::read_to_string(
        super::common::fixtures().join("expected/adapters/t5-v1_1-tiny.jsonl"),
    )
    .unwrap();
    let case: Value = expected
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["adapter"] == json!("lora-qv"))
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "adapter_config.json",
            reqwest::multipart::Part::bytes(
                std::fs::read(dir.join("adapter_config.json")).unwrap(),
            )
            .file_name("adapter_config.json"),
        )
        .part(
            "adapter_model.safetensors",
            reqwest::multipart::Part::bytes(
                std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
            )
            .file_name("adapter_model.safetensors"),
        );
    let r = client
        .put(a.url("/v1/prompts/lora?wait=fleet&wait_ms=20000"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["kind"].clone(), body["fleet"]["behind"].clone()),
        (json!("lora"), json!([]))
    );
    let mut answers = Vec::new();
    for server in [&a, &b] {
        let r: Value = client
            .post(server.url("/v1/tasks/lora/predict"))
            .json(&json!({"inputs": [case["input"]], "max_new_tokens": case["max_new_tokens"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answers.push(r["outputs"][0]["token_ids"].clone());
    }
    assert_eq!(answers[0], case["token_ids"], "PEFT's tokens on a");
    assert_eq!(answers[1], case["token_ids"], "PEFT's tokens on b");

    // Ensembles travel the same way.
    let (status, _) = put(&client, &a, "/v1/prompts/beta", npy_filled(2, 0.3)).await;
    assert_eq!(status, 201);
    until(Duration::from_secs(20), "b serves beta", || async {
        get(&client, &b, "/v1/prompts/beta").await.0 == 200
    })
    .await;
    let spec = json!({"members": ["alpha", "beta"], "combine": "vote"});
    let r = client
        .put(b.url("/v1/ensembles/pair?wait=fleet"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let (status, ens) = get(&client, &a, "/v1/ensembles/pair").await;
    assert_eq!(status, 200, "{ens}");
    assert_eq!(ens["version"], 1);

    // The fleet lists both replicas, live, each at the generation holding the writes.
    until(
        Duration::from_secs(20),
        "both replicas applied the ensemble",
        || async {
            let (_, fleet) = get(&client, &a, "/v1/fleet").await;
            let replicas = fleet["replicas"].as_array().cloned().unwrap_or_default();
            replicas.len() == 2
                && replicas
                    .iter()
                    .all(|r| r["live"] == true && r["ensembles_generation"] == 1)
        },
    )
    .await;
    let (_, fleet) = get(&client, &b, "/v1/fleet").await;
    assert_eq!(fleet["replica"], "b");
    assert_eq!(fleet["store"], s3.url("converge"));

    // Deletes travel too, and a re-created name counts past its last version.
    for (server, path) in [(&a, "/v1/ensembles/pair"), (&b, "/v1/prompts/alpha")] {
        let r = client.delete(server.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 204, "{path}");
    }
    until(
        Duration::from_secs(20),
        "a drops alpha and b drops the ensemble",
        || async {
            get(&client, &a, "/v1/prompts/alpha").await.0 == 404
                && get(&client, &b, "/v1/ensembles/pair").await.0 == 404
        },
    )
    .await;
    let (status, body) = put(&client, &a, "/v1/prompts/alpha", npy_filled(1, 0.4)).await;
    assert_eq!(status, 201);
    assert_eq!(body["version"], 3, "{body}");

    // A bad wait is refused before anything is written.
    let (status, body) = put(
        &client,
        &a,
        "/v1/prompts/gamma?wait=forever",
        npy_filled(1, 0.5),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(get(&client, &a, "/v1/prompts/gamma").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_writers_on_three_replicas_lose_no_update() {
    let s3 = Seaweed::start();
    let replicas: Vec<TestServer> = ["r0", "r1", "r2"]
        .iter()
        .map(|id| replica(&s3, "writers", id))
        .collect();
    let replicas = std::sync::Arc::new(replicas);
    let client = reqwest::Client::new();
    let mut writers = Vec::new();
    for w in 0..10 {
        let (client, replicas) = (client.clone(), replicas.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut conflicts = 0;
            for n in 0..4 {
                let body = npy_filled(1 + (w + n) % 3, (w * 10 + n) as f32 * 0.01);
                let sha = sha256(&body);
                let target = &replicas[(w + n) % 3];
                let (status, answer) = put(&client, target, "/v1/prompts/hot", body).await;
                match status {
                    200 | 201 => acked.push((answer["version"].as_u64().unwrap(), sha)),
                    409 => conflicts += 1,
                    other => panic!("writer {w}: {other} {answer}"),
                }
            }
            (acked, conflicts)
        }));
    }
    let mut acked = Vec::new();
    let mut conflicts = 0;
    for w in writers {
        let (a, c) = w.await.unwrap();
        // One writer's writes, acknowledged one after another, count up.
        assert!(a.windows(2).all(|p| p[0].0 < p[1].0), "{a:?}");
        acked.extend(a);
        conflicts += c;
    }
    // Every acknowledged write has its own version.
    let versions: HashSet<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(versions.len(), acked.len(), "versions repeat: {acked:?}");
    assert!(
        acked.len() >= 20,
        "only {} of 40 writes acknowledged ({conflicts} conflicts)",
        acked.len()
    );
    // The store and every replica end at the last acknowledged version, with its bytes.
    let (last_version, last_sha) = acked.iter().max_by_key(|a| a.0).unwrap().clone();
    for r in replicas.iter() {
        until(
            Duration::from_secs(20),
            "every replica serves the last write",
            || async {
                let (_, p) = get(&client, r, "/v1/prompts/hot").await;
                p["version"] == last_version && p["sha256"] == last_sha
            },
        )
        .await;
    }
    let (ok, out, err) = store_cli(&s3, &["ls", &s3.url("writers"), "--json"]);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["prompts"]["entries"]["hot"]["version"], last_version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_object_is_refused_and_the_previous_version_keeps_serving() {
    use promptd::store::manifest::ManifestEntry;
    use promptd::store::objects::Objects;
    let s3 = Seaweed::start();
    let a = replica(&s3, "corrupt", "a");
    let client = reqwest::Client::new();
    let v1 = npy_filled(2, 0.25);
    assert_eq!(
        put(&client, &a, "/v1/prompts/task?wait=fleet", v1.clone())
            .await
            .0,
        201
    );

    // A version 2 whose object's bytes do not hash to its name, written behind promptd's back.
    let bucket = test_bucket(&s3, &s3.url("corrupt"));
    let objects = Objects::new(bucket.clone(), "prompts", "safetensors", "test".into());
    let good = promptd::prompts::store::encode(
        &promptd::prompts::Prompt::from_tensor_file(&npy_filled(3, 0.75), 48, &Default::default())
            .unwrap(),
        None,
        "feed",
    )
    .unwrap();
    let name = sha256(&good);
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x5a;
    bucket
        .put(
            &objects.object_key(&name),
            bad.into(),
            promptd::store::bucket::Write::Overwrite,
            promptd::metrics::StoreOp::PutObject,
        )
        .await
        .unwrap();
    objects
        .manifest_cell()
        .update(|m| {
            m.entries.insert(
                "task".into(),
                ManifestEntry {
                    version: 2,
                    object: name.clone(),
                    size: good.len() as u64,
                    written_at_ms: 0,
                    replica: "test".into(),
                },
            );
            Ok::<(), ()>(())
        })
        .await
        .unwrap();

    until(
        Duration::from_secs(20),
        "the corrupt object is counted",
        || async {
            let text = super::common::metrics(&client, &a).await;
            metric(&text, "promptd_store_corrupt_objects_total") >= 1.0
        },
    )
    .await;
    let (_, served) = get(&client, &a, "/v1/prompts/task").await;
    assert_eq!(served["version"], 1, "{served}");
    assert_eq!(served["sha256"], sha256(&v1));
    assert!(a.logs().contains("not to its name"), "{}", a.logs());
    let r = client
        .post(a.url("/v1/tasks/task/predict"))
        .json(&json!({"inputs": ["x"], "max_new_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // `promptd store verify` names it and fails.
    let (ok, out, err) = store_cli(&s3, &["verify", &s3.url("corrupt")]);
    assert!(!ok, "verify passed: {out}");
    assert!(err.contains("task"), "{err}");

    // A new upload replaces it: version 3, served.
    let v3 = npy_filled(1, 0.5);
    let (status, body) = put(&client, &a, "/v1/prompts/task", v3).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_keeps_serving_refuses_writes_and_catches_up() {
    let mut s3 = Seaweed::start();
    let (a, b) = (replica(&s3, "outage", "a"), replica(&s3, "outage", "b"));
    let client = reqwest::Client::new();
    assert_eq!(
        put(
            &client,
            &a,
            "/v1/prompts/steady?wait=fleet",
            npy_filled(2, 0.1)
        )
        .await
        .0,
        201
    );

    s3.stop();
    // Serving goes on from the catalog each replica holds.
    for r in [&a, &b] {
        let answer = client
            .post(r.url("/v1/tasks/steady/predict"))
            .json(&json!({"inputs": ["still here"], "max_new_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200);
        assert_eq!(get(&client, r, "/readyz").await.0, 200);
    }
    // Writes are refused with 503, Retry-After and a JSON error.
    let r = client
        .put(a.url("/v1/prompts/steady"))
        .body(npy_filled(3, 0.2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_type"], "unavailable", "{body}");
    let tune = json!({"train": tune_rows(), "prompt_length": 4, "steps": 2});
    let r = client
        .post(a.url("/v1/tasks/steady/tune"))
        .json(&tune)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        503,
        "a tuning start while the store is down"
    );
    assert!(r.headers().contains_key("retry-after"));
    until(Duration::from_secs(20), "promptd_store_up is 0", || async {
        let text = super::common::metrics(&client, &b).await;
        metric(&text, "promptd_store_up ") == 0.0
    })
    .await;

    // The store comes back: writes work again and the other replica catches up by itself.
    tokio::task::block_in_place(|| s3.restart());
    let v2 = npy_filled(3, 0.3);
    let deadline = Instant::now() + Duration::from_secs(30);
    let version = loop {
        let (status, body) = put(&client, &b, "/v1/prompts/steady", v2.clone()).await;
        if status == 200 {
            break body["version"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded after the store returned: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(version, 2);
    until(Duration::from_secs(20), "a catches up", || async {
        get(&client, &a, "/v1/prompts/steady").await.1["version"] == 2
    })
    .await;
    let text = super::common::metrics(&client, &a).await;
    assert_eq!(metric(&text, "promptd_store_up "), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_uploads_loses_no_acknowledged_write() {
    let s3 = Seaweed::start();
    let mut a = replica(&s3, "kill9", "a");
    let b = replica(&s3, "kill9", "b");
    let client = reqwest::Client::new();
    let sent: std::sync::Arc<parking_lot::Mutex<BTreeMap<String, String>>> = Default::default();
    let acked: std::sync::Arc<parking_lot::Mutex<Vec<String>>> = Default::default();
    let uploader = {
        let (client, url, sent, acked) = (client.clone(), a.url(""), sent.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..10_000 {
                let task = format!("k{i:05}");
                let body = npy_filled(1 + i % 4, 0.5 + i as f32 * 0.001);
                sent.lock().insert(task.clone(), sha256(&body));
                match client
                    .put(format!("{url}/v1/prompts/{task}"))
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => acked.lock().push(task),
                    _ => return,
                }
            }
        })
    };
    until(
        Duration::from_secs(30),
        "some uploads acknowledged",
        || async { acked.lock().len() >= 8 },
    )
    .await;
    tokio::task::block_in_place(|| a.kill9());
    uploader.await.unwrap();
    let acked = acked.lock().clone();
    let sent = sent.lock().clone();

    // Every acknowledged upload is served by the surviving replica, with its bytes.
    until(
        Duration::from_secs(20),
        "b serves every acknowledged upload",
        || async {
            let (_, list) = get(&client, &b, "/v1/prompts").await;
            let served: HashSet<String> = list["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["task"].as_str().unwrap().to_string())
                .collect();
            acked.iter().all(|t| served.contains(t))
        },
    )
    .await;
    // Nothing torn: whatever b serves is exactly what was sent for that name.
    let (_, list) = get(&client, &b, "/v1/prompts").await;
    for p in list["prompts"].as_array().unwrap() {
        let task = p["task"].as_str().unwrap();
        assert_eq!(
            p["sha256"].as_str(),
            sent.get(task).map(String::as_str),
            "{task}"
        );
    }
    // Every object the manifest names is there and whole.
    let (ok, out, err) = store_cli(&s3, &["verify", &s3.url("kill9")]);
    assert!(ok, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_starts_empty_against_ten_thousand_prompts() {
    const N: usize = 10_000;
    let s3 = Seaweed::start();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..N {
        std::fs::write(
            dir.path().join(format!("p{i:05}.npy")),
            npy_filled(1, i as f32 * 1e-4),
        )
        .unwrap();
    }
    let started = Instant::now();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        store_cli(
            &s3,
            &["push", dir.path().to_str().unwrap(), &s3.url("cold")],
        )
    });
    assert!(ok, "{out}{err}");
    let pushed = started.elapsed();
    let started = Instant::now();
    let r = tokio::task::block_in_place(|| {
        let r = TestServer::spawn(&model_dir(), &["--store", &s3.url("cold")], &s3.env());
        r.wait_ready(Duration::from_secs(300));
        r
    });
    let ready = started.elapsed();
    eprintln!("pushed {N} prompts in {pushed:?}; a replica was ready in {ready:?}");
    let client = reqwest::Client::new();
    let (_, readyz) = get(&client, &r, "/readyz").await;
    assert_eq!(readyz["prompts"], N, "{readyz}");
}

fn tune_rows() -> Vec<Value> {
    std::fs::read_to_string(super::common::fixtures().join("tune/t5-v1_1-tiny/train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuning_jobs_are_seen_fleet_wide_and_a_lost_replicas_job_fails() {
    let s3 = Seaweed::start();
    let start = |id: &str| replica_with(&s3, "jobs", id, &["--tune-lease-ms", "3000"]);
    let (mut a, b) = (start("a"), start("b"));
    let client = reqwest::Client::new();
    let job_on = |server: &TestServer, task: &str, steps: u64| {
        let (client, url) = (
            client.clone(),
            server.url(&format!("/v1/tasks/{task}/tune")),
        );
        async move {
            let body = json!({"train": tune_rows(), "prompt_length": 4, "steps": steps});
            let r = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 202);
            let v: Value = r.json().await.unwrap();
            v["job"].as_str().unwrap().to_string()
        }
    };

    // A short job on b: a sees its record, and serves the prompt it installed.
    let short = job_on(&b, "tuned", 3).await;
    until(
        Duration::from_secs(60),
        "a sees b's job succeed",
        || async {
            get(&client, &a, &format!("/v1/tune-jobs/{short}")).await.1["state"] == "succeeded"
        },
    )
    .await;
    until(
        Duration::from_secs(20),
        "a serves the tuned prompt",
        || async { get(&client, &a, "/v1/prompts/tuned").await.1["version"] == 1 },
    )
    .await;
    let (_, list) = get(&client, &a, "/v1/tune-jobs").await;
    assert!(
        list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == short),
        "{list}"
    );

    // A long job on a: b shows it running, its step moving; a dies; b fails it with the reason.
    let long = job_on(&a, "endless", 20_000).await;
    until(
        Duration::from_secs(60),
        "b sees a's job take steps",
        || async {
            let (_, j) = get(&client, &b, &format!("/v1/tune-jobs/{long}")).await;
            j["state"] == "running" && j["step"].as_u64().unwrap_or(0) > 0
        },
    )
    .await;
    let r = client
        .delete(b.url(&format!("/v1/tune-jobs/{long}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        409,
        "a job of another replica is cancelled there"
    );
    tokio::task::block_in_place(|| a.kill9());
    until(
        Duration::from_secs(30),
        "b marks the lost replica's job failed",
        || async {
            let (_, j) = get(&client, &b, &format!("/v1/tune-jobs/{long}")).await;
            j["state"] == "failed" && j["error"].as_str().is_some_and(|e| e.contains("replica a"))
        },
    )
    .await;
}

/// A bucket handle from the test process itself, for what promptd does not write.
fn test_bucket(s3: &Seaweed, url: &str) -> promptd::store::Bucket {
    let settings: Vec<(String, String)> = s3
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_lowercase(), v))
        .collect();
    let metrics = promptd::metrics::Metrics::new(1);
    promptd::store::Bucket::open_with(url, &settings, metrics.store.clone()).unwrap()
}

fn tenants_toml(keys: &[(&str, &str)]) -> Vec<u8> {
    let mut out = String::new();
    for (name, key) in keys {
        out.push_str(&format!(
            "[[tenants]]\nname = \"{name}\"\nkey_sha256 = [\"{}\"]\ntasks = [\"{name}.*\"]\n\n",
            promptd::tenants::hash_key(key)
        ));
    }
    out.push_str(&format!(
        "[[tenants]]\nname = \"ops\"\nadmin = true\nkey_sha256 = [\"{}\"]\n",
        promptd::tenants::hash_key("ops-key")
    ));
    out.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_from_the_store_revoke_fleet_wide_and_the_audit_log_is_objects() {
    use promptd::metrics::StoreOp;
    use promptd::store::bucket::Write;
    let s3 = Seaweed::start();
    let root = test_bucket(&s3, "s3://promptd");
    let put_tenants = |bytes: Vec<u8>| {
        let root = root.clone();
        async move {
            root.put(
                "auth/tenants.toml",
                bytes.into(),
                Write::Overwrite,
                StoreOp::Record,
            )
            .await
            .unwrap();
        }
    };
    put_tenants(tenants_toml(&[("acme", "acme-key"), ("beta", "beta-key")])).await;
    let url = s3.url("tenants");
    let tenants = ["--tenants", "s3://promptd/auth/tenants.toml"];
    let start = |id: &str| replica_with(&s3, "tenants", id, &tenants);
    let (a, b) = (start("a"), start("b"));
    let client = reqwest::Client::new();
    let r = client
        .put(a.url("/v1/prompts/beta.task?wait=fleet"))
        .bearer_auth("beta-key")
        .body(npy_filled(2, 0.5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    for server in [&a, &b] {
        let r = client
            .get(server.url("/v1/prompts/beta.task"))
            .bearer_auth("beta-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }

    // beta's key revoked in the store: refused on every replica within the poll bound.
    let revoked = Instant::now();
    put_tenants(tenants_toml(&[("acme", "acme-key")])).await;
    for server in [&a, &b] {
        until(
            Duration::from_secs(10),
            "the revoked key is refused",
            || async {
                let r = client
                    .get(server.url("/v1/prompts"))
                    .bearer_auth("beta-key")
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16() == 401
            },
        )
        .await;
    }
    eprintln!(
        "a revoked key stopped working on both replicas within {:?}",
        revoked.elapsed()
    );
    let r = client
        .get(b.url("/v1/prompts"))
        .bearer_auth("acme-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // The upload's audit entry is an object of its own in the store.
    let audit = test_bucket(&s3, &url).list("audit").await.unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    let bytes = test_bucket(&s3, &url)
        .get(&audit[0].key, StoreOp::Record)
        .await
        .unwrap()
        .unwrap();
    let entry: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (
            entry["tenant"].as_str(),
            entry["task"].as_str(),
            entry["action"].as_str()
        ),
        (Some("beta"), Some("beta.task"), Some("create"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_push_pull_ls_verify_round_trip() {
    let s3 = Seaweed::start();
    let url = s3.url("moved");
    let dir = tempfile::tempdir().unwrap();
    super::common::copy_dir(
        &super::common::fixtures().join("prompts/t5-v1_1-tiny"),
        dir.path(),
    );
    let ensemble = json!({"members": ["task00", "task01"], "combine": "vote", "version": 4});
    std::fs::write(dir.path().join("pair.ensemble.json"), ensemble.to_string()).unwrap();
    let folder = TestServer::start(&model_dir(), dir.path(), &[]);

    let (ok, out, err) = tokio::task::block_in_place(|| {
        store_cli(&s3, &["push", dir.path().to_str().unwrap(), &url])
    });
    assert!(ok, "{out}{err}");
    // A second push of the same folder changes nothing.
    let (ok, again, err) = tokio::task::block_in_place(|| {
        store_cli(&s3, &["push", dir.path().to_str().unwrap(), &url])
    });
    assert!(ok && again.contains("0 new or changed"), "{again}{err}");
    let (ok, listed, _) = store_cli(&s3, &["ls", &url, "--json"]);
    assert!(ok);
    let doc: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(doc["ensembles"]["entries"]["pair"]["version"], 4);
    assert!(store_cli(&s3, &["verify", &url]).0);

    // A replica on the store serves what the folder server serves.
    let fleet = tokio::task::block_in_place(|| replica(&s3, "moved", "r"));
    let client = reqwest::Client::new();
    let strip = |v: Value, key: &str| -> Vec<Value> {
        v[key]
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
    let from_folder = strip(get(&client, &folder, "/v1/prompts").await.1, "prompts");
    let from_store = strip(get(&client, &fleet, "/v1/prompts").await.1, "prompts");
    assert_eq!(from_folder.len(), 24);
    assert_eq!(from_store, from_folder);
    assert_eq!(
        get(&client, &fleet, "/v1/ensembles/pair").await.1["version"],
        4
    );

    // Pulled back into a folder: the same prompts, versions and digests again.
    let back = tempfile::tempdir().unwrap();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        store_cli(&s3, &["pull", &url, back.path().to_str().unwrap()])
    });
    assert!(ok, "{out}{err}");
    let pulled = tokio::task::block_in_place(|| TestServer::start(&model_dir(), back.path(), &[]));
    let from_pulled = strip(get(&client, &pulled, "/v1/prompts").await.1, "prompts");
    assert_eq!(from_pulled, from_folder);
    assert_eq!(
        get(&client, &pulled, "/v1/ensembles/pair").await.1["version"],
        4
    );
}
