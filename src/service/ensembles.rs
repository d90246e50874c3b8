//! Prompt ensembles (paper §6): writing, reading and deleting them, and answering with one:
//! each input becomes one batcher unit of one row per member, so the rows join one forward
//! pass together, and their answers combine ([`super::combine`]).
use std::sync::Arc;

use serde::Serialize;

use super::combine::{combine, MemberAnswer};
use super::error::Error;
use super::generation::Generation;
use super::predict::{at, PredictInput};
use super::rows::{build_row, refusal};
use super::state::Service;
use crate::batcher::Unit;
use crate::catalog::prompts::Entry;
use crate::metrics::ChangeAction;
use crate::prompts::audit::{now_ms, AuditEntry};
use crate::prompts::ensembles::{Combine, EnsembleInfo, EnsembleSpec};
use crate::prompts::TaskName;
use crate::tenants::Caller;

/// One member's answer to one input.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberOutput {
    /// The member task.
    pub task: String,
    /// Its prompt version that answered.
    pub prompt_version: u64,
    /// That version's SHA-256.
    pub prompt_sha256: String,
    /// Its own answer: its best label with `labels`, else its generated text.
    pub answer: String,
    /// Log-probability of its answer (the label's, or the generated tokens' summed).
    pub score: f64,
    /// Its generated text (absent when max_new_tokens is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Log-likelihood of each label, in the order given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f64>>,
}

/// The ensemble's answer to one input.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnsembleOutput {
    /// The combined answer: a label with `labels`, else a generated text.
    pub answer: String,
    /// Members whose own answer is `answer`.
    pub votes: usize,
    /// With `labels`: each label's log-likelihood averaged over the members.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f64>>,
    /// Each member's answer, in member order.
    pub members: Vec<MemberOutput>,
}

/// An ensemble's answer to a predict request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnsembleResponse {
    /// Ensemble name.
    pub ensemble: String,
    /// The ensemble version that answered.
    pub version: u64,
    /// That version's SHA-256 (of its members and rule).
    pub sha256: String,
    /// How the answers were combined.
    pub combine: Combine,
    /// One per input, in input order.
    pub outputs: Vec<EnsembleOutput>,
}

impl Service {
    /// Creates or replaces an ensemble of served prompts (stored atomically beside the
    /// prompts, versioned and audited like them). `spec` is an error when the front door could
    /// not read it; it is answered after the permission checks. Returns the stored ensemble and
    /// whether the name is new.
    pub async fn put_ensemble<E: From<Error>>(
        &self,
        caller: &Caller,
        name: TaskName,
        spec: Result<EnsembleSpec, E>,
    ) -> Result<(EnsembleInfo, bool), E> {
        self.check_serving()?;
        self.authorize_ensemble_write(caller, &name)?;
        let spec = self.check_spec(caller, spec?)?;
        let (info, created) = self.ensembles.put(name, spec).await.map_err(Error::from)?;
        let info = (*info).clone();
        tracing::info!(ensemble = %info.name, version = info.version, tenant = caller.name(), "ensemble stored");
        let action = if created {
            ChangeAction::Create
        } else {
            ChangeAction::Replace
        };
        self.audit_ensemble(caller, &info, action).await;
        Ok((info, created))
    }

    /// `caller` may name an ensemble `name` (its tenant's task patterns) and, for a new one,
    /// owns fewer ensembles than its quota (max_prompts, counted apart from prompts).
    fn authorize_ensemble_write(&self, caller: &Caller, name: &TaskName) -> Result<(), Error> {
        let ensembles = &self.ensembles;
        let owned = || ensembles.list().into_iter().map(|e| e.name);
        let new = ensembles.get(name.as_str()).is_none();
        self.authorize(caller, name, new, owned, ("ensemble", "ensembles"))
    }

    /// The members are 2 to --max-batch-size distinct served tasks that `caller` may read.
    fn check_spec(&self, caller: &Caller, spec: EnsembleSpec) -> Result<EnsembleSpec, Error> {
        let max = self.batcher.max_batch_size();
        let n = spec.members.len();
        if n < 2 || n > max {
            return Err(Error::Invalid(format!(
                "`members` has {n} tasks; an ensemble needs 2 to {max} (--max-batch-size: its rows share one forward pass)"
            )));
        }
        let set = self.tenants.current();
        for (i, member) in spec.members.iter().enumerate() {
            let task = TaskName::parse(member)
                .map_err(|e| Error::Invalid(format!("members[{i}]: {e}")))?;
            if spec.members[..i].contains(member) {
                return Err(Error::Invalid(format!(
                    "members[{i}]: task {member:?} is listed twice"
                )));
            }
            self.check_read(caller, &set, task.as_str())?;
            if self.registry.get(task.as_str()).is_none() {
                return Err(Error::Invalid(format!(
                    "members[{i}]: task {member:?} has no prompt; upload it with PUT /v1/prompts/{member} first"
                )));
            }
        }
        Ok(spec)
    }

