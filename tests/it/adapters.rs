//! LoRA, IA3, prefix-tuning and multitask-prompt adapters against PEFT (fixtures from
//! scripts/make_adapter_fixtures.py): each row alone, every kind mixed in one batch, and PEFT's
//! own mixed `adapter_names` batch.
use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use common::{fixtures, load, model_names, Loaded};
use promptd::engine::continuous::Running;
use promptd::engine::{Joining, PromptSlot, RowInput, RowOutput};
use promptd::model::adapters::ModelShape;
use promptd::prompts::dir::{load_source, PromptSource};
use promptd::prompts::{multitask, Prompt, PromptLimits};

/// One line of expected/adapters/<model>.jsonl.
#[derive(Debug, Clone, Deserialize)]
struct Case {
    adapter: Option<String>,
    #[serde(default)]
    task_index: Option<usize>,
    input: String,
    input_ids: Vec<i64>,
    max_new_tokens: usize,
    token_ids: Vec<i64>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    scores: Vec<f64>,
    /// PEFT's scores recomputed in float64.
    #[serde(default)]
    scores_f64: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Batch { batch: Vec<Case> },
    One(Case),
}

impl Case {
    /// The task serving this case: the adapter, or a multitask adapter's `<name>.<t>`.
    fn task(&self) -> Option<String> {
        let name = self.adapter.clone()?;
        Some(match self.task_index {
            Some(t) => format!("{name}.{t}"),
            None => name,
        })
    }
}

fn lines(model: &str) -> (Vec<Case>, Vec<Case>) {
    let path = fixtures().join(format!("expected/adapters/{model}.jsonl"));
    let (mut cases, mut batch) = (Vec::new(), Vec::new());
    for line in std::fs::read_to_string(path).unwrap().lines() {
        match serde_json::from_str(line).unwrap() {
            Line::Batch { batch: b } => batch = b,
            Line::One(c) => cases.push(c),
        }
    }
    assert!(cases.len() >= 16 && !batch.is_empty(), "{model}: fixtures");
    (cases, batch)
}

/// A fixture adapter's prompts (one, or a multitask adapter's one per task) read as a prompts
/// folder holding it reads them.
fn adapter(model: &str, name: &str, loaded: &Loaded) -> Vec<(String, Prompt)> {
    let limits = PromptLimits {
        shape: Some(ModelShape::of(&loaded.engine.model().config)),
        ..PromptLimits::default()
    };
    let dir = fixtures().join("adapters").join(model).join(name);
    let d_model = loaded.engine.model().config.d_model as usize;
    let config = std::fs::read(dir.join("adapter_config.json")).unwrap();
    match multitask::task_count(&config) {
        None => vec![(
            name.to_string(),
            load_source(&PromptSource::PeftDir(dir), d_model, &limits).unwrap(),
        )],
        Some(n) => (0..n)
            .map(|t| {
                let source = PromptSource::PeftTask(dir.clone(), t);
                (
                    format!("{name}.{t}"),
                    load_source(&source, d_model, &limits).unwrap(),
                )
            })
            .collect(),
    }
}

struct Adapters {
    loaded: Loaded,
    slots: BTreeMap<String, Arc<PromptSlot>>,
}

impl Adapters {
    fn new(model: &str) -> Self {
        let mut loaded = load(model);
        let dir = fixtures().join("adapters").join(model);
        let mut slots = BTreeMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            for (task, prompt) in adapter(model, &name, &loaded) {
                let slot = loaded.engine.register_task(&prompt.weights()).unwrap();
                slots.insert(task, slot);
            }
        }
        assert!(slots.len() >= 8, "{model}: adapters");
        Self { loaded, slots }
    }

    fn row(&self, case: &Case) -> RowInput {
        let tok = &self.loaded.tokenizer;
        assert_eq!(tok.encode(&case.input).unwrap(), case.input_ids);
        RowInput {
            prompt: case.task().map(|a| self.slots[&a].clone()),
            input_ids: case.input_ids.clone(),
            max_new_tokens: case.max_new_tokens,
            labels: case.labels.iter().map(|l| tok.encode(l).unwrap()).collect(),
            ..Default::default()
        }
    }

    fn run(&mut self, cases: &[&Case]) -> Vec<RowOutput> {
        let rows: Vec<RowInput> = cases.iter().map(|c| self.row(c)).collect();
        self.loaded.engine.run_batch(&rows).unwrap()
    }
}

