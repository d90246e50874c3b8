//! Shared helpers for the integration tests: fixtures and a loaded engine.
#![allow(dead_code)]
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
    let dir = fixtures().join("models").join(model);
    let t5 = T5Model::load(
        &dir,
        ModelOptions {
            device: tch::Device::Cpu,
            kind: tch::Kind::Float,
        },
    )
    .unwrap();
    let tokenizer = T5Tokenizer::from_file(&dir.join("tokenizer.json"), 1).unwrap();
    let d_model = t5.config.d_model as usize;
    let mut engine = Engine::new(t5).unwrap();
    let prompts = load_prompt_dir(
        &fixtures().join("prompts").join(model),
        d_model,
        &PromptLimits::default(),
    )
    .unwrap();
    assert!(prompts.errors.is_empty(), "{:?}", prompts.errors);
    let slots = prompts
        .prompts
        .iter()
        .map(|(task, p)| (task.to_string(), engine.register_prompt(p).unwrap()))
        .collect();
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