    async fn audit_ensemble(&self, caller: &Caller, info: &EnsembleInfo, action: ChangeAction) {
        let entry = AuditEntry {
            time_ms: now_ms(),
            tenant: caller.name().to_string(),
            task: info.name.clone(),
            kind: Some("ensemble"),
            action: action.as_str(),
            version: info.version,
            sha256: info.sha256.clone(),
            bytes: 0,
        };
        self.record_audit(entry).await;
    }

    /// Every served ensemble the caller may see (all of them on an open server or for an
    /// admin), by name.
    pub fn list_ensembles(&self, caller: &Caller) -> Result<Vec<EnsembleInfo>, Error> {
        self.check_serving()?;
        let mut ensembles = self.ensembles.list();
        if !caller.is_admin() {
            let set = self.tenants.current();
            ensembles.retain(|e| caller.may_read(&set, &e.name));
        }
        Ok(ensembles)
    }

    /// One ensemble: its members, combine rule and version.
    pub fn ensemble(&self, caller: &Caller, name: &TaskName) -> Result<EnsembleInfo, Error> {
        self.check_serving()?;
        self.check_read(caller, &self.tenants.current(), name.as_str())?;
        self.ensembles
            .get(name.as_str())
            .map(|e| (*e).clone())
            .ok_or_else(|| Error::UnknownEnsemble(name.to_string()))
    }

    /// Removes an ensemble (its members' prompts stay); requests already running finish.
    pub async fn delete_ensemble(&self, caller: &Caller, name: &TaskName) -> Result<(), Error> {
        self.check_serving()?;
        self.authorize_ensemble_write(caller, name)?;
        let ensembles = &self.ensembles;
        let before = ensembles.get(name.as_str());
        if !ensembles.delete(name).await? {
            return Err(Error::UnknownEnsemble(name.to_string()));
        }
        tracing::info!(ensemble = %name, tenant = caller.name(), "ensemble deleted");
        if let Some(info) = before {
            self.audit_ensemble(caller, &info, ChangeAction::Delete)
                .await;
        }
        Ok(())
    }

    /// Answers every input with every member's prompt in ONE forward pass (one row per
    /// member, admitted together), then combines the members' answers: `vote`, or with
    /// `labels` `mean-logprob`. `input` is an error when the front door could not read the
    /// request (answered after the checks that come first, as [`Service::predict`]).
    pub async fn ensemble_predict<E: From<Error>>(
        &self,
        caller: &Caller,
        name: &str,
        input: Result<PredictInput, E>,
    ) -> Result<EnsembleResponse, E> {
        self.check_serving()?;
        let set = self.tenants.current();
        self.check_read(caller, &set, name)?;
        let admission = self.admit(caller)?;
        let ensemble = self
            .ensembles
            .get(name)
            .ok_or_else(|| Error::UnknownEnsemble(name.chars().take(128).collect()))?;
        // Each member's entry is looked up once: every input uses these versions' rows.
        let mut members: Vec<Arc<Entry>> = Vec::with_capacity(ensemble.members.len());
        for task in &ensemble.members {
            self.check_read(caller, &set, task)?;
            let entry = self.registry.get(task).ok_or_else(|| {
                Error::Conflict(format!(
                    "ensemble {:?} has member {task:?}, which no longer has a prompt: upload it with PUT /v1/prompts/{task}, or PUT the ensemble without it",
                    ensemble.name
                ))
            })?;
            members.push(entry);
        }
        let input = input?;
        Ok(self
            .answer_ensemble(&ensemble, members, input, &admission.share)
            .await?)
    }