fn assert_peft(case: &Case, out: &RowOutput, what: &str) {
    assert_eq!(
        out.token_ids, case.token_ids,
        "{what}: tokens of {:?} on {:?}",
        case.adapter, case.input
    );
    if !case.labels.is_empty() {
        let got = out.scores.as_ref().expect("scores");
        assert_eq!(got.len(), case.scores_f64.len());
        for ((g, w), x) in got.iter().zip(&case.scores).zip(&case.scores_f64) {
            // Within 1e-3 of PEFT's f32, or at least as close to the exact (f64) score as
            // PEFT's own f32 is (random adapters make some logits large enough that its
            // rounding alone passes 1e-3).
            assert!(
                (g - w).abs() <= 1e-3 || (g - x).abs() <= (w - x).abs() + 1e-5,
                "{what}: {:?} label score {g} vs PEFT {w} (f64: {x})",
                case.adapter
            );
        }
    }
}

#[test]
fn each_adapter_row_alone_matches_peft() {
    for model in model_names() {
        let mut a = Adapters::new(&model);
        let (cases, _) = lines(&model);
        for case in &cases {
            let out = a.run(&[case]);
            assert_peft(case, &out[0], &format!("{model} alone"));
        }
    }
}

#[test]
fn one_batch_of_every_kind_equals_rows_alone_and_peft() {
    for model in model_names() {
        let mut a = Adapters::new(&model);
        let (cases, _) = lines(&model);
        // Soft-prompt rows of the same model join the batch too.
        let prompts = common::cases(&model);
        let soft: Vec<RowInput> = prompts.iter().take(12).map(|c| a.loaded.row(c)).collect();
        let mut rows: Vec<RowInput> = cases.iter().rev().map(|c| a.row(c)).collect();
        rows.extend(soft.iter().cloned());
        let out = a.loaded.engine.run_batch(&rows).unwrap();
        for (case, got) in cases.iter().rev().zip(&out) {
            assert_peft(case, got, &format!("{model} mixed"));
            let alone = a.run(&[case]);
            assert_eq!(alone[0].token_ids, got.token_ids);
            if let (Some(x), Some(y)) = (&alone[0].scores, &got.scores) {
                for (x, y) in x.iter().zip(y) {
                    // f32 rounding grows with the score (sums of large log-probabilities).
                    assert!(
                        (x - y).abs() < 1e-4 + 2e-5 * x.abs(),
                        "batched {y} vs alone {x}"
                    );
                }
            }
        }
        for (case, got) in prompts.iter().take(12).zip(&out[cases.len()..]) {
            common::assert_matches(case, got, &format!("{model} soft prompt beside adapters"));
        }
    }
}

#[test]
fn peft_mixed_adapter_names_batch() {
    for model in model_names() {
        let mut a = Adapters::new(&model);
        let (_, batch) = lines(&model);
        assert!(batch.iter().any(|c| c.adapter.is_none()));
        let refs: Vec<&Case> = batch.iter().collect();
        let out = a.run(&refs);
        for (case, got) in batch.iter().zip(&out) {
            assert_peft(case, got, &format!("{model} adapter_names batch"));
        }
    }
}

#[test]
fn adapters_change_the_output() {
    // Guards the fixtures' power: with adapters ignored, rows would equal the base model's.
    for model in model_names() {
        let mut a = Adapters::new(&model);
        let (cases, _) = lines(&model);
        for name in a.slots.keys().cloned().collect::<Vec<_>>() {
            let mine: Vec<&Case> = cases
                .iter()
                .filter(|c| c.task().as_deref() == Some(&name))
                .collect();
            let bare: Vec<Case> = mine
                .iter()
                .map(|c| Case {
                    adapter: None,
                    task_index: None,
                    ..(*c).clone()
                })
                .collect();
            let with = a.run(&mine);
            let without = a.run(&bare.iter().collect::<Vec<_>>());
            assert!(
                with.iter().zip(&without).any(|(x, y)| x != y),
                "{model}: adapter {name} changed nothing"
            );
        }
    }
}

