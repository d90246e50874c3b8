//! Sampling and per-token log-probabilities in the mixed batch, on the engine: a seeded row
//! answers the same whatever shares its pass, greedy rows beside sampled ones are unchanged,
//! and the log-probabilities agree with the greedy choice and the sequence sum.
use crate::common;

use common::{cases, load, Case};
use promptd::engine::{RowInput, Sampling};

const MODEL: &str = "t5-v1_1-tiny";

fn sampled(row: &RowInput, seed: u64) -> RowInput {
    RowInput {
        max_new_tokens: 24,
        sampling: Some(Sampling {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 0,
            seed,
        }),
        ..row.clone()
    }
}

fn some_cases() -> Vec<Case> {
    cases(MODEL).into_iter().take(8).collect()
}

#[test]
fn a_seeded_row_samples_the_same_alone_and_in_any_batch() {
    let mut loaded = load(MODEL);
    let cases = some_cases();
    let base: Vec<RowInput> = cases.iter().map(|c| loaded.row(c)).collect();
    let rows: Vec<RowInput> = (base.iter().enumerate())
        .map(|(i, r)| sampled(r, 1000 + i as u64))
        .collect();
    let alone: Vec<Vec<i64>> = rows
        .iter()
        .map(|r| {
            loaded.engine.run_batch(std::slice::from_ref(r)).unwrap()[0]
                .token_ids
                .clone()
        })
        .collect();
    // Every sampled row, in reverse order, between greedy rows of other tasks.
    let mut mixed = Vec::new();
    for (r, g) in rows.iter().rev().zip(&base) {
        mixed.push(r.clone());
        mixed.push(g.clone());
    }
    let out = loaded.engine.run_batch(&mixed).unwrap();
    for (k, r) in rows.iter().rev().enumerate() {
        let i = rows.len() - 1 - k;
        assert_eq!(
            out[2 * k].token_ids,
            alone[i],
            "row {i} (seed {:?})",
            r.sampling
        );
    }
    // Sampling samples: other seeds give other outputs for some row.
    let reseeded: Vec<RowInput> = (base.iter().enumerate())
        .map(|(i, r)| sampled(r, 2000 + i as u64))
        .collect();
    let other = loaded.engine.run_batch(&reseeded).unwrap();
    assert!(
        other.iter().zip(&alone).any(|(o, a)| &o.token_ids != a),
        "new seeds changed no row"
    );
}

#[test]
fn greedy_rows_beside_sampled_rows_are_unchanged() {
    let mut loaded = load(MODEL);
    let cases = some_cases();
    let refs: Vec<&Case> = cases.iter().collect();
    let greedy = loaded.run(&refs);
    let mut mixed = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let row = loaded.row(c);
        mixed.push(sampled(&row, i as u64));
        mixed.push(row);
    }
    let out = loaded.engine.run_batch(&mixed).unwrap();
    for (i, want) in greedy.iter().enumerate() {
        assert_eq!(out[2 * i + 1].token_ids, want.token_ids, "greedy row {i}");
        assert_eq!(out[2 * i + 1].scores, want.scores, "greedy row {i} scores");
    }
}

#[test]
fn token_logprobs_follow_the_greedy_choice_and_sum_to_the_sequence() {
    let mut loaded = load(MODEL);
    for case in some_cases() {
        let row = RowInput {
            top_logprobs: Some(3),
            sequence_logprob: true,
            ..loaded.row(&case)
        };
        let out = loaded.engine.run_batch(&[row]).unwrap().remove(0);
        let steps = out.token_logprobs.expect("asked for");
        assert_eq!(steps.len(), out.token_ids.len());
        let mut sum = 0.0;
        for (step, &token) in steps.iter().zip(&out.token_ids) {
            assert_eq!(step.top.len(), 3);
            // Greedy: the chosen token is the most likely one.
            assert_eq!(step.top[0].0, token);
            assert_eq!(step.top[0].1, step.logprob);
            assert!(step.top.windows(2).all(|w| w[0].1 >= w[1].1));
            assert!(step.logprob <= 0.0);
            sum += f64::from(step.logprob);
        }
        let total = out.logprob.expect("asked for");
        assert!((sum - total).abs() < 1e-4, "{sum} vs {total}");
    }
}
