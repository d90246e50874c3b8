//! Multi-tenancy: keys, per-task permissions, visibility, quotas, the audit log and reloads of
//! the tenants file, in-process; gRPC authentication and SIGHUP reload on a real process.
use crate::common;

use std::path::Path;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::inproc::{call, setup, Reply, Setup};
use common::{npy_filled, snapshot};
use promptd::tenants::hash_key;
use serde_json::{json, Value};

fn req(method: Method, uri: &str, key: Option<&str>, body: Body) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    b.body(body).unwrap()
}

fn get(uri: &str, key: Option<&str>) -> Request<Body> {
    req(Method::GET, uri, key, Body::empty())
}

fn put(task: &str, key: &str, bytes: Vec<u8>) -> Request<Body> {
    req(
        Method::PUT,
        &format!("/v1/prompts/{task}"),
        Some(key),
        Body::from(bytes),
    )
}

fn predict(task: &str, key: &str) -> Request<Body> {
    let mut r = req(
        Method::POST,
        &format!("/v1/tasks/{task}/predict"),
        Some(key),
        Body::from(json!({"inputs": "hello", "max_new_tokens": 2}).to_string()),
    );
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    r
}

fn tenants_file(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[tenants]]
name = "acme"
key_sha256 = ["{acme}"]
tasks = ["acme.*"]
public = ["acme.public-*"]

[[tenants]]
name = "globex"
key_sha256 = ["{globex}"]
tasks = ["globex.*"]
[tenants.quotas]
max_prompts = 2
max_prompt_length = 3

[[tenants]]
name = "ops"
admin = true
key_sha256 = ["{ops}"]
{extra}
"#,
            acme = hash_key("acme-key"),
            globex = hash_key("globex-key"),
            ops = hash_key("ops-key"),
        ),
    )
    .unwrap();
    path
}

async fn tenant_setup(extra_tenants: &str, run_batcher: bool) -> (Setup, tempfile::TempDir) {
    let conf = tempfile::tempdir().unwrap();
    let path = tenants_file(conf.path(), extra_tenants);
    let s = setup(|c| c.tenants = Some(path.clone()), run_batcher).await;
    (s, conf)
}

