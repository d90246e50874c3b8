//! KServe Open Inference Protocol v2 routes in-process: health, metadata, inference equal to
//! the /v1 predict route, versions, and a table of malformed inference requests.
use crate::common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::inproc::{build_state, call, defaults, get, predict_req, setup};
use serde_json::{json, Value};

fn infer(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn texts(data: Value, shape: Value) -> Value {
    json!({"name": "text_input", "datatype": "BYTES", "shape": shape, "data": data})
}

#[tokio::test]
async fn health_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let unloaded = build_state(dir.path(), defaults);
    let r = call(&unloaded, get("/v2/health/ready")).await;
    assert_eq!(
        (r.status, &r.body),
        (StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false}))
    );
    let r = call(&unloaded, get("/v2/health/live")).await;
    assert_eq!(
        (r.status, &r.body),
        (StatusCode::OK, &json!({"live": true}))
    );

    let s = setup(defaults, false).await;
    let r = call(&s.state, get("/v2/health/ready")).await;
    assert_eq!(
        (r.status, &r.body),
        (StatusCode::OK, &json!({"ready": true}))
    );
    let r = call(&s.state, get("/v2")).await;
    assert_eq!(r.body["name"], "promptd");
    assert!(r.body["version"].is_string() && r.body["extensions"].is_array());

    for path in ["/v2/models/keep", "/v2/models/keep/versions/1"] {
        let r = call(&s.state, get(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.body["name"], "keep");
        assert_eq!(r.body["versions"], json!(["1"]));
        assert_eq!(r.body["inputs"][0]["datatype"], "BYTES");
        assert_eq!(r.body["outputs"][0]["name"], "text_output");
    }
    let r = call(&s.state, get("/v2/models/keep/ready")).await;
    assert_eq!(r.body, json!({"name": "keep", "ready": true}));
    for path in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/keep/versions/2",
        "/v2/models/keep/versions/2/ready",
    ] {
        let r = call(&s.state, get(path)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert!(r.body["error"].is_string(), "{path}: {}", r.body);
    }
}

#[tokio::test]
async fn inference_equals_the_predict_route() {
    let s = setup(defaults, true).await;
    let inputs = ["translate: hello", "is it good? yes", "three"];
    let labels = ["yes", "no"];
    let want = call(
        &s.state,
        predict_req(
            "keep",
            json!({"inputs": inputs, "labels": labels, "max_new_tokens": 5}),
        ),
    )
    .await;
    assert_eq!(want.status, StatusCode::OK);
    let want = want.body["outputs"].as_array().unwrap().clone();

    for (path, data, shape) in [
        ("/v2/models/keep/infer", json!(inputs), json!([3])),
        (
            "/v2/models/keep/versions/1/infer",
            json!([[inputs[0]], [inputs[1]], [inputs[2]]]),
            json!([3, 1]),
        ),
    ] {
        let r = call(
            &s.state,
            infer(
                path,
                json!({
                    "id": "req-7",
                    "parameters": {"max_new_tokens": 5},
                    "inputs": [
                        texts(data, shape),
                        {"name": "labels", "datatype": "BYTES", "shape": [2], "data": labels},
                    ],
                }),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        assert_eq!(r.body["model_name"], "keep");
        assert_eq!(r.body["model_version"], "1");
        assert_eq!(r.body["id"], "req-7");
        let out = |name: &str| {
            r.body["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["name"] == name)
                .unwrap_or_else(|| panic!("no {name} in {}", r.body))
                .clone()
        };
        let text = out("text_output");
        assert_eq!(text["datatype"], "BYTES");
        assert_eq!(text["shape"], json!([3]));
        let label = out("label");
        let scores = out("scores");
        assert_eq!(scores["shape"], json!([3, 2]));
        assert_eq!(scores["datatype"], "FP64");
        for (i, w) in want.iter().enumerate() {
            assert_eq!(text["data"][i], w["text"]);
            assert_eq!(label["data"][i], w["label"]);
            for j in 0..2 {
                assert_eq!(
                    scores["data"][i * 2 + j],
                    w["scores"][j],
                    "row {i} label {j}"
                );
            }
        }
    }

    // Only the outputs asked for; without labels, no label or scores.
    let r = call(
        &s.state,
        infer(
            "/v2/models/keep/infer",
            json!({"inputs": [texts(json!(["hi"]), json!([1]))], "outputs": [{"name": "text_output"}]}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let names: Vec<_> = r.body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].clone())
        .collect();
    assert_eq!(names, [json!("text_output")]);
    assert!(r.body.get("id").is_none());

    // Inference is counted with the predict metrics.
    let m = call(&s.state, get("/metrics")).await;
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains("promptd_requests_total{status=\"200\",task=\"keep\"} 4"),
        "{text}"
    );
}

#[tokio::test]
async fn malformed_inference_requests_get_4xx_json_errors() {
    let s = setup(defaults, true).await;
    let ok_input = texts(json!(["a"]), json!([1]));
    let cases: Vec<(&str, String, StatusCode)> = vec![
        ("not json", "{".into(), StatusCode::BAD_REQUEST),
        ("no inputs", json!({"inputs": []}).to_string(), StatusCode::BAD_REQUEST),
        ("inputs missing", json!({}).to_string(), StatusCode::UNPROCESSABLE_ENTITY),
        (
            "FP32 input",
            json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        ("shape too big", json!({"inputs": [texts(json!(["a"]), json!([2]))]}).to_string(), StatusCode::BAD_REQUEST),
        ("negative dim", json!({"inputs": [texts(json!(["a"]), json!([-1]))]}).to_string(), StatusCode::BAD_REQUEST),
        ("overflowing shape", json!({"inputs": [texts(json!(["a"]), json!([i64::MAX, 4]))]}).to_string(), StatusCode::BAD_REQUEST),
        ("number element", json!({"inputs": [texts(json!([1]), json!([1]))]}).to_string(), StatusCode::BAD_REQUEST),
        ("deep nesting", json!({"inputs": [texts(json!([[[[[[[[[["a"]]]]]]]]]]), json!([1]))]}).to_string(), StatusCode::BAD_REQUEST),
        ("two text inputs", json!({"inputs": [ok_input.clone(), ok_input.clone()]}).to_string(), StatusCode::BAD_REQUEST),
        ("only labels", json!({"inputs": [{"name": "labels", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}).to_string(), StatusCode::BAD_REQUEST),
        ("unknown output", json!({"inputs": [ok_input.clone()], "outputs": [{"name": "logits"}]}).to_string(), StatusCode::BAD_REQUEST),
        ("bad max_new_tokens", json!({"inputs": [ok_input.clone()], "parameters": {"max_new_tokens": "many"}}).to_string(), StatusCode::UNPROCESSABLE_ENTITY),
        ("huge max_new_tokens", json!({"inputs": [ok_input.clone()], "parameters": {"max_new_tokens": 1u64 << 40}}).to_string(), StatusCode::UNPROCESSABLE_ENTITY),
        ("empty texts", json!({"inputs": [texts(json!([]), json!([0]))]}).to_string(), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (what, body, status) in cases {
        let req = Request::post("/v2/models/keep/infer")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let r = call(&s.state, req).await;
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert!(r.body["error"].is_string(), "{what}: {}", r.body);
    }
    let r = call(
        &s.state,
        infer(
            "/v2/models/nope/infer",
            json!({"inputs": [ok_input.clone()]}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &s.state,
        infer(
            "/v2/models/keep/versions/3/infer",
            json!({"inputs": [ok_input]}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
