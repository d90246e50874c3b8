//! The gRPC API with a real tonic client against a real server (in-process): the same answers as HTTP,
//! prompt management mirrored, errors mapped to gRPC codes, and one batcher for both.
use crate::common;

use common::inproc::Served;
use common::{copy_dir, fixtures, metric, metrics};
use promptd::api::grpc::proto::promptd_client::PromptdClient;
use promptd::api::grpc::proto::{
    DeletePromptRequest, GetPromptRequest, ListPromptsRequest, PredictRequest, PutPromptRequest,
};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

/// A server in-process (the tiny fixture model) over a copy of its three demo prompts.
async fn start(configure: impl FnOnce(&mut promptd::server::ServerConfig)) -> Served {
    let prompts = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("prompts/tiny-demo"), prompts.path());
    Served::start_in(prompts, configure).await
}

async fn client(server: &Served) -> PromptdClient<Channel> {
    assert!(!server.grpc.is_empty(), "no gRPC address printed");
    PromptdClient::connect(server.grpc.clone()).await.unwrap()
}

async fn http_predict(server: &Served, task: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(server.url(&format!("/v1/tasks/{task}/predict")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn error_type(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("error-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_lists_the_prompts_of_the_folder() {
    let server = start(|_| {}).await;
    let list = client(&server)
        .await
        .list_prompts(ListPromptsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut tasks: Vec<_> = list.prompts.iter().map(|p| p.task.as_str()).collect();
    tasks.sort();
    assert_eq!(tasks, ["demo-a", "demo-b", "demo-c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_predict_gives_the_tokens_text_scores_and_label_of_http() {
    let server = start(|_| {}).await;
    let mut grpc = client(&server).await;
    let inputs = ["translate to German: hello", "is this positive? yes"];
    let labels = ["yes", "no", "maybe"];
    for task in ["demo-a", "demo-b", "demo-c"] {
        let got = grpc
            .predict(PredictRequest {
                task: task.into(),
                inputs: inputs.iter().map(|s| s.to_string()).collect(),
                max_new_tokens: Some(6),
                labels: labels.iter().map(|s| s.to_string()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        let want = http_predict(
            &server,
            task,
            json!({"inputs": inputs, "max_new_tokens": 6, "labels": labels}),
        )
        .await;
        assert_eq!(got.task, task);
        assert_eq!(got.prompt_version, want["prompt_version"].as_u64().unwrap());
        assert_eq!(got.outputs.len(), 2);
        for (g, w) in got.outputs.iter().zip(want["outputs"].as_array().unwrap()) {
            assert_eq!(g.text, w["text"].as_str().unwrap());
            let ids: Vec<i64> = serde_json::from_value(w["token_ids"].clone()).unwrap();
            assert_eq!(g.token_ids, ids);
            let scores: Vec<f64> = serde_json::from_value(w["scores"].clone()).unwrap();
            // Same rows in the same batch layout: equal up to serde_json's last-digit parsing.
            assert_eq!(g.scores.len(), scores.len());
            for (a, b) in g.scores.iter().zip(&scores) {
                assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
            }
            assert_eq!(g.label.as_deref(), w["label"].as_str());
        }
    }
    // Without labels: no scores, no label.
    let plain = grpc.predict(hello("demo-a")).await.unwrap().into_inner();
    assert!(plain.outputs[0].scores.is_empty() && plain.outputs[0].label.is_none());
}

/// A prompt upload named `via-grpc`.
fn put(file: Vec<u8>, config: Option<Vec<u8>>) -> PutPromptRequest {
    PutPromptRequest {
        task: "via-grpc".into(),
        file,
        adapter_config: config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_put_prompt_takes_a_lora_adapter_and_says_its_kind() {
    let server = start(|_| {}).await;
    let mut grpc = client(&server).await;
    let dir = common::fixtures().join("adapters/t5-v1_1-tiny/lora-qv");
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    let mut req = put(
        read("adapter_model.safetensors"),
        Some(read("adapter_config.json")),
    );
    req.task = "grpc-lora".into();
    let stored = grpc.put_prompt(req).await.unwrap().into_inner();
    let info = stored.prompt.unwrap();
    assert!(stored.created);
    assert_eq!((info.kind.as_str(), info.lora_rank), ("lora", Some(4)));
    assert_eq!(info.modules, ["q", "v"]);
    assert!(info.adapter_parameters > 0);
    let got = grpc
        .get_prompt(GetPromptRequest {
            task: "grpc-lora".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kind, "lora");
}

#[tokio::test]
async fn grpc_put_prompt_creates_then_replaces_and_http_sees_the_same_version() {
    let server = start(|_| {}).await;
    let prompts = &server.prompts;
    let mut grpc = client(&server).await;
    let npy = std::fs::read(prompts.join("demo-b.npy")).unwrap();
    let first = grpc.put_prompt(put(npy, None)).await.unwrap().into_inner();
    assert!(first.created);
    assert_eq!(first.prompt.as_ref().unwrap().version, 1);
    let peft_dir = prompts.join("demo-a");
    let weights = std::fs::read(peft_dir.join("adapter_model.safetensors")).unwrap();
    let config = std::fs::read(peft_dir.join("adapter_config.json")).unwrap();
    let second = grpc
        .put_prompt(put(weights, Some(config)))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.created);
    let info = second.prompt.unwrap();
    assert_eq!(info.version, 2);
    let http: Value = reqwest::get(server.url("/v1/prompts/via-grpc"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(http["sha256"], info.sha256.as_str());
    assert_eq!(http["version"], 2);
    let got = grpc
        .get_prompt(GetPromptRequest {
            task: "via-grpc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, info);
    assert!(prompts.join("via-grpc.safetensors").is_file());
    // Serving the PEFT upload gives demo-a's answers (same encoder rows).
    let a = grpc.predict(hello("via-grpc")).await.unwrap().into_inner();
    let plain = grpc.predict(hello("demo-a")).await.unwrap().into_inner();
    assert_eq!(a.outputs[0].token_ids, plain.outputs[0].token_ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_carry_the_code_and_the_error_type_of_http() {
    let server = start(|_| {}).await;
    let mut grpc = client(&server).await;
    let cases: Vec<(PredictRequest, Code, &str)> = vec![
        (
            PredictRequest {
                task: "nope".into(),
                inputs: vec!["x".into()],
                ..Default::default()
            },
            Code::NotFound,
            "unknown_task",
        ),
        (
            PredictRequest {
                task: "demo-a".into(),
                inputs: vec![],
                ..Default::default()
            },
            Code::InvalidArgument,
            "validation",
        ),
        (
            PredictRequest {
                task: "demo-a".into(),
                inputs: vec!["x".into()],
                max_new_tokens: Some(1_000_000),
                labels: vec![],
            },
            Code::InvalidArgument,
            "validation",
        ),
        (
            PredictRequest {
                task: "demo-a".into(),
                inputs: vec!["x".repeat(2 << 20)],
                ..Default::default()
            },
            Code::InvalidArgument,
            "payload_too_large",
        ),
    ];
    for (req, code, kind) in cases {
        let e = grpc.predict(req).await.unwrap_err();
        assert_eq!((e.code(), error_type(&e).as_str()), (code, kind), "{e:?}");
    }
    let npy = std::fs::read(server.prompts.join("demo-b.npy")).unwrap();
    for (task, file, code, kind) in [
        ("../x", npy, Code::InvalidArgument, "bad_request"),
        (
            "ok-name",
            b"not a tensor".to_vec(),
            Code::InvalidArgument,
            "bad_request",
        ),
        ("ok-name", vec![], Code::InvalidArgument, "bad_request"),
    ] {
        let e = grpc
            .put_prompt(put(file, None).with_task(task))
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{task}: {e:?}");
        assert_eq!(error_type(&e), kind, "{task}: {e:?}");
    }
    assert!(!server.prompts.join("ok-name.safetensors").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_deleted_over_grpc_is_gone_for_both_protocols() {
    let server = start(|_| {}).await;
    let mut grpc = client(&server).await;
    let npy = std::fs::read(server.prompts.join("demo-b.npy")).unwrap();
    assert!(
        grpc.put_prompt(put(npy, None))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    grpc.delete_prompt(DeletePromptRequest {
        task: "via-grpc".into(),
    })
    .await
    .unwrap();
    let e = grpc
        .delete_prompt(DeletePromptRequest {
            task: "via-grpc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let status = reqwest::get(server.url("/v1/prompts/via-grpc"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
}

/// "hello" for `task`, with the server's defaults.
fn hello(task: &str) -> PredictRequest {
    PredictRequest {
        task: task.into(),
        inputs: vec!["hello".into()],
        ..Default::default()
    }
}

trait WithTask {
    fn with_task(self, task: &str) -> Self;
}

impl WithTask for PutPromptRequest {
    fn with_task(mut self, task: &str) -> Self {
        self.task = task.into();
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_and_http_requests_share_forward_passes() {
    // A long max wait: every row of 16 gRPC and 16 HTTP requests arrives before the batch closes.
    let server = start(|c| {
        c.policy.max_batch_size = 32;
        c.policy.max_wait = std::time::Duration::from_millis(3000);
    })
    .await;
    let grpc = client(&server).await;
    let http = reqwest::Client::new();
    let mut calls = Vec::new();
    for i in 0..16 {
        let mut grpc = grpc.clone();
        calls.push(tokio::spawn(async move {
            let task = ["demo-a", "demo-b", "demo-c"][i % 3];
            grpc.predict(PredictRequest {
                task: task.into(),
                inputs: vec![format!("grpc input {i}")],
                max_new_tokens: Some(3),
                labels: vec![],
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        }));
        let (http, url) = (http.clone(), server.url("/v1/tasks/demo-b/predict"));
        calls.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&json!({"inputs": format!("http input {i}"), "max_new_tokens": 3}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status() == 200 {
                Ok(())
            } else {
                Err(format!("HTTP {}", r.status()))
            }
        }));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let m = metrics(&http, &server).await;
    assert_eq!(metric(&m, "promptd_batch_size_sum"), 32.0, "{m}");
    assert_eq!(
        metric(&m, "promptd_batch_size_count"),
        1.0,
        "one pass for both protocols:\n{m}"
    );
    // gRPC requests are counted like HTTP ones.
    assert_eq!(
        metric(&m, "promptd_requests_total{status=\"200\""),
        32.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_follows_readiness_and_reflection_lists_the_services() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = start(|_| {}).await;
    let channel = Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    // The tracker reports readiness within a few hundred milliseconds of /readyz.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for service in ["", "promptd.v1.Promptd"] {
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .map(|r| r.into_inner().status)
                .map_err(|e| e.code());
            if status == Ok(ServingStatus::Serving as i32) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{service:?}: {status:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("{reply:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in ["promptd.v1.Promptd", "grpc.health.v1.Health"] {
        assert!(names.contains(&want), "{names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_tuning_jobs_mirror_http() {
    use promptd::api::grpc::proto::{
        Example, ListTuneJobsRequest, StartTuneRequest, TuneJobRequest,
    };
    let server = start(|_| {}).await;
    let mut grpc = client(&server).await;
    let rows: Vec<Example> = ["positive", "negative", "positive"]
        .iter()
        .enumerate()
        .map(|(i, t)| Example {
            input: format!("kernel time {i} this who model"),
            target: t.to_string(),
        })
        .collect();
    let job = grpc
        .start_tune(StartTuneRequest {
            task: "grpc-tuned".into(),
            train: rows.clone(),
            dev: rows,
            prompt_length: Some(4),
            steps: Some(3),
            eval_every: Some(1),
            metric: Some("rank-accuracy".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.task, "grpc-tuned");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let done = loop {
        let j = grpc
            .get_tune_job(TuneJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner();
        if !matches!(j.state.as_str(), "queued" | "running") {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "job stuck: {j:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.version, Some(1));
    // The same job over HTTP.
    let http: Value = reqwest::get(server.url(&format!("/v1/tune-jobs/{}", job.id)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(http["state"], "succeeded");
    assert_eq!(http["step"], done.step);
    let list = grpc
        .list_tune_jobs(ListTuneJobsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.jobs.len(), 1);
    // Errors carry the HTTP error_type.
    let e = grpc
        .get_tune_job(TuneJobRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(error_type(&e), "unknown_job");
    let e = grpc
        .cancel_tune_job(TuneJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = grpc
        .start_tune(StartTuneRequest {
            task: "grpc-tuned".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}
