//! One versioned catalog for everything stored: name → the version served now. Prompts and
//! ensembles are both a [`Catalog`], differing only in their [`Store`]: where items are kept
//! and how a stored item becomes something served (a prompt's rows go into the engine's bank).
//!
//! What every catalog has, in one place: entries swapped whole (a request that looked one up
//! keeps that version to the end), one writer at a time (writes and syncs), versions that only
//! count up (a deleted name's last version is retired, so a re-created one continues past it,
//! and a write counts past the version the store holds, which another replica may have
//! written), a memo of stored items that failed to load (reported once per stored version),
//! and a sync that brings the catalog in line with the store (new or changed items loaded in
//! chunks, removed ones dropped, a failing one leaving the served version in place).
pub mod ensembles;
pub mod prompts;
pub mod shelf;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::metrics::ReloadResult;
use crate::prompts::dir::Fingerprint;
use crate::prompts::TaskName;

/// Errors changing a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The store could not be written or read.
    #[error("could not write the prompts folder: {0}")]
    Store(#[from] std::io::Error),
    /// The object store is down or refused the request: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Another replica wrote this version (or a later one) first: the write is retried with
    /// the next version, and answered as a conflict after too many lost races.
    #[error("another replica wrote version {stored} at the same time; retry")]
    Taken {
        /// The version the store holds now.
        stored: u64,
    },
    /// The engine could not take the item.
    #[error("the engine could not load the prompt: {0}")]
    Engine(#[source] crate::engine::EngineError),
    /// The engine thread is not running.
    #[error(transparent)]
    Stopped(#[from] crate::engine::worker::WorkerError),
    /// A blocking store task panicked or was cancelled (a bug, not the client's doing).
    #[error("the {what} task failed: {source}")]
    Task {
        /// What the task was doing.
        what: &'static str,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
}

fn task_failed(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> CatalogError {
    move |source| CatalogError::Task { what, source }
}

/// What one sync changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Items added or replaced.
    pub loaded: usize,
    /// Items removed because the store no longer has them.
    pub removed: usize,
    /// Stored items that failed to load (reported once per stored version).
    pub failed: usize,
}

/// One stored item found by a scan.
#[derive(Debug, Clone)]
pub struct Found<S> {
    /// Where it lives.
    pub source: S,
    /// Its identity now: a changed item has a new fingerprint.
    pub fingerprint: Fingerprint,
}

/// What a store holds now.
#[derive(Debug)]
pub struct Scan<S> {
    /// The item to serve for each name (by the store's own rule when several define one).
    pub items: HashMap<String, Found<S>>,
    /// Every source present, chosen or not (a failure memo for a source gone is forgotten).
    pub present: HashSet<S>,
}

/// An item read back from a store, with what it says about itself.
pub trait Stored {
    /// The version the store recorded (None: an item promptd did not write).
    fn version(&self) -> Option<u64>;
    /// The digest of the item as written.
    fn digest(&self) -> &str;
    /// What it weighs where it is served (a prompt's rows), to make room ahead of a big sync.
    fn weight(&self) -> usize {
        0
    }
}

/// A served value's version and digest.
pub trait Versioned {
    /// Its version.
    fn version(&self) -> u64;
    /// Its digest.
    fn digest(&self) -> &str;
}

/// Where one kind of item is stored, and how a stored item is served. The storage methods
/// block (the catalog runs them off the async runtime); the serving methods are async.
pub trait Store: Clone + Send + Sync + 'static {
    /// What a write stores (already validated).
    type Item: Send + Sync + 'static;
    /// An item read back from the store.
    type Loaded: Stored + Send + 'static;
    /// What the catalog serves for a name.
    type Value: Versioned + Send + Sync + 'static;
    /// Where one stored item lives.
    type Source: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static;
    /// The noun in logs: "prompt", "ensemble".
    const NOUN: &'static str;

    /// Every stored item by name (blocking).
    fn scan(&self) -> Result<Scan<Self::Source>, CatalogError>;
    /// Reads and validates one stored item (blocking).
    fn load(&self, source: &Self::Source) -> Result<Self::Loaded, String>;
    /// Reads and validates many stored items, one result each, in order (blocking). A store
    /// over the network reads them concurrently.
    fn load_all(&self, sources: &[Self::Source]) -> Vec<Result<Self::Loaded, String>> {
        sources.iter().map(|s| self.load(s)).collect()
    }
    /// The version the store holds for `name`, if any (blocking). Read before each write, so a
    /// writer that has not yet seen another replica's write still counts past it.
    fn stored_version(&self, name: &TaskName) -> Result<Option<u64>, CatalogError>;
    /// Stores `item` as `name`'s only version, atomically (blocking). A store shared by
    /// replicas refuses with [`CatalogError::Taken`] a version another replica wrote first.
    fn write(
        &self,
        name: &TaskName,
        item: &Self::Item,
        version: u64,
    ) -> Result<Fingerprint, CatalogError>;
    /// Removes everything stored for `name`; false when there was nothing (blocking).
    fn remove(&self, name: &TaskName) -> Result<bool, CatalogError>;

    /// Serves a new item about to be written as `version` (it is written only if this works).
    fn serve_new(
        &self,
        name: &TaskName,
        item: &Self::Item,
        version: u64,
    ) -> impl Future<Output = Result<Self::Value, CatalogError>> + Send;
    /// Serves loaded items, each at its version; one result per item, in order.
    fn serve_loaded(
        &self,
        items: Vec<(TaskName, Self::Loaded, u64)>,
    ) -> impl Future<Output = Result<Vec<Result<Self::Value, String>>, CatalogError>> + Send;
    /// Makes room for items of `weight` in all about to be loaded (a hint; may do nothing).
    fn reserve(&self, weight: usize) -> impl Future<Output = ()> + Send {
        let _ = weight;
        async {}
    }
    /// Called with the number of items served after every change.
    fn counted(&self, served: usize) {
        let _ = served;
    }
    /// Called for every item a sync loaded, removed or found invalid.
    fn reloaded(&self, result: ReloadResult) {
        let _ = result;
    }
}

/// Versions a write may find taken by other replicas before it answers a conflict.
const MAX_TAKEN: u32 = 16;

/// Items parsed and served together during a sync.
const SYNC_CHUNK: usize = 256;

struct Entry<V> {
    value: Arc<V>,
    fingerprint: Fingerprint,
}

/// Name → the version served now, over a [`Store`].
pub struct Catalog<S: Store> {
    store: S,
    entries: RwLock<HashMap<TaskName, Entry<S::Value>>>,
    writer: tokio::sync::Mutex<()>,
    /// Last version of deleted names, so a re-created one keeps counting up.
    retired: Mutex<HashMap<TaskName, u64>>,
    /// Sources that failed to load, at the fingerprint that failed.
    failed: Mutex<HashMap<S::Source, Fingerprint>>,
}

impl<S: Store> Catalog<S> {
    /// An empty catalog over `store`; [`Catalog::sync`] loads it.
    pub fn new(store: S) -> Self {
        Self {
            store,
            entries: RwLock::new(HashMap::new()),
            writer: tokio::sync::Mutex::new(()),
            retired: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The value served now for `name`.
    pub fn get(&self, name: &str) -> Option<Arc<S::Value>> {
        let name = TaskName::parse(name).ok()?;
        self.entries.read().get(&name).map(|e| e.value.clone())
    }

    /// Every served value, by name.
    pub fn values(&self) -> Vec<(TaskName, Arc<S::Value>)> {
        let mut out: Vec<_> = self
            .entries
            .read()
            .iter()
            .map(|(n, e)| (n.clone(), e.value.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Names served.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    /// Whether nothing is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn next_version(&self, name: &TaskName) -> u64 {
        let current = self
            .entries
            .read()
            .get(name)
            .map_or(0, |e| e.value.version());
        let retired = self.retired.lock().get(name).copied().unwrap_or(0);
        current.max(retired) + 1
    }

    fn insert(&self, name: TaskName, value: Arc<S::Value>, fingerprint: Fingerprint) {
        let mut entries = self.entries.write();
        entries.insert(name, Entry { value, fingerprint });
        self.store.counted(entries.len());
    }

    fn remove_entry(&self, name: &TaskName) -> Option<Arc<S::Value>> {
        let mut entries = self.entries.write();
        let old = entries.remove(name).map(|e| e.value);
        if let Some(old) = &old {
            self.retired.lock().insert(name.clone(), old.version());
        }
        self.store.counted(entries.len());
        old
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(S) -> T + Send + 'static,
    ) -> Result<T, CatalogError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(task_failed(what))
    }

    /// Stores and serves a validated item. Returns what is served and whether the name is
    /// new. On any error nothing changes: the previous version keeps serving.
    pub async fn put(
        &self,
        name: TaskName,
        item: S::Item,
    ) -> Result<(Arc<S::Value>, bool), CatalogError> {
        let _writer = self.writer.lock().await;
        let item = Arc::new(item);
        let mut taken = 0;
        loop {
            let n = name.clone();
            let stored = self
                .blocking("store", move |s| s.stored_version(&n))
                .await??;
            let version = self.next_version(&name).max(stored.unwrap_or(0) + 1);
            let value = Arc::new(self.store.serve_new(&name, &item, version).await?);
            let (n, i) = (name.clone(), item.clone());
            match self
                .blocking("store", move |s| s.write(&n, &i, version))
                .await?
            {
                Ok(fingerprint) => {
                    let created = !self.entries.read().contains_key(&name);
                    self.insert(name, value.clone(), fingerprint);
                    return Ok((value, created));
                }
                // Another replica took the version between our read and our write: count
                // past it, a few times, then let the client decide (409).
                Err(CatalogError::Taken { .. }) if taken < MAX_TAKEN => taken += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes a name's stored item and stops serving it; false when it did not exist.
    /// Requests already holding the value finish with it.
    pub async fn delete(&self, name: &TaskName) -> Result<bool, CatalogError> {
        let _writer = self.writer.lock().await;
        let n = name.clone();
        let removed_stored = self.blocking("store", move |s| s.remove(&n)).await??;
        let removed_entry = self.remove_entry(name).is_some();
        Ok(removed_stored || removed_entry)
    }

    /// Brings the catalog in line with the store: new or changed items are loaded, names the
    /// store no longer has are dropped. An item that fails to load leaves the version already
    /// served (if any) in place, and is reported once per stored version.
    pub async fn sync(&self) -> Result<SyncReport, CatalogError> {
        let _writer = self.writer.lock().await;
        let scan = self.blocking("scan", |s| s.scan()).await??;
        let mut report = SyncReport::default();
        self.failed
            .lock()
            .retain(|source, _| scan.present.contains(source));

        let gone: Vec<TaskName> = self
            .entries
            .read()
            .keys()
            .filter(|n| !scan.items.contains_key(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove_entry(&name);
            tracing::info!(%name, "{} removed from the store", S::NOUN);
            self.store.reloaded(ReloadResult::Removed);
            report.removed += 1;
        }

        let mut todo: Vec<(TaskName, Found<S::Source>)> = Vec::new();
        for (name, found) in scan.items {
            let Ok(name) = TaskName::parse(&name) else {
                if self
                    .failed
                    .lock()
                    .insert(found.source.clone(), found.fingerprint.clone())
                    != Some(found.fingerprint.clone())
                {
                    tracing::warn!(source = ?found.source, "ignoring {} with an invalid name", S::NOUN);
                    report.failed += 1;
                }
                continue;
            };
            let current = self
                .entries
                .read()
                .get(&name)
                .map(|e| e.fingerprint.clone());
            if current.as_ref() == Some(&found.fingerprint) {
                continue;
            }
            if self.failed.lock().get(&found.source) == Some(&found.fingerprint) {
                continue;
            }
            todo.push((name, found));
        }
        if todo.is_empty() {
            return Ok(report);
        }

        // In chunks: parsed items wait in host memory only until they are served, so a store
        // of 100,000 prompts never holds them all twice. After the first chunk, room is made for
        // the rest at once (estimated from the first chunk) rather than chunk by chunk.
        let mut left = todo.len();
        let mut todo = todo.into_iter().peekable();
        let mut first = true;
        while todo.peek().is_some() {
            let chunk: Vec<_> = todo.by_ref().take(SYNC_CHUNK).collect();
            let n = chunk.len();
            let weight = self.load_chunk(chunk, &mut report).await?;
            left -= n;
            if std::mem::take(&mut first) && left > 0 && weight > 0 {
                self.store.reserve(weight * left / n).await;
            }
        }
        Ok(report)
    }

    /// Loads a chunk of changed items and serves those that are valid; returns their weight.
    async fn load_chunk(
        &self,
        chunk: Vec<(TaskName, Found<S::Source>)>,
        report: &mut SyncReport,
    ) -> Result<usize, CatalogError> {
        let sources: Vec<S::Source> = chunk.iter().map(|(_, f)| f.source.clone()).collect();
        let loaded: Vec<Result<S::Loaded, String>> =
            self.blocking("load", move |s| s.load_all(&sources)).await?;
        let mut ok = Vec::new();
        let mut found_ok = Vec::new();
        let mut weight = 0;
        for ((name, found), result) in chunk.into_iter().zip(loaded) {
            match result {
                Ok(l) => {
                    let current = self.entries.read().get(&name).map(|e| e.value.clone());
                    let version = match (l.version(), &current) {
                        (Some(v), _) => v,
                        // Same bytes touched again: keep the version.
                        (None, Some(c)) if c.digest() == l.digest() => c.version(),
                        (None, _) => self.next_version(&name),
                    };
                    weight += l.weight();
                    ok.push((name.clone(), l, version));
                    found_ok.push((name, found));
                }
                Err(e) => {
                    tracing::warn!(source = ?found.source, "{} failed to load: {e}", S::NOUN);
                    self.failed.lock().insert(found.source, found.fingerprint);
                    self.store.reloaded(ReloadResult::Invalid);
                    report.failed += 1;
                }
            }
        }
        let served = self.store.serve_loaded(ok).await?;
        for ((name, found), value) in found_ok.into_iter().zip(served) {
            let value = match value {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(%name, "{} refused: {e}", S::NOUN);
                    report.failed += 1;
                    continue;
                }
            };
            self.failed.lock().remove(&found.source);
            tracing::info!(%name, version = value.version(), "{} loaded from the store", S::NOUN);
            self.store.reloaded(ReloadResult::Loaded);
            report.loaded += 1;
            self.insert(name, Arc::new(value), found.fingerprint);
        }
        Ok(weight)
    }
}
