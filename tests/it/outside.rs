//! What outside probes found, against a real server in-process: body limits by header and by
//! stream, huge inputs refused before tokenizing, slow and idle connections closed, a cap on
//! open connections, KServe v2 as tritonclient speaks it (HTTP JSON without a content type,
//! the binary tensor data extension, and the gRPC service), and gRPC reflection v1alpha.
use crate::common;

use std::time::{Duration, Instant};

use common::inproc::Served;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the server sends until it closes the connection, or `None` if it is still open
/// after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status line's code and the body of a raw HTTP/1.1 response.
fn status_and_body(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_gets_413_at_once() {
    let s = Served::start(|c| c.limits.max_prompt_bytes = 1 << 20).await;
    for (route, flag) in [
        ("PUT /v1/prompts/big", "--max-prompt-bytes"),
        ("POST /v1/tasks/keep/predict", "--max-body-bytes"),
        ("POST /v2/models/keep/infer", "--max-body-bytes"),
    ] {
        let mut stream = TcpStream::connect(s.http).await.unwrap();
        // 1 GB declared, 10 bytes sent, and the client waits.
        let head = format!(
            "{route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n0123456789"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{route}: no answer within 5 s"))
            .unwrap();
        let (code, body) = status_and_body(&buf[..n]);
        assert_eq!(code, 413, "{route}: {}", String::from_utf8_lossy(&buf[..n]));
        assert!(
            body.contains("payload_too_large") && body.contains(flag),
            "{route}: {body}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{route}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_body_gets_a_readable_413_while_the_client_still_sends() {
    let s = Served::start(|_| {}).await;
    let client = reqwest::Client::new();
    let big = json!({"inputs": "a ".repeat(3 << 20)}).to_string();
    // Declared length (reqwest sends Content-Length) and streamed (chunked, no length).
    let declared = client
        .post(s.url("/v1/tasks/keep/predict"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .expect("the client sees the answer, not a reset");
    assert_eq!(declared.status(), 413);
    let body: Value = declared.json().await.unwrap();
    assert_eq!(body["error_type"], "payload_too_large", "{body}");

    // Streamed: chunked, no length, sent in full before the client reads.
    let chunked = |body: &[u8]| {
        let mut out = Vec::new();
        for c in body.chunks(64 << 10) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    };
    let head = "POST /v1/tasks/keep/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    for (body, want) in [
        (big.as_bytes(), 413),
        (br#"{"inputs": "a b", "max_new_tokens": 2}"#.as_slice(), 200),
    ] {
        let mut stream = TcpStream::connect(s.http).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
            .write_all(&chunked(body))
            .await
            .expect("the server reads what the client sends");
        let answer = read_until_closed(&mut stream, Duration::from_secs(20))
            .await
            .expect("the connection closes after the answer");
        let (code, text) = status_and_body(&answer);
        assert_eq!(code, want, "{}", String::from_utf8_lossy(&answer));
        if want == 413 {
            assert!(text.contains("--max-body-bytes"), "{text}");
        }
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_inputs_are_refused_before_tokenizing_and_memory_stays_flat() {
    let s = Served::start(|c| c.limits.max_body_bytes = 2 << 20).await;
    let client = reqwest::Client::new();
    let body = json!({"inputs": "word ".repeat(200_000)}).to_string();
    let ask = || {
        client
            .post(s.url("/v1/tasks/keep/predict"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    for _ in 0..10 {
        assert_eq!(ask().await.unwrap().status(), 422);
    }
    let before = rss_bytes();
    let started = Instant::now();
    for _ in 0..200 {
        let r = ask().await.unwrap();
        assert_eq!(r.status(), 422);
        let v: Value = r.json().await.unwrap();
        let why = v["error"].as_str().unwrap();
        assert!(
            why.contains("1000000 bytes") && why.contains("--max-input-tokens"),
            "{why}"
        );
    }
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "200 requests of 1 MB inputs: {:.1} s, RSS grew {} KiB",
        started.elapsed().as_secs_f64(),
        grown >> 10
    );
    assert!(grown < 64 << 20, "RSS grew {} MiB", grown >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let s = Served::start(|c| c.connections.header_read_timeout = Duration::from_millis(300)).await;
    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(s.http).await.unwrap();
    let started = Instant::now();
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a connection that never sends anything stays open"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Slowloris: a request line, then nothing.
    let mut slow = TcpStream::connect(s.http).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        read_until_closed(&mut slow, Duration::from_secs(5))
            .await
            .is_some(),
        "a connection that never finishes its headers stays open"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Idle keep-alive: one request answered, then silence.
    let mut idle = TcpStream::connect(s.http).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_until_closed(&mut idle, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection stays open");
    assert_eq!(status_and_body(&answered).0, 200);

    // A connection that keeps asking is served across the timeout.
    let client = reqwest::Client::new();
    for _ in 0..6 {
        let r = client.get(s.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_and_counted() {
    let s = Served::start(|c| c.connections.max_connections = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(s.http).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).await.unwrap();
        assert_eq!(status_and_body(&buf[..n]).0, 200);
        open.push(c);
    }
    let mut over = TcpStream::connect(s.http).await.unwrap();
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = read_until_closed(&mut over, Duration::from_secs(3))
        .await
        .expect("the fourth connection is closed at once");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let metrics = s.state.metrics.render();
    assert_eq!(
        common::metric(&metrics, "promptd_http_connections "),
        3.0,
        "{metrics}"
    );
    assert!(common::metric(&metrics, "promptd_http_connections_refused_total") >= 1.0);
    // A closed connection frees its place.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = reqwest::Client::new().get(s.url("/healthz")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_port_has_the_same_connection_limits() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let s = Served::start(|c| {
        c.connections.max_connections = 2;
        c.connections.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let gauge = |name: &str| common::metric(&s.state.metrics.render(), name);
    // A connection that never sends a byte is closed, and frees its place.
    let mut silent = TcpStream::connect(s.grpc_addr).await.unwrap();
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent gRPC connection stays open"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge("promptd_grpc_connections ") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the silent connection's place is never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two live clients fill the cap (answered, and kept past the header deadline by pings)...
    let mut clients = Vec::new();
    for _ in 0..2 {
        let channel = tonic::transport::Channel::from_shared(s.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        let request = HealthCheckRequest {
            service: String::new(),
        };
        health.check(request).await.unwrap();
        clients.push(health);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    for health in &mut clients {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        health.check(request).await.unwrap();
    }
    // ...and a third connection is closed at once and counted.
    let mut over = TcpStream::connect(s.grpc_addr).await.unwrap();
    let _ = over.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let got = read_until_closed(&mut over, Duration::from_secs(3))
        .await
        .expect("the third gRPC connection is closed at once");
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(gauge("promptd_grpc_connections "), 2.0);
    assert!(gauge("promptd_grpc_connections_refused_total") >= 1.0);
    // HTTP's count is its own.
    assert_eq!(gauge("promptd_http_connections_refused_total"), 0.0);
}

/// `/v1` predict's texts for `inputs` on task keep.
async fn predicted(s: &Served, inputs: &[&str], labels: Option<&[&str]>) -> Value {
    let mut body = json!({"inputs": inputs, "max_new_tokens": 4});
    if let Some(labels) = labels {
        body["labels"] = json!(labels);
    }
    let r = reqwest::Client::new()
        .post(s.url("/v1/tasks/keep/predict"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The generated texts of a `/v1` predict answer.
fn texts_of(answer: &Value) -> Vec<&str> {
    answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["text"].as_str().unwrap())
        .collect()
}

fn bytes_tensor(items: &[&str]) -> Vec<u8> {
    promptd::api::kserve::wire::encode_bytes(items.iter().copied())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_http_takes_json_without_a_content_type_and_the_binary_extension() {
    let s = Served::start(|_| {}).await;
    let texts = ["kernel time", "who model this"];
    let want = predicted(&s, &texts, Some(&["yes", "no"])).await;
    let want_texts = texts_of(&want);
    let client = reqwest::Client::new();

    // JSON with no Content-Type, as tritonclient.http sends it.
    let json_req = json!({
        "inputs": [{"name": "text_input", "shape": [2, 1], "datatype": "BYTES", "data": texts}],
        "parameters": {"max_new_tokens": 4}
    });
    let r = client
        .post(s.url("/v2/models/keep/infer"))
        .body(json_req.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outputs"][0]["data"], json!(want_texts));

    // The binary tensor data extension both ways: inputs as raw bytes after the JSON header,
    // text_output asked for as binary, scores as JSON.
    let raw_texts = bytes_tensor(&texts);
    let raw_labels = bytes_tensor(&["yes", "no"]);
    let header = json!({
        "id": "42",
        "inputs": [
            {"name": "text_input", "shape": [2], "datatype": "BYTES",
             "parameters": {"binary_data_size": raw_texts.len()}},
            {"name": "labels", "shape": [2], "datatype": "BYTES",
             "parameters": {"binary_data_size": raw_labels.len()}}
        ],
        "outputs": [
            {"name": "text_output", "parameters": {"binary_data": true}},
            {"name": "scores", "parameters": {"binary_data": false}}
        ],
        "parameters": {"max_new_tokens": 4}
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&raw_texts);
    body.extend_from_slice(&raw_labels);
    let r = client
        .post(s.url("/v2/models/keep/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let json_len: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    assert_eq!(head["id"], "42");
    let text_output = &head["outputs"][0];
    assert_eq!(text_output["name"], "text_output");
    assert!(text_output.get("data").is_none(), "{head}");
    let size = text_output["parameters"]["binary_data_size"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(json_len + size, bytes.len());
    let decoded = promptd::api::kserve::wire::decode_bytes(&bytes[json_len..]).unwrap();
    assert_eq!(decoded, want_texts);
    let scores: Vec<f64> = head["outputs"][1]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let want_scores: Vec<f64> = want["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o["scores"].as_array().unwrap().clone())
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(scores, want_scores);

    // Malformed binary requests are 400s that say what is wrong.
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "header longer than the body",
            header.clone().into_bytes(),
            "999999".into(),
        ),
        (
            "binary data no input claims",
            [header.as_bytes(), &raw_texts, &raw_labels, b"xx"].concat(),
            header.len().to_string(),
        ),
        (
            "truncated element",
            [
                header.as_bytes(),
                &raw_texts[..raw_texts.len() - 1],
                &raw_labels,
                b"x",
            ]
            .concat(),
            header.len().to_string(),
        ),
    ];
    for (what, body, len) in cases {
        let r = client
            .post(s.url("/v2/models/keep/infer"))
            .header("Inference-Header-Content-Length", len)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error_type"], "bad_request", "{what}: {v}");
    }
}

/// One HTTP/1.1 response read off `stream`: status, headers (lowercase names), body.
async fn read_response(stream: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("an answer within 20 s")
            .unwrap();
        assert!(n > 0, "closed before the headers");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (code, headers, buf[head_end..head_end + len].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_tritonclient_request_is_answered_in_its_own_format() {
    // tritonclient.http 2.73's infer() with its defaults, recorded off the wire
    // (scripts/record_tritonclient_request.py): binary inputs, binary outputs, no Content-Type.
    let s = Served::start(|_| {}).await;
    let want = predicted(&s, &["kernel time", "who model this"], None).await;
    let recorded =
        std::fs::read(common::fixtures().join("kserve/tritonclient_http_infer.bin")).unwrap();
    let mut stream = TcpStream::connect(s.http).await.unwrap();
    stream.write_all(&recorded).await.unwrap();
    let (code, headers, body) = read_response(&mut stream).await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let json_len: usize = headers
        .iter()
        .find(|(k, _)| k == "inference-header-content-length")
        .expect("binary outputs announce their JSON part")
        .1
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&body[..json_len]).unwrap();
    let outputs = head["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{head}");
    assert_eq!(outputs[0]["name"], "text_output");
    let texts = promptd::api::kserve::wire::decode_bytes(&body[json_len..]).unwrap();
    let want = texts_of(&want);
    assert_eq!(texts, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_grpc_inference_service_answers_like_http() {
    use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
    use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use promptd::api::grpc::kserve::pb;

    let s = Served::start(|_| {}).await;
    let texts = ["kernel time", "who model this"];
    let want = predicted(&s, &texts, None).await;
    let mut client = GrpcInferenceServiceClient::connect(s.grpc_url())
        .await
        .unwrap();
    assert!(
        client
            .server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = client
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "promptd");
    let model = client
        .model_metadata(pb::ModelMetadataRequest {
            name: "keep".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.inputs[0].name, "text_input");
    assert_eq!(model.versions, vec!["1".to_string()]);
    let unknown = client
        .model_ready(pb::ModelReadyRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut params = std::collections::HashMap::new();
    params.insert(
        "max_new_tokens".to_string(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(4)),
        },
    );
    let request = |raw: bool| pb::ModelInferRequest {
        model_name: "keep".into(),
        id: "7".into(),
        parameters: params.clone(),
        inputs: vec![InferInputTensor {
            name: "text_input".into(),
            datatype: "BYTES".into(),
            shape: vec![2, 1],
            parameters: Default::default(),
            contents: (!raw).then(|| pb::InferTensorContents {
                bytes_contents: texts.iter().map(|t| t.as_bytes().to_vec()).collect(),
                ..Default::default()
            }),
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: "text_output".into(),
            parameters: Default::default(),
        }],
        raw_input_contents: if raw {
            vec![bytes_tensor(&texts)]
        } else {
            vec![]
        },
        ..Default::default()
    };
    for raw in [true, false] {
        let reply = client.model_infer(request(raw)).await.unwrap().into_inner();
        assert_eq!(reply.id, "7");
        assert_eq!(reply.model_version, "1");
        assert_eq!(reply.outputs.len(), 1);
        assert_eq!(reply.outputs[0].datatype, "BYTES");
        assert_eq!(reply.outputs[0].shape, vec![2]);
        let got = promptd::api::kserve::wire::decode_bytes(&reply.raw_output_contents[0]).unwrap();
        let want = texts_of(&want);
        assert_eq!(got, want, "raw inputs: {raw}");
    }
    let mut bad = request(true);
    bad.inputs[0].datatype = "FP32".into();
    let e = client.model_infer(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let mut bad = request(true);
    bad.inputs[0].shape = vec![3];
    let e = client.model_infer(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_reflection_answers_v1alpha_too() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let s = Served::start(|_| {}).await;
    let channel = tonic::transport::Channel::from_shared(s.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("{reply:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "promptd.v1.Promptd",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
}
