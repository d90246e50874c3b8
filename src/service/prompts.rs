//! Prompt writes and reads: who may write (authorize), what is written (parse and validate),
//! where (the registry's store), and the record of it (audit log, metrics). Every front door
//! and the tuning jobs store prompts through [`Service::put_prompt`].
use std::sync::Arc;

use super::error::Error;
use super::state::Service;
use crate::catalog::prompts::{NewPrompt, PromptInfo};
use crate::metrics::{ChangeAction, Rejection, UploadResult};
use crate::prompts::audit::{now_ms, AuditEntry};
use crate::prompts::store::{embedded_adapter_config, sha256_hex};
use crate::prompts::{Prompt, PromptLimits, TaskName};
use crate::tenants::Caller;

/// The PEFT adapter's weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The PEFT adapter's config file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// What an upload carried.
pub enum Upload {
    /// One tensor file (safetensors or npy).
    Tensor(Vec<u8>),
    /// A PEFT adapter: weights and config.
    Peft {
        /// adapter_model.safetensors.
        weights: Vec<u8>,
        /// adapter_config.json.
        config: Vec<u8>,
    },
}

impl Upload {
    /// Bytes received.
    pub fn len(&self) -> usize {
        match self {
            Upload::Tensor(b) => b.len(),
            Upload::Peft { weights, config } => weights.len() + config.len(),
        }
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses and validates the prompts (one, or a multitask adapter's one per task); returns
    /// them with the SHA-256 of the weights file.
    fn parse(self, d_model: usize, limits: &PromptLimits) -> Result<(Vec<Prompt>, String), Error> {
        match self {
            Upload::Tensor(bytes) => {
                if bytes.is_empty() {
                    return Err(Error::Malformed(
                        "empty body: send a .safetensors or .npy prompt file, or multipart with adapter_model.safetensors and adapter_config.json".into(),
                    ));
                }
                // An adapter's weights with its config in the metadata (what promptd stores,
                // and what `promptd tune` writes) is that adapter.
                if let Some(config) = embedded_adapter_config(&bytes) {
                    let prompts =
                        Prompt::from_peft_tasks(config.as_bytes(), &bytes, d_model, limits)?;
                    return Ok((prompts, sha256_hex(&bytes)));
                }
                let prompt = Prompt::from_tensor_file(&bytes, d_model, limits)?;
                Ok((vec![prompt], sha256_hex(&bytes)))
            }
            Upload::Peft { weights, config } => {
                let prompts = Prompt::from_peft_tasks(&config, &weights, d_model, limits)?;
                Ok((prompts, sha256_hex(&weights)))
            }
        }
    }
}

impl Service {
    /// Checks, before the upload is read, that `caller` may write `task` and, for a new task,
    /// owns fewer prompts than its quota.
    pub fn authorize_prompt_write(&self, caller: &Caller, task: &TaskName) -> Result<(), Error> {
        let owned = || self.registry.list().into_iter().map(|p| p.task);
        let new = self.registry.get(task.as_str()).is_none();
        self.authorize(caller, task, new, owned, ("task", "prompts"))
    }

    /// `caller` may change `name` (it matches the tenant's task patterns) and, when `new`, owns
    /// fewer of `names()` than its quota (max_prompts). `what` is the kind in messages, singular
    /// and plural: ("task", "prompts") or ("ensemble", "ensembles").
    pub(crate) fn authorize<I: Iterator<Item = String>>(
        &self,
        caller: &Caller,
        name: &TaskName,
        new: bool,
        names: impl FnOnce() -> I,
        what: (&str, &str),
    ) -> Result<(), Error> {
        let set = self.tenants.current();
        if !caller.may_write(&set, name.as_str()) {
            return Err(self.forbidden(
                caller,
                &format!(
                    "may not change {} {name:?} (its name is not in the tenant's task patterns)",
                    what.0
                ),
            ));
        }
        if let Caller::Tenant(t) = caller {
            if !t.admin && new {
                let owned = names()
                    .filter(|n| set.owner(n).is_some_and(|o| Arc::ptr_eq(o, t)))
                    .count();
                if owned >= t.max_prompts {
                    self.reject(caller, Rejection::QuotaExceeded);
                    return Err(Error::QuotaExceeded(format!(
                        "tenant {:?} owns {owned} {}; its quota is {} (max_prompts)",
                        t.name, what.1, t.max_prompts
                    )));
                }
            }
        }
        Ok(())
    }

    /// Counts and records a prompt change in the audit log (synced before the reply).
    async fn audit_prompt(
        &self,
        caller: &Caller,
        info: &PromptInfo,
        action: ChangeAction,
        bytes: usize,
    ) {
        self.metrics.prompt_change(caller.name(), action);
        let entry = AuditEntry {
            time_ms: now_ms(),
            tenant: caller.name().to_string(),
            task: info.task.clone(),
            kind: None,
            action: action.as_str(),
            version: info.version,
            sha256: info.sha256.clone(),
            bytes,
        };
        self.record_audit(entry).await;
    }

    /// Appends `entry` to the audit log, if the server keeps one (synced before the reply); a
    /// failure is logged and counted, not the client's.
    pub(crate) async fn record_audit(&self, entry: AuditEntry) {
        let Some(log) = self.audit.clone() else {
            return;
        };
        let task = entry.task.clone();
        let written = tokio::task::spawn_blocking(move || log.record(&entry)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!(%task, ?written, "writing the audit log failed");
            self.metrics.audit_errors.inc();
        }
    }

    /// Validates and stores an upload (authorize → validate → store → audit), counting it in
    /// `promptd_prompt_uploads_total`; `upload` is an error when reading it already failed
    /// (the front door checked readiness and [`Service::authorize_prompt_write`] before
    /// reading it). Returns the stored prompt and whether the task is new.
    pub async fn put_prompt(
        &self,
        caller: &Caller,
        upload: Result<(TaskName, Upload), Error>,
    ) -> Result<(PromptInfo, bool), Error> {
        let mut bytes = 0;
        let result = async {
            let (task, upload) = upload?;
            bytes = upload.len();
            self.store_upload(caller, task, upload).await
        }
        .await;
        self.metrics.prompt_upload(match &result {
            Ok(stored) if stored[0].1 => UploadResult::Created,
            Ok(_) => UploadResult::Replaced,
            Err(e) if !e.is_server_fault() => UploadResult::Invalid,
            Err(_) => UploadResult::Error,
        });
        let stored = match result {
            Ok(stored) => stored,
            Err(e) => {
                tracing::info!(error = %e, tenant = caller.name(), "prompt upload refused");
                return Err(e);
            }
        };
        for (info, created) in &stored {
            tracing::info!(task = %info.task, version = info.version, sha256 = %info.sha256, tenant = caller.name(), "prompt stored");
            let action = if *created {
                ChangeAction::Create
            } else {
                ChangeAction::Replace
            };
            self.audit_prompt(caller, info, action, bytes).await;
        }
        let names: Vec<&str> = stored.iter().map(|(i, _)| i.task.as_str()).collect();
        let (mut first, created) = stored[0].clone();
        if names.len() > 1 {
            first.notes.push(format!(
                "a multitask adapter: its {} task prompts are the tasks {} (this answer describes {}); the decoder half of each is not served, as PEFT's generate() uses only the encoder half",
                names.len(),
                names.join(", "),
                names[0]
            ));
        }
        Ok((first, created))
    }

    /// Stores an upload the caller may write (the checks are done): parse, validate, store.
    async fn store_upload(
        &self,
        caller: &Caller,
        task: TaskName,
        upload: Upload,
    ) -> Result<Vec<(PromptInfo, bool)>, Error> {
        let d_model = self.registry.d_model();
        let mut limits = *self.registry.limits();
        if let Caller::Tenant(t) = caller {
            limits.max_rows = limits.max_rows.min(t.max_prompt_length);
        }
        let (prompts, sha256) = tokio::task::spawn_blocking(move || upload.parse(d_model, &limits))
            .await
            .map_err(|e| Error::task_failed("parsing the upload", e))??;
        let named: Vec<(TaskName, Prompt)> = if prompts.len() == 1 {
            prompts.into_iter().map(|p| (task.clone(), p)).collect()
        } else {
            // A multitask adapter: task `t` is `<task>.<t>`, each checked like an upload of its own.
            let mut named = Vec::with_capacity(prompts.len());
            for (t, prompt) in prompts.into_iter().enumerate() {
                let name = TaskName::parse(&format!("{task}.{t}"))?;
                self.authorize_prompt_write(caller, &name)?;
                named.push((name, prompt));
            }
            named
        };
        let mut stored = Vec::with_capacity(named.len());
        for (name, prompt) in named {
            let new = NewPrompt {
                prompt,
                sha256: sha256.clone(),
            };
            let (entry, created) = self.registry.put(name, new).await?;
            stored.push((entry.info.clone(), created));
        }
        Ok(stored)
    }

    /// Every served prompt `caller` may see (all of them on an open server or for an admin),
    /// by task name.
    pub fn list_prompts(&self, caller: &Caller) -> Result<Vec<PromptInfo>, Error> {
        self.check_serving()?;
        let mut prompts = self.registry.list();
        if !caller.is_admin() {
            let set = self.tenants.current();
            prompts.retain(|p| caller.may_read(&set, &p.task));
        }
        Ok(prompts)
    }

    /// One task's prompt metadata.
    pub fn prompt(&self, caller: &Caller, task: &TaskName) -> Result<PromptInfo, Error> {
        self.check_serving()?;
        self.check_read(caller, &self.tenants.current(), task.as_str())?;
        self.registry
            .get(task.as_str())
            .map(|e| e.info.clone())
            .ok_or_else(|| Error::UnknownTask(task.to_string()))
    }

    /// Removes a task's prompt from the store and the registry; in-flight requests finish.
    pub async fn delete_prompt(&self, caller: &Caller, task: &TaskName) -> Result<(), Error> {
        self.check_serving()?;
        self.authorize_prompt_write(caller, task)?;
        let before = self.registry.get(task.as_str()).map(|e| e.info.clone());
        if self.registry.delete(task).await? {
            self.metrics.prompt_upload(UploadResult::Deleted);
            tracing::info!(%task, tenant = caller.name(), "prompt deleted");
            if let Some(info) = before {
                self.audit_prompt(caller, &info, ChangeAction::Delete, 0)
                    .await;
            }
            Ok(())
        } else {
            Err(Error::UnknownTask(task.to_string()))
        }
    }
}