fn tasks(r: &Reply) -> Vec<String> {
    r.body["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["task"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn probes_and_the_api_description_need_no_key() {
    let (s, _conf) = tenant_setup("", true).await;
    for path in [
        "/healthz",
        "/readyz",
        "/v2/health/ready",
        "/v2/health/live",
        "/openapi.json",
    ] {
        assert_eq!(
            call(&s.state, get(path, None)).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn no_unknown_or_non_bearer_key_is_401_with_www_authenticate() {
    let (s, _conf) = tenant_setup("", true).await;
    for (what, r) in [
        ("no key", get("/v1/prompts", None)),
        ("unknown key", get("/v1/prompts", Some("guess"))),
        (
            "not bearer",
            Request::get("/v1/prompts")
                .header(header::AUTHORIZATION, "Basic YWNtZTprZXk=")
                .body(Body::empty())
                .unwrap(),
        ),
        ("predict without key", get("/v2/models/keep", None)),
    ] {
        let r = call(&s.state, r).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(r.body["error_type"], "unauthorized", "{what}");
        assert!(r.headers.contains_key(header::WWW_AUTHENTICATE), "{what}");
    }
}

#[tokio::test]
async fn metrics_need_an_admin_key() {
    let (s, _conf) = tenant_setup("", true).await;
    assert_eq!(
        call(&s.state, get("/metrics", Some("acme-key")))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&s.state, get("/metrics", Some("ops-key")))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn only_the_owner_or_an_admin_writes_and_a_refused_write_changes_nothing() {
    let (s, _conf) = tenant_setup("", true).await;
    let st = &s.state;
    assert_eq!(
        call(st, put("acme.x", "acme-key", npy_filled(2, 0.1)))
            .await
            .status,
        StatusCode::CREATED
    );
    let before = snapshot(s.dir.path());
    for r in [
        put("acme.x", "globex-key", npy_filled(2, 0.9)),
        req(
            Method::DELETE,
            "/v1/prompts/acme.x",
            Some("globex-key"),
            Body::empty(),
        ),
        put("keep", "acme-key", npy_filled(2, 0.9)),
        put("unowned", "acme-key", npy_filled(2, 0.9)),
    ] {
        let r = call(st, r).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        assert_eq!(r.body["error_type"], "forbidden");
    }
    assert_eq!(snapshot(s.dir.path()), before);
    // Admins manage everything.
    assert_eq!(
        call(st, put("keep", "ops-key", npy_filled(2, 0.4)))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(st, predict("acme.x", "ops-key")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_tenant_reads_its_own_tasks_and_published_ones() {
    let (s, _conf) = tenant_setup("", true).await;
    let st = &s.state;
    for task in ["acme.x", "acme.public-faq"] {
        assert_eq!(
            call(st, put(task, "acme-key", npy_filled(2, 0.2)))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        call(st, predict("acme.x", "acme-key")).await.status,
        StatusCode::OK
    );
    for (what, r) in [
        ("predict", predict("acme.x", "globex-key")),
        ("prompt", get("/v1/prompts/acme.x", Some("globex-key"))),
        ("v2 model", get("/v2/models/acme.x", Some("globex-key"))),
        // 403 depends on the name only: a missing task of another tenant does not answer 404.
        ("missing task", predict("acme.nothing", "globex-key")),
    ] {
        assert_eq!(call(st, r).await.status, StatusCode::FORBIDDEN, "{what}");
    }
    // Published: others may read it, not write it.
    assert_eq!(
        call(st, predict("acme.public-faq", "globex-key"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(st, put("acme.public-faq", "globex-key", npy_filled(2, 0.3)))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn quotas_cap_the_prompts_a_tenant_owns_and_their_length() {
    let (s, _conf) = tenant_setup("", true).await;
    let st = &s.state;
    for task in ["globex.a", "globex.b"] {
        assert_eq!(
            call(st, put(task, "globex-key", npy_filled(2, 0.5)))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let r = call(st, put("globex.c", "globex-key", npy_filled(2, 0.5))).await;
    assert_eq!(
        (r.status, r.body["error_type"].as_str()),
        (StatusCode::FORBIDDEN, Some("quota_exceeded"))
    );
    assert!(
        r.body["error"].as_str().unwrap().contains("max_prompts"),
        "{}",
        r.body
    );
    assert_eq!(
        call(st, put("globex.a", "globex-key", npy_filled(3, 0.6)))
            .await
            .status,
        StatusCode::OK,
        "replacing is not a new prompt"
    );
    let r = call(st, put("globex.a", "globex-key", npy_filled(4, 0.6))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
}

/// Every write of the tests above, in their order, refused ones included: what the list, the
/// audit log and the change metrics are checked against.
async fn every_write(s: &Setup) {
    let delete_acme_x = |key| {
        req(
            Method::DELETE,
            "/v1/prompts/acme.x",
            Some(key),
            Body::empty(),
        )
    };
    for (r, want) in [
        (put("acme.x", "acme-key", npy_filled(2, 0.1)), 201),
        (put("acme.x", "globex-key", npy_filled(2, 0.9)), 403),
        (delete_acme_x("globex-key"), 403),
        (put("keep", "acme-key", npy_filled(2, 0.9)), 403),
        (put("unowned", "acme-key", npy_filled(2, 0.9)), 403),
        (put("acme.public-faq", "acme-key", npy_filled(2, 0.2)), 201),
        (
            put("acme.public-faq", "globex-key", npy_filled(2, 0.3)),
            403,
        ),
        (put("keep", "ops-key", npy_filled(2, 0.4)), 200),
        (put("globex.a", "globex-key", npy_filled(2, 0.5)), 201),
        (put("globex.b", "globex-key", npy_filled(2, 0.5)), 201),
        (put("globex.c", "globex-key", npy_filled(2, 0.5)), 403),
        (put("globex.a", "globex-key", npy_filled(3, 0.6)), 200),
        (put("globex.a", "globex-key", npy_filled(4, 0.6)), 422),
    ] {
        let what = format!("{} {}", r.method(), r.uri());
        let r = call(&s.state, r).await;
        assert_eq!(r.status.as_u16(), want, "{what}: {}", r.body);
    }
}

#[tokio::test]
async fn the_list_shows_a_tenant_its_own_and_published_tasks() {
    let (s, _conf) = tenant_setup("", true).await;
    every_write(&s).await;
    let list = |key: &'static str| {
        let st = &s.state;
        async move { tasks(&call(st, get("/v1/prompts", Some(key))).await) }
    };
    assert_eq!(
        list("globex-key").await,
        ["acme.public-faq", "globex.a", "globex.b"]
    );
    assert_eq!(list("acme-key").await, ["acme.public-faq", "acme.x"]);
    assert_eq!(
        list("ops-key").await,
        ["acme.public-faq", "acme.x", "globex.a", "globex.b", "keep"]
    );
}

#[tokio::test]
async fn the_audit_log_and_metrics_hold_every_change_in_order_without_keys() {
    let (s, _conf) = tenant_setup("", true).await;
    let st = &s.state;
    every_write(&s).await;
    // Delete by the owner; then the audit log holds every change, in order, without keys.
    let r = call(
        st,
        req(
            Method::DELETE,
            "/v1/prompts/acme.x",
            Some("acme-key"),
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let audit = std::fs::read_to_string(s.dir.path().join(".audit.jsonl")).unwrap();
    for secret in ["acme-key", "globex-key", "ops-key"] {
        assert!(!audit.contains(secret));
    }
    let entries: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String, String, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["tenant"].as_str().unwrap().into(),
                e["task"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["version"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("acme", "acme.x", "create", 1),
        ("acme", "acme.public-faq", "create", 1),
        ("ops", "keep", "replace", 2),
        ("globex", "globex.a", "create", 1),
        ("globex", "globex.b", "create", 1),
        ("globex", "globex.a", "replace", 2),
        ("acme", "acme.x", "delete", 1),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), *d))
        .collect();
    assert_eq!(summary, want);
    let first = &entries[0];
    assert_eq!(
        first["bytes"].as_u64().unwrap() as usize,
        npy_filled(2, 0.1).len()
    );
    assert_eq!(first["sha256"].as_str().unwrap().len(), 64);
    assert!(first["time_ms"].as_u64().unwrap() > 1_700_000_000_000);

    let m = call(st, get("/metrics", Some("ops-key")))
        .await
        .body
        .as_str()
        .unwrap()
        .to_string();
    for line in [
        "promptd_prompt_changes_total{action=\"create\",tenant=\"acme\"} 2",
        "promptd_prompt_changes_total{action=\"delete\",tenant=\"acme\"} 1",
        "promptd_prompt_changes_total{action=\"replace\",tenant=\"ops\"} 1",
        "promptd_tenant_rejections_total{reason=\"quota_exceeded\",tenant=\"globex\"} 1",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
}

#[tokio::test]
async fn request_rate_and_in_flight_quotas_answer_429_and_spare_other_tenants() {
    // A token every 20 s: on a loaded machine the two answers of the burst can take longer
    // than a faster rate's refill, and the third request would be let through.
    let slow = format!(
        "[[tenants]]\nname = \"slow\"\nkey_sha256 = [\"{}\"]\ntasks = [\"*\"]\n[tenants.quotas]\nrequests_per_second = 0.05\nburst = 2\n",
        hash_key("slow-key")
    );
    let (s, _conf) = tenant_setup(&slow, true).await;
    let st = &s.state;
    // `keep` matches slow's `*` (the earlier tenants' patterns do not).
    for _ in 0..2 {
        assert_eq!(
            call(st, predict("keep", "slow-key")).await.status,
            StatusCode::OK
        );
    }
    let r = call(st, predict("keep", "slow-key")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.body["error_type"], "rate_limited");
    let retry: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The next token is at most 1 / rate = 20 s away.
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    // Another tenant is not affected.
    assert_eq!(
        call(st, predict("keep", "ops-key")).await.status,
        StatusCode::OK
    );

    // In flight: with no batching loop a request stays in flight; the next one is refused.
    let one = format!(
        "[[tenants]]\nname = \"one\"\nkey_sha256 = [\"{}\"]\ntasks = [\"*\"]\n[tenants.quotas]\nmax_in_flight = 1\n",
        hash_key("one-key")
    );
    let (s, _conf) = tenant_setup(&one, false).await;
    let state = s.state.clone();
    let held = tokio::spawn(async move { call(&state, predict("keep", "one-key")).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.state.batcher.queue_len() == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let r = call(&s.state, predict("keep", "one-key")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        r.body["error"].as_str().unwrap().contains("max_in_flight"),
        "{}",
        r.body
    );
    held.abort();
}

#[tokio::test]
async fn reload_swaps_keys_and_a_bad_file_keeps_the_last_good_one() {
    let (s, conf) = tenant_setup("", true).await;
    let st = &s.state;
    assert_eq!(
        call(st, predict("keep", "new-admin")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let extra = format!(
        "[[tenants]]\nname = \"ops2\"\nadmin = true\nkey_sha256 = [\"{}\"]\n",
        hash_key("new-admin")
    );
    tenants_file(conf.path(), &extra);
    assert!(st.tenants.reload().unwrap());
    assert_eq!(
        call(st, predict("keep", "new-admin")).await.status,
        StatusCode::OK
    );
    std::fs::write(conf.path().join("tenants.toml"), "[[tenants]]\nname = 1\n").unwrap();
    assert!(st.tenants.reload().is_err());
    assert!(
        !st.tenants.reload().unwrap(),
        "a bad version is reported once"
    );
    assert_eq!(
        call(st, predict("keep", "new-admin")).await.status,
        StatusCode::OK
    );
}

#[test]
fn the_example_tenants_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tenants.example.toml");
    let tenants = promptd::tenants::Tenants::load(&path, 512).unwrap();
    assert_eq!(tenants.current().names(), ["acme", "globex", "ops"]);
    for key in [
        "demo-acme-key",
        "demo-acme-key-2027",
        "demo-globex-key",
        "demo-admin-key",
    ] {
        assert!(
            tenants.authenticate(Some(&format!("Bearer {key}"))).is_ok(),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_needs_a_key_and_sighup_reloads_the_file() {
    use promptd::api::grpc::proto::promptd_client::PromptdClient;
    use promptd::api::grpc::proto::ListPromptsRequest;

    let conf = tempfile::tempdir().unwrap();
    let path = tenants_file(conf.path(), "");
    let prompts = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("models/t5-v1_1-tiny");
    let server = common::TestServer::start(
        &model,
        prompts.path(),
        &[
            "--tenants",
            path.to_str().unwrap(),
            "--watch-interval-ms",
            "3600000",
        ],
    );
    let mut grpc = PromptdClient::connect(server.grpc.clone()).await.unwrap();
    let e = grpc.list_prompts(ListPromptsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let with_key = |key: &str| {
        let mut r = tonic::Request::new(ListPromptsRequest {});
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    grpc.list_prompts(with_key("acme-key")).await.unwrap();
    assert_eq!(
        grpc.list_prompts(with_key("late-key"))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );

    // The folder poll is an hour here: only SIGHUP can bring the new key in.
    let extra = format!(
        "[[tenants]]\nname = \"late\"\nkey_sha256 = [\"{}\"]\n",
        hash_key("late-key")
    );
    tenants_file(conf.path(), &extra);
    let pid = server.pid().to_string();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while grpc.list_prompts(with_key("late-key")).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", server.logs());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let logs = server.logs();
    assert!(logs.contains("tenants file loaded"), "{logs}");
    for secret in ["acme-key", "late-key"] {
        assert!(!logs.contains(secret), "a key reached the log");
    }
    assert!(!logs.contains("OPEN"));
    drop(server);

    // Without a tenants file the server says loudly that it is open.
    let open = common::TestServer::start(&model, prompts.path(), &[]);
    assert!(
        open.logs().contains("the server is OPEN"),
        "{}",
        open.logs()
    );
}

fn tune(task: &str, key: &str, body: Value) -> Request<Body> {
    let mut r = req(
        Method::POST,
        &format!("/v1/tasks/{task}/tune"),
        Some(key),
        Body::from(body.to_string()),
    );
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    r
}

#[tokio::test]
async fn only_a_tenant_that_may_write_a_task_may_tune_it_and_see_its_jobs() {
    let (s, _conf) = tenant_setup("", false).await;
    let st = &s.state;
    let body =
        json!({"train": [{"input": "a b c", "target": "yes"}], "steps": 1, "prompt_length": 2});
    // Another tenant's task, a task outside every pattern, no key: refused, nothing recorded.
    for (task, key, status) in [
        ("globex.sentiment", "acme-key", StatusCode::FORBIDDEN),
        ("loose", "acme-key", StatusCode::FORBIDDEN),
    ] {
        let r = call(st, tune(task, key, body.clone())).await;
        assert_eq!(r.status, status, "{task} with {key}: {:?}", r.body);
    }
    let r = call(st, get("/v1/tune-jobs", Some("acme-key"))).await;
    assert_eq!(r.body["jobs"], json!([]));
    // globex's prompt-length quota (3) caps a job's prompt too.
    let long = json!({"train": [{"input": "a", "target": "b"}], "steps": 1, "prompt_length": 4});
    let r = call(st, tune("globex.x", "globex-key", long)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    // The owner may; its job is its own: others get 403, the admin sees it.
    let r = call(st, tune("acme.sentiment", "acme-key", body.clone())).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let id = r.body["job"].as_str().unwrap().to_string();
    assert_eq!(r.body["status"]["tenant"], "acme");
    let r = call(st, get(&format!("/v1/tune-jobs/{id}"), Some("globex-key"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(st, get("/v1/tune-jobs", Some("globex-key"))).await;
    assert_eq!(r.body["jobs"], json!([]));
    let r = call(st, get("/v1/tune-jobs", Some("ops-key"))).await;
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 1);
    let r = call(st, get(&format!("/v1/tune-jobs/{id}"), Some("acme-key"))).await;
    assert_eq!(r.status, StatusCode::OK);
    // Its curve picture follows the job's own rule: the owner and the admin, no one else.
    let curve = format!("/v1/tune-jobs/{id}/curve.svg");
    for (key, status) in [
        (Some("acme-key"), StatusCode::OK),
        (Some("ops-key"), StatusCode::OK),
        (Some("globex-key"), StatusCode::FORBIDDEN),
        (None, StatusCode::UNAUTHORIZED),
    ] {
        let r = call(st, get(&curve, key)).await;
        assert_eq!(r.status, status, "{key:?}: {:?}", r.body);
        if status == StatusCode::OK {
            assert_eq!(r.headers[header::CONTENT_TYPE], "image/svg+xml");
            assert!(r.body.as_str().unwrap().starts_with("<svg"), "{:?}", r.body);
        } else {
            assert!(r.body["error_type"].is_string(), "{:?}", r.body);
        }
    }
    let r = call(
        st,
        req(
            Method::DELETE,
            &format!("/v1/tune-jobs/{id}"),
            Some("globex-key"),
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

fn ensemble_put(name: &str, key: &str, members: &[&str]) -> Request<Body> {
    let mut r = req(
        Method::PUT,
        &format!("/v1/ensembles/{name}"),
        Some(key),
        Body::from(json!({"members": members, "combine": "vote"}).to_string()),
    );
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    r
}

#[tokio::test]
async fn ensembles_follow_the_task_patterns_and_never_reach_another_tenants_prompt() {
    let (s, _conf) = tenant_setup("", true).await;
    let st = &s.state;
    for (task, key) in [
        ("acme.a", "acme-key"),
        ("acme.b", "acme-key"),
        ("globex.a", "globex-key"),
    ] {
        let r = call(st, put(task, key, npy_filled(2, 0.1))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{task}: {:?}", r.body);
    }
    // A name outside the tenant's patterns, and a member it may not read: 403, nothing stored.
    let before = snapshot(s.dir.path());
    let r = call(
        st,
        ensemble_put("globex.mine", "acme-key", &["acme.a", "acme.b"]),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    let r = call(
        st,
        ensemble_put("acme.e", "acme-key", &["acme.a", "globex.a"]),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("globex.a"));
    assert_eq!(snapshot(s.dir.path()), before);
    let r = call(
        st,
        ensemble_put("acme.e", "acme-key", &["acme.a", "acme.b"]),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // Another tenant neither sees, reads, predicts with nor deletes it.
    let listed = call(st, get("/v1/ensembles", Some("globex-key"))).await;
    assert_eq!(listed.body["ensembles"], json!([]));
    let listed = call(st, get("/v1/ensembles", Some("ops-key"))).await;
    assert_eq!(listed.body["ensembles"][0]["name"], "acme.e");
    assert_eq!(
        call(st, get("/v1/ensembles/acme.e", Some("globex-key")))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let mut p = req(
        Method::POST,
        "/v1/ensembles/acme.e/predict",
        Some("globex-key"),
        Body::from(json!({"inputs": "hello", "max_new_tokens": 2}).to_string()),
    );
    p.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    assert_eq!(call(st, p).await.status, StatusCode::FORBIDDEN);
    let r = call(
        st,
        req(
            Method::DELETE,
            "/v1/ensembles/acme.e",
            Some("globex-key"),
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // The owner predicts with it; the audit log names the tenant.
    let mut p = req(
        Method::POST,
        "/v1/ensembles/acme.e/predict",
        Some("acme-key"),
        Body::from(json!({"inputs": "hello", "max_new_tokens": 2}).to_string()),
    );
    p.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    let r = call(st, p).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["outputs"][0]["members"].as_array().unwrap().len(), 2);
    let audit = std::fs::read_to_string(s.dir.path().join(".audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains(r#""tenant":"acme""#) && l.contains(r#""kind":"ensemble""#)),
        "{audit}"
    );
}
