//! The OpenAI-compatible routes and streaming, on a real socket: completions and chat answer
//! as the predict route does, errors take OpenAI's shape, streams carry the same text as the
//! whole answer, and a client that goes away frees its row at the next decode step.
use crate::common;

use std::time::Duration;

use common::inproc::Served;
use common::metric;
use serde_json::{json, Value};

/// The `data:` payloads of a server-sent event stream.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, String) {
    let r = client.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

async fn json_post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let (status, text) = post(client, url, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_streams_the_same_text_as_the_whole_answer() {
    let s = Served::start(|_| {}).await;
    let client = reqwest::Client::new();
    let body = json!({"inputs": ["a first input", "second"], "max_new_tokens": 12});
    let (status, whole) = json_post(&client, s.url("/v1/tasks/keep/predict"), body.clone()).await;
    assert_eq!(status, 200, "{whole}");
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (status, text) = post(&client, s.url("/v1/tasks/keep/predict"), streamed).await;
    assert_eq!(status, 200, "{text}");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let mut texts = vec![String::new(); 2];
    let mut tokens = vec![Vec::new(); 2];
    let mut outputs = vec![Value::Null; 2];
    for d in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(d).unwrap();
        let row = chunk["row"].as_u64().unwrap() as usize;
        texts[row].push_str(chunk["text"].as_str().unwrap());
        if let Some(t) = chunk["token_id"].as_i64() {
            tokens[row].push(t);
        } else {
            outputs[row] = chunk["output"].clone();
        }
    }
    for row in 0..2 {
        let want = &whole["outputs"][row];
        assert_eq!(texts[row], want["text"].as_str().unwrap(), "row {row}");
        assert_eq!(json!(tokens[row]), want["token_ids"], "row {row}");
        assert_eq!(&outputs[row], want, "row {row}");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_ends_the_text_before_it() {
    let s = Served::start(|_| {}).await;
    let client = reqwest::Client::new();
    let url = s.url("/v1/tasks/keep/predict");
    let (_, whole) = json_post(
        &client,
        url.clone(),
        json!({"inputs": "stop here", "max_new_tokens": 16}),
    )
    .await;
    let text = whole["outputs"][0]["text"].as_str().unwrap().to_string();
    // Stop at the third character of the greedy text: what comes before it is the answer.
    let stop: String = text.chars().skip(2).take(2).collect();
    assert!(!stop.is_empty(), "greedy text too short: {text:?}");
    let cut = &text[..text.find(&stop).unwrap()];
    let body = json!({"inputs": "stop here", "max_new_tokens": 16, "stop": [stop]});
    let (status, got) = json_post(&client, url.clone(), body.clone()).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["outputs"][0]["text"], json!(cut));
    assert_eq!(got["outputs"][0]["finish_reason"], json!("stop"));
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, sse) = post(&client, url, streamed).await;
    let joined: String = sse_data(&sse)
        .iter()
        .filter(|d| d.starts_with('{'))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(joined, cut);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_request_samples_the_same_each_time() {
    let s = Served::start(|_| {}).await;
    let client = reqwest::Client::new();
    let url = s.url("/v1/tasks/keep/predict");
    let ask = |seed: u64| json!({"inputs": ["sample me", "and me"], "max_new_tokens": 16, "temperature": 1.0, "top_p": 0.9, "seed": seed, "n": 2});
    let (status, a) = json_post(&client, url.clone(), ask(5)).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["outputs"].as_array().unwrap().len(), 4);
    let (_, b) = json_post(&client, url.clone(), ask(5)).await;
    assert_eq!(a["outputs"], b["outputs"]);
    let mut others = Vec::new();
    for seed in 6..10 {
        others.push(json_post(&client, url.clone(), ask(seed)).await.1["outputs"].clone());
    }
    assert!(
        others.iter().any(|o| o != &a["outputs"]),
        "seeds changed nothing"
    );
    // Greedy stays greedy: no temperature, no sampling.
    let greedy = json!({"inputs": "sample me", "max_new_tokens": 16});
    let (_, g1) = json_post(&client, url.clone(), greedy.clone()).await;
    let (_, g2) = json_post(&client, url, greedy).await;
    assert_eq!(g1, g2);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_frees_its_row_at_the_next_step() {
    let s = Served::start(|c| c.limits.row.max_new_tokens_limit = 4096).await;
    let client = reqwest::Client::new();
    let metrics = |client: reqwest::Client, url: String| async move {
        client.get(url).send().await.unwrap().text().await.unwrap()
    };
    let max = 4000;
    // Waits until no row is in the engine.
    let idle = |client: reqwest::Client, url: String| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = client.get(&url).send().await.unwrap().text().await.unwrap();
            if metric(&text, "promptd_engine_rows ") == 0.0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a row still decodes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // A row still decoding after a few tokens: the tiny random model ends some inputs by
    // itself within a few tokens (which ones has varied between runs), so the first input
    // that does not.
    let mut running = None;
    for input in [
        "go on and on",
        "keep going please",
        "and then some more",
        "tell me a long story",
        "again and again and again",
        "one two three four five six",
    ] {
        idle(client.clone(), s.url("/metrics")).await;
        let body = json!({"inputs": input, "max_new_tokens": max, "stream": true});
        let mut response = client
            .post(s.url("/v1/tasks/keep/predict"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // A few token chunks: the row is decoding.
        let mut seen = String::new();
        let mut ended = false;
        while seen.matches("token_id").count() < 3 {
            match response.chunk().await.unwrap() {
                Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if ended || seen.contains("\"output\"") {
            continue;
        }
        let text = metrics(client.clone(), s.url("/metrics")).await;
        if metric(&text, "promptd_engine_rows ") == 1.0 {
            running = Some(response);
            break;
        }
    }
    let response = running.expect("every input ended by itself within a few tokens");
    drop(response);
    // The row leaves the batch at its next step: long before its 4000 tokens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(client.clone(), s.url("/metrics")).await;
        if metric(&text, "promptd_engine_rows ") == 0.0 {
            let generated = metric(&text, "promptd_generated_tokens_total ");
            assert!(
                generated < f64::from(max),
                "{generated} tokens: not cut short"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the row still decodes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_chat_answer_as_predict_does() {
    let s = Served::start(|_| {}).await;
    let client = reqwest::Client::new();
    let (_, whole) = json_post(
        &client,
        s.url("/v1/tasks/keep/predict"),
        json!({"inputs": ["one", "two"], "max_new_tokens": 10}),
    )
    .await;
    let (status, c) = json_post(
        &client,
        s.url("/v1/completions"),
        json!({"model": "keep", "prompt": ["one", "two"], "max_tokens": 10, "unknown_field": 1}),
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["object"], "text_completion");
    for i in 0..2 {
        assert_eq!(c["choices"][i]["index"], json!(i));
        assert_eq!(c["choices"][i]["text"], whole["outputs"][i]["text"]);
        assert_eq!(
            c["choices"][i]["finish_reason"],
            whole["outputs"][i]["finish_reason"]
        );
    }
    let generated: usize = (0..2)
        .map(|i| whole["outputs"][i]["token_ids"].as_array().unwrap().len())
        .sum();
    assert_eq!(c["usage"]["completion_tokens"], json!(generated));
    assert_eq!(
        c["usage"]["total_tokens"].as_u64().unwrap(),
        c["usage"]["prompt_tokens"].as_u64().unwrap() + generated as u64
    );
    let chat = json!({"model": "keep", "max_tokens": 10, "messages": [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "two"}]});
    let (status, a) = json_post(&client, s.url("/v1/chat/completions"), chat.clone()).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        a["choices"][0]["message"]["content"],
        whole["outputs"][1]["text"]
    );
    // Streamed chat: the deltas make the same text, the first carries the role.
    let mut streamed = chat;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (_, sse) = post(&client, s.url("/v1/chat/completions"), streamed).await;
    let data = sse_data(&sse);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(json!(joined), whole["outputs"][1]["text"]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], a["usage"]);
    // The models: the task, in OpenAI's shape.
    let models: Value = client
        .get(s.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "keep"));
    let one: Value = client
        .get(s.url("/v1/models/keep"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "keep");
    assert_eq!(one["object"], "model");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_errors_take_openai_shape_and_name_the_field() {
    let s = Served::start(|_| {}).await;
    let client = reqwest::Client::new();
    let url = s.url("/v1/completions");
    for (body, param) in [
        (
            json!({"model": "keep", "prompt": "x", "echo": true}),
            "echo",
        ),
        (
            json!({"model": "keep", "prompt": "x", "suffix": "y"}),
            "suffix",
        ),
        (
            json!({"model": "keep", "prompt": "x", "best_of": 2}),
            "best_of",
        ),
    ] {
        let (status, e) = json_post(&client, url.clone(), body).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["param"], param);
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(e["error"]["message"].as_str().unwrap().contains(param));
    }
    let (status, e) = json_post(
        &client,
        url.clone(),
        json!({"model": "keep", "prompt": "x", "n": 2}),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("`n`"),
        "{e}"
    );
    assert_eq!(e["error"]["param"], "n");
    let (status, e) = json_post(
        &client,
        url.clone(),
        json!({"model": "nope", "prompt": "x"}),
    )
    .await;
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(e["error"]["param"], "model");
    let (status, e) = json_post(&client, url, json!({"prompt": "x"})).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].is_string());
    let (status, e) = json_post(
        &client,
        s.url("/v1/chat/completions"),
        json!({"model": "keep", "messages": [{"role": "system", "content": "only"}]}),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "messages");
    let r = client.get(s.url("/v1/models/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "model_not_found");
    s.stop().await.unwrap();
}
