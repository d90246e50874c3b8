//! Our T5 + soft prompts against transformers + PEFT (fixtures from scripts/make_fixtures.py).
use crate::common;

use std::collections::BTreeMap;

use common::{assert_matches, cases, load, model_names, Case};

#[test]
fn tokenizer_matches_transformers() {
    for model in model_names() {
        let loaded = load(&model);
        for case in cases(&model) {
            assert_eq!(
                loaded.tokenizer.encode(&case.input).unwrap(),
                case.input_ids,
                "{model}: {:?}",
                case.input
            );
            assert_eq!(
                loaded.tokenizer.decode(&case.token_ids).unwrap(),
                case.text,
                "{model}: decode"
            );
        }
    }
}

#[test]
fn each_row_alone_matches_peft_generate() {
    for model in model_names() {
        let mut loaded = load(&model);
        for case in cases(&model) {
            let out = loaded.run(&[&case]);
            assert_matches(&case, &out[0], &format!("{model} alone"));
        }
    }
}

#[test]
fn one_mixed_batch_matches_rows_alone() {
    for model in model_names() {
        let mut loaded = load(&model);
        let all = cases(&model);
        let tasks: std::collections::BTreeSet<_> = all.iter().map(|c| c.task.clone()).collect();
        assert!(tasks.len() > 20, "the batch must mix 20+ tasks");
        assert!(
            all.iter().any(|c| c.input_ids.len() > 128),
            "some input must reach the far buckets"
        );
        let refs: Vec<&Case> = all.iter().collect();
        let batched = loaded.run(&refs);
        for (case, out) in all.iter().zip(&batched) {
            assert_matches(case, out, &format!("{model} mixed batch"));
            let alone = loaded.run(&[case]);
            assert_eq!(alone[0].token_ids, out.token_ids);
            if let (Some(a), Some(b)) = (&alone[0].scores, &out.scores) {
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() < 1e-4, "batched score {y} vs alone {x}");
                }
            }
        }
    }
}

#[test]
fn mixed_batch_equals_each_task_run_separately() {
    for model in model_names() {
        let mut loaded = load(&model);
        let all = cases(&model);
        // Reverse order too: a row's result must not depend on its neighbours.
        let mixed: Vec<&Case> = all.iter().rev().collect();
        let mixed_out = loaded.run(&mixed);
        let mut by_task: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for (i, c) in mixed.iter().enumerate() {
            by_task.entry(c.task.clone()).or_default().push(i);
        }
        for indices in by_task.values() {
            let group: Vec<&Case> = indices.iter().map(|&i| mixed[i]).collect();
            let out = loaded.run(&group);
            for (&i, o) in indices.iter().zip(&out) {
                assert_eq!(
                    o.token_ids, mixed_out[i].token_ids,
                    "{model}: task {:?}",
                    mixed[i].task
                );
            }
        }
    }
}

#[test]
fn prompts_change_the_output() {
    // Guards the fixtures' power: if prompts were ignored, these would coincide.
    for model in model_names() {
        let mut loaded = load(&model);
        let all = cases(&model);
        let base = all
            .iter()
            .find(|c| c.task.is_some() && c.max_new_tokens >= 8)
            .unwrap();
        let mut outputs = std::collections::BTreeSet::new();
        let tasks: Vec<String> = loaded.slots.keys().cloned().collect();
        for task in tasks.iter().chain(std::iter::once(&String::new())) {
            let mut case = base.clone();
            case.task = (!task.is_empty()).then(|| task.clone());
            outputs.insert(loaded.run(&[&case])[0].token_ids.clone());
        }
        assert!(
            outputs.len() > tasks.len() / 2,
            "{model}: only {} distinct outputs over {} prompts",
            outputs.len(),
            tasks.len()
        );
    }
}

#[test]
fn finished_rows_and_zero_token_rows() {
    let model = &model_names()[0];
    let mut loaded = load(model);
    let all = cases(model);
    let mut zero = all[1].clone();
    zero.max_new_tokens = 0;
    zero.token_ids.clear();
    let out = loaded.run(&[&zero, &all[2]]);
    assert!(out[0].token_ids.is_empty());
    assert_matches(&all[2], &out[1], "next to a zero-token row");
}

