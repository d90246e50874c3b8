//! The prompt catalog: task → the prompt served now (its bank slot and version), over the
//! prompts folder. Serving a prompt means writing its encoder rows into the engine's bank.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::shelf::{Shelf, Source};
use super::{Catalog, CatalogError, Found, Scan, Store, Stored, Versioned};
use crate::engine::worker::EngineHandle;
use crate::engine::{PromptRows, PromptSlot, TaskWeights};
use crate::metrics::{Metrics, ReloadResult};
use crate::prompts::adapter::AdapterKind;
use crate::prompts::dir::{newest, Fingerprint, PromptSource};
use crate::prompts::store::{encode, parse_stored, Loaded, Store as Folder};
use crate::prompts::{Prompt, PromptLimits, TaskName};
use crate::store::objects::ObjectRef;

/// What serves a task.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A soft prompt (prompt tuning, P-tuning, a multitask prompt).
    Prompt,
    /// A LoRA adapter.
    Lora,
    /// An IA3 adapter.
    Ia3,
    /// A prefix-tuning adapter.
    Prefix,
}

/// What an adapter task changes.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AdapterInfo {
    /// The largest LoRA rank (LoRA only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// The module names it changes (`q`, `v`, `wo`, …).
    pub modules: Vec<String>,
    /// The linear layers it changes.
    pub layers: usize,
    /// Parameters it holds.
    pub parameters: usize,
}

/// What clients see about a prompt.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PromptInfo {
    /// Task name.
    pub task: String,
    /// What serves the task.
    pub kind: TaskKind,
    /// A LoRA or IA3 task's adapter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterInfo>,
    /// What the upload holds that is not served, as PEFT itself does not use it at inference.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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
}

impl Versioned for Entry {
    fn version(&self) -> u64 {
        self.info.version
    }

    fn digest(&self) -> &str {
        &self.info.sha256
    }
}

impl Stored for Loaded {
    fn version(&self) -> Option<u64> {
        self.version
    }

    fn digest(&self) -> &str {
        &self.sha256
    }

    fn weight(&self) -> usize {
        self.prompt.encoder.rows
    }
}

/// A validated upload, to be stored and served.
pub struct NewPrompt {
    /// The prompt.
    pub prompt: Prompt,
    /// SHA-256 of the file as uploaded.
    pub sha256: String,
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where prompts are kept: a folder, or a bucket shared by a fleet.
#[derive(Clone)]
pub enum Backend {
    /// The prompts folder.
    Folder(Folder),
    /// `--store s3://…`.
    Bucket(Arc<Shelf>),
}

/// Prompts in a folder or a bucket, served from the engine's bank.
#[derive(Clone)]
pub struct PromptStore {
    backend: Backend,
    engine: EngineHandle,
    d_model: usize,
    limits: PromptLimits,
    metrics: Arc<Metrics>,
}

/// Task → served prompt.
pub type Registry = Catalog<PromptStore>;

impl PromptStore {
    /// Prompts in `backend`, checked against `limits` for a model of width `d_model`.
    pub fn new(
        backend: Backend,
        engine: EngineHandle,
        d_model: usize,
        limits: PromptLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            backend,
            engine,
            d_model,
            limits,
            metrics,
        }
    }

    fn entry(
        &self,
        task: &TaskName,
        version: u64,
        sha256: String,
        prompt: &Prompt,
        slot: Arc<PromptSlot>,
    ) -> Entry {
        let (kind, adapter) = match &prompt.adapter {
            None => (TaskKind::Prompt, None),
            Some(a) => (
                match a.kind {
                    AdapterKind::Lora => TaskKind::Lora,
                    AdapterKind::Ia3 => TaskKind::Ia3,
                    AdapterKind::Prefix => TaskKind::Prefix,
                },
                Some(AdapterInfo {
                    rank: a.rank(),
                    modules: a.modules().into_iter().map(String::from).collect(),
                    layers: a.weights.lora.len()
                        + a.weights.ia3.len()
                        + a.weights.prefix.as_ref().map_or(0, |p| p.layers.len()),
                    parameters: a.weights.parameters(),
                }),
            ),
        };
        Entry {
            info: PromptInfo {
                task: task.to_string(),
                kind,
                adapter,
                notes: prompt.notes(),
                prompt_length: prompt.encoder.rows,
                d_model: self.d_model,
                version,
                sha256,
                decoder_prompt_length: prompt.decoder.as_ref().map(|d| d.rows),
                loaded_at: now_secs(),
            },
            slot,
        }
    }
}

impl PromptStore {
    /// A prompt read from a store object, at the version the manifest gives it.
    fn loaded_from(
        &self,
        bytes: Result<bytes::Bytes, String>,
        object: &ObjectRef,
    ) -> Result<Loaded, String> {
        let mut loaded =
            parse_stored(&bytes?, self.d_model, &self.limits).map_err(|e| e.to_string())?;
        loaded.version = Some(object.version);
        Ok(loaded)
    }
}

impl Store for PromptStore {
    type Item = NewPrompt;
    type Loaded = Loaded;
    type Value = Entry;
    type Source = Source<PromptSource>;
    const NOUN: &'static str = "prompt";

    fn scan(&self) -> Result<Scan<Self::Source>, CatalogError> {
        let folder = match &self.backend {
            Backend::Folder(folder) => folder,
            Backend::Bucket(shelf) => return shelf.scan(),
        };
        let scanned = folder.scan()?;
        let mut present = HashSet::new();
        let mut items = HashMap::new();
        for (name, found) in scanned {
            present.extend(found.iter().map(|f| Source::File(f.source.clone())));
            // A task defined twice (say task.npy next to task.safetensors): the folder rule.
            if let Some(newest) = newest(found) {
                items.insert(
                    name,
                    Found {
                        source: Source::File(newest.source),
                        fingerprint: newest.fingerprint,
                    },
                );
            }
        }
        Ok(Scan { items, present })
    }

