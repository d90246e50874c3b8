//! Prompt tuning against PyTorch: the loss and dP on a fixed batch, Adafactor / Adam / SGD
//! steps (fixtures from scripts/make_tune_fixtures.py, transformers + torch.optim), frozen
//! weights, and that tuning teaches the frozen model a task it cannot do without a prompt.
use crate::common;

use std::path::{Path, PathBuf};

use promptd::engine::Engine;
use promptd::model::{ModelOptions, T5Model, T5Tokenizer};
use promptd::tune::data::{tokenize, TokenizedExample};
use promptd::tune::tuner::Duration;
use promptd::tune::{load_jsonl, InitSpec, OptimizerKind, OptimizerSettings, TuneSettings, Tuner};
use serde::Deserialize;

fn tune_fixtures() -> PathBuf {
    common::fixtures().join("tune")
}

#[derive(Debug, Deserialize)]
struct Expected {
    prompt_length: usize,
    input_ids: Vec<Vec<i64>>,
    labels: Vec<Vec<i64>>,
    loss: f64,
    loss_f64: f64,
    adafactor_losses: Vec<f64>,
    adam_losses: Vec<f64>,
}

struct Fixture {
    name: String,
    dir: PathBuf,
    model_dir: PathBuf,
    expected: Expected,
}

fn fixture_list() -> Vec<Fixture> {
    let mut names: Vec<String> = std::fs::read_dir(tune_fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 2, "tune fixtures for both T5 families");
    names
        .into_iter()
        .map(|name| {
            let dir = tune_fixtures().join(&name);
            let expected =
                serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                    .unwrap();
            Fixture {
                model_dir: common::fixtures().join("models").join(&name),
                name,
                dir,
                expected,
            }
        })
        .collect()
}

fn load_model(dir: &Path, kind: tch::Kind) -> (T5Model, T5Tokenizer) {
    let model = T5Model::load(
        dir,
        ModelOptions {
            device: tch::Device::Cpu,
            kind,
        },
    )
    .unwrap();
    let tok = T5Tokenizer::from_file(&dir.join("tokenizer.json"), 1).unwrap();
    (model, tok)
}

/// A named f32/f64 tensor of a safetensors file, as f64 values.
fn read_tensor(path: &Path, name: &str) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        safetensors::Dtype::F64 => t
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// Largest |a - b| relative to the largest |b|.
fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn settings(fx: &Fixture, kind: OptimizerKind, steps: usize) -> TuneSettings {
    let mut s = TuneSettings::new(Duration::Steps(steps));
    s.init = InitSpec::File(fx.dir.join("p0.safetensors"));
    s.optimizer = OptimizerSettings::defaults(kind);
    s.batch_size = 1024;
    s.dropout = Some(0.0);
    s
}

fn tuner(fx: &Fixture, model: &T5Model, tok: &T5Tokenizer, s: TuneSettings) -> Tuner {
    let train = load_jsonl(&fx.dir.join("train.jsonl")).unwrap();
    Tuner::new(model, tok, s, &train, &[]).unwrap()
}

fn prompt_values(t: &Tuner) -> Vec<f64> {
    t.current_rows()
        .unwrap()
        .values
        .iter()
        .map(|&v| v as f64)
        .collect()
}

#[test]
fn tokenized_batch_matches_the_fixture_script() {
    for fx in fixture_list() {
        let (_, tok) = load_model(&fx.model_dir, tch::Kind::Float);
        let train = load_jsonl(&fx.dir.join("train.jsonl")).unwrap();
        let (rows, cut) = tokenize(&tok, &train, 512, 128).unwrap();
        assert_eq!(cut, 0);
        let ids: Vec<&Vec<i64>> = rows.iter().map(|r| &r.input_ids).collect();
        let labels: Vec<&Vec<i64>> = rows.iter().map(|r| &r.labels).collect();
        assert_eq!(
            ids,
            fx.expected.input_ids.iter().collect::<Vec<_>>(),
            "{}",
            fx.name
        );
        assert_eq!(
            labels,
            fx.expected.labels.iter().collect::<Vec<_>>(),
            "{}",
            fx.name
        );
    }
}

