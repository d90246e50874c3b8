//! Engine benches: one encoder pass plus greedy decoding for batches of 1 to 64 rows,
//! (a) every row the same task, (b) every row a different task, (c) the same rows without a
//! prompt. Identical inputs and decode lengths across (a), (b), (c); only the prompts differ.
//!
//!   cargo bench --bench engine                          # mini model (quick)
//!   PROMPTD_BENCH_SHAPE=small cargo bench --bench engine  # t5-small shapes
//!   scripts/bench-engine.sh [mini|small]                # the same, plus the ratio table
//!
//! The model and prompts are generated (seeded) under target/bench-models/ on first use.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use promptd::engine::{Engine, PromptSlot, RowInput};
use promptd::model::random::{make_model, make_prompts, RandomModel, RandomPrompts, Shape};
use promptd::model::{ModelOptions, T5Model};
use promptd::prompts::{load_prompt_dir, PromptLimits};

const BATCH_SIZES: [usize; 5] = [1, 8, 16, 32, 64];
const PROMPT_LEN: usize = 20;
const INPUT_TOKENS: usize = 24;

fn shape() -> (Shape, &'static str, usize) {
    match std::env::var("PROMPTD_BENCH_SHAPE").as_deref() {
        Ok("small") => (Shape::Small, "small", 512),
        _ => (Shape::Mini, "mini", 128),
    }
}

fn new_tokens() -> usize {
    std::env::var("PROMPTD_BENCH_NEW_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// Generates the bench model and 64 prompts once.
fn assets() -> (PathBuf, PathBuf) {
    let (shape, name, d_model) = shape();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/bench-models");
    let model = dir.join(name);
    if !model.join("model.safetensors").exists() {
        make_model(RandomModel {
            out: model.clone(),
            shape,
            seed: 0,
            tokenizer: root.join("tests/fixtures/models/t5-v1_1-tiny/tokenizer.json"),
        })
        .expect("bench model");
    }
    let prompts = dir.join(format!("prompts-{d_model}-64"));
    if !prompts.exists() {
        make_prompts(RandomPrompts {
            out: prompts.clone(),
            count: 64,
            length: PROMPT_LEN,
            min_length: None,
            d_model,
            seed: 0,
        })
        .expect("bench prompts");
    }
    (model, prompts)
}

fn load() -> (Engine, Vec<Arc<PromptSlot>>) {
    let (model_dir, prompts_dir) = assets();
    let model = T5Model::load(
        &model_dir,
        ModelOptions {
            device: tch::Device::Cpu,
            kind: tch::Kind::Float,
        },
    )
    .expect("model");
    let d_model = model.config.d_model as usize;
    let mut engine = Engine::new(model).expect("engine");
    let loaded = load_prompt_dir(&prompts_dir, d_model, &PromptLimits::default()).expect("prompts");
    let slots = loaded
        .prompts
        .values()
        .map(|p| engine.register_prompt(&p.encoder).expect("register"))
        .collect();
    (engine, slots)
}

/// `n` rows of distinct, deterministic inputs; prompt `prompt(i)` for row i.
fn rows(n: usize, prompt: impl Fn(usize) -> Option<Arc<PromptSlot>>) -> Vec<RowInput> {
    (0..n)
        .map(|i| {
            let mut input_ids: Vec<i64> = (0..INPUT_TOKENS)
                .map(|j| 100 + ((i * 7919 + j * 104_729) % 30_000) as i64)
                .collect();
            input_ids.push(1);
            RowInput {
                prompt: prompt(i),
                input_ids,
                max_new_tokens: new_tokens(),
                labels: Vec::new(),
                cancel: None,
                sequence_logprob: false,
                ..Default::default()
            }
        })
        .collect()
}

fn engine_passes(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    let (mut engine, slots) = load();
    let steps = new_tokens();
    let mut paired = Vec::new();
    for &b in &BATCH_SIZES {
        let mut group = c.benchmark_group(format!("engine/batch{b:02}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(if b >= 32 { 8 } else { 4 }))
            .throughput(Throughput::Elements(b as u64));
        let variants = [
            ("a_one_task", rows(b, |_| Some(slots[0].clone()))),
            (
                "b_all_different",
                rows(b, |i| Some(slots[i % slots.len()].clone())),
            ),
            ("c_no_prompt", rows(b, |_| None)),
        ];
        if std::env::args().any(|a| a == "--bench") {
            paired.push(paired_ratios(&mut engine, b, &variants));
        }
        for (name, batch) in &variants {
            // Same decode work in every variant: no row may stop early at </s>.
            engine.run_batch(batch).expect("batch runs");
            let stats = engine.last_stats();
            assert_eq!(
                stats.decode_row_steps,
                b * steps,
                "{name}: a row stopped early; the variants would not do the same work"
            );
            group.bench_with_input(BenchmarkId::from_parameter(name), batch, |bench, batch| {
                bench.iter(|| engine.run_batch(batch).expect("batch runs"))
            });
        }
        group.finish();
    }
    if !paired.is_empty() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion/engine-paired.json");
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("criterion folder");
        std::fs::write(&path, serde_json::to_string_pretty(&paired).expect("json"))
            .expect("paired results");
    }
}

/// Rounds of (a), (b), (c) back to back, in rotating order, so slow drifts of a shared machine
/// hit all three alike; the medians of the per-round ratios are what BENCHMARKS.md quotes.
fn paired_ratios(
    engine: &mut Engine,
    b: usize,
    variants: &[(&str, Vec<RowInput>); 3],
) -> serde_json::Value {
    let rounds = 15;
    let mut times: Vec<Vec<f64>> = (0..3).map(|_| Vec::with_capacity(rounds)).collect();
    for round in 0..rounds {
        for k in 0..3 {
            let v = (round + k) % 3;
            let t = std::time::Instant::now();
            engine.run_batch(&variants[v].1).expect("batch runs");
            times[v].push(t.elapsed().as_secs_f64());
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = |x: usize| median((0..rounds).map(|r| times[x][r] / times[0][r]).collect());
    let result = serde_json::json!({
        "batch": b,
        "rounds": rounds,
        "median_ms": {
            "a_one_task": median(times[0].clone()) * 1e3,
            "b_all_different": median(times[1].clone()) * 1e3,
            "c_no_prompt": median(times[2].clone()) * 1e3,
        },
        "b_over_a": ratio(1),
        "c_over_a": ratio(2),
    });
    eprintln!("paired batch {b}: {result}");
    result
}

criterion_group!(benches, engine_passes);
criterion_main!(benches);
