//! Shared helpers for the integration tests: fixtures and a loaded engine.
#![allow(dead_code)]
pub mod inproc;
pub mod seaweed;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use promptd::engine::{Engine, PromptSlot, RowInput, RowOutput};
use promptd::model::{ModelOptions, T5Model, T5Tokenizer};
use promptd::prompts::{load_prompt_dir, PromptLimits};
use serde::Deserialize;

/// tests/fixtures
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Names of the fixture models (one expected/<name>.jsonl each).
pub fn model_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("expected"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".jsonl")
                .map(String::from)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 2, "expected fixtures for both T5 families");
    names
}

/// One line of expected/<model>.jsonl, written by scripts/make_fixtures.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub task: Option<String>,
    pub input: String,
    pub max_new_tokens: usize,
    pub input_ids: Vec<i64>,
    pub token_ids: Vec<i64>,
    pub text: String,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub scores: Vec<f64>,
    /// transformers' scores recomputed in float64.
    #[serde(default)]
    pub scores_f64: Vec<f64>,
}

pub fn cases(model: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join(format!("expected/{model}.jsonl"))).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A CPU f32 engine over a fixture model with its prompt folder registered.
pub struct Loaded {
    pub engine: Engine,
    pub tokenizer: T5Tokenizer,
    pub slots: HashMap<String, Arc<PromptSlot>>,
}

pub fn load(model: &str) -> Loaded {
    load_from(&fixtures().join("models").join(model), model)
}

/// A CPU f32 engine over the model folder `dir`, with fixture `model`'s prompts registered
/// (none when tests/fixtures/prompts/<model> does not exist).
pub fn load_from(dir: &Path, model: &str) -> Loaded {
    load_with(dir, model, None)
}

/// [`load`] with the linear layers packed as int8 by `kernel` (`--dtype int8`).
pub fn load_int8(model: &str, kernel: promptd::model::int8::Int8Kernel) -> Loaded {
    load_with(&fixtures().join("models").join(model), model, Some(kernel))
}

fn load_with(dir: &Path, model: &str, int8: Option<promptd::model::int8::Int8Kernel>) -> Loaded {
    let mut t5 = T5Model::load(
        dir,
        ModelOptions {
            device: tch::Device::Cpu,
            kind: tch::Kind::Float,
        },
    )
    .unwrap();
    if let Some(kernel) = int8 {
        t5.quantize_int8(kernel).unwrap();
    }
    let tokenizer = T5Tokenizer::from_dir(dir, 1).unwrap();
    let d_model = t5.config.d_model as usize;
    let mut engine = Engine::new(t5).unwrap();
    let prompt_dir = fixtures().join("prompts").join(model);
    let mut slots = HashMap::new();
    if prompt_dir.is_dir() {
        let prompts = load_prompt_dir(&prompt_dir, d_model, &PromptLimits::default()).unwrap();
        assert!(prompts.errors.is_empty(), "{:?}", prompts.errors);
        for (task, p) in &prompts.prompts {
            slots.insert(
                task.to_string(),
                engine.register_prompt(&p.encoder).unwrap(),
            );
        }
    }
    Loaded {
        engine,
        tokenizer,
        slots,
    }
}

impl Loaded {
    pub fn row(&self, case: &Case) -> RowInput {
        RowInput {
            prompt: case.task.as_ref().map(|t| self.slots[t].clone()),
            input_ids: self.tokenizer.encode(&case.input).unwrap(),
            max_new_tokens: case.max_new_tokens,
            labels: case
                .labels
                .iter()
                .map(|l| self.tokenizer.encode(l).unwrap())
                .collect(),
            cancel: None,
            sequence_logprob: false,
            ..Default::default()
        }
    }

    pub fn run(&mut self, cases: &[&Case]) -> Vec<RowOutput> {
        let rows: Vec<RowInput> = cases.iter().map(|c| self.row(c)).collect();
        self.engine.run_batch(&rows).unwrap()
    }
}

/// Within 1e-4 of transformers' f32 score, or at least as close to the exact (f64) score as
/// transformers' own f32 sum is: on long labels its rounding alone can exceed 1e-4.
pub fn score_close(got: f64, want: f64, exact: f64) -> bool {
    (got - want).abs() <= 1e-4 || (got - exact).abs() <= (want - exact).abs() + 1e-5
}

