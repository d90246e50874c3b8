//! Neighbours (`GET /v1/prompts/{task}/neighbors`, `promptd neighbors`): a prompt read through its
//! nearest vocabulary tokens (paper §7). The engine finds each row's nearest tokens; here they
//! become text, and the task's labels are looked for among them.
use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use super::error::Error;
use super::state::Service;
use crate::engine::neighbors::Neighbor;
use crate::model::{ModelError, T5Tokenizer};
use crate::prompts::TaskName;
use crate::tenants::Caller;

/// Most neighbours per row.
pub const MAX_K: usize = 100;
/// A tuning report's distinct targets count as the task's labels only up to this many (more
/// means a generation task, whose targets are not a label set).
pub const MAX_REPORT_LABELS: usize = 32;

/// A vocabulary token near a prompt row.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NeighborToken {
    /// Token id.
    pub id: i64,
    /// The vocabulary piece (SentencePiece marks a word start with `▁`).
    pub token: String,
    /// The piece decoded as text.
    pub text: String,
    /// Cosine similarity to the prompt row.
    pub cosine: f32,
}

/// One prompt row's nearest tokens.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RowNeighbors {
    /// Prompt row (virtual token) index.
    pub row: usize,
    /// Nearest first.
    pub neighbors: Vec<NeighborToken>,
}

/// Whether a label's tokens are among the neighbours.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LabelHit {
    /// The label.
    pub label: String,
    /// Its tokens (without `</s>`).
    pub tokens: Vec<String>,
    /// Those of its tokens that are some row's neighbour.
    pub found: Vec<String>,
    /// Rows with one of its tokens among their neighbours.
    pub rows: Vec<usize>,
}

/// A prompt read through its nearest vocabulary tokens.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NeighborsReport {
    /// Task (or prompt file) name.
    pub task: String,
    /// The prompt version read (served prompts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_version: Option<u64>,
    /// Tokens per row.
    pub k: usize,
    /// Each prompt row's nearest tokens.
    pub rows: Vec<RowNeighbors>,
    /// Where the labels came from: `query`, `report` (`<prompts>/reports/<task>.json`),
    /// `tuning job` (the server's job that installed this version) or `none`.
    pub labels_from: &'static str,
    /// Each label and where its tokens appear.
    pub labels: Vec<LabelHit>,
    /// Labels with at least one token among the neighbours.
    pub labels_found: usize,
}