#[test]
fn loss_and_prompt_gradient_match_pytorch() {
    for fx in fixture_list() {
        let (model, tok) = load_model(&fx.model_dir, tch::Kind::Float);
        let t = tuner(&fx, &model, &tok, settings(&fx, OptimizerKind::Sgd, 1));
        let train = load_jsonl(&fx.dir.join("train.jsonl")).unwrap();
        let (rows, _) = tokenize(&tok, &train, 512, 128).unwrap();
        let refs: Vec<&TokenizedExample> = rows.iter().collect();
        let (loss, grad, _) = t.loss_and_grad(&model, &refs).unwrap();
        let want = fx.expected.loss;
        assert!(
            (loss - want).abs() <= 1e-4 * want.abs(),
            "{}: loss {loss} vs transformers {want} (f64 {})",
            fx.name,
            fx.expected.loss_f64
        );
        let grad: Vec<f64> = Vec::<f32>::try_from(grad.flatten(0, -1))
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        assert_eq!(
            grad.len(),
            fx.expected.prompt_length * model.config.d_model as usize
        );
        let want = read_tensor(&fx.dir.join("grad.safetensors"), "grad");
        let err = rel_err(&grad, &want);
        eprintln!(
            "{}: loss relative error {:.2e}, dP relative error {err:.2e} (transformers' own f32 vs f64: {:.2e})",
            fx.name,
            (loss - fx.expected.loss).abs() / fx.expected.loss.abs(),
            rel_err(&want, &read_tensor(&fx.dir.join("grad.safetensors"), "grad_f64"))
        );
        assert!(err <= 1e-4, "{}: gradient relative error {err}", fx.name);
    }
}

/// Rust's P after `step` against transformers' f32 run, allowed `slack` times the distance
/// between transformers' own f32 and f64 runs (when the fixture has one) or 1e-4.
fn step_tolerance(fx: &Fixture, file: &str, step: usize) -> f64 {
    let path = fx.dir.join(file);
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    if st.tensor(&format!("f64_step{step}")).is_err() {
        return 1e-4;
    }
    let f32_run = read_tensor(&path, &format!("step{step}"));
    let f64_run = read_tensor(&path, &format!("f64_step{step}"));
    (3.0 * rel_err(&f32_run, &f64_run)).max(1e-4)
}

fn check_steps(
    kind: OptimizerKind,
    file: &str,
    steps: usize,
    losses: Option<fn(&Expected) -> &Vec<f64>>,
) {
    for fx in fixture_list() {
        let (model, tok) = load_model(&fx.model_dir, tch::Kind::Float);
        let mut t = tuner(&fx, &model, &tok, settings(&fx, kind, steps));
        for step in 1..=steps {
            let r = t.train_step(&model).unwrap();
            if let Some(losses) = losses {
                let want = losses(&fx.expected)[step - 1];
                let tol = if step == 1 {
                    1e-4
                } else {
                    step_tolerance(&fx, file, step - 1)
                };
                assert!(
                    (r.loss - want).abs() <= tol * want.abs(),
                    "{} {kind} step {step}: loss {} vs {want}",
                    fx.name,
                    r.loss
                );
            }
            let want = read_tensor(&fx.dir.join(file), &format!("step{step}"));
            let err = rel_err(&prompt_values(&t), &want);
            let tol = step_tolerance(&fx, file, step);
            eprintln!(
                "{} {kind} step {step}: P relative error {err:.2e} (allowed {tol:.2e})",
                fx.name
            );
            assert!(
                err <= tol,
                "{} {kind} step {step}: P relative error {err} > {tol}",
                fx.name
            );
        }
        assert!(t.finished());
    }
}

#[test]
fn adafactor_steps_match_transformers_adafactor() {
    check_steps(
        OptimizerKind::Adafactor,
        "adafactor.safetensors",
        3,
        Some(|e| &e.adafactor_losses),
    );
}

#[test]
fn adam_steps_match_torch_adam() {
    check_steps(
        OptimizerKind::Adam,
        "adam.safetensors",
        3,
        Some(|e| &e.adam_losses),
    );
}

#[test]
fn sgd_step_is_p0_minus_the_gradient() {
    check_steps(OptimizerKind::Sgd, "sgd.safetensors", 1, None);
}

#[test]
fn weights_stay_bit_identical_and_never_require_grad() {
    for fx in fixture_list() {
        let (model, tok) = load_model(&fx.model_dir, tch::Kind::Float);
        let before: Vec<tch::Tensor> = model.tensors().iter().map(|t| t.copy()).collect();
        assert!(before.len() > 10);
        let mut s = settings(&fx, OptimizerKind::Adafactor, 4);
        s.dropout = None; // the model's own dropout, in training mode
        let mut t = tuner(&fx, &model, &tok, s);
        while !t.finished() {
            t.train_step(&model).unwrap();
        }
        for (a, b) in model.tensors().iter().zip(&before) {
            assert!(!a.requires_grad());
            assert!(a.equal(b), "{}: a weight changed during tuning", fx.name);
        }
    }
}

#[test]
fn dropout_is_used_when_asked_and_seeded() {
    let fx = &fixture_list()[0];
    let (model, tok) = load_model(&fx.model_dir, tch::Kind::Float);
    let run = |dropout: f64, seed: u64| {
        let mut s = settings(fx, OptimizerKind::Adafactor, 2);
        s.dropout = Some(dropout);
        s.seed = seed;
        let mut t = tuner(fx, &model, &tok, s);
        t.train_step(&model).unwrap();
        t.train_step(&model).unwrap().loss
    };
    assert_eq!(run(0.3, 7), run(0.3, 7), "same seed, same run");
    assert_ne!(run(0.3, 7), run(0.0, 7), "dropout changes the loss");
}

