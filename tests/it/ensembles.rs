//! Prompt ensembles on the demo model (paper §6): members that are different tasks give known,
//! different answers to README's sentence, so the vote and the mean log-probability are
//! checked against the members run one by one; an ensemble's rows ride in one pass; the
//! resource behaves like a prompt (versions, folder, audit, tenancy) and bad requests change
//! nothing.
use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

const SENTENCE: &str = "at the night owl the bread was cold but the waitress was lovely, 3 stars";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A server on the demo model whose folder holds the demo prompts `tasks`, plus `sentiment2`,
/// a byte copy of sentiment (a second member that answers the same).
async fn demo_server(
    configure: impl FnOnce(&mut promptd::server::ServerConfig),
) -> common::inproc::Served {
    let prompts = tempfile::tempdir().unwrap();
    for task in ["sentiment", "verdict", "rating"] {
        std::fs::copy(
            repo().join(format!("prompts/{task}.safetensors")),
            prompts.path().join(format!("{task}.safetensors")),
        )
        .unwrap();
    }
    std::fs::copy(
        repo().join("prompts/sentiment.safetensors"),
        prompts.path().join("sentiment2.safetensors"),
    )
    .unwrap();
    common::inproc::Served::start_in(prompts, |c| {
        c.model = common::fixtures().join("models/demo-reviews");
        configure(c);
    })
    .await
}