/// Turns the engine's neighbours into text and looks for `labels` among them.
pub fn report(
    tokenizer: &T5Tokenizer,
    task: &str,
    k: usize,
    neighbors: Vec<Vec<Neighbor>>,
    labels: (Vec<String>, &'static str),
) -> Result<NeighborsReport, ModelError> {
    let piece = |id: i64| {
        tokenizer
            .inner()
            .id_to_token(id as u32)
            .unwrap_or_else(|| format!("<{id}>"))
    };
    let rows = neighbors
        .iter()
        .enumerate()
        .map(|(row, ns)| {
            let neighbors = ns
                .iter()
                .map(|n| {
                    Ok(NeighborToken {
                        id: n.id,
                        token: piece(n.id),
                        text: tokenizer.decode(&[n.id])?,
                        cosine: n.cosine,
                    })
                })
                .collect::<Result<_, ModelError>>()?;
            Ok(RowNeighbors { row, neighbors })
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    let eos = tokenizer.encode("")?;
    let (labels, labels_from) = labels;
    let labels: Vec<LabelHit> = labels
        .into_iter()
        .map(|label| {
            let ids: Vec<i64> = tokenizer
                .encode(&label)?
                .into_iter()
                .filter(|id| !eos.contains(id))
                .collect();
            let near: Vec<usize> = neighbors
                .iter()
                .enumerate()
                .filter(|(_, ns)| ns.iter().any(|n| ids.contains(&n.id)))
                .map(|(row, _)| row)
                .collect();
            let found: BTreeSet<i64> = neighbors
                .iter()
                .flatten()
                .map(|n| n.id)
                .filter(|id| ids.contains(id))
                .collect();
            Ok(LabelHit {
                label,
                tokens: ids.iter().map(|&id| piece(id)).collect(),
                found: ids
                    .iter()
                    .filter(|id| found.contains(id))
                    .map(|&id| piece(id))
                    .collect(),
                rows: near,
            })
        })
        .collect::<Result<_, ModelError>>()?;
    Ok(NeighborsReport {
        task: task.to_string(),
        prompt_version: None,
        k,
        rows,
        labels_from,
        labels_found: labels.iter().filter(|l| !l.found.is_empty()).count(),
        labels,
    })
}

/// The labels a `promptd tune` report names: its `--labels` when given, else its distinct
/// targets when they are few enough to be a label set. None when the file is absent or unreadable.
pub fn report_labels(path: &Path) -> Option<Vec<String>> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > 16 << 20 {
        return None;
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let given = strings(&report["settings"]["labels"]).unwrap_or_default();
    if !given.is_empty() {
        return Some(given);
    }
    strings(&report["labels"]).filter(|l| l.len() <= MAX_REPORT_LABELS)
}

/// Splits a comma-separated label list (empty entries dropped).
pub fn split_labels(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// What a neighbours request asks.
#[derive(Debug, Clone, Default)]
pub struct NeighborsAsk {
    /// Tokens per prompt row, 1 to [`MAX_K`] (default 5).
    pub k: Option<usize>,
    /// Labels to look for (default: the task's tuning report, else its tuning job's labels).
    pub labels: Option<Vec<String>>,
}

impl Service {
    /// Each row of the task's prompt, with its k nearest vocabulary tokens by cosine
    /// similarity, and which of the task's labels (given, else its tuning report
    /// `<prompts>/reports/<task>.json`, else the labels of the tuning job that installed the
    /// served version) appear among them. Computed on the engine thread between passes. `ask`
    /// is an error when the front door could not read it (answered after the permission check).
    pub async fn neighbors<E: From<Error>>(
        &self,
        caller: &Caller,
        task: &TaskName,
        ask: Result<NeighborsAsk, E>,
    ) -> Result<NeighborsReport, E> {
        self.check_serving()?;
        self.check_read(caller, &self.tenants.current(), task.as_str())?;
        let ask = ask?;
        Ok(self.read_prompt(task, ask).await?)
    }

    async fn read_prompt(
        &self,
        task: &TaskName,
        ask: NeighborsAsk,
    ) -> Result<NeighborsReport, Error> {
        let k = ask.k.unwrap_or(5);
        if !(1..=MAX_K).contains(&k) {
            return Err(Error::Invalid(format!("k is {k}; it must be 1 to {MAX_K}")));
        }
        let entry = self
            .registry
            .get(task.as_str())
            .ok_or_else(|| Error::UnknownTask(task.to_string()))?;
        if entry.slot.is_empty() {
            return Err(Error::Invalid(format!(
                "task {task} is served by a {:?} adapter, not a soft prompt: it has no prompt rows to read as words",
                entry.info.kind
            )));
        }
        let labels = match ask.labels {
            Some(list) => (list, "query"),
            None => {
                // Tuning reports live beside a prompts folder (a bucket keeps none).
                let path = self
                    .registry
                    .dir()
                    .map(|dir| dir.join("reports").join(format!("{task}.json")));
                let from_report = match path {
                    Some(path) => tokio::task::spawn_blocking(move || report_labels(&path))
                        .await
                        .ok()
                        .flatten(),
                    None => None,
                };
                match from_report {
                    Some(l) => (l, "report"),
                    None => match self.job_labels(task.as_str(), entry.info.version) {
                        Some(l) => (l, "tuning job"),
                        None => (Vec::new(), "none"),
                    },
                }
            }
        };
        let max_labels = self.limits.row.max_labels;
        if labels.0.len() > max_labels {
            return Err(Error::Invalid(format!(
                "{} labels; the limit is {max_labels} (--max-labels)",
                labels.0.len()
            )));
        }
        let vocab = self.tokenizer.vocab_size() as i64;
        let neighbors = self
            .engine
            .neighbors(entry.slot.clone(), k, vocab)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?
            .map_err(|e| Error::Internal(format!("finding neighbours failed: {e}")))?;
        let tokenizer = self.tokenizer.clone();
        let name = task.to_string();
        let mut report =
            tokio::task::spawn_blocking(move || report(&tokenizer, &name, k, neighbors, labels))
                .await
                .map_err(|e| Error::task_failed("neighbours task", e))?
                .map_err(|e| Error::Internal(e.to_string()))?;
        report.prompt_version = Some(entry.info.version);
        Ok(report)
    }

    /// The labels of the server's tuning job that installed `version` of `task`, if any.
    fn job_labels(&self, task: &str, version: u64) -> Option<Vec<String>> {
        self.tuning
            .jobs
            .all()
            .into_iter()
            .find(|j| j.task == task && j.version == Some(version) && !j.labels.is_empty())
            .map(|j| j.labels)
    }
}