#[test]
fn bf16_tuning_keeps_the_prompt_in_f32_and_learns() {
    let fx = &fixture_list()[0];
    let (model, tok) = load_model(&fx.model_dir, tch::Kind::BFloat16);
    let mut t = tuner(fx, &model, &tok, settings(fx, OptimizerKind::Adafactor, 20));
    let first = t.train_step(&model).unwrap().loss;
    let mut last = first;
    while !t.finished() {
        last = t.train_step(&model).unwrap().loss;
    }
    assert!(
        last.is_finite() && last < first,
        "bf16 loss {first} -> {last}"
    );
    // f32 values that bf16 could not hold: the prompt itself is not rounded to bf16.
    let p = t.current_rows().unwrap();
    assert!(p
        .values
        .iter()
        .any(|v| half::bf16::from_f32(*v).to_f32() != *v));
}

#[test]
fn evaluation_runs_through_the_engine() {
    let fx = &fixture_list()[0];
    let (model, tok) = load_model(&fx.model_dir, tch::Kind::Float);
    let train = load_jsonl(&fx.dir.join("train.jsonl")).unwrap();
    let mut s = settings(fx, OptimizerKind::Adafactor, 2);
    s.eval_every = 1;
    s.metric = promptd::tune::Metric::RankAccuracy;
    let mut t = Tuner::new(&model, &tok, s, &train, &train).unwrap();
    let mut engine = Engine::new(model).unwrap();
    assert!(t.eval_due());
    let o = t.evaluate(&mut engine, &tok).unwrap().unwrap();
    assert_eq!(o.total, train.len());
    assert!(!t.eval_due());
    t.train_step(engine.model()).unwrap();
    assert!(t.eval_due());
    t.evaluate(&mut engine, &tok).unwrap();
    assert_eq!(t.report()["dev_metric"].as_array().unwrap().len(), 2);
    // Temporary prompts leave the bank once dropped.
    engine.reserve_prompt_rows(0).unwrap();
}

/// The optimizers alone, fed transformers' own gradients: the update rule matches to rounding.
fn check_update_rule(kind: OptimizerKind, file: &str, steps: usize) {
    use promptd::tune::optim::Optimizer;
    for fx in fixture_list() {
        let path = fx.dir.join(file);
        let p0 = read_tensor(&fx.dir.join("p0.safetensors"), "prompt");
        let shape = [fx.expected.prompt_length as i64, -1];
        let to_t = |v: &[f64]| {
            tch::Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>()).view(shape)
        };
        let mut p = to_t(&p0);
        let mut opt = Optimizer::new(OptimizerSettings::defaults(kind), &p).unwrap();
        for step in 1..=steps {
            let grad = to_t(&read_tensor(&path, &format!("grad{step}")));
            opt.step(&mut p, &grad).unwrap();
            let got: Vec<f64> = Vec::<f32>::try_from(p.flatten(0, -1))
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect();
            let want = read_tensor(&path, &format!("step{step}"));
            let err = rel_err(&got, &want);
            eprintln!(
                "{} {kind} update rule, step {step}: relative error {err:.2e}",
                fx.name
            );
            assert!(
                err <= 2e-6,
                "{} {kind} step {step}: relative error {err}",
                fx.name
            );
        }
    }
}

#[test]
fn adafactor_update_rule_matches_transformers_on_its_gradients() {
    check_update_rule(OptimizerKind::Adafactor, "adafactor.safetensors", 3);
}

#[test]
fn adam_update_rule_matches_torch_on_its_gradients() {
    check_update_rule(OptimizerKind::Adam, "adam.safetensors", 3);
}

#[test]
fn a_step_in_parts_equals_the_whole_batch_step() {
    // One SGD step, whose update is linear in the gradient: later steps of these chaotic tiny
    // models (and Adafactor's per-row normalisation) amplify float rounding whatever computes them.
    let (kind, steps) = (OptimizerKind::Sgd, 1);
    for fx in fixture_list() {
        let (model, tok) = load_model(&fx.model_dir, tch::Kind::Float);
        let mut whole = tuner(&fx, &model, &tok, settings(&fx, kind, steps));
        let mut parts = tuner(&fx, &model, &tok, settings(&fx, kind, steps));
        for _ in 0..steps {
            let a = whole.train_step(&model).unwrap();
            let mut turns = 0;
            let b = loop {
                turns += 1;
                if let Some(r) = parts.train_micro_step(&model, 4).unwrap() {
                    break r;
                }
            };
            assert_eq!(turns, 2, "6 rows in parts of 4");
            assert!(
                (a.loss - b.loss).abs() <= 1e-5 * a.loss.abs(),
                "{} vs {}",
                a.loss,
                b.loss
            );
            let err = rel_err(&prompt_values(&parts), &prompt_values(&whole));
            assert!(
                err <= 1e-5,
                "{}: accumulated step differs by {err}",
                fx.name
            );
        }
    }
}