pub fn assert_matches(case: &Case, out: &RowOutput, what: &str) {
    assert_eq!(
        out.token_ids, case.token_ids,
        "{what}: tokens for task {:?} input {:?}",
        case.task, case.input
    );
    if case.labels.is_empty() {
        assert!(out.scores.is_none(), "{what}: scores without labels");
    } else {
        let got = out.scores.as_ref().expect("scores");
        assert_eq!(got.len(), case.scores.len());
        assert_eq!(case.scores_f64.len(), case.scores.len());
        for ((g, w), x) in got.iter().zip(&case.scores).zip(&case.scores_f64) {
            assert!(
                score_close(*g, *w, *x),
                "{what}: score {g} vs transformers {w} (f64: {x}) (task {:?})",
                case.task
            );
        }
    }
}

/// safetensors bytes of the given tensors.
pub fn st_bytes(tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    use safetensors::tensor::TensorView;
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, dt, shape, data)| {
            (
                n.to_string(),
                TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Little-endian f32 bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// .npy v1 bytes with the given header fields.
pub fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Runs `promptd predict` with `args`, feeding `stdin`; returns result lines, stderr, success.
pub fn run_predict(
    args: &[&std::ffi::OsStr],
    stdin: &[u8],
) -> (Vec<serde_json::Value>, String, bool) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_promptd"))
        .arg("predict")
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file under `dir` with its bytes, for "nothing changed" checks.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else {
            out.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    out
}

/// A `promptd serve` process on an ephemeral port; killed when dropped.
pub struct TestServer {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `http://127.0.0.1:PORT` of the gRPC API.
    pub grpc: String,
    /// Where its stderr (the logs) goes.
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts `promptd serve --model model --prompts prompts` plus `extra` flags and waits
    /// until /readyz answers 200.
    pub fn start(model: &Path, prompts: &Path, extra: &[&str]) -> Self {
        let prompts = prompts.to_str().unwrap();
        let args: Vec<&str> = ["--prompts", prompts]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        Self::start_with(model, &args, &[])
    }

    /// Starts `promptd serve --model model` plus `args` (which say where prompts are) with
    /// the extra environment `env`, and waits until /readyz answers 200.
    pub fn start_with(model: &Path, args: &[&str], env: &[(String, String)]) -> Self {
        let server = Self::spawn(model, args, env);
        server.wait_ready(std::time::Duration::from_secs(60));
        server
    }

    /// Starts `promptd serve --model model` plus `args` without waiting for readiness.
    pub fn spawn(model: &Path, args: &[&str], env: &[(String, String)]) -> Self {
        use std::io::BufRead;
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("stderr.log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_promptd"))
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--addr", "127.0.0.1:0", "--watch-interval-ms", "200"])
            .args(["--grpc-addr", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("LD_LIBRARY_PATH")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stdout = std::io::BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let mut grpc_line = String::new();
        stdout.read_line(&mut grpc_line).unwrap();
        let grpc = grpc_line
            .trim()
            .strip_prefix("promptd gRPC listening on ")
            .map(|addr| format!("http://{addr}"))
            .unwrap_or_default();
        let base = line
            .trim()
            .strip_prefix("promptd listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "no address line ({line:?}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Self {
            child,
            base,
            grpc,
            log,
            _log_dir: log_dir,
        }
    }

    /// Waits until /readyz answers 200 (fails the test after `limit`, with the log).
    pub fn wait_ready(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let ready = raw_http::blocking_get_status(&self.url("/readyz"));
            if ready == Some(200) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server not ready; log:\n{}",
                self.logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal blocking GET for readiness polling (no async runtime needed).
mod raw_http {
    pub fn blocking_get_status(url: &str) -> Option<u16> {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://")?;
        let (host, path) = rest.split_at(rest.find('/')?);
        let mut s = std::net::TcpStream::connect(host).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        buf.split_whitespace().nth(1)?.parse().ok()
    }
}

/// Sum of a metric's samples whose line starts with `prefix` (name plus labels).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A running server: a child process ([`TestServer`]) or in-process ([`inproc::Served`]).
pub trait Urls {
    /// `http://127.0.0.1:PORT{path}`
    fn url(&self, path: &str) -> String;
    /// Its logs, for failure messages.
    fn logs(&self) -> String {
        "(an in-process server: its logs are the test's output)".into()
    }
}

impl Urls for TestServer {
    fn url(&self, path: &str) -> String {
        TestServer::url(self, path)
    }
    fn logs(&self) -> String {
        TestServer::logs(self)
    }
}

/// The server's /metrics text.
pub async fn metrics(client: &reqwest::Client, server: &impl Urls) -> String {
    client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A `[rows, 48]` f32 .npy prompt (the tiny v1.1 fixture's width) filled with `value`.
pub fn npy_filled(rows: usize, value: f32) -> Vec<u8> {
    npy_bytes(
        "<f4",
        &format!("({rows}, 48)"),
        &f32_bytes(&vec![value; rows * 48]),
    )
}

/// A named f32 tensor of a safetensors file.
pub fn read_f32_tensor(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