    fn load(&self, source: &Self::Source) -> Result<Loaded, String> {
        match (&self.backend, source) {
            (Backend::Folder(folder), Source::File(source)) => folder
                .load(source, self.d_model, &self.limits)
                .map_err(|e| e.to_string()),
            (Backend::Bucket(shelf), Source::Object(object)) => {
                self.loaded_from(shelf.read(object), object)
            }
            _ => Err("a source of another store".to_string()),
        }
    }

    fn load_all(&self, sources: &[Self::Source]) -> Vec<Result<Loaded, String>> {
        let Backend::Bucket(shelf) = &self.backend else {
            return sources.iter().map(|s| self.load(s)).collect();
        };
        let objects: Vec<&ObjectRef> = sources
            .iter()
            .filter_map(|s| match s {
                Source::Object(o) => Some(o),
                Source::File(_) => None,
            })
            .collect();
        if objects.len() != sources.len() {
            return sources.iter().map(|s| self.load(s)).collect();
        }
        shelf
            .read_all(&objects)
            .into_iter()
            .zip(&objects)
            .map(|(bytes, object)| {
                let mut loaded =
                    parse_stored(&bytes?, self.d_model, &self.limits).map_err(|e| e.to_string())?;
                loaded.version = Some(object.version);
                Ok(loaded)
            })
            .collect()
    }

    fn stored_version(&self, name: &TaskName) -> Result<Option<u64>, CatalogError> {
        match &self.backend {
            Backend::Folder(folder) => Ok(folder.stored_version(name)),
            Backend::Bucket(shelf) => shelf.stored_version(name),
        }
    }

    fn write(
        &self,
        name: &TaskName,
        item: &NewPrompt,
        version: u64,
    ) -> Result<Fingerprint, CatalogError> {
        match &self.backend {
            Backend::Folder(folder) => {
                Ok(folder.write(name, &item.prompt, version, &item.sha256)?)
            }
            Backend::Bucket(shelf) => {
                shelf.write(name, encode(&item.prompt, None, &item.sha256)?, version)
            }
        }
    }

    fn remove(&self, name: &TaskName) -> Result<bool, CatalogError> {
        match &self.backend {
            Backend::Folder(folder) => Ok(folder.remove(name)?),
            Backend::Bucket(shelf) => shelf.remove(name),
        }
    }

    async fn serve_new(
        &self,
        name: &TaskName,
        item: &NewPrompt,
        version: u64,
    ) -> Result<Entry, CatalogError> {
        let mut slots = self.engine.register(vec![item.prompt.weights()]).await?;
        let slot = slots
            .pop()
            .ok_or(CatalogError::Stopped(
                crate::engine::worker::WorkerError::Stopped,
            ))?
            .map_err(CatalogError::Engine)?;
        Ok(self.entry(name, version, item.sha256.clone(), &item.prompt, slot))
    }

    async fn serve_loaded(
        &self,
        items: Vec<(TaskName, Loaded, u64)>,
    ) -> Result<Vec<Result<Entry, String>>, CatalogError> {
        // The rows move to the engine; only what the entries need stays here.
        let mut rows: Vec<TaskWeights> = Vec::with_capacity(items.len());
        let kept: Vec<(TaskName, u64, String, Prompt)> = items
            .into_iter()
            .map(|(task, mut loaded, version)| {
                let (r, c) = (loaded.prompt.encoder.rows, loaded.prompt.encoder.cols);
                let empty = PromptRows {
                    rows: r,
                    cols: c,
                    values: Vec::new(),
                };
                let encoder = std::mem::replace(&mut loaded.prompt.encoder, empty);
                rows.push(TaskWeights {
                    rows: encoder,
                    adapter: loaded.prompt.adapter.as_ref().map(|a| a.weights.clone()),
                });
                (task, version, loaded.sha256, loaded.prompt)
            })
            .collect();
        let slots = self.engine.register(rows).await?;
        Ok(kept
            .into_iter()
            .zip(slots)
            .map(|((task, version, sha256, prompt), slot)| match slot {
                Ok(slot) => Ok(self.entry(&task, version, sha256, &prompt, slot)),
                Err(e) => Err(format!("the engine refused it: {e}")),
            })
            .collect())
    }

    async fn reserve(&self, rows: usize) {
        let _ = self.engine.reserve(rows).await;
    }

    fn counted(&self, served: usize) {
        self.metrics.prompts_loaded.set(served as i64);
    }

    fn reloaded(&self, result: ReloadResult) {
        self.metrics.prompt_reload(result);
    }
}

impl Catalog<PromptStore> {
    /// The prompts folder (None when prompts are kept in a bucket).
    pub fn dir(&self) -> Option<&std::path::Path> {
        match &self.store().backend {
            Backend::Folder(folder) => Some(folder.dir()),
            Backend::Bucket(_) => None,
        }
    }

    /// The bucket's catalog, when prompts are kept in one.
    pub fn shelf(&self) -> Option<&Arc<Shelf>> {
        match &self.store().backend {
            Backend::Folder(_) => None,
            Backend::Bucket(shelf) => Some(shelf),
        }
    }

    /// Prompt limits uploads are checked against.
    pub fn limits(&self) -> &PromptLimits {
        &self.store().limits
    }

    /// The model's d_model.
    pub fn d_model(&self) -> usize {
        self.store().d_model
    }

    /// Every served prompt, by task name.
    pub fn list(&self) -> Vec<PromptInfo> {
        self.values()
            .into_iter()
            .map(|(_, e)| e.info.clone())
            .collect()
    }
}
