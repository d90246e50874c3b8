//! The registry: task → the prompt currently served (its bank slot and version). Entries are
//! immutable and swapped whole, so a request that looked up an entry keeps that version's rows
//! to the end. All changes (API writes, folder sync) go through one writer lock.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use super::dir::PromptSource;
use super::store::{Fingerprint, Found, Loaded, Store};
use super::{Prompt, PromptLimits, TaskName};
use crate::engine::worker::EngineHandle;
use crate::engine::{PromptRows, PromptSlot};
use crate::metrics::{Metrics, ReloadResult};

/// What clients see about a prompt.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PromptInfo {
    /// Task name.
    pub task: String,
    /// Encoder prompt rows (virtual tokens).
    pub prompt_length: usize,
    /// Row width.
    pub d_model: usize,
    /// Version: 1 for the first upload, +1 per replacement (kept in the file's metadata).
    pub version: u64,
    /// SHA-256 of the file as uploaded (for multipart, of adapter_model.safetensors).
    pub sha256: String,
    /// Decoder rows of a PEFT seq2seq adapter (stored, not served).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoder_prompt_length: Option<usize>,
    /// When this version was loaded, seconds since the Unix epoch.
    pub loaded_at: u64,
}

/// A served prompt.
#[derive(Debug)]
pub struct Entry {
    /// Public metadata.
    pub info: PromptInfo,
    /// Its rows in the engine's bank.
    pub slot: Arc<PromptSlot>,
    fingerprint: Fingerprint,
}

