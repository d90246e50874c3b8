//! The app in-process: a server state over a temporary prompts folder, driven with
//! `tower::ServiceExt::oneshot` (no sockets).
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use clap::Parser;
use promptd::api::{app, AppState};
use promptd::cli::serve::{build, load};
use promptd::cli::{Cli, Command};
use serde_json::Value;
use tower::ServiceExt;

use super::fixtures;

/// The tiny v1.1 fixture model.
pub fn model_dir() -> std::path::PathBuf {
    fixtures().join("models/t5-v1_1-tiny")
}

/// A loaded server state and its prompts folder.
pub struct Setup {
    pub state: AppState,
    pub dir: tempfile::TempDir,
}

/// `promptd serve` state (engine thread started, nothing loaded) over `prompts`.
pub fn build_state(prompts: &std::path::Path, extra: &[&str]) -> AppState {
    let model = model_dir();
    let mut argv = vec![
        "promptd",
        "serve",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
    ];
    argv.extend_from_slice(extra);
    let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    build(&args).unwrap().state
}

/// A server state over a folder holding `keep.npy`; `run_batcher` starts the batching loop.
pub async fn setup(extra: &[&str], run_batcher: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("prompts/t5-v1_1-tiny/task03.npy"),
        dir.path().join("keep.npy"),
    )
    .unwrap();
    let state = build_state(dir.path(), extra);
    if run_batcher {
        tokio::spawn(state.batcher.clone().run(state.engine.clone()));
    }
    load(&state.engine, &state.registry, &state.lifecycle)
        .await
        .unwrap();
    Setup { state, dir }
}

/// A response with its body parsed as JSON (or kept as a string).
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

/// Sends one request through the app.
pub async fn call(state: &AppState, req: Request<Body>) -> Reply {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// A JSON predict request.
pub fn predict_req(task: &str, body: Value) -> Request<Body> {
    Request::post(format!("/v1/tasks/{task}/predict"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// A GET request.
pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}
