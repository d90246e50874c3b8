//! The OpenAPI description stays in sync with the code: its paths are exactly the router's,
//! every documented method is routed and every other method gets 405, and real responses of
//! every route have a documented status and match the documented schema (no missing required
//! field, no undocumented field).
use crate::common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::inproc::{build_state, call, defaults, setup, Reply};
use common::npy_filled;
use promptd::api::http::openapi::{document, ApiDoc};
use serde_json::{json, Value};
use utoipa::OpenApi;

/// The document an open server serves.
fn spec() -> Value {
    serde_json::to_value(document(false)).unwrap()
}

#[test]
fn keys_are_declared_exactly_where_the_server_asks_for_them() {
    // Open server: nothing requires a key.
    let open = spec();
    assert!(open.get("security").is_none(), "{}", open["security"]);
    assert!(open["components"]
        .get("securitySchemes")
        .is_none_or(|s| s.as_object().unwrap().is_empty()));
    // With a tenants file: every route but the probes and this document.
    let secured = serde_json::to_value(document(true)).unwrap();
    assert_eq!(secured["security"], json!([{"bearer": []}]));
    for (path, item) in secured["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let open_route = promptd::api::http::auth::is_public(path);
            assert_eq!(
                op.get("security") == Some(&json!([])),
                open_route,
                "{method} {path}"
            );
        }
    }
    // The full document lists every route either way.
    assert_eq!(
        serde_json::to_value(ApiDoc::openapi()).unwrap()["paths"]
            .as_object()
            .unwrap()
            .len(),
        open["paths"].as_object().unwrap().len()
    );
}

/// Paths given to `.route(...)` in src/api/http/mod.rs.
fn routed_paths() -> BTreeSet<String> {
    let src = include_str!("../../src/api/http/mod.rs");
    src.split(".route(")
        .skip(1)
        .map(|rest| {
            let start = rest.find('"').unwrap() + 1;
            let len = rest[start..].find('"').unwrap();
            rest[start..start + len].to_string()
        })
        .collect()
}

fn concrete(path: &str) -> String {
    path.replace("{task}", "keep")
        .replace("{version}", "1")
        .replace("{id}", "no-such-job")
}

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

#[tokio::test]
async fn documented_paths_and_methods_are_exactly_the_routed_ones() {
    let spec = spec();
    let paths = spec["paths"].as_object().unwrap();
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(
        documented,
        routed_paths(),
        "OpenAPI paths differ from the router's"
    );

    let s = setup(defaults, true).await;
    for (path, item) in paths {
        for method in METHODS {
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(concrete(path))
                .body(Body::empty())
                .unwrap();
            let r = call(&s.state, req).await;
            if item.get(method).is_some() {
                assert_ne!(
                    r.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but not routed"
                );
                assert_ne!(r.body["error_type"], "not_found", "{method} {path}");
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is routed but not documented"
                );
            }
        }
    }

    // The served document is this one, with the server's limits in the request schemas.
    let r = call(&s.state, common::inproc::get("/openapi.json")).await;
    assert_eq!(r.body, promptd::api::http::openapi::served(&s.state));
    assert_eq!(r.body["paths"], spec["paths"]);
    assert_eq!(
        r.body["components"]["schemas"]["PredictRequest"]["properties"]["max_new_tokens"]
            ["maximum"],
        1024
    );
    assert_eq!(spec["openapi"], "3.1.0");
}

/// Follows `$ref`s into `components`.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            resolve(spec, &spec["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    }
}