/// Errors changing the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The prompts folder could not be written.
    #[error("could not write the prompts folder: {0}")]
    Store(#[from] std::io::Error),
    /// The engine could not take the prompt.
    #[error("the engine could not load the prompt: {0}")]
    Engine(#[source] crate::engine::EngineError),
    /// The engine thread is not running.
    #[error(transparent)]
    Stopped(#[from] crate::engine::worker::WorkerError),
    /// A blocking folder task panicked or was cancelled (a bug, not the client's doing).
    #[error("the {what} task failed: {source}")]
    Task {
        /// What the task was doing.
        what: &'static str,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
}

fn task_failed(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> RegistryError {
    move |source| RegistryError::Task { what, source }
}

/// What one folder sync changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Tasks added or replaced.
    pub loaded: usize,
    /// Tasks removed because their files are gone.
    pub removed: usize,
    /// Sources that failed to load (reported once per file version).
    pub failed: usize,
}

/// What the registry keeps of a loaded prompt once its rows are in the engine's bank.
struct Meta {
    version: Option<u64>,
    sha256: String,
    rows: usize,
    decoder_rows: Option<usize>,
}

/// Sources parsed and registered together during a folder sync.
const SYNC_CHUNK: usize = 256;

/// Task → served prompt.
pub struct Registry {
    entries: RwLock<HashMap<TaskName, Arc<Entry>>>,
    store: Store,
    engine: EngineHandle,
    d_model: usize,
    limits: PromptLimits,
    metrics: Arc<Metrics>,
    writer: tokio::sync::Mutex<()>,
    /// Last version of deleted tasks, so a re-created task keeps counting up.
    retired: Mutex<HashMap<TaskName, u64>>,
    /// Sources that failed to load, by path, at the fingerprint that failed.
    failed: Mutex<HashMap<std::path::PathBuf, Fingerprint>>,
    /// Ensembles of these prompts, stored in the same folder.
    ensembles: super::ensembles::Ensembles,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Registry {
    /// An empty registry over `store`; call [`Registry::sync`] to load the folder.
    pub fn new(
        store: Store,
        engine: EngineHandle,
        d_model: usize,
        limits: PromptLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            ensembles: super::ensembles::Ensembles::new(store.clone()),
            store,
            engine,
            d_model,
            limits,
            metrics,
            writer: tokio::sync::Mutex::new(()),
            retired: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// The prompts folder.
    pub fn dir(&self) -> &std::path::Path {
        self.store.dir()
    }

    /// The ensembles stored beside the prompts.
    pub fn ensembles(&self) -> &super::ensembles::Ensembles {
        &self.ensembles
    }

    /// Prompt limits uploads are checked against.
    pub fn limits(&self) -> &PromptLimits {
        &self.limits
    }

    /// The model's d_model.
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// The entry served now for `task`.
    pub fn get(&self, task: &str) -> Option<Arc<Entry>> {
        let task = TaskName::parse(task).ok()?;
        self.entries.read().get(&task).cloned()
    }

    /// Every served prompt, by task name.
    pub fn list(&self) -> Vec<PromptInfo> {
        let mut out: Vec<PromptInfo> = self
            .entries
            .read()
            .values()
            .map(|e| e.info.clone())
            .collect();
        out.sort_by(|a, b| a.task.cmp(&b.task));
        out
    }

    /// Prompts served.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    /// Whether no prompt is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn next_version(&self, task: &TaskName) -> u64 {
        let current = self.entries.read().get(task).map_or(0, |e| e.info.version);
        let retired = self.retired.lock().get(task).copied().unwrap_or(0);
        current.max(retired) + 1
    }

    fn insert(&self, task: TaskName, entry: Entry) {
        let mut entries = self.entries.write();
        entries.insert(task, Arc::new(entry));
        self.metrics.prompts_loaded.set(entries.len() as i64);
    }

    fn remove_entry(&self, task: &TaskName) -> Option<Arc<Entry>> {
        let mut entries = self.entries.write();
        let old = entries.remove(task);
        if let Some(old) = &old {
            self.retired.lock().insert(task.clone(), old.info.version);
        }
        self.metrics.prompts_loaded.set(entries.len() as i64);
        old
    }

    async fn register_one(&self, rows: PromptRows) -> Result<Arc<PromptSlot>, RegistryError> {
        let mut slots = self.engine.register(vec![rows]).await?;
        slots
            .pop()
            .ok_or(RegistryError::Stopped(
                crate::engine::worker::WorkerError::Stopped,
            ))?
            .map_err(RegistryError::Engine)
    }

    /// Stores and serves a validated prompt. Returns its info and whether the task is new.
    /// On any error nothing changes: the previous version keeps serving.
    pub async fn put(
        &self,
        task: TaskName,
        prompt: Prompt,
        sha256: String,
    ) -> Result<(PromptInfo, bool), RegistryError> {
        let _writer = self.writer.lock().await;
        let store = self.store.clone();
        let t = task.clone();
        let on_disk = tokio::task::spawn_blocking(move || store.stored_version(&t))
            .await
            .unwrap_or(None);
        let version = self.next_version(&task).max(on_disk.unwrap_or(0) + 1);
        let prompt = Arc::new(prompt);
        let slot = self.register_one(prompt.encoder.clone()).await?;
        let store = self.store.clone();
        let (t, p, sha) = (task.clone(), prompt.clone(), sha256.clone());
        let fingerprint = tokio::task::spawn_blocking(move || store.write(&t, &p, version, &sha))
            .await
            .map_err(task_failed("store"))??;
        let info = PromptInfo {
            task: task.to_string(),
            prompt_length: prompt.encoder.rows,
            d_model: self.d_model,
            version,
            sha256,
            decoder_prompt_length: prompt.decoder.as_ref().map(|d| d.rows),
            loaded_at: now_secs(),
        };
        let created = self.get(task.as_str()).is_none();
        self.insert(
            task,
            Entry {
                info: info.clone(),
                slot,
                fingerprint,
            },
        );
        Ok((info, created))
    }

    /// Deletes a task's files and stops serving it; false when it did not exist.
    /// Requests already holding the entry finish with it.
    pub async fn delete(&self, task: &TaskName) -> Result<bool, RegistryError> {
        let _writer = self.writer.lock().await;
        let store = self.store.clone();
        let t = task.clone();
        let removed_files = tokio::task::spawn_blocking(move || store.remove(&t))
            .await
            .map_err(task_failed("store"))??;
        let removed_entry = self.remove_entry(task).is_some();
        Ok(removed_files || removed_entry)
    }

    /// Brings the registry in line with the folder: new or changed sources are loaded,
    /// tasks whose files are gone are dropped. A source that fails to load leaves the
    /// version already served (if any) in place. Ensembles follow the folder too.
    pub async fn sync(&self) -> Result<SyncReport, RegistryError> {
        let report = self.sync_prompts().await?;
        self.ensembles.sync().await?;
        Ok(report)
    }

    async fn sync_prompts(&self) -> Result<SyncReport, RegistryError> {
        let _writer = self.writer.lock().await;
        let store = self.store.clone();
        let scanned = tokio::task::spawn_blocking(move || store.scan())
            .await
            .map_err(task_failed("folder scan"))??;
        let mut report = SyncReport::default();
        self.failed.lock().retain(|path, _| {
            path.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| {
                    let stem = n.strip_suffix(".safetensors").or(n.strip_suffix(".npy"));
                    scanned.get(stem.unwrap_or(n))
                })
                .is_some()
        });

        let gone: Vec<TaskName> = self
            .entries
            .read()
            .keys()
            .filter(|t| !scanned.contains_key(t.as_str()))
            .cloned()
            .collect();
        for task in gone {
            self.remove_entry(&task);
            tracing::info!(%task, "prompt removed from the folder");
            self.metrics.prompt_reload(ReloadResult::Removed);
            report.removed += 1;
        }

        let mut todo: Vec<(TaskName, Found)> = Vec::new();
        for (name, found) in scanned {
            let Ok(task) = TaskName::parse(&name) else {
                let path = found[0].source.path().to_path_buf();
                if self
                    .failed
                    .lock()
                    .insert(path.clone(), found[0].fingerprint.clone())
                    != Some(found[0].fingerprint.clone())
                {
                    tracing::warn!(path = %path.display(), "ignoring prompt with an invalid task name");
                    report.failed += 1;
                }
                continue;
            };
            // A task defined twice (say task.npy next to task.safetensors): the folder rule.
            let Some(newest) = crate::prompts::dir::newest(found) else {
                continue;
            };
            let current = self
                .entries
                .read()
                .get(&task)
                .map(|e| e.fingerprint.clone());
            if current.as_ref() == Some(&newest.fingerprint) {
                continue;
            }
            let path = newest.source.path().to_path_buf();
            if self.failed.lock().get(&path) == Some(&newest.fingerprint) {
                continue;
            }
            todo.push((task, newest));
        }
        if todo.is_empty() {
            return Ok(report);
        }

        // In chunks: parsed prompts wait in host memory only until the engine has copied them
        // into its bank, so a folder of 100,000 prompts never holds them all twice.
        // After the first chunk, the bank makes room for the rest at once (estimated from the
        // first chunk's prompt lengths) rather than growing chunk by chunk.
        let mut left = todo.len();
        let mut todo = todo.into_iter().peekable();
        let mut first = true;
        while todo.peek().is_some() {
            let chunk: Vec<(TaskName, Found)> = todo.by_ref().take(SYNC_CHUNK).collect();
            let n = chunk.len();
            let rows = self.load_chunk(chunk, &mut report).await?;
            left -= n;
            if std::mem::take(&mut first) && left > 0 && rows > 0 {
                let _ = self.engine.reserve(rows * left / n).await;
            }
        }
        Ok(report)
    }

    /// Loads a chunk of changed sources and serves those that are valid; returns the encoder
    /// rows it put in the bank.
    async fn load_chunk(
        &self,
        chunk: Vec<(TaskName, Found)>,
        report: &mut SyncReport,
    ) -> Result<usize, RegistryError> {
        let store = self.store.clone();
        let (d_model, limits) = (self.d_model, self.limits);
        let sources: Vec<PromptSource> = chunk.iter().map(|(_, f)| f.source.clone()).collect();
        let loaded: Vec<_> = tokio::task::spawn_blocking(move || {
            sources
                .iter()
                .map(|s| store.load(s, d_model, &limits))
                .collect()
        })
        .await
        .map_err(task_failed("prompt load"))?;

        let mut ok: Vec<(TaskName, Found, Loaded)> = Vec::new();
        for ((task, found), result) in chunk.into_iter().zip(loaded) {
            match result {
                Ok(l) => ok.push((task, found, l)),
                Err(e) => {
                    let path = found.source.path().to_path_buf();
                    tracing::warn!(path = %path.display(), "prompt failed to load: {e}");
                    self.failed.lock().insert(path, found.fingerprint);
                    self.metrics.prompt_reload(ReloadResult::Invalid);
                    report.failed += 1;
                }
            }
        }
        let mut rows = 0;
        // The prompts move to the engine; only their sizes stay here.
        let mut prompts: Vec<PromptRows> = Vec::with_capacity(ok.len());
        let ok: Vec<(TaskName, Found, Meta)> = ok
            .into_iter()
            .map(|(task, found, l)| {
                let meta = Meta {
                    version: l.version,
                    sha256: l.sha256,
                    rows: l.prompt.encoder.rows,
                    decoder_rows: l.prompt.decoder.as_ref().map(|d| d.rows),
                };
                prompts.push(l.prompt.encoder);
                (task, found, meta)
            })
            .collect();
        let slots = self.engine.register(prompts).await?;
        for ((task, found, loaded), slot) in ok.into_iter().zip(slots) {
            let slot = match slot {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%task, "engine refused prompt: {e}");
                    report.failed += 1;
                    continue;
                }
            };
            let current = self.entries.read().get(&task).cloned();
            let version = match (loaded.version, &current) {
                (Some(v), _) => v,
                // Same bytes touched again: keep the version.
                (None, Some(c)) if c.info.sha256 == loaded.sha256 => c.info.version,
                (None, _) => self.next_version(&task),
            };
            self.failed.lock().remove(found.source.path());
            let info = PromptInfo {
                task: task.to_string(),
                prompt_length: loaded.rows,
                d_model: self.d_model,
                version,
                sha256: loaded.sha256,
                decoder_prompt_length: loaded.decoder_rows,
                loaded_at: now_secs(),
            };
            tracing::info!(%task, version, "prompt loaded from the folder");
            self.metrics.prompt_reload(ReloadResult::Loaded);
            report.loaded += 1;
            rows += loaded.rows;
            self.insert(
                task,
                Entry {
                    info,
                    slot,
                    fingerprint: found.fingerprint,
                },
            );
        }
        Ok(rows)
    }
}
