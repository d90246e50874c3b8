//! The app in-process: a server state over a temporary prompts folder, driven with
//! `tower::ServiceExt::oneshot` (no sockets).
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use promptd::api::app;
use promptd::server::{build, load, ServerConfig};
use promptd::service::Service;
use serde_json::Value;
use tower::ServiceExt;

use super::fixtures;

/// The tiny v1.1 fixture model.
pub fn model_dir() -> std::path::PathBuf {
    fixtures().join("models/t5-v1_1-tiny")
}

/// A loaded server state and its prompts folder.
pub struct Setup {
    pub state: Service,
    pub dir: tempfile::TempDir,
}

/// The defaults of `promptd serve` on the fixture model and `prompts`, changed by `configure`.
pub fn config(
    prompts: &std::path::Path,
    configure: impl FnOnce(&mut ServerConfig),
) -> ServerConfig {
    let mut config = ServerConfig::new(model_dir(), prompts);
    configure(&mut config);
    config
}

/// A server's state (engine thread started, nothing loaded) over `prompts`.
pub fn build_state(
    prompts: &std::path::Path,
    configure: impl FnOnce(&mut ServerConfig),
) -> Service {
    build(&config(prompts, configure)).unwrap().state
}

/// A server state over a folder holding `keep.npy`; `run_batcher` starts the batching loop.
pub async fn setup(configure: impl FnOnce(&mut ServerConfig), run_batcher: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("prompts/t5-v1_1-tiny/task03.npy"),
        dir.path().join("keep.npy"),
    )
    .unwrap();
    let state = build_state(dir.path(), configure);
    if run_batcher {
        tokio::spawn(state.batcher.clone().batching_loop(state.engine.clone()));
    }
    load(
        &state.engine,
        &state.registry,
        &state.ensembles,
        &state.lifecycle,
    )
    .await
    .unwrap();
    Setup { state, dir }
}

/// `PUT /v1/prompts/{task}` as multipart/form-data, one file part per (name, bytes).
pub fn multipart_put(task: &str, parts: &[(&str, Vec<u8>)]) -> Request<Body> {
    let boundary = "promptd-test-boundary";
    let mut body = Vec::new();
    for (name, data) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Request::put(format!("/v1/prompts/{task}"))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

/// Leaves the defaults as they are.
pub fn defaults(_: &mut ServerConfig) {}

/// A response with its body parsed as JSON (or kept as a string).
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

/// Sends one request through the app.
pub async fn call(state: &Service, req: Request<Body>) -> Reply {
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

/// A real server, HTTP and gRPC on `127.0.0.1:0`, running in this process over a temporary
/// prompts folder holding `keep.npy`; shut down when dropped.
pub struct Served {
    /// HTTP address.
    pub http: std::net::SocketAddr,
    /// gRPC address.
    pub grpc_addr: std::net::SocketAddr,
    /// `http://127.0.0.1:PORT` of the gRPC API.
    pub grpc: String,
    /// The running server's state.
    pub state: Service,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), promptd::server::ServerError>>>,
    /// The prompts folder.
    pub prompts: std::path::PathBuf,
    /// The prompts folder's temporary directory, when the server owns it.
    _dir: Option<tempfile::TempDir>,
}

impl Served {
    /// Starts the server with the defaults changed by `configure`, over a folder holding
    /// `keep.npy`; returns once it is ready.
    pub async fn start(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixtures().join("prompts/t5-v1_1-tiny/task03.npy"),
            dir.path().join("keep.npy"),
        )
        .unwrap();
        Self::start_in(dir, configure).await
    }

    /// Starts the server over the prompts folder `dir`, which it keeps.
    pub async fn start_in(
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let mut served = Self::start_over(dir.path(), configure).await;
        served._dir = Some(dir);
        served
    }

    /// Starts the server over the prompts folder at `path`, which the caller keeps (two servers
    /// may share one).
    pub async fn start_over(
        path: &std::path::Path,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let config = config(path, configure);
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let built = build(&config).unwrap();
        let state = built.state.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(promptd::server::serve(
            config,
            built.state,
            built.engine_thread,
            http,
            Some(grpc),
            async {
                let _ = stopped.await;
            },
        ));
        let mut status = state.lifecycle.subscribe();
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            status.wait_for(|s| *s == promptd::service::lifecycle::Status::Ready),
        )
        .await
        .expect("the server became ready within a minute")
        .unwrap();
        Self {
            http: http_addr,
            grpc_addr,
            grpc: format!("http://{grpc_addr}"),
            state,
            stop: Some(stop),
            task: Some(task),
            prompts: path.to_path_buf(),
            _dir: None,
        }
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `http://127.0.0.1:PORT` of the gRPC API.
    pub fn grpc_url(&self) -> String {
        self.grpc.clone()
    }

    /// Shuts down and waits for the drain.
    pub async fn stop(mut self) -> Result<(), promptd::server::ServerError> {
        drop(self.stop.take());
        self.task.take().unwrap().await.unwrap()
    }
}

impl super::Urls for Served {
    fn url(&self, path: &str) -> String {
        Served::url(self, path)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}
