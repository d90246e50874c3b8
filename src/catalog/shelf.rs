//! A catalog kept in an object store rather than a folder: what the prompt and ensemble stores
//! share when `--store s3://…` (scan by the manifest, read verified objects, write object then
//! manifest, and the generation this replica has applied, for its heartbeat).
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{CatalogError, Found, Scan};
use crate::prompts::dir::Fingerprint;
use crate::prompts::TaskName;
use crate::store::objects::{ObjectRef, Objects, WriteRefused};
use crate::store::{block_on, StoreError};

/// Objects read at once while a sync loads many (a replica starting against a full store).
pub const READ_AHEAD: usize = 32;

/// Where one stored item lives: a folder's source, or an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source<F> {
    /// In the folder.
    File(F),
    /// In the bucket.
    Object(ObjectRef),
}

impl From<StoreError> for CatalogError {
    fn from(e: StoreError) -> Self {
        CatalogError::Unavailable(e.to_string())
    }
}

impl From<WriteRefused> for CatalogError {
    fn from(e: WriteRefused) -> Self {
        match e {
            WriteRefused::Taken { stored, .. } => CatalogError::Taken { stored },
            WriteRefused::Store(e) => e.into(),
        }
    }
}

/// One catalog's objects, with what this replica has applied of them.
pub struct Shelf {
    objects: Objects,
    /// Generation of the manifest the last scan read.
    scanned: AtomicU64,
    /// Generation of the manifest every change of which is served here.
    applied: AtomicU64,
    /// When the manifest last scanned was written (ms), for the sync lag.
    scanned_written_at: AtomicU64,
    /// The last scanned manifest changed since the one before.
    scanned_changed: std::sync::atomic::AtomicBool,
}

impl Shelf {
    /// The catalog over `objects`.
    pub fn new(objects: Objects) -> Arc<Self> {
        Arc::new(Self {
            objects,
            scanned: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            scanned_written_at: AtomicU64::new(0),
            scanned_changed: Default::default(),
        })
    }

    /// The objects.
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// The generation of the manifest whose every change is served here.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Called after a sync that served everything the last scan found: that generation is
    /// applied. Returns the seconds from that manifest's write to now when it was new to this
    /// replica (the sync lag), else None.
    pub fn synced(&self) -> Option<f64> {
        let scanned = self.scanned.load(Ordering::Acquire);
        let before = self.applied.swap(scanned, Ordering::AcqRel);
        let changed = self.scanned_changed.swap(false, Ordering::AcqRel);
        (changed && scanned > before).then(|| {
            let written = self.scanned_written_at.load(Ordering::Acquire);
            crate::tune::jobs::now_ms().saturating_sub(written) as f64 / 1000.0
        })
    }

    /// Every name in the manifest (one conditional GET; unchanged manifests cost nothing).
    pub fn scan<F: Clone + Eq + std::hash::Hash>(&self) -> Result<Scan<Source<F>>, CatalogError> {
        let (manifest, changed) = block_on(self.objects.poll())?;
        self.scanned.store(manifest.generation, Ordering::Release);
        self.scanned_written_at
            .store(manifest.written_at_ms, Ordering::Release);
        if changed {
            self.scanned_changed.store(true, Ordering::Release);
        }
        let mut items = HashMap::with_capacity(manifest.entries.len());
        let mut present = HashSet::with_capacity(manifest.entries.len());
        for (name, entry) in &manifest.entries {
            let source = Source::Object(ObjectRef {
                object: entry.object.clone(),
                version: entry.version,
            });
            present.insert(source.clone());
            items.insert(
                name.clone(),
                Found {
                    source,
                    fingerprint: Fingerprint::object(entry.version, &entry.object),
                },
            );
        }
        Ok(Scan { items, present })
    }

    /// An object's bytes, checked against its hash.
    pub fn read(&self, object: &ObjectRef) -> Result<Bytes, String> {
        block_on(self.objects.read(&object.object)).map_err(|e| e.to_string())
    }

    /// Many objects' bytes, read [`READ_AHEAD`] at a time, each checked against its hash; one
    /// result per object, in order.
    pub fn read_all(&self, objects: &[&ObjectRef]) -> Vec<Result<Bytes, String>> {
        use futures_util::StreamExt;
        block_on(
            futures_util::stream::iter(objects)
                .map(|o| async move {
                    self.objects
                        .read(&o.object)
                        .await
                        .map_err(|e| e.to_string())
                })
                .buffered(READ_AHEAD)
                .collect(),
        )
    }

    /// The highest version `name` has had in the store.
    pub fn stored_version(&self, name: &TaskName) -> Result<Option<u64>, CatalogError> {
        let v = block_on(self.objects.stored_version(name.as_str()))?;
        Ok((v > 0).then_some(v))
    }

    /// Stores `bytes` as `name`'s `version`; its fingerprint.
    pub fn write(
        &self,
        name: &TaskName,
        bytes: Vec<u8>,
        version: u64,
    ) -> Result<Fingerprint, CatalogError> {
        let (_, object) = block_on(
            self.objects
                .write(name.as_str(), Bytes::from(bytes), version),
        )?;
        Ok(Fingerprint::object(object.version, &object.object))
    }

    /// Removes `name`; false when it was not there.
    pub fn remove(&self, name: &TaskName) -> Result<bool, CatalogError> {
        Ok(block_on(self.objects.remove(name.as_str()))?)
    }
}
