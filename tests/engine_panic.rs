//! Panics where the server must survive them, each labelled as a bug (500 `internal`, counted as
//! `panic`) and never blamed on the engine or the client: a forward pass, a decode step, a
//! prompt registration, a prompt write on the blocking pool; and a dead batching loop, which
//! fails readiness and answers the waiting requests at once. One test in its own binary: the
//! fault switches (debug builds only) are process-wide, so the cases run one after another.
#[path = "it/common/mod.rs"]
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::inproc::{call, get, predict_req, setup};
use promptd::fault;
use promptd::service::lifecycle::Status;
use serde_json::json;

fn metric(state: &promptd::service::Service, prefix: &str) -> f64 {
    common::metric(&state.metrics.render(), prefix)
}

fn put_prompt(task: &str) -> Request<Body> {
    Request::put(format!("/v1/prompts/{task}"))
        .header("content-type", "application/octet-stream")
        .body(Body::from(common::npy_filled(3, 0.25)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_fail_only_their_work_are_labelled_internal_and_serving_goes_on() {
    let s = setup(common::inproc::defaults, true).await;
    let ask = || predict_req("keep", json!({"inputs": ["a", "b"], "max_new_tokens": 3}));
    let healthy = call(&s.state, ask()).await;
    assert_eq!(healthy.status, StatusCode::OK);
    let still_serving = || async {
        let again = call(&s.state, ask()).await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.body);
        assert_eq!(again.body["outputs"], healthy.body["outputs"]);
    };

    // A forward pass: every pass panics, the retries of single rows included.
    fault::PANIC_PASSES.store(usize::MAX, Ordering::Release);
    let r = call(&s.state, ask()).await;
    fault::PANIC_PASSES.store(0, Ordering::Release);
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(r.body["error_type"], "internal");
    assert!(
        r.body["error"].as_str().unwrap().contains("panicked"),
        "{}",
        r.body
    );
    still_serving().await;
    let panics = metric(&s.state, "promptd_batch_errors_total{error_type=\"panic\"}");
    assert!(panics >= 1.0);
    assert_eq!(
        metric(&s.state, "promptd_requests_total{status=\"500\""),
        1.0
    );

    // A decode step of the running batch: counted as a panic, not as a decode failure.
    let decode_before = metric(
        &s.state,
        "promptd_batch_errors_total{error_type=\"decode\"}",
    );
    fault::PANIC_STEPS.store(1, Ordering::Release);
    let r = call(&s.state, ask()).await;
    fault::PANIC_STEPS.store(0, Ordering::Release);
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(r.body["error_type"], "internal");
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("decode step panicked"),
        "{}",
        r.body
    );
    assert!(metric(&s.state, "promptd_batch_errors_total{error_type=\"panic\"}") > panics);
    assert_eq!(
        metric(
            &s.state,
            "promptd_batch_errors_total{error_type=\"decode\"}"
        ),
        decode_before
    );
    still_serving().await;

    // A prompt registration on the engine thread: the upload fails as a bug (500), the engine
    // thread lives on, and the same upload then succeeds.
    fault::PANIC_REGISTERS.store(1, Ordering::Release);
    let r = call(&s.state, put_prompt("fresh")).await;
    fault::PANIC_REGISTERS.store(0, Ordering::Release);
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(r.body["error_type"], "internal");
    let r = call(&s.state, put_prompt("fresh")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    still_serving().await;

    // A prompt write panicking on the blocking pool: 500 internal, not 503 "the engine could
    // not load the prompt"; nothing half-written, the old version still served.
    fault::PANIC_STORE_WRITES.store(1, Ordering::Release);
    let r = call(&s.state, put_prompt("keep")).await;
    fault::PANIC_STORE_WRITES.store(0, Ordering::Release);
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(r.body["error_type"], "internal");
    assert!(
        !r.body["error"].as_str().unwrap().contains("engine"),
        "{}",
        r.body
    );
    let info = call(&s.state, get("/v1/prompts/keep")).await;
    assert_eq!(info.body["version"], json!(1));
    still_serving().await;
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The batching loop dying: a supervised server fails readiness and the request waiting in
    // the queue is answered 503 at once instead of waiting for its 60 s timeout.
    let t = setup(common::inproc::defaults, false).await;
    let waiting = tokio::spawn({
        let state = t.state.clone();
        async move { call(&state, predict_req("keep", json!({"inputs": "a"}))).await }
    });
    while t.state.batcher.queue_len() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    fault::PANIC_BATCHER.store(1, Ordering::Release);
    tokio::spawn(promptd::server::supervise_batcher(t.state.clone()));
    let r = waiting.await.unwrap();
    fault::PANIC_BATCHER.store(0, Ordering::Release);
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(t.state.lifecycle.current(), Status::Failed(why) if why.contains("batching loop")),
        "{:?}",
        t.state.lifecycle.current()
    );
    let ready = call(&t.state, get("/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["status"], "failed", "{}", ready.body);
    assert_eq!(metric(&t.state, "promptd_ready "), 0.0);
    let r = call(&t.state, predict_req("keep", json!({"inputs": "a"}))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}
