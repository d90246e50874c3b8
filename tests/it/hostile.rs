//! Hostile input: a table of malformed requests and property tests over request bodies and
//! task names. Every one gets a 4xx JSON error (or a normal answer), the server keeps
//! answering, and nothing is written outside the prompts folder.
use crate::common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::inproc::{build_state, call, defaults, get, setup};
use common::{npy_filled, snapshot};
use promptd::server::load;
use proptest::prelude::*;
use serde_json::{json, Value};

fn raw(method: Method, uri: &str, content_type: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(Body::from(body)).unwrap()
}

fn predict_bytes(body: Vec<u8>) -> Request<Body> {
    raw(
        Method::POST,
        "/v1/tasks/keep/predict",
        Some("application/json"),
        body,
    )
}

/// A served state whose prompts folder is `root/prompts`; `root` must hold nothing else.
struct Rooted {
    state: promptd::service::Service,
    root: tempfile::TempDir,
}

impl Rooted {
    async fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let prompts = root.path().join("prompts");
        std::fs::create_dir(&prompts).unwrap();
        std::fs::copy(
            common::fixtures().join("prompts/t5-v1_1-tiny/task03.npy"),
            prompts.join("keep.npy"),
        )
        .unwrap();
        let state = build_state(&prompts, defaults);
        tokio::spawn(state.batcher.clone().batching_loop(state.engine.clone()));
        load(
            &state.engine,
            &state.registry,
            &state.ensembles,
            &state.lifecycle,
        )
        .await
        .unwrap();
        Self { state, root }
    }

    fn prompts(&self) -> std::path::PathBuf {
        self.root.path().join("prompts")
    }

    /// Everything under root outside the prompts folder.
    fn outside(&self) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "prompts")
            .collect()
    }
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_write_nothing() {
    let s = Rooted::new().await;
    let before = snapshot(&s.prompts());
    let deep = "[".repeat(100_000);
    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "bad UTF-8",
            predict_bytes(b"{\"inputs\": \"\xff\xfe\"}".to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "deep JSON",
            predict_bytes(deep.into_bytes()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "huge number",
            predict_bytes(br#"{"inputs": "x", "max_new_tokens": 1e400}"#.to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "giant integer",
            predict_bytes(
                br#"{"inputs": "x", "max_new_tokens": 123456789012345678901234567890}"#.to_vec(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "negative max_new_tokens",
            predict_bytes(br#"{"inputs": "x", "max_new_tokens": -5}"#.to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "NaN-like",
            predict_bytes(br#"{"inputs": "x", "max_new_tokens": NaN}"#.to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "null body",
            predict_bytes(b"null".to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "array body",
            predict_bytes(b"[1, 2]".to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "empty body",
            predict_bytes(Vec::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "trailing garbage",
            predict_bytes(br#"{"inputs": "x"} trailing"#.to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "duplicate keys",
            predict_bytes(br#"{"inputs": "x", "inputs": "y"}"#.to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "labels not strings",
            predict_bytes(br#"{"inputs": "x", "labels": [1, null]}"#.to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "no content type",
            raw(
                Method::POST,
                "/v1/tasks/keep/predict",
                None,
                br#"{"inputs": "x"}"#.to_vec(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "wrong content type",
            raw(
                Method::POST,
                "/v1/tasks/keep/predict",
                Some("text/plain"),
                br#"{"inputs": "x"}"#.to_vec(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "traversal in predict",
            predict_bytes(br#"{"inputs": "x"}"#.to_vec())
                .map_uri("/v1/tasks/..%2F..%2Fetc%2Fpasswd/predict"),
            StatusCode::NOT_FOUND,
        ),
        (
            "traversal ../x",
            raw(Method::PUT, "/v1/prompts/..%2Fx", None, npy_filled(2, 0.25)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "traversal %2e%2e",
            raw(Method::PUT, "/v1/prompts/%2e%2e", None, npy_filled(2, 0.25)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "dot",
            raw(Method::PUT, "/v1/prompts/.", None, npy_filled(2, 0.25)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "hidden name",
            raw(Method::PUT, "/v1/prompts/.audit", None, npy_filled(2, 0.25)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "NUL in task",
            raw(Method::PUT, "/v1/prompts/a%00b", None, npy_filled(2, 0.25)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "slash in task",
            raw(Method::PUT, "/v1/prompts/a%2Fb", None, npy_filled(2, 0.25)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "backslash in task",
            raw(Method::PUT, "/v1/prompts/a%5Cb", None, npy_filled(2, 0.25)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unicode task",
            raw(
                Method::PUT,
                "/v1/prompts/%C3%A9t%C3%A9",
                None,
                npy_filled(2, 0.25),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "129-byte task",
            raw(
                Method::PUT,
                &format!("/v1/prompts/{}", "a".repeat(129)),
                None,
                npy_filled(2, 0.25),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "traversal DELETE",
            raw(Method::DELETE, "/v1/prompts/..%2Fkeep", None, vec![]),
            StatusCode::BAD_REQUEST,
        ),
        (
            "URL too long",
            get(&format!("/v1/prompts?{}", "q".repeat(9000))),
            StatusCode::URI_TOO_LONG,
        ),
        (
            "headers too large",
            Request::get("/v1/prompts")
                .header("x-junk", "j".repeat(40_000))
                .body(Body::empty())
                .unwrap(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
    ];
    for (what, req, want) in cases {
        let r = call(&s.state, req).await;
        assert_eq!(r.status, want, "{what}: {}", r.body);
        assert!(
            r.body["error"].is_string() && r.body["error_type"].is_string(),
            "{what}: {}",
            r.body
        );
    }
    // Inputs with NUL and control characters are just text.
    let r = call(
        &s.state,
        predict_bytes(
            json!({"inputs": "a\u{0}b\u{7}\u{202e}c", "max_new_tokens": 2})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    assert_eq!(
        snapshot(&s.prompts()),
        before,
        "the prompts folder is unchanged"
    );
    assert!(
        s.outside().is_empty(),
        "written next to the prompts folder: {:?}",
        s.outside()
    );
    assert_eq!(call(&s.state, get("/readyz")).await.status, StatusCode::OK);
}

trait MapUri {
    fn map_uri(self, uri: &str) -> Self;
}

impl MapUri for Request<Body> {
    fn map_uri(mut self, uri: &str) -> Self {
        *self.uri_mut() = uri.parse().unwrap();
        self
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Predict bodies that look almost right: the real fields with arbitrary values, sometimes extra ones.
fn predict_body() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            json_value(),
            ".{0,20}".prop_map(Value::from),
            prop::collection::vec(".{0,10}", 0..5).prop_map(Value::from)
        ],
        prop::option::of(prop_oneof![json_value(), (0u64..80).prop_map(Value::from)]),
        prop::option::of(prop_oneof![
            json_value(),
            prop::collection::vec(".{0,6}", 0..4).prop_map(Value::from)
        ]),
        prop::option::of(json_value()),
    )
        .prop_map(|(inputs, max_new_tokens, labels, extra)| {
            let mut body = json!({"inputs": inputs});
            if let Some(v) = max_new_tokens {
                body["max_new_tokens"] = v;
            }
            if let Some(v) = labels {
                body["labels"] = v;
            }
            if let Some(v) = extra {
                body["extra"] = v;
            }
            body
        })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_predict_body_gets_an_answer_or_a_4xx_json_error(bodies in prop::collection::vec(prop_oneof![predict_body(), json_value()], 1..4)) {
        let rt = runtime();
        rt.block_on(async {
            let s = setup(|c| { c.limits.row.max_new_tokens_limit = 64; c.limits.max_inputs = 8; }, true).await;
            for body in &bodies {
                let r = call(&s.state, predict_bytes(body.to_string().into_bytes())).await;
                let ok = r.status == StatusCode::OK && r.body["outputs"].is_array();
                let refused = r.status.is_client_error() && r.body["error"].is_string();
                prop_assert!(ok || refused, "{body} -> {} {}", r.status, r.body);
            }
            prop_assert_eq!(call(&s.state, get("/readyz")).await.status, StatusCode::OK);
            Ok(())
        })?;
    }

    #[test]
    fn any_task_name_is_stored_inside_the_folder_or_refused(name in "[a-zA-Z0-9._/%\\\\ -]{1,40}") {
        let rt = runtime();
        rt.block_on(async {
            let s = Rooted::new().await;
            let encoded: String = name.bytes().map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            }).collect();
            let r = call(&s.state, raw(Method::PUT, &format!("/v1/prompts/{encoded}"), None, npy_filled(2, 0.25))).await;
            prop_assert!(
                matches!(r.status.as_u16(), 200 | 201 | 400 | 404 | 405),
                "{name:?} -> {} {}", r.status, r.body
            );
            prop_assert!(s.outside().is_empty(), "{:?} wrote next to the folder: {:?}", name, s.outside());
            if r.status.is_success() {
                let stored = s.prompts().join(format!("{name}.safetensors"));
                prop_assert!(stored.is_file(), "{:?} stored elsewhere", name);
            }
            Ok(())
        })?;
    }
}
