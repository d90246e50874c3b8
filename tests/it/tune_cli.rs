//! `promptd tune` and `promptd eval` as a user runs them: outputs the server and PEFT accept, the
//! report and its curve picture, the hidden-check form (SGD, one step, `--init file:`), bad
//! data, Ctrl-C, and a task the frozen model learns only through its prompt.
use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use promptd::prompts::dir::{load_source, PromptSource};
use promptd::prompts::{Prompt, PromptLimits};
use serde_json::Value;

const MODEL: &str = "t5-v1_1-tiny";

fn model_dir() -> PathBuf {
    common::fixtures().join("models").join(MODEL)
}

fn tune_dir() -> PathBuf {
    common::fixtures().join("tune").join(MODEL)
}

fn promptd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_promptd"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn rows_of(path: &Path) -> Vec<f32> {
    let source = if path.is_dir() {
        PromptSource::PeftDir(path.to_path_buf())
    } else {
        PromptSource::TensorFile(path.to_path_buf())
    };
    load_source(&source, 48, &PromptLimits::default())
        .unwrap()
        .encoder
        .values
}

#[test]
fn tune_writes_a_servable_prompt_a_peft_adapter_and_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, peft, report) = (
        tmp.path().join("p.safetensors"),
        tmp.path().join("peft"),
        tmp.path().join("report.json"),
    );
    let train = tune_dir().join("train.jsonl");
    let (ok, _, err) = promptd(&[
        "tune",
        "--model",
        s(&model_dir()),
        "--train",
        s(&train),
        "--dev",
        s(&train),
        "--prompt-length",
        "6",
        "--steps",
        "5",
        "--eval-every",
        "2",
        "--metric",
        "rank-accuracy",
        "--init",
        "sampled-vocab",
        "--out",
        s(&out),
        "--peft-dir",
        s(&peft),
        "--report",
        s(&report),
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&out).unwrap();
    let prompt = Prompt::from_tensor_file(&bytes, 48, &PromptLimits::default()).unwrap();
    assert_eq!(prompt.len(), 6);
    // The PEFT folder holds the same encoder rows (and zeros for the decoder half).
    assert_eq!(rows_of(&peft), prompt.encoder.values);
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "PROMPT_TUNING");
    assert_eq!(cfg["task_type"], "SEQ_2_SEQ_LM");
    assert_eq!(cfg["num_virtual_tokens"], 6);
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["steps"], 5);
    assert_eq!(report["train_loss"].as_array().unwrap().len(), 5);
    // Evaluated at steps 0, 2, 4 and at the end (5).
    let evals: Vec<u64> = report["dev_metric"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert_eq!(evals, vec![0, 2, 4, 5]);
    assert!(report["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(report["settings"]["optimizer"], "adafactor");
    // The curves as a picture next to the report, the best step marked as the report says.
    let svg = std::fs::read_to_string(tmp.path().join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("promptd tune: train.jsonl on t5-v1_1-tiny, 5 steps"));
    for stroke in ["#1F77B4", "#FF7F0E"] {
        assert!(
            svg.contains(&format!("stroke=\"{stroke}\"")),
            "{stroke}: {svg}"
        );
    }
    let best = format!(
        "best rank-accuracy {:.3} at step {}",
        report["best_metric"].as_f64().unwrap(),
        report["best_step"]
    );
    assert!(svg.contains(&best), "{best}: {svg}");
    // `promptd eval` of the written prompt scores what the run reported as its best.
    let (ok, stdout, err) = promptd(&[
        "eval",
        "--model",
        s(&model_dir()),
        "--prompt",
        s(&out),
        "--data",
        s(&train),
        "--metric",
        "rank-accuracy",
    ]);
    assert!(ok, "{err}");
    let eval: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(eval["total"], 6);
    assert_eq!(eval["value"], report["best_metric"]);
    for extra in [
        &["--prompt", "none"][..],
        &["--prompt", "none", "--text-prefix", "classify:"],
    ] {
        let model = model_dir();
        let mut args = vec!["eval", "--model", s(&model), "--data", s(&train)];
        args.extend_from_slice(extra);
        let (ok, stdout, err) = promptd(&args);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["metric"], "accuracy");
    }
}

#[test]
fn one_sgd_step_from_a_file_gives_p0_minus_the_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p1.safetensors");
    let p0 = tune_dir().join("p0.safetensors");
    let init = format!("file:{}", s(&p0));
    let train = tune_dir().join("train.jsonl");
    let (ok, _, err) = promptd(&[
        "tune",
        "--model",
        s(&model_dir()),
        "--train",
        s(&train),
        "--optimizer",
        "sgd",
        "--lr",
        "1",
        "--steps",
        "1",
        "--dropout",
        "0",
        "--init",
        &init,
        "--out",
        s(&out),
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let (p0, p1) = (rows_of(&p0), rows_of(&out));
    let grad = common::read_f32_tensor(&tune_dir().join("grad.safetensors"), "grad");
    let scale = grad.iter().fold(0f32, |m, g| m.max(g.abs()));
    for ((a, b), g) in p0.iter().zip(&p1).zip(&grad) {
        assert!(((a - b) - g).abs() <= 1e-4 * scale, "{} vs {g}", a - b);
    }
}

#[test]
fn bad_data_names_the_file_and_line_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p.safetensors");
    for (body, want) in [
        (
            "{\"input\": \"a\", \"target\": \"b\"}\n\n{\"input\": 3}\n",
            "train.jsonl:3",
        ),
        ("{\"input\": \"a\"}\n", "train.jsonl:1"),
        (
            "{\"input\": \"a\", \"target\": \"b\", \"x\": 1}\n",
            "train.jsonl:1",
        ),
        ("not json\n", "train.jsonl:1"),
        ("\n\n", "no examples"),
    ] {
        let train = tmp.path().join("train.jsonl");
        std::fs::write(&train, body).unwrap();
        let (ok, _, err) = promptd(&[
            "tune",
            "--model",
            s(&model_dir()),
            "--train",
            s(&train),
            "--out",
            s(&out),
            "--quiet",
        ]);
        assert!(!ok && err.contains(want), "{body:?}: {err}");
        assert!(!out.exists());
    }
    let train = tune_dir().join("train.jsonl");
    for (flag, value, want) in [
        ("--init", "file:/nonexistent.npy", "nonexistent"),
        ("--init", "bogus", "unknown init"),
        ("--optimizer", "lamb", "unknown optimizer"),
        ("--lr", "-1", "lr"),
        ("--prompt-length", "0", "prompt length"),
    ] {
        let arg = format!("{flag}={value}");
        let (ok, _, err) = promptd(&[
            "tune",
            "--model",
            s(&model_dir()),
            "--train",
            s(&train),
            "--out",
            s(&out),
            "--quiet",
            &arg,
        ]);
        assert!(!ok && err.contains(want), "{flag} {value}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn ctrl_c_saves_the_prompt_so_far_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, report) = (tmp.path().join("p.safetensors"), tmp.path().join("r.json"));
    let train = tune_dir().join("train.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_promptd"))
        .args([
            "tune",
            "--model",
            s(&model_dir()),
            "--train",
            s(&train),
            "--dev",
            s(&train),
            "--steps",
            "1000000",
            "--eval-every",
            "3",
            "--prompt-length",
            "4",
            "--out",
            s(&out),
            "--report",
            s(&report),
            "--quiet",
        ])
        .env_remove("LD_LIBRARY_PATH")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("tuning started") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no start line");
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(out.exists(), "the best prompt so far is saved");
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["interrupted"], true);
    assert!(report["steps"].as_u64().unwrap() < 1_000_000);
}

/// A task the frozen model cannot do: answer `yes` when the sentence contains "river", else
/// `no`. Without a prompt it answers neither; tuning only the prompt teaches it.
fn river_task(seed: u64, rows: usize) -> String {
    const WORDS: &str = "the a of to and in is was for on that with as by at from it his an were \
        are which this be or has had but not its have they one their new first been two after who \
        city model prompt task tenant batch token server engine decoder encoder frozen soft vector \
        matrix weight memory device kernel queue shared fast slow quick brown fox jumps lazy dog";
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = promptd::tune::Rng::new(seed);
    let mut out = String::new();
    for _ in 0..rows {
        let n = 4 + rng.below(9);
        let mut sentence: Vec<&str> = (0..n).map(|_| words[rng.below(words.len())]).collect();
        let yes = rng.next_f64() < 0.5;
        if yes {
            sentence[rng.below(n)] = "river";
        }
        let line = serde_json::json!({"input": sentence.join(" "), "target": if yes { "yes" } else { "no" }});
        out.push_str(&format!("{line}\n"));
    }
    out
}

#[test]
fn tuning_teaches_the_frozen_model_a_task_it_cannot_do_without_a_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, dev) = (tmp.path().join("train.jsonl"), tmp.path().join("dev.jsonl"));
    std::fs::write(&train, river_task(1, 64)).unwrap();
    let dev_text = river_task(2, 64);
    std::fs::write(&dev, &dev_text).unwrap();
    let yes = dev_text.matches("\"yes\"").count() as f64 / 64.0;
    let majority = yes.max(1.0 - yes);
    let model = common::fixtures().join("models/t5-v1_0-tiny");
    let (out, report) = (tmp.path().join("p.safetensors"), tmp.path().join("r.json"));
    // The paper's recipe (Adafactor, lr 0.3, class-label init), without dropout for speed.
    let (ok, _, err) = promptd(&[
        "tune",
        "--model",
        s(&model),
        "--train",
        s(&train),
        "--dev",
        s(&dev),
        "--prompt-length",
        "10",
        "--steps",
        "150",
        "--eval-every",
        "25",
        "--batch-size",
        "64",
        "--dropout",
        "0",
        "--out",
        s(&out),
        "--report",
        s(&report),
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let init = report["dev_metric"][0][1].as_f64().unwrap();
    let best = report["best_metric"].as_f64().unwrap();
    let (ok, stdout, err) = promptd(&[
        "eval",
        "--model",
        s(&model),
        "--prompt",
        "none",
        "--data",
        s(&dev),
    ]);
    assert!(ok, "{err}");
    let none: Value = serde_json::from_str(stdout.trim()).unwrap();
    let none = none["value"].as_f64().unwrap();
    eprintln!(
        "dev accuracy: no prompt {none}, init {init}, tuned {best} (majority class {majority})"
    );
    assert!(
        none <= 0.1,
        "the plain model should not do the task ({none})"
    );
    assert!(
        init <= 0.6,
        "the initial prompt should not do the task ({init})"
    );
    assert!(
        best >= 0.75 && best >= majority + 0.15,
        "tuned prompt reached only {best} (majority class {majority})"
    );
}

#[test]
fn tune_method_lora_writes_a_peft_lora_promptd_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, report) = (tmp.path().join("lora"), tmp.path().join("report.json"));
    let train = tune_dir().join("train.jsonl");
    let (ok, _, err) = promptd(&[
        "tune",
        "--model",
        s(&model_dir()),
        "--train",
        s(&train),
        "--method",
        "lora",
        "--lora-rank",
        "4",
        "--lora-targets",
        "q,v,wo",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--batch-size",
        "6",
        "--steps",
        "20",
        "--out",
        s(&out),
        "--report",
        s(&report),
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        (report["method"].as_str(), report["lora_rank"].as_u64()),
        (Some("lora"), Some(4))
    );
    let losses: Vec<f64> = report["train_loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert!(
        losses.last().unwrap() < &(losses[0] * 0.9),
        "the LoRA learns the batch: {losses:?}"
    );
    // A PEFT LoRA folder: the config PEFT reads, and promptd loads it as a LoRA task.
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["target_modules"], serde_json::json!(["q", "v", "wo"]));
    let limits = PromptLimits {
        shape: Some(promptd::model::adapters::ModelShape::of(
            &promptd::model::T5Config::from_dir(&model_dir()).unwrap(),
        )),
        ..PromptLimits::default()
    };
    let task = load_source(&PromptSource::PeftDir(out.clone()), 48, &limits).unwrap();
    let adapter = task.adapter.expect("a LoRA");
    assert_eq!(adapter.rank(), Some(4));
    assert_eq!(adapter.modules(), ["q", "v", "wo"]);
    // B starts at zero (PEFT's init) and moved (no dev set: the last step's factors are kept).
    assert!(adapter
        .weights
        .lora
        .iter()
        .any(|f| f.b.iter().any(|v| *v != 0.0)));
}