#[test]
fn adapter_rows_joining_a_running_batch_match_peft() {
    // Rows of every kind join a batch already decoding (their slots reused, the batch
    // compacted), so each adapter's per-row state follows its row.
    for model in model_names() {
        let mut a = Adapters::new(&model);
        let (cases, _) = lines(&model);
        let mut order: Vec<usize> = (0..cases.len()).collect();
        order.sort_by_key(|&i| (i * 7919) % cases.len());
        let mut running = Running::new(a.loaded.engine.model());
        let (mut waiting, mut joined_while_running) = (Vec::new(), 0);
        let mut next = order.into_iter().peekable();
        let mut wave = 0;
        while next.peek().is_some() || !running.is_empty() {
            wave += 1;
            let mut joining = Vec::new();
            for i in next.by_ref().take(1 + wave % 4) {
                let (reply, rx) = tokio::sync::oneshot::channel();
                joining.push(Joining {
                    row: a.row(&cases[i]),
                    reply,
                });
                waiting.push((i, rx));
            }
            if !joining.is_empty() && !running.is_empty() {
                joined_while_running += 1;
            }
            running.admit(&mut a.loaded.engine, joining, 200);
            for _ in 0..(wave % 3) {
                running.step(&a.loaded.engine);
            }
            if next.peek().is_none() {
                while !running.is_empty() {
                    running.step(&a.loaded.engine);
                }
            }
        }
        assert!(joined_while_running > 5, "rows must join a running batch");
        let work = running.take_work();
        assert!(work.reused_slots > 0 && work.compactions > 0, "{work:?}");
        for (i, mut rx) in waiting {
            let out = rx.try_recv().expect("answered").expect("no error");
            assert_peft(&cases[i], &out, &format!("{model} continuous batch"));
        }
    }
}

#[test]
fn a_tiny_adapter_budget_moves_adapters_on_and_off_without_changing_answers() {
    let model = &model_names()[1];
    let mut a = Adapters::new(model);
    let (cases, _) = lines(model);
    let want: Vec<RowOutput> = cases.iter().map(|c| a.run(&[c])[0].clone()).collect();
    let before = a.loaded.engine.adapters().stats();
    assert_eq!(before.evictions, 0, "the default budget holds them all");
    // One byte: every pass keeps only its own rows' adapters on the device (over the budget,
    // since live rows never lose theirs), so each row alone loads its adapter again.
    a.loaded.engine.adapters_mut().set_budget(1);
    for (case, want) in cases.iter().zip(&want) {
        let got = a.run(&[case]);
        assert_eq!(got[0].token_ids, want.token_ids, "{:?}", case.adapter);
        assert_eq!(got[0].scores, want.scores);
    }
    let after = a.loaded.engine.adapters().stats();
    // Every adapter left and came back at least once.
    assert!(after.evictions >= 5, "{after:?}");
    assert!(after.loads >= before.loads + 5, "{after:?}");
    assert!(after.resident <= 1, "{after:?}");
    assert_eq!(after.registered, before.registered);
    // A batch of every kind at once: all of its adapters load together.
    let out = a.run(&cases.iter().collect::<Vec<_>>());
    for ((case, got), want) in cases.iter().zip(&out).zip(&want) {
        assert_eq!(got.token_ids, want.token_ids, "{:?}", case.adapter);
    }
    // Dropping a task's slot takes its adapter off the device at the next pass.
    let registered = a.loaded.engine.adapters().stats().registered;
    a.slots.remove("lora-qv");
    a.run(&[&cases[0]]);
    assert_eq!(
        a.loaded.engine.adapters().stats().registered,
        registered - 1
    );
}
