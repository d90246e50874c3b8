//! The benchmark tools (`promptd-dev`, built with the dev-tools feature): `make-model` writes a
//! loadable, deterministic, non-degenerate random checkpoint, `make-prompts` prompts that it
//! serves, and the load generator's offline modes run on them.

use std::process::Command;

fn promptd_dev(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_promptd-dev"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn make_model_and_prompts_are_deterministic_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, prompts) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("p"),
    );
    for out in [&a, &b] {
        promptd_dev(&[
            "make-model",
            "--shape",
            "mini",
            "--seed",
            "7",
            "--out",
            out.to_str().unwrap(),
        ]);
    }
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file}"
        );
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], 32128);
    promptd_dev(&[
        "make-prompts",
        "--count",
        "3",
        "--d-model",
        "128",
        "--out",
        prompts.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_dir(&prompts).unwrap().count(), 3);

    let mut child = Command::new(env!("CARGO_BIN_EXE_promptd"))
        .args([
            "predict",
            "--model",
            a.to_str().unwrap(),
            "--prompts",
            prompts.to_str().unwrap(),
        ])
        .env_remove("LD_LIBRARY_PATH")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        for task in ["task00000", "task00002"] {
            writeln!(
                stdin,
                r#"{{"task":"{task}","input":"hello world","max_new_tokens":6}}"#
            )
            .unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<Vec<i64>> = lines
        .iter()
        .map(|l| serde_json::from_value(l["token_ids"].clone()).unwrap())
        .collect();
    // Random, not degenerate: tokens vary within a row and the two prompts answer differently.
    assert!(
        ids[0]
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "{ids:?}"
    );
    assert_ne!(ids[0], ids[1]);

    // The offline engine mode of the load generator, static and continuous, on the same model.
    for mode in ["offline", "offline-continuous"] {
        let summary = offline_bench(&a, &prompts, mode == "offline-continuous");
        assert!(summary["rows_per_s"].as_f64().unwrap() > 0.0, "{summary}");
        assert!(
            summary["generated_tokens_per_s"].as_f64().unwrap() > 0.0,
            "{summary}"
        );
        assert_eq!(summary["mode"], mode);
    }
}

/// `promptd-dev bench --offline` on `model`: the summary of the first measured window in which a
/// row finished. The window is wall-clock and counts only rows that finish inside it; on a busy
/// machine the first pass (thread pools, allocations) alone outlasts a second, and a continuous
/// batch may finish nothing in it. So the window grows until rows finish.
fn offline_bench(
    model: &std::path::Path,
    prompts: &std::path::Path,
    continuous: bool,
) -> serde_json::Value {
    let mut summary = serde_json::Value::Null;
    for duration_s in ["1", "4", "16", "64"] {
        let mut args = vec![
            "bench",
            "--offline",
            "--model",
            model.to_str().unwrap(),
            "--prompts",
            prompts.to_str().unwrap(),
            "--tasks",
            "3",
            "--batch-size",
            "4",
            "--min-new-tokens",
            "1",
            "--max-new-tokens",
            "4",
            "--duration-s",
            duration_s,
            "--warmup-s",
            "0",
            "--json",
        ];
        if continuous {
            args.push("--offline-continuous");
        }
        summary = serde_json::from_slice(&promptd_dev(&args).stdout).unwrap();
        if summary["rows_per_s"].as_f64().unwrap() > 0.0 {
            break;
        }
    }
    summary
}

#[test]
fn engine_pass_runs_synthetic_shapes_and_made_up_batches() {
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "engine-pass",
            "--synthetic",
            "mini",
            "--random-rows",
            "6",
            "--input-len",
            "12",
            "--tasks",
            "3",
            "--prompt-len",
            "5",
            "--repeats",
            "1",
            "--warmup",
            "0",
        ];
        args.extend_from_slice(extra);
        serde_json::from_slice(&promptd_dev(&args).stdout).unwrap()
    };
    let a = run(&["--new-tokens", "3", "--extra-prompts", "4"]);
    assert_eq!(a["rows"], 6);
    assert_eq!(a["width"], 5 + 12);
    // 3 prompts for the rows and 4 more, 5 rows each, all resident.
    assert_eq!(a["bank_rows"], 35);
    let tokens: Vec<Vec<i64>> = serde_json::from_value(a["tokens"].clone()).unwrap();
    assert!(tokens.iter().all(|t| !t.is_empty() && t.len() <= 3));
    // Seeded: the same command gives the same tokens; an encoder-only pass generates none.
    assert_eq!(run(&["--new-tokens", "3"])["tokens"], a["tokens"]);
    // --profile: the admission and a decode step, by op family, adding up to their wall time.
    let profiled = run(&["--new-tokens", "3", "--profile"]);
    assert_eq!(profiled["tokens"], a["tokens"]);
    for phase in ["encoder_pass", "decode_step"] {
        let p = profiled["profile"][phase].as_object().unwrap();
        let total = p["total_ms"].as_f64().unwrap();
        let parts: f64 = p
            .iter()
            .filter(|(k, _)| *k != "total_ms")
            .map(|(_, v)| v.as_f64().unwrap())
            .sum();
        assert!(p["matmuls"].as_f64().unwrap() > 0.0, "{phase}: {p:?}");
        assert!(
            (parts - total).abs() < 1e-6 * total.max(1.0),
            "{phase}: {p:?}"
        );
    }
    assert_eq!(profiled["profile"]["decode_steps_per_run"], 3);
    let encoder_only = run(&["--new-tokens", "0", "--no-tokens"]);
    assert_eq!(encoder_only["generated_tokens"], 0);
    assert!(encoder_only.get("tokens").is_none());
    assert!(encoder_only["encoder_tflop"].as_f64().unwrap() > 0.0);

    let gemm: serde_json::Value =
        serde_json::from_slice(&promptd_dev(&["gemm", "--size", "64", "--repeats", "1"]).stdout)
            .unwrap();
    assert!(gemm["tflops"].as_f64().unwrap() > 0.0, "{gemm}");
}
