//! PEFT multitask prompt tuning (`MULTITASK_PROMPT_TUNING`): one shared prompt `P` and, per
//! task `t`, a low-rank factor `cols[t] @ rows[t]`; task `t`'s prompt is
//! `P ∘ (cols[t] @ rows[t])` (elementwise). One adapter yields its T prompts, served as soft
//! prompts named `<task>.<t>`; like PEFT's `generate()`, only the encoder half is served.
use serde::Deserialize;

use super::error::PromptError;
use super::prompt::{check_matrix, Prompt, PromptLimits};
use super::tensor::{safetensors_tensor, RawTensor};
use crate::engine::PromptRows;

/// `peft_type` of a multitask adapter.
pub const MULTITASK: &str = "MULTITASK_PROMPT_TUNING";

#[derive(Deserialize)]
struct Config {
    num_virtual_tokens: usize,
    num_tasks: usize,
    #[serde(default)]
    num_transformer_submodules: Option<usize>,
}

/// How many task prompts a multitask `adapter_config.json` holds (None for other adapters).
pub fn task_count(config: &[u8]) -> Option<usize> {
    #[derive(Deserialize)]
    struct Kind {
        peft_type: Option<String>,
        num_tasks: Option<usize>,
    }
    let kind: Kind = serde_json::from_slice(config).ok()?;
    (kind.peft_type.as_deref() == Some(MULTITASK)).then_some(kind.num_tasks.unwrap_or(1))
}

fn tensor(weights: &[u8], name: &str) -> Result<RawTensor, PromptError> {
    safetensors_tensor(weights, name)?.ok_or_else(|| {
        PromptError::Invalid(format!(
            "adapter_model.safetensors has no `{name}` (a multitask prompt needs prompt_embeddings, prefix_task_cols and prefix_task_rows)"
        ))
    })
}

/// Every task prompt of a multitask adapter, in task order.
pub fn task_prompts(
    config: &[u8],
    weights: &[u8],
    d_model: usize,
    limits: &PromptLimits,
) -> Result<Vec<Prompt>, PromptError> {
    let cfg: Config =
        serde_json::from_slice(config).map_err(|e| PromptError::Adapter(e.to_string()))?;
    let shared = check_matrix(tensor(weights, "prompt_embeddings")?, d_model)?;
    let cols = tensor(weights, "prefix_task_cols")?;
    let rows = tensor(weights, "prefix_task_rows")?;
    let (p, total) = (cfg.num_virtual_tokens, shared.rows);
    let submodules = cfg.num_transformer_submodules.unwrap_or(total / p.max(1));
    let bad = |why: String| Err(PromptError::Invalid(why));
    if p == 0 || total != p * submodules {
        return bad(format!(
            "prompt_embeddings has {total} rows; adapter_config.json implies {p} x {submodules}"
        ));
    }
    let (&[t, c_rows, rank], &[t2, rank2, width]) = (cols.shape.as_slice(), rows.shape.as_slice())
    else {
        return bad(format!(
            "prefix_task_cols must be [tasks, rows, rank] and prefix_task_rows [tasks, rank, d_model], got {:?} and {:?}",
            cols.shape, rows.shape
        ));
    };
    let (t, rank, width) = (t as usize, rank as usize, width as usize);
    if t != cfg.num_tasks
        || t2 as usize != t
        || rank2 as usize != rank
        || c_rows as usize != total
        || width != d_model
    {
        return bad(format!(
            "prefix_task_cols {:?} and prefix_task_rows {:?} do not fit {} tasks of [{total}, {d_model}]",
            cols.shape, rows.shape, cfg.num_tasks
        ));
    }
    (0..t)
        .map(|task| {
            // Encoder half only: row i of P times (cols[t] @ rows[t])[i].
            let mut values = Vec::with_capacity(p * d_model);
            for i in 0..p {
                for j in 0..d_model {
                    let factor: f32 = (0..rank)
                        .map(|k| {
                            cols.values[(task * total + i) * rank + k]
                                * rows.values[(task * rank + k) * d_model + j]
                        })
                        .sum();
                    values.push(shared.values[i * d_model + j] * factor);
                }
            }
            let prompt = Prompt {
                encoder: PromptRows {
                    rows: p,
                    cols: d_model,
                    values,
                },
                decoder: None,
                adapter: None,
            };
            prompt.validate(d_model, limits)?;
            Ok(prompt)
        })
        .collect()
}
