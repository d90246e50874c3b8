//! Faults: a full or read-only prompts folder, and `kill -9` in the middle of an upload storm.
//! Each time the server keeps serving and loses nothing it acknowledged. (A panicking forward
//! pass is in tests/engine_panic.rs: its fault switch is process-wide.)
//! A binary of its own: `fault::STORE_WRITE_ERRNO` is process-wide (it would fail other tests'
//! uploads), and `make test-tmpfs` runs its ignored root-only test as `--test faults`.
#[path = "it/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use common::inproc::{build_state, call, defaults, predict_req};
use common::{fixtures, npy_filled, snapshot, TestServer};
use promptd::server::load;
use serde_json::{json, Value};

fn put(task: &str, bytes: Vec<u8>) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::put(format!("/v1/prompts/{task}"))
        .body(axum::body::Body::from(bytes))
        .unwrap()
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn remount_read_only(&self) -> bool {
        std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// How a test makes the prompts folder full, then not full, then read-only.
trait DiskFaults {
    fn fill(&self);
    fn unfill(&self);
    fn read_only(&self);
}

/// Through the store's writer (tests always run these): writes fail with ENOSPC / EROFS after
/// half the temporary file is written.
struct Injected;

impl DiskFaults for Injected {
    fn fill(&self) {
        promptd::fault::STORE_WRITE_ERRNO.store(28, Ordering::Release); // ENOSPC
    }
    fn unfill(&self) {
        promptd::fault::STORE_WRITE_ERRNO.store(0, Ordering::Release);
    }
    fn read_only(&self) {
        promptd::fault::STORE_WRITE_ERRNO.store(30, Ordering::Release); // EROFS
    }
}

impl Drop for Injected {
    fn drop(&mut self) {
        self.unfill();
    }
}

/// A real small tmpfs, filled and remounted read-only.
struct RealTmpfs(Tmpfs);

impl DiskFaults for RealTmpfs {
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.0 .0.join(".filler")).unwrap();
        let block = vec![7u8; 4096];
        while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    }
    fn unfill(&self) {
        std::fs::remove_file(self.0 .0.join(".filler")).unwrap();
    }
    fn read_only(&self) {
        assert!(self.0.remount_read_only(), "remounting the tmpfs read-only");
    }
}

/// A full, then read-only, prompts folder: uploads fail with 507, then 503 naming the cause,
/// nothing is half-written, and the old prompt keeps serving.
async fn full_and_read_only_fail_uploads_cleanly(dir: &Path, faults: &dyn DiskFaults) {
    std::fs::copy(
        fixtures().join("prompts/t5-v1_1-tiny/task03.npy"),
        dir.join("keep.npy"),
    )
    .unwrap();
    let state = build_state(dir, defaults);
    tokio::spawn(state.batcher.clone().batching_loop(state.engine.clone()));
    load(
        &state.engine,
        &state.registry,
        &state.ensembles,
        &state.lifecycle,
    )
    .await
    .unwrap();
    let ask = || predict_req("keep", json!({"inputs": "x", "max_new_tokens": 2}));
    let answer = call(&state, ask()).await;
    assert_eq!(answer.status, StatusCode::OK);

    // A second prompt and an ensemble of both, before the disk fills.
    assert_eq!(
        call(&state, put("keep2", npy_filled(2, 0.5))).await.status,
        StatusCode::CREATED
    );
    let ensemble = || {
        axum::http::Request::put("/v1/ensembles/both")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                json!({"members": ["keep", "keep2"], "combine": "vote"}).to_string(),
            ))
            .unwrap()
    };
    assert_eq!(call(&state, ensemble()).await.status, StatusCode::CREATED);

    // Fill the disk, then upload: 507, nothing half-written, the old prompt still served.
    faults.fill();
    let before = snapshot(dir);
    let r = call(&state, ensemble()).await;
    assert_eq!(
        r.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "ensemble: {}",
        r.body
    );
    let served = call(
        &state,
        axum::http::Request::get("/v1/ensembles/both")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(served.body["version"], 1, "the stored version still serves");
    for task in ["keep", "fresh"] {
        let r = call(&state, put(task, npy_filled(100, 0.5))).await;
        assert_eq!(
            r.status,
            StatusCode::INSUFFICIENT_STORAGE,
            "{task}: {}",
            r.body
        );
        assert_eq!(r.body["error_type"], "storage");
    }
    assert_eq!(snapshot(dir), before, "no temporary file left behind");
    let r = call(&state, ask()).await;
    assert_eq!(
        (r.status, &r.body["outputs"]),
        (StatusCode::OK, &answer.body["outputs"])
    );

    // Read-only: 503 with the reason, serving goes on.
    faults.unfill();
    faults.read_only();
    let before = snapshot(dir);
    let r = call(&state, put("keep", npy_filled(2, 0.5))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("read-only"),
        "{}",
        r.body
    );
    assert_eq!(
        snapshot(dir),
        before,
        "nothing written on a read-only folder"
    );
    let r = call(&state, common::inproc::get("/v1/prompts/keep")).await;
    assert_eq!(r.body["version"], 1);
    assert_eq!(call(&state, ask()).await.status, StatusCode::OK);
}