    async fn answer_ensemble(
        &self,
        ensemble: &EnsembleInfo,
        members: Vec<Arc<Entry>>,
        input: PredictInput,
        share: &crate::batcher::Share,
    ) -> Result<EnsembleResponse, Error> {
        if input.generation != Generation::default() {
            return Err(Error::Invalid(format!(
                "ensemble {:?} decodes greedily and combines its members' answers: sampling, logprobs, stop and n are for tasks",
                ensemble.name
            )));
        }
        let labels = input.labels.clone().unwrap_or_default();
        if ensemble.combine == Combine::MeanLogprob && labels.is_empty() {
            return Err(Error::Invalid(format!(
                "ensemble {:?} combines by mean-logprob, which ranks `labels`: send labels",
                ensemble.name
            )));
        }
        if labels.is_empty() && input.max_new_tokens == Some(0) {
            return Err(Error::Invalid(
                "nothing to combine: send `labels`, or max_new_tokens above 0".into(),
            ));
        }
        let max = self.batcher.max_batch_size();
        if members.len() > max {
            return Err(Error::Invalid(format!(
                "ensemble {:?} has {} members; one forward pass holds {max} rows (--max-batch-size)",
                ensemble.name,
                members.len()
            )));
        }
        let (svc, ms) = (self.clone(), members.clone());
        let units = tokio::task::spawn_blocking(move || svc.ensemble_units(&ms, input))
            .await
            .map_err(|e| Error::task_failed("validation task", e))??;
        let key = format!("ensemble:{}", ensemble.name);
        let units = units
            .into_iter()
            .map(|rows| Unit {
                key: key.clone(),
                rows,
            })
            .collect();
        let answers = self.answer_units(units, share).await?;
        let mut outputs = Vec::with_capacity(answers.len());
        for rows in answers {
            let mut answers = Vec::with_capacity(rows.len());
            let mut texts = Vec::with_capacity(rows.len());
            for out in &rows {
                let text = if out.token_ids.is_empty() {
                    None
                } else {
                    Some(
                        self.tokenizer
                            .decode(&out.token_ids)
                            .map_err(|e| Error::Internal(e.to_string()))?,
                    )
                };
                texts.push(text.clone());
                answers.push(MemberAnswer {
                    text,
                    logprob: out.logprob,
                    scores: out.scores.clone(),
                });
            }
            let combined = combine(ensemble.combine, &labels, &answers)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            let members = members
                .iter()
                .zip(rows)
                .zip(texts)
                .zip(combined.members)
                .map(|(((entry, out), text), (answer, score))| MemberOutput {
                    task: entry.info.task.clone(),
                    prompt_version: entry.info.version,
                    prompt_sha256: entry.info.sha256.clone(),
                    answer,
                    score,
                    text,
                    scores: out.scores,
                })
                .collect();
            outputs.push(EnsembleOutput {
                answer: combined.answer,
                votes: combined.votes,
                scores: combined.mean_scores,
                members,
            });
        }
        Ok(EnsembleResponse {
            ensemble: ensemble.name.clone(),
            version: ensemble.version,
            sha256: ensemble.sha256.clone(),
            combine: ensemble.combine,
            outputs,
        })
    }

    /// One unit per input: the input tokenized once, one row per member's prompt. A unit must
    /// fit one pass's token budget, or it could not ride in one pass.
    fn ensemble_units(
        &self,
        members: &[Arc<Entry>],
        req: PredictInput,
    ) -> Result<Vec<Vec<crate::engine::RowInput>>, Error> {
        let texts = req.inputs;
        self.check_inputs(&texts)?;
        let rows = texts.len() * members.len();
        let most = self.batcher.max_request_rows();
        if rows > most {
            return Err(Error::Invalid(format!(
                "{} inputs × {} members = {rows} rows; one request may queue at most {most} (--max-queue-per-task): send fewer inputs per request",
                texts.len(),
                members.len()
            )));
        }
        let labels = req.labels.unwrap_or_default();
        let budget = self.batcher.max_batch_tokens();
        let widest_prompt = members.iter().map(|m| m.slot.len()).max().unwrap_or(0);
        let n = members.len();
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let at = at(i, texts.len());
                let mut row = build_row(
                    &self.tokenizer,
                    &self.limits.row,
                    None,
                    text,
                    req.max_new_tokens,
                    &labels,
                )
                .map_err(|why| refusal(&at, why))?;
                row.sequence_logprob = labels.is_empty();
                let width = widest_prompt + row.input_ids.len();
                if (n * width) as u64 > budget {
                    return Err(Error::Invalid(format!(
                        "{at}{n} members × {width} encoder positions exceed one pass's budget of {budget} (--max-batch-tokens)"
                    )));
                }
                Ok(members
                    .iter()
                    .map(|m| crate::engine::RowInput {
                        prompt: Some(m.slot.clone()),
                        ..row.clone()
                    })
                    .collect())
            })
            .collect()
    }
}
