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

/// PEFT's loss and gradients for a LoRA on the tuning fixtures' batch
/// (scripts/make_lora_grad_fixtures.py): what tuning a LoRA will start from.
#[derive(Deserialize)]
struct LoraGrads {
    loss_f64: f64,
    grads: BTreeMap<String, Vec<f64>>,
    grads_f64: BTreeMap<String, Vec<f64>>,
}

/// The tuning fixtures' batch (expected.json): ids and mask right-padded with 0, labels with -100.
fn tuning_batch(expected: &serde_json::Value) -> (tch::Tensor, tch::Tensor, tch::Tensor) {
    let rows =
        |key: &str| -> Vec<Vec<i64>> { serde_json::from_value(expected[key].clone()).unwrap() };
    let pad = |rows: &[Vec<i64>], fill: i64| {
        let width = rows.iter().map(Vec::len).max().unwrap();
        let flat: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.iter().copied().chain(std::iter::repeat(fill)).take(width))
            .collect();
        tch::Tensor::from_slice(&flat).view([rows.len() as i64, width as i64])
    };
    let ids = rows("input_ids");
    let ones: Vec<Vec<i64>> = ids.iter().map(|r| vec![1; r.len()]).collect();
    (pad(&ids, 0), pad(&ones, 0), pad(&rows("labels"), -100))
}

/// |a - b| and |b| (Euclidean) over flat values.
fn distance(a: &[f64], b: &[f64]) -> (f64, f64) {
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
    (diff.sqrt(), b.iter().map(|y| y * y).sum::<f64>().sqrt())
}