async fn put(
    client: &reqwest::Client,
    server: &common::inproc::Served,
    name: &str,
    body: Value,
) -> (u16, Value) {
    let resp = client
        .put(server.url(&format!("/v1/ensembles/{name}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let resp = client.post(url).json(&body).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_and_mean_logprob_agree_with_the_members_run_alone() {
    let server = demo_server(|_| {}).await;
    let client = reqwest::Client::new();
    let (status, info) = put(
        &client,
        &server,
        "mood",
        json!({"members": ["sentiment", "verdict", "sentiment2"], "combine": "vote"}),
    )
    .await;
    assert_eq!(status, 201, "{info}");
    assert_eq!(info["version"], 1);

    // Generation: sentiment twice says "mixed", verdict says "fine": the vote is mixed, 2 to 1.
    let (status, body) = post(
        &client,
        server.url("/v1/ensembles/mood/predict"),
        json!({"inputs": SENTENCE, "max_new_tokens": 8}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let out = &body["outputs"][0];
    assert_eq!(out["answer"], "mixed", "{body}");
    assert_eq!(out["votes"], 2);
    let members = out["members"].as_array().unwrap();
    let answers: Vec<&str> = members
        .iter()
        .map(|m| m["answer"].as_str().unwrap())
        .collect();
    assert_eq!(answers, ["mixed", "fine", "mixed"]);
    // Each member's score is its answer's log-probability: the same number its task gives the
    // answer as a label, alone.
    for m in members {
        let task = m["task"].as_str().unwrap();
        let (_, alone) = post(
            &client,
            server.url(&format!("/v1/tasks/{task}/predict")),
            json!({"inputs": SENTENCE, "labels": [m["answer"]], "max_new_tokens": 0}),
        )
        .await;
        let want = alone["outputs"][0]["scores"][0].as_f64().unwrap();
        let got = m["score"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "{task}: {got} vs {want}");
        assert!(got < 0.0);
    }

    // A tie (one vote each) goes to the likelier answer.
    put(
        &client,
        &server,
        "pair",
        json!({"members": ["sentiment", "verdict"], "combine": "vote"}),
    )
    .await;
    let (_, body) = post(
        &client,
        server.url("/v1/ensembles/pair/predict"),
        json!({"inputs": SENTENCE}),
    )
    .await;
    let out = &body["outputs"][0];
    let m = out["members"].as_array().unwrap();
    let likelier = if m[0]["score"].as_f64() >= m[1]["score"].as_f64() {
        &m[0]
    } else {
        &m[1]
    };
    assert_eq!(out["answer"], likelier["answer"], "{body}");
    assert_eq!(out["votes"], 1);

    // Labels with mean-logprob: each label's log-likelihood averaged over the members, as the
    // members score them alone.
    let labels = json!(["positive", "negative", "mixed", "good", "fine", "bad"]);
    let (status, _) = put(
        &client,
        &server,
        "mood",
        json!({"members": ["sentiment", "verdict", "rating"], "combine": "mean-logprob"}),
    )
    .await;
    assert_eq!(status, 200, "replaced");
    let (status, body) = post(
        &client,
        server.url("/v1/ensembles/mood/predict"),
        json!({"inputs": [SENTENCE, "the soup at rosa's was great, 5 stars"], "labels": labels, "max_new_tokens": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["combine"], "mean-logprob");
    for (i, out) in body["outputs"].as_array().unwrap().iter().enumerate() {
        let mut sums = [0.0f64; 6];
        for task in ["sentiment", "verdict", "rating"] {
            let (_, alone) = post(
                &client,
                server.url(&format!("/v1/tasks/{task}/predict")),
                json!({"inputs": [SENTENCE, "the soup at rosa's was great, 5 stars"], "labels": labels, "max_new_tokens": 0}),
            )
            .await;
            for (j, s) in alone["outputs"][i]["scores"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                sums[j] += s.as_f64().unwrap();
            }
        }
        let mean: Vec<f64> = sums.iter().map(|s| s / 3.0).collect();
        let got: Vec<f64> = out["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (g, w) in got.iter().zip(&mean) {
            assert!((g - w).abs() < 1e-4, "{got:?} vs {mean:?}");
        }
        let best = (0..6).max_by(|&a, &b| mean[a].total_cmp(&mean[b])).unwrap();
        assert_eq!(out["answer"], labels[best], "{out}");
        assert!(out["members"][0].get("text").is_none(), "nothing generated");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensembles_rows_ride_in_one_pass() {
    // max_wait long enough that a split would show as a second pass.
    let server = demo_server(|c| c.policy.max_wait = Duration::from_millis(20)).await;
    let client = reqwest::Client::new();
    put(
        &client,
        &server,
        "four",
        json!({"members": ["sentiment", "sentiment2", "verdict", "rating"], "combine": "vote"}),
    )
    .await;
    let before = common::metrics(&client, &server).await;
    let (status, body) = post(
        &client,
        server.url("/v1/ensembles/four/predict"),
        json!({"inputs": [SENTENCE, "the tea at casa lupe was cold, 2 stars"], "max_new_tokens": 4}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let after = common::metrics(&client, &server).await;
    let delta = |name: &str| common::metric(&after, name) - common::metric(&before, name);
    // Two inputs × four members: eight rows. Each unit of four rows is admitted whole, so
    // every pass holds a multiple of four rows.
    assert_eq!(delta("promptd_batch_size_sum"), 8.0, "{after}");
    let passes = delta("promptd_batch_size_count");
    assert!(passes == 1.0 || passes == 2.0, "{passes} passes");
    if passes == 2.0 {
        assert_eq!(delta("promptd_batch_size_bucket{le=\"4\"}"), 2.0, "{after}");
    }
    server.stop().await.unwrap();
}

/// The demo server with ensemble `e`: sentiment and verdict, voting (version 1).
async fn with_e() -> (common::inproc::Served, reqwest::Client) {
    let server = demo_server(|_| {}).await;
    let client = reqwest::Client::new();
    let good = json!({"members": ["sentiment", "verdict"], "combine": "vote"});
    assert_eq!(put(&client, &server, "e", good).await.0, 201);
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_ensemble_write_answers_what_is_wrong_and_changes_nothing() {
    let (server, client) = with_e().await;
    let dir = server.prompts.clone();
    let good = json!({"members": ["sentiment", "verdict"], "combine": "vote"});
    let snapshot = common::snapshot(&dir);
    let bad = [
        (
            json!({"members": ["sentiment"], "combine": "vote"}),
            422,
            "2 to",
        ),
        (
            json!({"members": ["sentiment", "sentiment"], "combine": "vote"}),
            422,
            "twice",
        ),
        (
            json!({"members": ["sentiment", "nope"], "combine": "vote"}),
            422,
            "no prompt",
        ),
        (
            json!({"members": ["sentiment", "../x"], "combine": "vote"}),
            422,
            "invalid task name",
        ),
        (
            json!({"members": ["sentiment", "verdict"], "combine": "median"}),
            422,
            "combine",
        ),
        (json!({"members": ["sentiment", "verdict"]}), 422, "combine"),
        (
            json!({"members": ["sentiment", "verdict"], "combine": "vote", "x": 1}),
            422,
            "unknown field",
        ),
    ];
    for (body, want, says) in bad {
        let (status, err) = put(&client, &server, "e", body.clone()).await;
        assert_eq!(status, want, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(says),
            "{body}: {err}"
        );
    }
    let resp = client
        .put(server.url("/v1/ensembles/e"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        put(&client, &server, "bad%20name", good.clone()).await.0,
        400
    );
    assert_eq!(
        common::snapshot(&dir),
        snapshot,
        "refused writes changed the folder"
    );
    let info: Value = client
        .get(server.url("/v1/ensembles/e"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["version"], 1);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_predict_errors_say_what_is_wrong() {
    let (server, client) = with_e().await;
    let url = server.url("/v1/ensembles/e/predict");
    let (status, err) = post(
        &client,
        server.url("/v1/ensembles/none/predict"),
        json!({"inputs": "x"}),
    )
    .await;
    assert_eq!(
        (status, err["error_type"].as_str()),
        (404, Some("unknown_ensemble"))
    );
    let (status, _) = post(&client, url, json!({"inputs": "x", "max_new_tokens": 0})).await;
    assert_eq!(status, 422, "nothing to combine");
    put(
        &client,
        &server,
        "m",
        json!({"members": ["sentiment", "verdict"], "combine": "mean-logprob"}),
    )
    .await;
    let (status, err) = post(
        &client,
        server.url("/v1/ensembles/m/predict"),
        json!({"inputs": "x"}),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert!(err["error"].as_str().unwrap().contains("labels"), "{err}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_whose_member_was_deleted_answers_409_naming_it() {
    let (server, client) = with_e().await;
    let url = server.url("/v1/ensembles/e/predict");
    let resp = client
        .delete(server.url("/v1/prompts/verdict"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, err) = post(&client, url, json!({"inputs": "x"})).await;
    assert_eq!(status, 409, "{err}");
    assert!(err["error"].as_str().unwrap().contains("verdict"), "{err}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensembles_are_replaced_listed_and_deleted_with_versions_files_and_audit() {
    let (server, client) = with_e().await;
    let dir = server.prompts.clone();
    put(
        &client,
        &server,
        "m",
        json!({"members": ["sentiment", "verdict"], "combine": "mean-logprob"}),
    )
    .await;
    // Versions count on past a delete, the file follows, the audit log records each change.
    let (status, info) = put(
        &client,
        &server,
        "e",
        json!({"members": ["sentiment", "rating"], "combine": "vote"}),
    )
    .await;
    assert_eq!((status, info["version"].as_u64()), (200, Some(2)));
    let stored: Value =
        serde_json::from_slice(&std::fs::read(dir.join("e.ensemble.json")).unwrap()).unwrap();
    assert_eq!(stored["members"], json!(["sentiment", "rating"]));
    assert_eq!(stored["version"], 2);
    let list: Value = client
        .get(server.url("/v1/ensembles"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["ensembles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["e", "m"]);
    assert_eq!(
        client
            .delete(server.url("/v1/ensembles/e"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        client
            .delete(server.url("/v1/ensembles/e"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert!(!dir.join("e.ensemble.json").exists());
    let (status, info) = put(
        &client,
        &server,
        "e",
        json!({"members": ["sentiment2", "rating"], "combine": "vote"}),
    )
    .await;
    assert_eq!((status, info["version"].as_u64()), (201, Some(3)), "{info}");
    let audit = std::fs::read_to_string(dir.join(".audit.jsonl")).unwrap();
    let ensemble_lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "ensemble" && v["task"] == "e")
        .collect();
    let actions: Vec<&str> = ensemble_lines
        .iter()
        .map(|v| v["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["create", "replace", "delete", "create"]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sees_ensembles_written_to_the_shared_folder() {
    let server = demo_server(|c| c.watch_interval = Duration::from_millis(100)).await;
    let client = reqwest::Client::new();
    std::fs::write(
        server.prompts.join("other.ensemble.json"),
        r#"{"members": ["sentiment", "verdict"], "combine": "vote", "version": 7}"#,
    )
    .unwrap();
    std::fs::write(server.prompts.join("broken.ensemble.json"), "{not json").unwrap();
    let mut seen = Value::Null;
    for _ in 0..100 {
        let resp = client
            .get(server.url("/v1/ensembles/other"))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            seen = resp.json().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen["version"], 7, "{seen}");
    assert_eq!(
        client
            .get(server.url("/v1/ensembles/broken"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    std::fs::remove_file(server.prompts.join("other.ensemble.json")).unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if client
            .get(server.url("/v1/ensembles/other"))
            .send()
            .await
            .unwrap()
            .status()
            == 404
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensembles_answer_over_grpc_and_kserve_v2_as_over_http() {
    use promptd::api::grpc::proto::promptd_client::PromptdClient;
    let server = demo_server(|_| {}).await;
    let client = reqwest::Client::new();
    put(
        &client,
        &server,
        "mood",
        json!({"members": ["sentiment", "verdict", "sentiment2"], "combine": "vote"}),
    )
    .await;
    let (_, http) = post(
        &client,
        server.url("/v1/ensembles/mood/predict"),
        json!({"inputs": [SENTENCE], "labels": ["mixed", "fine"], "max_new_tokens": 0}),
    )
    .await;
    let http = &http["outputs"][0];

    let mut grpc = PromptdClient::connect(server.grpc_url()).await.unwrap();
    let answer = grpc
        .ensemble_predict(promptd::api::grpc::proto::EnsemblePredictRequest {
            ensemble: "mood".into(),
            inputs: vec![SENTENCE.into()],
            max_new_tokens: Some(0),
            labels: vec!["mixed".into(), "fine".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.version, 1);
    assert_eq!(answer.combine, "vote");
    let out = &answer.outputs[0];
    assert_eq!(out.answer, http["answer"].as_str().unwrap());
    assert_eq!(out.votes as u64, http["votes"].as_u64().unwrap());
    assert_eq!(out.members.len(), 3);
    assert_eq!(out.members[1].task, "verdict");
    assert!((out.members[1].score - http["members"][1]["score"].as_f64().unwrap()).abs() < 1e-9);
    let missing = grpc
        .ensemble_predict(promptd::api::grpc::proto::EnsemblePredictRequest {
            ensemble: "nope".into(),
            inputs: vec!["x".into()],
            max_new_tokens: None,
            labels: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // KServe v2: an ensemble is a model (when no task has its name).
    let resp = client
        .get(server.url("/v2/models/mood/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, v2) = post(
        &client,
        server.url("/v2/models/mood/infer"),
        json!({
            "inputs": [
                {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [SENTENCE]},
                {"name": "labels", "shape": [2], "datatype": "BYTES", "data": ["mixed", "fine"]}
            ],
            "parameters": {"max_new_tokens": 0}
        }),
    )
    .await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["model_name"], "mood");
    let output = |name: &str| {
        v2["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap()["data"]
            .clone()
    };
    assert_eq!(output("label")[0], http["answer"]);
    let scores = output("scores");
    for (got, want) in scores
        .as_array()
        .unwrap()
        .iter()
        .zip(http["scores"].as_array().unwrap())
    {
        assert!((got.as_f64().unwrap() - want.as_f64().unwrap()).abs() < 1e-9);
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_could_never_queue_is_refused_not_told_to_retry() {
    // One ensemble may have 4 rows waiting: 2 inputs × 3 members can never fit, so 422 (a 429
    // would send the client into retries that cannot succeed); 1 input × 3 members can.
    let server = demo_server(|c| c.policy.max_queue_per_task = 4).await;
    let client = reqwest::Client::new();
    put(
        &client,
        &server,
        "three",
        json!({"members": ["sentiment", "verdict", "rating"], "combine": "vote"}),
    )
    .await;
    let url = server.url("/v1/ensembles/three/predict");
    let (status, err) = post(&client, url.clone(), json!({"inputs": ["a", "b"]})).await;
    assert_eq!(status, 422, "{err}");
    assert!(err["error"].as_str().unwrap().contains("6 rows"), "{err}");
    let (status, body) = post(&client, url, json!({"inputs": ["a"]})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(
        &client,
        server.url("/v1/tasks/sentiment/predict"),
        json!({"inputs": ["a", "b", "c", "d", "e"]}),
    )
    .await;
    assert_eq!(status, 422);
    server.stop().await.unwrap();
}