#[test]
fn tune_method_ia3_writes_a_peft_ia3_promptd_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, report) = (tmp.path().join("ia3"), tmp.path().join("report.json"));
    let train = tune_dir().join("train.jsonl");
    let (ok, _, err) = promptd(&[
        "tune",
        "--model",
        s(&model_dir()),
        "--train",
        s(&train),
        "--method",
        "ia3",
        "--optimizer",
        "adam",
        "--lr",
        "0.05",
        "--batch-size",
        "6",
        "--steps",
        "20",
        "--out",
        s(&out),
        "--report",
        s(&report),
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["method"], "ia3");
    assert_eq!(
        report["settings"]["ia3"]["feedforward"],
        serde_json::json!(["wo"])
    );
    let losses: Vec<f64> = report["train_loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert!(
        losses.last().unwrap() < &losses[0],
        "IA3 learns the batch: {losses:?}"
    );
    // A PEFT IA3 folder (PEFT's T5 default targets); promptd loads it with wo's input scaled.
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "IA3");
    assert_eq!(cfg["target_modules"], serde_json::json!(["k", "v", "wo"]));
    assert_eq!(cfg["feedforward_modules"], serde_json::json!(["wo"]));
    let limits = PromptLimits {
        shape: Some(promptd::model::adapters::ModelShape::of(
            &promptd::model::T5Config::from_dir(&model_dir()).unwrap(),
        )),
        ..PromptLimits::default()
    };
    let task = load_source(&PromptSource::PeftDir(out.clone()), 48, &limits).unwrap();
    let adapter = task.adapter.expect("an IA3 adapter");
    assert_eq!(adapter.modules(), ["k", "v", "wo"]);
    let ia3 = &adapter.weights.ia3;
    assert!(ia3.iter().any(|s| s.input && s.site.module.name() == "wo"));
    assert!(ia3
        .iter()
        .all(|s| s.input == (s.site.module.name() == "wo")));
    // The vectors start at one (PEFT's init) and moved.
    assert!(ia3.iter().any(|s| s.values.iter().any(|v| *v != 1.0)));
}