#[tokio::test]
async fn full_and_read_only_prompt_folders_fail_uploads_cleanly_and_serving_goes_on() {
    println!("ran: disk full and read-only injected through the store's writer (ENOSPC, EROFS)");
    let dir = tempfile::tempdir().unwrap();
    full_and_read_only_fail_uploads_cleanly(dir.path(), &Injected).await;
}

/// The same on a real full and read-only filesystem. Mounting needs root (CAP_SYS_ADMIN), so
/// it is opt-in: `make test-tmpfs`, where it fails if it cannot mount.
#[tokio::test]
#[ignore = "needs root to mount a tmpfs; run by `make test-tmpfs`"]
async fn a_real_full_and_read_only_tmpfs_fails_uploads_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(dir.path(), "256k")
        .expect("mounting a 256k tmpfs (needs root): this opt-in test must not skip");
    println!("ran: a real 256k tmpfs, filled, then remounted read-only");
    full_and_read_only_fail_uploads_cleanly(dir.path(), &RealTmpfs(fs)).await;
}

/// What one uploader saw acknowledged: version → sha256, and every payload it sent.
#[derive(Default)]
struct Acked {
    versions: Vec<(u64, String)>,
    sent: Vec<String>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_an_upload_storm_loses_nothing_acknowledged_and_tears_nothing() {
    let prompts = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/t5-v1_1-tiny");
    let server = TestServer::start(&model, prompts.path(), &[]);
    let client = reqwest::Client::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut uploaders = Vec::new();
    for t in 0..6 {
        let (client, url, stop) = (
            client.clone(),
            server.url(&format!("/v1/prompts/storm{t}")),
            stop.clone(),
        );
        uploaders.push(tokio::spawn(async move {
            let mut acked = Acked::default();
            let mut i = 0u32;
            while !stop.load(Ordering::Acquire) {
                i += 1;
                // Varied sizes, so a torn file could not pass for a whole one.
                let body = npy_filled(1 + (i as usize % 40), t as f32 + i as f32 / 1000.0);
                acked.sent.push(sha256_hex(&body));
                match client.put(&url).body(body.clone()).send().await {
                    Ok(r) if r.status().is_success() => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if let Some(version) = v["version"].as_u64() {
                            assert_eq!(v["sha256"], sha256_hex(&body));
                            acked.versions.push((version, sha256_hex(&body)));
                        }
                    }
                    _ => break, // the server is gone
                }
            }
            acked
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // SIGKILL, mid-storm.
    let pid = server.pid().to_string();
    std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    stop.store(true, Ordering::Release);
    let mut acked = HashMap::new();
    for (t, u) in uploaders.into_iter().enumerate() {
        acked.insert(format!("storm{t}"), u.await.unwrap());
    }
    drop(server);
    let total: usize = acked.values().map(|a| a.versions.len()).sum();
    assert!(
        total >= 12,
        "the storm was too small to mean anything ({total} acknowledged)"
    );
    eprintln!(
        "kill -9 after {total} acknowledged uploads over {} tasks",
        acked.len()
    );

    // Restart on the same folder: every task loads (no torn file), at its last acknowledged
    // version or a later one that was in flight, with that upload's exact bytes.
    let server = TestServer::start(&model, prompts.path(), &[]);
    let m = common::metrics(&client, &server).await;
    assert_eq!(
        common::metric(&m, "promptd_prompt_reloads_total{result=\"invalid\"}"),
        0.0,
        "{}",
        server.logs()
    );
    for (task, a) in &acked {
        let Some(&(last_version, ref last_sha)) = a.versions.last() else {
            continue;
        };
        let info: Value = client
            .get(server.url(&format!("/v1/prompts/{task}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let version = info["version"].as_u64().unwrap();
        let sha = info["sha256"].as_str().unwrap();
        assert!(
            version >= last_version,
            "{task}: acknowledged v{last_version}, found v{version}"
        );
        if version == last_version {
            assert_eq!(sha, last_sha, "{task}");
        } else {
            assert!(
                a.sent.iter().any(|s| s == sha),
                "{task}: v{version} is no upload of ours"
            );
        }
    }
    // No temporary files are served or left as tasks; every audit line is whole and every
    // acknowledged change has its line.
    let list: Value = client
        .get(server.url("/v1/prompts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["prompts"].as_array().unwrap().len(),
        acked.values().filter(|a| !a.versions.is_empty()).count()
    );
    let audit = std::fs::read_to_string(prompts.path().join(".audit.jsonl")).unwrap();
    let entries: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (task, a) in &acked {
        for (version, sha) in &a.versions {
            assert!(
                entries.iter().any(|e| e["task"] == task.as_str()
                    && e["version"] == *version
                    && e["sha256"] == sha.as_str()),
                "{task} v{version} acknowledged but not audited"
            );
        }
    }
}
