//! The HTTP API in-process (`app(state)` driven with `tower::ServiceExt::oneshot`) on the tiny
//! fixture model: the bad-upload table, prompt life cycle, request errors, backpressure,
//! timeouts and batch timing.
use crate::common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::inproc::{build_state, call, defaults, get, multipart_put, predict_req, setup};
use common::{f32_bytes, fixtures, npy_bytes, snapshot, st_bytes};
use promptd::api::app;
use promptd::service::Service;
use safetensors::Dtype;
use serde_json::{json, Value};
use tower::ServiceExt;

const D: usize = 48;

fn put(task: &str, body: Vec<u8>) -> Request<Body> {
    Request::put(format!("/v1/prompts/{task}"))
        .body(Body::from(body))
        .unwrap()
}

fn npy_f32(rows: usize, cols: usize, f: impl Fn(usize) -> f32) -> Vec<u8> {
    let v: Vec<f32> = (0..rows * cols).map(f).collect();
    npy_bytes("<f4", &format!("({rows}, {cols})"), &f32_bytes(&v))
}

fn multipart(parts: &[(&str, Vec<u8>)]) -> Request<Body> {
    multipart_put("keep", parts)
}

async fn keep_answer(state: &Service) -> Value {
    let r = call(
        state,
        predict_req(
            "keep",
            json!({"inputs": ["one input", "two"], "max_new_tokens": 6}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

#[tokio::test]
async fn every_bad_upload_is_refused_and_changes_nothing() {
    let s = setup(
        |c| {
            c.prompt_limits.max_rows = 16;
            c.prompt_limits.max_file_bytes = 65536;
            c.limits.max_prompt_bytes = 65536;
        },
        true,
    )
    .await;
    let before = snapshot(s.dir.path());
    let answer = keep_answer(&s.state).await;
    let good = npy_f32(4, D, |i| (i as f32).sin());
    let mut truncated = st_bytes(&[(
        "prompt_embeddings",
        Dtype::F32,
        vec![4, D],
        f32_bytes(&vec![0.5; 4 * D]),
    )]);
    truncated.truncate(truncated.len() / 2);
    let mut huge_header = u64::MAX.to_le_bytes().to_vec();
    huge_header.extend_from_slice(b"{\"p\":{}}");
    let peft_weights =
        std::fs::read(fixtures().join("prompts/t5-v1_1-tiny/task00/adapter_model.safetensors"))
            .unwrap();
    let mut inf = vec![0.25f32; 4 * D];
    inf[7] = f32::INFINITY;

    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "wrong width",
            put("keep", npy_f32(4, D - 1, |_| 0.1)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "NaN",
            put(
                "keep",
                npy_f32(4, D, |i| if i == 5 { f32::NAN } else { 0.1 }),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "Inf",
            put(
                "keep",
                st_bytes(&[("prompt_embeddings", Dtype::F32, vec![4, D], f32_bytes(&inf))]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "0 rows",
            put("keep", npy_f32(0, D, |_| 0.0)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "too many rows",
            put("keep", npy_f32(17, D, |_| 0.1)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "1-D tensor",
            put("keep", npy_bytes("<f4", "(48,)", &f32_bytes(&[0.0; 48]))),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "integer dtype",
            put("keep", npy_bytes("<i4", "(4, 48)", &[0u8; 4 * 48 * 4])),
            StatusCode::BAD_REQUEST,
        ),
        ("truncated", put("keep", truncated), StatusCode::BAD_REQUEST),
        (
            "not a tensor file",
            put("keep", b"hello, I am not a tensor".to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "huge header length",
            put("keep", huge_header),
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty body",
            put("keep", Vec::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "over the size limit",
            put("keep", vec![0u8; 70_000]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "bad task name",
            put("..%2Fkeep", good.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad task name with a dot first",
            put(".keep", good.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "multipart with a broken config",
            multipart(&[
                ("adapter_model.safetensors", peft_weights.clone()),
                ("adapter_config.json", b"{not json".to_vec()),
            ]),
            StatusCode::BAD_REQUEST,
        ),
        (
            "multipart with an unknown field",
            multipart(&[("weights.bin", peft_weights.clone())]),
            StatusCode::BAD_REQUEST,
        ),
        (
            "multipart without weights",
            multipart(&[("adapter_config.json", b"{}".to_vec())]),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, req, want) in cases {
        let r = call(&s.state, req).await;
        assert_eq!(r.status, want, "{what}: {}", r.body);
        let error = r.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {}", r.body));
        assert!(!error.is_empty(), "{what}");
        assert_eq!(snapshot(s.dir.path()), before, "{what}: the folder changed");
        let info = call(&s.state, get("/v1/prompts/keep")).await;
        assert_eq!(info.body["version"], json!(1), "{what}");
        assert_eq!(
            keep_answer(&s.state).await,
            answer,
            "{what}: old prompt not served"
        );
    }
    let m = s.state.metrics.render();
    assert!(
        m.contains("promptd_prompt_uploads_total{result=\"invalid\"} 17"),
        "{m}"
    );
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn prompt_life_cycle_put_get_list_replace_delete() {
    let s = setup(defaults, true).await;
    let first = npy_f32(3, D, |i| (i as f32 * 0.1).cos());
    let r = call(&s.state, put("fresh", first.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"task": "fresh", "kind": "prompt", "prompt_length": 3, "d_model": D, "version": 1,
               "sha256": sha256(&first), "loaded_at": r.body["loaded_at"]})
    );
    assert!(s.dir.path().join("fresh.safetensors").is_file());

    let second = st_bytes(&[(
        "prompt_embeddings",
        Dtype::BF16,
        vec![5, D],
        vec![0x3f; 5 * D * 2],
    )]);
    let r = call(&s.state, put("fresh", second.clone())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["version"], json!(2));
    assert_eq!(r.body["prompt_length"], json!(5));
    assert_eq!(r.body["sha256"], json!(sha256(&second)));

    let list = call(&s.state, get("/v1/prompts")).await;
    let tasks: Vec<&str> = list.body["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["task"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["fresh", "keep"]);
    let one = call(&s.state, get("/v1/prompts/fresh")).await;
    assert_eq!(one.body["version"], json!(2));
    let r = call(&s.state, predict_req("fresh", json!({"inputs": "hi"}))).await;
    assert_eq!(r.body["prompt_version"], json!(2));

    // A PEFT seq2seq adapter ([2p, d]) through multipart; its decoder rows are kept.
    let peft = fixtures().join("prompts/t5-v1_1-tiny/task00");
    let read = |n: &str| std::fs::read(peft.join(n)).unwrap();
    let r = call(
        &s.state,
        multipart(&[
            (
                "adapter_model.safetensors",
                read("adapter_model.safetensors"),
            ),
            ("adapter_config.json", read("adapter_config.json")),
        ]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], json!(2));
    assert_eq!(r.body["decoder_prompt_length"], json!(1));
    assert!(
        !s.dir.path().join("keep.npy").exists(),
        "older source removed"
    );

    let del = Request::delete("/v1/prompts/fresh")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&s.state, del).await.status, StatusCode::NO_CONTENT);
    assert!(!s.dir.path().join("fresh.safetensors").exists());
    let del = Request::delete("/v1/prompts/fresh")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&s.state, del).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        call(&s.state, get("/v1/prompts/fresh")).await.status,
        StatusCode::NOT_FOUND
    );
    let r = call(&s.state, predict_req("fresh", json!({"inputs": "hi"}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error_type"], json!("unknown_task"));
    // Re-created after a delete, the version keeps counting.
    let r = call(&s.state, put("fresh", first)).await;
    assert_eq!(
        (r.status, r.body["version"].clone()),
        (StatusCode::CREATED, json!(3))
    );
}

#[tokio::test]
async fn bad_predict_requests_get_json_errors() {
    let s = setup(
        |c| {
            c.limits.max_inputs = 4;
            c.limits.max_body_bytes = 2048;
            c.limits.row.max_new_tokens_limit = 50;
            c.limits.row.max_labels = 3;
        },
        true,
    )
    .await;
    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "unknown task",
            predict_req("nope", json!({"inputs": "x"})),
            StatusCode::NOT_FOUND,
        ),
        (
            "invalid task name",
            predict_req("a%20b", json!({"inputs": "x"})),
            StatusCode::NOT_FOUND,
        ),
        (
            "malformed JSON",
            Request::post("/v1/tasks/keep/predict")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"inputs\": "))
                .unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "no JSON content type",
            Request::post("/v1/tasks/keep/predict")
                .body(Body::from("{\"inputs\": \"x\"}"))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "inputs not text",
            predict_req("keep", json!({"inputs": 5})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "inputs with a number",
            predict_req("keep", json!({"inputs": ["a", 1]})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "no inputs",
            predict_req("keep", json!({"labels": ["a"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "empty inputs",
            predict_req("keep", json!({"inputs": []})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            predict_req("keep", json!({"inputs": "x", "temprature": 1})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "too many inputs",
            predict_req("keep", json!({"inputs": ["a", "b", "c", "d", "e"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "negative max_new_tokens",
            predict_req("keep", json!({"inputs": "x", "max_new_tokens": -1})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "giant max_new_tokens",
            predict_req("keep", json!({"inputs": "x", "max_new_tokens": 1u64 << 60})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "fractional max_new_tokens",
            predict_req("keep", json!({"inputs": "x", "max_new_tokens": 2.5})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "max_new_tokens as a string",
            predict_req("keep", json!({"inputs": "x", "max_new_tokens": "3"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "max_new_tokens over the limit",
            predict_req("keep", json!({"inputs": "x", "max_new_tokens": 51})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "too many labels",
            predict_req(
                "keep",
                json!({"inputs": "x", "labels": ["a", "b", "c", "d"]}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "body too large",
            predict_req("keep", json!({"inputs": "x".repeat(4000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        ("unknown route", get("/v2/nothing"), StatusCode::NOT_FOUND),
        (
            "wrong method",
            get("/v1/tasks/keep/predict"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (what, req, want) in cases {
        let r = call(&s.state, req).await;
        assert_eq!(r.status, want, "{what}: {}", r.body);
        assert!(r.body["error"].is_string(), "{what}: {}", r.body);
        assert!(r.body["error_type"].is_string(), "{what}: {}", r.body);
    }
    // The server still answers, with labels scored and the best one named.
    let r = call(
        &s.state,
        predict_req(
            "keep",
            json!({"inputs": ["x"], "max_new_tokens": 0, "labels": ["yes", "no"]}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let out = &r.body["outputs"][0];
    assert_eq!(out["token_ids"], json!([]));
    // JSON Schema's integers include 2.0: the same answer as 2.
    let two = |n: Value| predict_req("keep", json!({"inputs": ["x"], "max_new_tokens": n}));
    let (a, b) = (
        call(&s.state, two(json!(2))).await,
        call(&s.state, two(json!(2.0))).await,
    );
    assert_eq!(
        (a.status, b.status),
        (StatusCode::OK, StatusCode::OK),
        "{}",
        b.body
    );
    assert_eq!(a.body["outputs"], b.body["outputs"]);
    assert_eq!(out["scores"].as_array().unwrap().len(), 2);
    assert!(out["label"] == json!("yes") || out["label"] == json!("no"));
    // Unknown task names share one metric label.
    let m = s.state.metrics.render();
    assert!(
        m.contains("promptd_requests_total{status=\"404\",task=\"_unknown\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = setup(defaults, true).await;
    assert_eq!(call(&s.state, get("/healthz")).await.status, StatusCode::OK);
    let ready = call(&s.state, get("/readyz")).await;
    assert_eq!(
        (ready.status, ready.body["prompts"].clone()),
        (StatusCode::OK, json!(1))
    );
    keep_answer(&s.state).await;
    let resp = app(s.state.clone()).oneshot(get("/metrics")).await.unwrap();
    assert!(resp.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for name in [
        "promptd_requests_total",
        "promptd_request_duration_seconds",
        "promptd_queue_wait_seconds",
        "promptd_batch_size",
        "promptd_batch_tasks",
        "promptd_queue_depth",
        "promptd_prompts_loaded",
        "promptd_prompt_reloads_total",
        "promptd_generated_tokens_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert!(text.contains("promptd_prompts_loaded 1"));
    assert!(text.contains("promptd_generated_tokens_total 12"), "{text}");
    // The engine thread's decode work: each generated token is one row of one step.
    assert_eq!(
        common::metric(&text, "promptd_decode_row_steps_total "),
        12.0
    );
    let steps = common::metric(&text, "promptd_decode_steps_total ");
    assert!((6.0..=12.0).contains(&steps), "{steps}");
    assert!(common::metric(&text, "promptd_decode_seconds_total ") > 0.0);
    // Every answered request timed its three phases.
    let phases = ["validate", "wait", "respond"].map(|p| {
        common::metric(
            &text,
            &format!("promptd_request_phase_seconds_count{{phase=\"{p}\"}} "),
        )
    });
    assert!(
        phases[0] >= 1.0 && phases.iter().all(|&n| n == phases[0]),
        "{phases:?}"
    );

    // Draining: readiness fails and new work is refused with 503.
    s.state.lifecycle.drain();
    assert_eq!(
        call(&s.state, get("/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = call(&s.state, predict_req("keep", json!({"inputs": "x"}))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn not_ready_until_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let state = build_state(dir.path(), defaults);
    assert_eq!(call(&state, get("/healthz")).await.status, StatusCode::OK);
    assert_eq!(
        call(&state, get("/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = call(&state, put("x", npy_f32(2, D, |_| 0.0))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(snapshot(dir.path()).is_empty());
}

#[tokio::test]
async fn full_queue_gets_429_with_retry_after() {
    // No batching loop: queued rows stay queued.
    let s = setup(
        |c| {
            c.policy.max_queue = 3;
            c.policy.max_queue_per_task = 3;
        },
        false,
    )
    .await;
    let entry = s.state.registry.get("keep").unwrap();
    let row = |text: &str| {
        let ids = s.state.tokenizer.encode(text).unwrap();
        (
            "keep".to_string(),
            promptd::engine::RowInput {
                prompt: Some(entry.slot.clone()),
                input_ids: ids,
                max_new_tokens: 1,
                labels: vec![],
                cancel: None,
                sequence_logprob: false,
                ..Default::default()
            },
        )
    };
    let _held = s
        .state
        .batcher
        .submit(vec![row("a"), row("b")], &Default::default())
        .unwrap();
    let r = call(&s.state, predict_req("keep", json!({"inputs": ["c", "d"]}))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
    assert_eq!(r.body["error_type"], json!("queue_full"));
    assert_eq!(
        s.state.batcher.queue_len(),
        2,
        "refused rows are not queued"
    );
}

#[tokio::test]
async fn a_task_past_its_share_of_the_queue_gets_429_and_others_still_queue() {
    // No batching loop: queued rows stay queued.
    let s = setup(
        |c| {
            c.policy.max_queue = 10;
            c.policy.max_queue_per_task = 2;
        },
        false,
    )
    .await;
    let state = s.state.clone();
    let flood = tokio::spawn(async move {
        call(&state, predict_req("keep", json!({"inputs": ["a", "b"]}))).await
    });
    while s.state.batcher.queue_len() < 2 {
        tokio::task::yield_now().await;
    }
    let r = call(&s.state, predict_req("keep", json!({"inputs": "c"}))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
    assert_eq!(r.body["error_type"], json!("queue_full"));
    assert!(
        r.body["error"].as_str().unwrap().contains("task keep"),
        "{}",
        r.body
    );
    // Another task still gets in.
    std::fs::copy(
        s.dir.path().join("keep.npy"),
        s.dir.path().join("other.npy"),
    )
    .unwrap();
    s.state.registry.sync().await.unwrap();
    let state = s.state.clone();
    let queued =
        tokio::spawn(
            async move { call(&state, predict_req("other", json!({"inputs": "d"}))).await },
        );
    while s.state.batcher.queue_len() < 3 {
        tokio::task::yield_now().await;
    }
    flood.abort();
    queued.abort();
}

#[tokio::test]
async fn request_timeout_gives_504_and_cancels_the_rows() {
    let s = setup(
        |c| c.limits.request_timeout = std::time::Duration::from_millis(100),
        false,
    )
    .await;
    let r = call(&s.state, predict_req("keep", json!({"inputs": ["a", "b"]}))).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.body);
    assert_eq!(r.body["error_type"], json!("timeout"));
    // The abandoned rows are dropped unrun once the batching loop looks at the queue.
    tokio::spawn(
        s.state
            .batcher
            .clone()
            .batching_loop(s.state.engine.clone()),
    );
    let r = call(&s.state, predict_req("keep", json!({"inputs": "c"}))).await;
    assert_eq!(r.status, StatusCode::OK);
    let m = s.state.metrics.render();
    assert!(
        m.contains("promptd_batch_size_sum 1\n"),
        "only the live row ran:\n{m}"
    );
}

/// With the clock paused, a lone row waits exactly max wait; a full batch does not wait.
#[tokio::test(start_paused = true)]
async fn a_batch_closes_at_max_wait_or_when_full() {
    // No request timeout: a paused clock jumps to the next timer while the engine thread works.
    let s = setup(
        |c| {
            c.policy.max_wait = std::time::Duration::from_millis(50);
            c.policy.max_batch_size = 4;
            c.limits.request_timeout = std::time::Duration::ZERO;
        },
        true,
    )
    .await;
    let wait_sum = |state: &Service| -> f64 {
        let m = state.metrics.render();
        m.lines()
            .find_map(|l| l.strip_prefix("promptd_queue_wait_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let r = call(&s.state, predict_req("keep", json!({"inputs": "alone"}))).await;
    assert_eq!(r.status, StatusCode::OK);
    let waited = wait_sum(&s.state);
    assert!((waited - 0.05).abs() < 1e-3, "lone row waited {waited}s");
    let r = call(
        &s.state,
        predict_req("keep", json!({"inputs": ["a", "b", "c", "d"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let waited_full = wait_sum(&s.state) - waited;
    assert!(waited_full < 1e-3, "a full batch waited {waited_full}s");
}

#[tokio::test]
async fn an_upload_counts_past_a_version_another_replica_just_wrote() {
    // No folder sync runs here, so this registry has not seen the other replica's write.
    let s = setup(defaults, true).await;
    let other = promptd::prompts::store::Store::open(s.dir.path()).unwrap();
    let task = promptd::prompts::TaskName::parse("keep").unwrap();
    let prompt =
        promptd::prompts::Prompt::from_tensor_file(&npy_f32(2, D, |_| 0.5), D, &Default::default())
            .unwrap();
    other.write(&task, &prompt, 7, "elsewhere").unwrap();
    assert_eq!(other.stored_version(&task), Some(7));
    let r = call(&s.state, put("keep", npy_f32(3, D, |_| 0.25))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], json!(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_task_cannot_keep_another_out_of_the_next_batch() {
    // Queue a flood first, with the batching loop stopped, then one row of another task.
    let s = setup(
        |c| {
            c.policy.max_batch_size = 8;
            c.policy.max_queue = 512;
            c.policy.max_queue_per_task = 256;
        },
        false,
    )
    .await;
    let keep = s.state.registry.get("keep").unwrap();
    let row = |text: &str| promptd::engine::RowInput {
        prompt: Some(keep.slot.clone()),
        input_ids: s.state.tokenizer.encode(text).unwrap(),
        max_new_tokens: 8,
        labels: vec![],
        cancel: None,
        sequence_logprob: false,
        ..Default::default()
    };
    let flood: Vec<_> = (0..200)
        .map(|i| ("flood".to_string(), row(&format!("flood {i}"))))
        .collect();
    let _flood_tickets = s.state.batcher.submit(flood, &Default::default()).unwrap();
    let mut other = s
        .state
        .batcher
        .submit(
            vec![("other".to_string(), row("the other task"))],
            &Default::default(),
        )
        .unwrap();
    tokio::spawn(
        s.state
            .batcher
            .clone()
            .batching_loop(s.state.engine.clone()),
    );
    other[0].answer().await.unwrap();
    let m = s.state.metrics.render();
    let ran: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("promptd_batch_size_sum "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        ran <= 16.0,
        "{ran} rows ran before the other task's row was answered"
    );
}
