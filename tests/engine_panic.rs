//! A panicking forward pass fails its requests with 500 and the server keeps serving. Alone in
//! its test binary: the fault switch (debug builds only) is process-wide.
mod common;

use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use common::inproc::{call, predict_req};
use serde_json::json;

#[tokio::test]
async fn a_panicking_forward_pass_fails_its_requests_with_500_and_serving_goes_on() {
    let s = common::inproc::setup(&[], true).await;
    let ask = || predict_req("keep", json!({"inputs": ["a", "b"], "max_new_tokens": 3}));
    let healthy = call(&s.state, ask()).await;
    assert_eq!(healthy.status, StatusCode::OK);

    // Every pass panics, the retries of single rows included.
    promptd::engine::fault::PANIC_PASSES.store(usize::MAX, Ordering::Release);
    let r = call(&s.state, ask()).await;
    promptd::engine::fault::PANIC_PASSES.store(0, Ordering::Release);
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(r.body["error_type"], "internal");
    assert!(
        r.body["error"].as_str().unwrap().contains("panicked"),
        "{}",
        r.body
    );

    // The engine thread survived: the same request answers as before.
    let again = call(&s.state, ask()).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["outputs"], healthy.body["outputs"]);
    let m = call(&s.state, common::inproc::get("/metrics")).await;
    assert!(
        common::metric(
            m.body.as_str().unwrap(),
            "promptd_batch_errors_total{error_type=\"panic\"}"
        ) >= 1.0
    );
    assert_eq!(
        common::metric(
            m.body.as_str().unwrap(),
            "promptd_requests_total{status=\"500\""
        ),
        1.0
    );
}