/// Checks `v` against the subset of JSON Schema utoipa emits; returns why not.
fn check(spec: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if let Some(options) = schema
        .get("oneOf")
        .or(schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        return if options.iter().any(|o| check(spec, o, v, at).is_ok()) {
            Ok(())
        } else {
            Err(format!("{at}: {v} matches no option of {schema}"))
        };
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        return all.iter().try_for_each(|o| check(spec, o, v, at));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(()), // any value
    };
    if !types.iter().any(|t| type_ok(t, v)) {
        return Err(format!("{at}: {v} is not {types:?}"));
    }
    match v {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            for req in schema["required"].as_array().into_iter().flatten() {
                let req = req.as_str().unwrap();
                if !map.contains_key(req) {
                    return Err(format!("{at}: required field {req} missing"));
                }
            }
            let free = schema
                .get("additionalProperties")
                .is_some_and(|a| a != false);
            for (k, val) in map {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => check(spec, s, val, &format!("{at}.{k}"))?,
                    None if free || props.is_none() => {}
                    None => return Err(format!("{at}: field {k} is not documented")),
                }
            }
        }
        Value::Array(items) if schema.get("items").is_some() => {
            for (i, item) in items.iter().enumerate() {
                check(spec, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// (method, URI, documented path, JSON body, raw body)
type Case = (
    Method,
    &'static str,
    &'static str,
    Option<Value>,
    Option<Vec<u8>>,
);

fn request(method: Method, uri: &str, body: Option<Value>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    b.body(body).unwrap()
}

/// Asserts the response's status is documented for `(method, path)` and its body matches.
fn conforms(spec: &Value, method: &str, path: &str, r: &Reply) {
    let op = &spec["paths"][path][method];
    assert!(op.is_object(), "{method} {path} not documented");
    let doc = &op["responses"][r.status.as_str()];
    assert!(
        doc.is_object(),
        "{method} {path} answered {} which is not documented: {}",
        r.status,
        r.body
    );
    match doc["content"]["application/json"]["schema"].as_object() {
        Some(_) => {
            let schema = &doc["content"]["application/json"]["schema"];
            if let Err(why) = check(spec, schema, &r.body, "body") {
                panic!("{method} {path} {}: {why}\n{}", r.status, r.body);
            }
        }
        None => {
            let text_only = doc["content"]
                .as_object()
                .is_none_or(|c| !c.contains_key("application/json"));
            assert!(text_only, "{method} {path}");
        }
    }
}

#[tokio::test]
async fn real_responses_match_the_documented_schemas() {
    let spec = spec();
    let dir = tempfile::tempdir().unwrap();
    let unloaded = build_state(dir.path(), defaults);
    for (path, method) in [
        ("/readyz", "get"),
        ("/v2/health/ready", "get"),
        ("/v1/prompts", "get"),
    ] {
        let r = call(&unloaded, request(Method::GET, path, None)).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        conforms(&spec, method, path, &r);
    }

    let s = setup(defaults, true).await;
    let labels = json!({"inputs": ["a b c", "d"], "labels": ["yes", "no"], "max_new_tokens": 3});
    let infer = |labels: bool| {
        let mut inputs =
            vec![json!({"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hi"]})];
        if labels {
            inputs.push(
                json!({"name": "labels", "datatype": "BYTES", "shape": [2], "data": ["x", "y"]}),
            );
        }
        json!({"id": "1", "inputs": inputs, "parameters": {"max_new_tokens": 2}})
    };
    let cases: Vec<Case> = vec![
        (Method::GET, "/healthz", "/healthz", None, None),
        (Method::GET, "/readyz", "/readyz", None, None),
        (Method::GET, "/metrics", "/metrics", None, None),
        (Method::GET, "/v1/prompts", "/v1/prompts", None, None),
        (
            Method::GET,
            "/v1/prompts/keep",
            "/v1/prompts/{task}",
            None,
            None,
        ),
        (
            Method::GET,
            "/v1/prompts/nope",
            "/v1/prompts/{task}",
            None,
            None,
        ),
        (
            Method::GET,
            "/v1/prompts/.bad",
            "/v1/prompts/{task}",
            None,
            None,
        ),
        (
            Method::PUT,
            "/v1/prompts/fresh",
            "/v1/prompts/{task}",
            None,
            Some(npy_filled(3, 0.5)),
        ),
        (
            Method::PUT,
            "/v1/prompts/fresh",
            "/v1/prompts/{task}",
            None,
            Some(npy_filled(4, 0.25)),
        ),
        (
            Method::PUT,
            "/v1/prompts/fresh",
            "/v1/prompts/{task}",
            None,
            Some(b"junk".to_vec()),
        ),
        (
            Method::PUT,
            "/v1/prompts/fresh",
            "/v1/prompts/{task}",
            None,
            Some(npy_filled(3, f32::NAN)),
        ),
        (
            Method::DELETE,
            "/v1/prompts/fresh",
            "/v1/prompts/{task}",
            None,
            None,
        ),
        (
            Method::DELETE,
            "/v1/prompts/fresh",
            "/v1/prompts/{task}",
            None,
            None,
        ),
        (
            Method::POST,
            "/v1/tasks/keep/predict",
            "/v1/tasks/{task}/predict",
            Some(labels.clone()),
            None,
        ),
        (
            Method::POST,
            "/v1/tasks/keep/predict",
            "/v1/tasks/{task}/predict",
            Some(json!({"inputs": "x"})),
            None,
        ),
        (
            Method::POST,
            "/v1/tasks/nope/predict",
            "/v1/tasks/{task}/predict",
            Some(labels),
            None,
        ),
        (
            Method::POST,
            "/v1/tasks/keep/predict",
            "/v1/tasks/{task}/predict",
            Some(json!({"inputs": []})),
            None,
        ),
        (
            Method::POST,
            "/v1/tasks/keep/predict",
            "/v1/tasks/{task}/predict",
            Some(json!({"input": "x"})),
            None,
        ),
        (Method::GET, "/v2", "/v2", None, None),
        (
            Method::GET,
            "/v2/health/live",
            "/v2/health/live",
            None,
            None,
        ),
        (
            Method::GET,
            "/v2/health/ready",
            "/v2/health/ready",
            None,
            None,
        ),
        (
            Method::GET,
            "/v2/models/keep",
            "/v2/models/{task}",
            None,
            None,
        ),
        (
            Method::GET,
            "/v2/models/nope",
            "/v2/models/{task}",
            None,
            None,
        ),
        (
            Method::GET,
            "/v2/models/keep/ready",
            "/v2/models/{task}/ready",
            None,
            None,
        ),
        (
            Method::GET,
            "/v2/models/keep/versions/1",
            "/v2/models/{task}/versions/{version}",
            None,
            None,
        ),
        (
            Method::GET,
            "/v2/models/keep/versions/7",
            "/v2/models/{task}/versions/{version}",
            None,
            None,
        ),
        (
            Method::GET,
            "/v2/models/keep/versions/1/ready",
            "/v2/models/{task}/versions/{version}/ready",
            None,
            None,
        ),
        (
            Method::POST,
            "/v2/models/keep/infer",
            "/v2/models/{task}/infer",
            Some(infer(true)),
            None,
        ),
        (
            Method::POST,
            "/v2/models/keep/infer",
            "/v2/models/{task}/infer",
            Some(infer(false)),
            None,
        ),
        (
            Method::POST,
            "/v2/models/keep/infer",
            "/v2/models/{task}/infer",
            Some(json!({"inputs": [{"name": "t", "datatype": "INT8", "shape": [1], "data": [1]}]})),
            None,
        ),
        (
            Method::POST,
            "/v2/models/nope/infer",
            "/v2/models/{task}/infer",
            Some(infer(false)),
            None,
        ),
        (
            Method::POST,
            "/v2/models/keep/versions/1/infer",
            "/v2/models/{task}/versions/{version}/infer",
            Some(infer(true)),
            None,
        ),
        (
            Method::POST,
            "/v2/models/keep/versions/2/infer",
            "/v2/models/{task}/versions/{version}/infer",
            Some(infer(true)),
            None,
        ),
        (
            Method::GET,
            "/v1/tune-jobs/nope/curve.svg",
            "/v1/tune-jobs/{id}/curve.svg",
            None,
            None,
        ),
        (Method::GET, "/openapi.json", "/openapi.json", None, None),
    ];
    let mut statuses = BTreeSet::new();
    for (method, uri, path, json_body, raw) in cases {
        let req = match raw {
            Some(bytes) => Request::builder()
                .method(method.clone())
                .uri(uri)
                .body(Body::from(bytes))
                .unwrap(),
            None => request(method.clone(), uri, json_body),
        };
        let r = call(&s.state, req).await;
        statuses.insert(r.status.as_u16());
        conforms(&spec, &method.as_str().to_lowercase(), path, &r);
    }
    // The table did reach successes and the common errors.
    for want in [200, 201, 204, 400, 404, 422] {
        assert!(statuses.contains(&want), "no {want} in {statuses:?}");
    }
}

/// (method, URI, documented path, API key, JSON body)
type KeyedCase = (
    Method,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<Value>,
);

#[tokio::test]
async fn tenant_errors_are_documented_too() {
    let spec = serde_json::to_value(document(true)).unwrap();
    let conf = tempfile::tempdir().unwrap();
    let path = conf.path().join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "[[tenants]]\nname = \"acme\"\nkey_sha256 = [\"{}\"]\ntasks = [\"acme.*\"]\n[tenants.quotas]\nrequests_per_second = 0.01\nburst = 1\n",
            promptd::tenants::hash_key("acme-key")
        ),
    )
    .unwrap();
    let s = setup(|c| c.tenants = Some(path.clone()), true).await;
    let with_key = |method: Method, uri: &str, key: Option<&str>, body: Option<Value>| {
        let mut r = request(method, uri, body);
        if let Some(k) = key {
            r.headers_mut().insert(
                header::AUTHORIZATION,
                format!("Bearer {k}").parse().unwrap(),
            );
        }
        r
    };
    let predict = json!({"inputs": "x", "max_new_tokens": 1});
    let cases: Vec<KeyedCase> = vec![
        (Method::GET, "/v1/prompts", "/v1/prompts", None, None),
        (Method::GET, "/metrics", "/metrics", Some("acme-key"), None),
        (Method::GET, "/v2", "/v2", None, None),
        (
            Method::GET,
            "/v1/prompts/keep",
            "/v1/prompts/{task}",
            Some("acme-key"),
            None,
        ),
        (
            Method::DELETE,
            "/v1/prompts/keep",
            "/v1/prompts/{task}",
            Some("acme-key"),
            None,
        ),
        (
            Method::PUT,
            "/v1/prompts/keep",
            "/v1/prompts/{task}",
            Some("acme-key"),
            None,
        ),
        (
            Method::POST,
            "/v1/tasks/keep/predict",
            "/v1/tasks/{task}/predict",
            Some("acme-key"),
            Some(predict.clone()),
        ),
        (
            Method::POST,
            "/v1/tasks/acme.x/predict",
            "/v1/tasks/{task}/predict",
            Some("acme-key"),
            Some(predict.clone()),
        ),
        (
            Method::POST,
            "/v1/tasks/acme.x/predict",
            "/v1/tasks/{task}/predict",
            Some("acme-key"),
            Some(predict.clone()),
        ),
        (
            Method::GET,
            "/v2/models/keep",
            "/v2/models/{task}",
            Some("acme-key"),
            None,
        ),
        (
            Method::POST,
            "/v2/models/keep/infer",
            "/v2/models/{task}/infer",
            None,
            Some(json!({"inputs": []})),
        ),
    ];
    let mut statuses = BTreeSet::new();
    for (method, uri, documented, key, body) in cases {
        let r = call(&s.state, with_key(method.clone(), uri, key, body)).await;
        statuses.insert(r.status.as_u16());
        conforms(&spec, &method.as_str().to_lowercase(), documented, &r);
    }
    for want in [401, 403, 429] {
        assert!(statuses.contains(&want), "no {want} in {statuses:?}");
    }
}
