//! Served models as KServe sees them: every task is a model (its prompt version the model
//! version), and a name that is not a task but an ensemble is one too.
use std::sync::Arc;

use super::error::Error;
use super::generation::FinishReason;
use super::predict::{Output, PredictInput, PredictResponse};
use super::state::Service;
use crate::catalog::prompts::Entry;
use crate::tenants::Caller;

impl Service {
    /// The served entry of `task` (at `version`, when given) that `caller` may read.
    pub fn model(
        &self,
        caller: &Caller,
        task: &str,
        version: Option<&str>,
    ) -> Result<Arc<Entry>, Error> {
        self.check_serving()?;
        self.check_read(caller, &self.tenants.current(), task)?;
        let entry = self
            .registry
            .get(task)
            .ok_or_else(|| Error::UnknownTask(task.chars().take(128).collect()))?;
        match version {
            Some(v) if v != entry.info.version.to_string() => Err(Error::UnknownVersion(format!(
                "version {v:?} of model {task:?} (version {} is served)",
                entry.info.version
            ))),
            _ => Ok(entry),
        }
    }

    /// A served model's readiness: a task's entry (of `version`, when named), or else an
    /// ensemble's (`version` its ensemble version); the name back.
    pub fn ready_model(
        &self,
        caller: &Caller,
        name: &str,
        version: Option<&str>,
    ) -> Result<String, Error> {
        match self.model(caller, name, version) {
            Err(Error::UnknownTask(_)) => {
                let e = self
                    .ensembles
                    .get(name)
                    .ok_or_else(|| Error::UnknownTask(name.chars().take(128).collect()))?;
                match version {
                    Some(v) if v != e.version.to_string() => Err(Error::UnknownVersion(format!(
                        "version {v:?} of ensemble {name:?} (version {} is served)",
                        e.version
                    ))),
                    _ => Ok(e.name.clone()),
                }
            }
            other => other.map(|e| e.info.task.clone()),
        }
    }

    /// Whether `name` runs as an ensemble: no task has the name, an ensemble does.
    pub fn is_ensemble_model(&self, name: &str) -> bool {
        self.registry.get(name).is_none() && self.ensembles.get(name).is_some()
    }

    /// Runs a model: a task, or, where no task has the name, an ensemble (its answers as the
    /// outputs: the combined answer as the text, and with labels as the label, the members'
    /// mean label log-likelihoods as the scores).
    pub async fn infer<E: From<Error>>(
        &self,
        caller: &Caller,
        name: &str,
        input: Result<PredictInput, E>,
    ) -> Result<PredictResponse, E> {
        if !self.is_ensemble_model(name) {
            return self.predict(caller, name, input).await;
        }
        let answer = self.ensemble_predict(caller, name, input).await?;
        Ok(PredictResponse {
            task: answer.ensemble,
            prompt_version: answer.version,
            prompt_sha256: answer.sha256,
            outputs: answer
                .outputs
                .into_iter()
                .map(|o| Output {
                    label: o.scores.is_some().then(|| o.answer.clone()),
                    text: o.answer,
                    token_ids: Vec::new(),
                    scores: o.scores,
                    // The combined answer of members that each decoded to their end.
                    finish_reason: FinishReason::Stop,
                    logprobs: None,
                })
                .collect(),
        })
    }
}