#[test]
fn finished_rows_stop_costing_decode_work() {
    let model = &model_names()[0];
    let mut loaded = load(model);
    let all = cases(model);
    let short = all.iter().find(|c| c.max_new_tokens == 1).unwrap();
    let long = all
        .iter()
        .find(|c| c.token_ids.len() == 24 && c.max_new_tokens == 24)
        .expect("a case generating 24 tokens");
    let out = loaded.run(&[short, long, short]);
    assert_matches(short, &out[0], "short");
    assert_matches(long, &out[1], "long");
    let stats = loaded.engine.last_stats().clone();
    assert_eq!(stats.decode_steps, 24);
    // The two 1-token rows leave after the first step: 3 + 23 row-steps, not 3 × 24.
    assert_eq!(stats.decode_row_steps, 3 + 23);
    assert_eq!(stats.generated_tokens, 26);
    assert_eq!(stats.rows, 3);
}

#[test]
fn a_cancelled_row_stops_decoding_and_leaves_the_others_unchanged() {
    let model = &model_names()[1];
    let mut loaded = load(model);
    let all = cases(model);
    let long: Vec<&Case> = all
        .iter()
        .filter(|c| c.max_new_tokens > 4)
        .take(4)
        .collect();
    assert_eq!(
        long.len(),
        4,
        "fixtures need rows that generate several tokens"
    );
    let mut rows: Vec<promptd::engine::RowInput> = long.iter().map(|c| loaded.row(c)).collect();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    rows[1].cancel = Some(flag);
    let before = loaded.engine.last_stats().clone();
    let out = loaded.engine.run_batch(&rows).unwrap();
    assert!(out[1].token_ids.len() <= 1, "cancelled row kept decoding");
    assert_eq!(out[1].scores.as_ref().map(Vec::len).unwrap_or(0), 0);
    for i in [0, 2, 3] {
        assert_matches(long[i], &out[i], &format!("{model} beside a cancelled row"));
    }
    assert_ne!(&before, loaded.engine.last_stats());
}

/// Continuous batching: rows join a running decode batch in waves at different steps (so their
/// caches are padded and merged with rows well into decoding) and leave as they finish; every
/// row must still match transformers + PEFT, as when run alone.
#[test]
fn rows_joining_a_running_batch_match_transformers() {
    use promptd::engine::continuous::{Joining, Running};
    for model in model_names() {
        let mut loaded = load(&model);
        let all = cases(&model);
        // A fixed interleaving: long and short inputs, with and without labels, mixed.
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by_key(|&i| (i * 7919) % all.len());
        let mut running = Running::new(loaded.engine.model());
        let mut waiting = Vec::new();
        let mut joined_while_running = 0;
        let mut next = order.into_iter().peekable();
        let mut wave = 0;
        while next.peek().is_some() || !running.is_empty() {
            wave += 1;
            let take = 1 + wave % 4;
            let mut joining = Vec::new();
            for i in next.by_ref().take(take) {
                let (reply, rx) = tokio::sync::oneshot::channel();
                joining.push(Joining {
                    row: loaded.row(&all[i]),
                    reply,
                });
                waiting.push((i, rx));
            }
            if !joining.is_empty() && !running.is_empty() {
                joined_while_running += 1;
            }
            // A small token budget splits some waves into several encoder passes.
            running.admit(&mut loaded.engine, joining, 200);
            for _ in 0..(wave % 3) {
                running.step(&loaded.engine);
            }
            if next.peek().is_none() {
                while !running.is_empty() {
                    running.step(&loaded.engine);
                }
            }
        }
        assert!(joined_while_running > 5, "rows must join a running batch");
        // Newcomers took finished rows' slots in place, and empty slots were compacted away.
        let work = running.take_work();
        assert!(work.reused_slots > 0, "{work:?}");
        assert!(work.compactions > 0, "{work:?}");
        assert_eq!(waiting.len(), all.len());
        for (i, mut rx) in waiting {
            let out = rx.try_recv().expect("answered").expect("no error");
            assert_matches(&all[i], &out, &format!("{model} continuous batch"));
        }
    }
}