#[test]
fn lora_loss_and_gradients_match_peft() {
    use promptd::model::adapters::{AdapterTables, Site};
    use tch::{Kind, Tensor};
    for model in model_names() {
        let loaded = load(&model);
        let t5 = loaded.engine.model();
        let dir = fixtures().join("tune").join(&model);
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let want: LoraGrads =
            serde_json::from_str(&std::fs::read_to_string(dir.join("lora/grad.json")).unwrap())
                .unwrap();
        let bytes = std::fs::read(dir.join("lora/adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensor = |name: &str| {
            let view = st.tensor(name).unwrap();
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            Tensor::from_slice(&values)
                .view(shape.as_slice())
                .set_requires_grad(true)
        };
        // rank 4, alpha 8: scaling 2.
        let mut params = Vec::new();
        for name in st.names() {
            if let Some(path) = name.strip_suffix(".lora_A.weight") {
                let b = format!("{path}.lora_B.weight");
                params.push((
                    Site::parse(path).unwrap(),
                    tensor(name),
                    tensor(&b),
                    name.to_string(),
                    b,
                ));
            }
        }
        let factors: Vec<_> = params
            .iter()
            .map(|(s, a, b, _, _)| (*s, a, b, 2.0))
            .collect();
        let tables =
            AdapterTables::trainable_lora(&factors, tch::Device::Cpu, Kind::Float).unwrap();
        let (ids, mask, labels) = tuning_batch(&expected);
        let rows = ids.size()[0];
        let ad = promptd::model::adapters::Adapt::new(
            &tables,
            Tensor::ones([rows], (Kind::Int64, tch::Device::Cpu)),
        );
        let loss = tch::with_grad(|| {
            let embeds = t5.embed(&ids).unwrap();
            t5.seq2seq_loss(&embeds, &mask, &labels, 0.0, Some(&ad))
                .unwrap()
        });
        assert!(loss.requires_grad(), "{model}: the loss has no gradient");
        let got = loss.double_value(&[]);
        assert!(
            (got - want.loss_f64).abs() <= 1e-4 * want.loss_f64.abs(),
            "{model}: loss {got} vs PEFT {}",
            want.loss_f64
        );
        let inputs: Vec<&Tensor> = params.iter().flat_map(|(_, a, b, _, _)| [a, b]).collect();
        let grads = tch::with_grad(|| Tensor::run_backward(&[&loss], &inputs, false, false));
        let names = params.iter().flat_map(|(_, _, _, a, b)| [a, b]);
        let mut worst = 0f64;
        for (name, grad) in names.zip(&grads) {
            let got: Vec<f64> = Vec::try_from(grad.flatten(0, -1).to_kind(Kind::Double)).unwrap();
            // Within 1e-4 (relative) of PEFT's f32 gradient, or as close to the exact (f64)
            // one as PEFT's own f32 gradient is.
            let (to_peft, norm) = distance(&got, &want.grads[name]);
            let (to_exact, exact) = distance(&got, &want.grads_f64[name]);
            let (peft_to_exact, _) = distance(&want.grads[name], &want.grads_f64[name]);
            worst = worst.max(to_peft / norm);
            assert!(
                to_peft <= 1e-4 * norm || to_exact <= (1.5 * peft_to_exact).max(1e-4 * exact),
                "{model}: {name}: {to_peft} from PEFT's (|g| {norm}), {to_exact} from f64 (PEFT's f32: {peft_to_exact})"
            );
        }
        assert_eq!(grads.len(), want.grads_f64.len());
        eprintln!("{model}: loss {got}, gradients within {worst:.1e} (relative) of PEFT's");
    }
}

/// The grad fixture of `kind` (lora, ia3) on `model`, through `layout` as `promptd tune` keeps
/// it (one flat tensor): PEFT's loss, its gradients by PEFT's names, and one step of
/// promptd's Adam against torch.optim.Adam(lr=0.01) on PEFT's parameters.
fn flat_adapter_matches_peft(model: &str, kind: &str, spec: promptd::tune::AdapterSpec) {
    use promptd::model::adapters::ModelShape;
    use promptd::tune::optim::Optimizer;
    use promptd::tune::{AdapterLayout, OptimizerKind, OptimizerSettings};
    use tch::{Kind, Tensor};
    #[derive(Deserialize)]
    struct Fixture {
        loss_f64: f64,
        grads: BTreeMap<String, Vec<f64>>,
        grads_f64: BTreeMap<String, Vec<f64>>,
        adam_step: BTreeMap<String, Vec<f64>>,
    }
    let loaded = load(model);
    let t5 = loaded.engine.model();
    let dir = fixtures().join("tune").join(model);
    let want: Fixture =
        serde_json::from_str(&std::fs::read_to_string(dir.join(kind).join("grad.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(dir.join(kind).join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let named: std::collections::HashMap<String, Vec<f32>> = st
        .names()
        .into_iter()
        .map(|n| {
            let data = st.tensor(n).unwrap().data().to_vec();
            let values = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n.to_string(), values)
        })
        .collect();
    let layout = AdapterLayout::new(spec, &ModelShape::of(&t5.config)).unwrap();
    assert_eq!(layout.unpack(&vec![0.0; layout.len()]).len(), named.len());
    let mut theta = Tensor::from_slice(&layout.pack(&named).unwrap()).set_requires_grad(true);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let (ids, mask, labels) = tuning_batch(&expected);
    let rows = ids.size()[0];
    let (loss, grad) = tch::with_grad(|| {
        let tables = layout.tables(&theta, Kind::Float).unwrap();
        let index = Tensor::ones([rows], (Kind::Int64, tch::Device::Cpu));
        let ad = promptd::model::adapters::Adapt::new(&tables, index);
        let embeds = t5.embed(&ids).unwrap();
        let loss = t5
            .seq2seq_loss(&embeds, &mask, &labels, 0.0, Some(&ad))
            .unwrap();
        let grad = Tensor::run_backward(&[&loss], &[&theta], false, false).remove(0);
        (loss.double_value(&[]), grad)
    });
    assert!(
        (loss - want.loss_f64).abs() <= 1e-4 * want.loss_f64.abs(),
        "{model} {kind}: loss {loss} vs PEFT {}",
        want.loss_f64
    );
    let grads: Vec<f32> = Vec::try_from(&grad).unwrap();
    let mut worst_grad = 0f64;
    for (name, got) in layout.unpack(&grads) {
        let got: Vec<f64> = got.iter().map(|v| *v as f64).collect();
        // Within 1e-4 (relative) of PEFT's f32 gradient, or as close to the exact (f64) one as
        // PEFT's own f32 gradient is.
        let (to_peft, norm) = distance(&got, &want.grads[&name]);
        let (to_exact, exact) = distance(&got, &want.grads_f64[&name]);
        let (peft_to_exact, _) = distance(&want.grads[&name], &want.grads_f64[&name]);
        worst_grad = worst_grad.max(to_peft / norm);
        assert!(
            to_peft <= 1e-4 * norm || to_exact <= (1.5 * peft_to_exact).max(1e-4 * exact),
            "{model} {kind}: {name}: {to_peft} from PEFT's (|g| {norm}), {to_exact} from f64 (PEFT's f32: {peft_to_exact})"
        );
    }
    let settings = OptimizerSettings {
        lr: 0.01,
        ..OptimizerSettings::defaults(OptimizerKind::Adam)
    };
    let mut adam = Optimizer::new(settings, &theta).unwrap();
    adam.step(&mut theta, &grad).unwrap();
    let after: Vec<f32> = Vec::try_from(theta.detach()).unwrap();
    let mut worst = 0f64;
    for (name, got) in layout.unpack(&after) {
        let want = &want.adam_step[&name];
        for (g, w) in got.iter().zip(want) {
            worst = worst.max((*g as f64 - w).abs());
        }
    }
    // A first Adam step moves each value by about lr·sign(g): 1e-5 is a thousandth of it.
    assert!(
        worst <= 1e-5,
        "{model} {kind}: largest difference from PyTorch's step {worst}"
    );
    eprintln!(
        "{model} {kind}: loss {loss}, gradients within {worst_grad:.1e}, one Adam step within {worst:.1e} of PEFT + PyTorch"
    );
}

#[test]
fn one_adam_step_on_a_lora_equals_pytorchs() {
    for model in model_names() {
        let spec = promptd::tune::LoraSpec {
            rank: 4,
            alpha: 8.0,
            targets: vec!["q".into(), "v".into()],
        };
        flat_adapter_matches_peft(&model, "lora", promptd::tune::AdapterSpec::Lora(spec));
    }
}

#[test]
fn ia3_loss_gradients_and_one_adam_step_match_peft() {
    // PEFT's T5 default (k, v, and wo's input), what `promptd tune --method ia3` trains.
    for model in model_names() {
        let spec = promptd::tune::Ia3Spec::default();
        flat_adapter_matches_peft(&model, "ia3", promptd::tune::AdapterSpec::Ia3(spec));
    }
}
