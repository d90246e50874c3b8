//! A catalog's manifest in the bucket: name → the version served and the content-addressed
//! object that holds it. It is the only mutable object of a catalog, and it changes only by
//! conditional PUT (If-Match on the ETag read, or create-only when there is none), so two
//! replicas writing at once never lose an update: the loser reads again and reapplies its
//! change, or gives up with a conflict.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::bucket::{Bucket, Fetched, Write};
use super::error::StoreError;
use crate::metrics::StoreOp;

/// One name in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The version served: fleet-wide monotonic per name.
    pub version: u64,
    /// SHA-256 of the object's bytes (its key).
    pub object: String,
    /// The object's size in bytes.
    pub size: u64,
    /// When this version was written, ms since the Unix epoch.
    pub written_at_ms: u64,
    /// The replica that wrote it.
    pub replica: String,
}

/// The manifest of one catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Counts every write: a replica that applied generation g has every change up to g.
    pub generation: u64,
    /// When the last change was written, ms since the Unix epoch.
    pub written_at_ms: u64,
    /// Name → what is served.
    pub entries: BTreeMap<String, ManifestEntry>,
    /// Last version of deleted names, so a re-created name keeps counting up.
    #[serde(default)]
    pub retired: BTreeMap<String, u64>,
}

impl Manifest {
    /// The highest version `name` has had (served or retired); 0 for a new name.
    pub fn last_version(&self, name: &str) -> u64 {
        let served = self.entries.get(name).map_or(0, |e| e.version);
        served.max(self.retired.get(name).copied().unwrap_or(0))
    }
}

/// Why a change was not applied.
#[derive(Debug)]
pub enum Refused<E> {
    /// The change itself refused (it saw the manifest and gave up).
    Change(E),
    /// The store failed.
    Store(StoreError),
}

impl<E> From<StoreError> for Refused<E> {
    fn from(e: StoreError) -> Self {
        Refused::Store(e)
    }
}

/// Conditional writes that lost a race before the change gives up with a conflict.
const MAX_RACES: u32 = 64;

/// A manifest and the last copy read of it (with its ETag).
pub struct ManifestCell {
    bucket: Bucket,
    key: String,
    last: Mutex<(Option<String>, Arc<Manifest>)>,
}

impl ManifestCell {
    /// The manifest at `key`; nothing is read yet.
    pub fn new(bucket: Bucket, key: String) -> Self {
        Self {
            bucket,
            key,
            last: Mutex::new((None, Arc::new(Manifest::default()))),
        }
    }

    /// The copy read last (empty before the first read).
    pub fn last(&self) -> Arc<Manifest> {
        self.last.lock().1.clone()
    }

    /// Reads the manifest if it changed since the last read (one conditional GET); the
    /// manifest now, and whether it changed.
    pub async fn poll(&self) -> Result<(Arc<Manifest>, bool), StoreError> {
        let etag = self.last.lock().0.clone();
        match self
            .bucket
            .fetch(&self.key, etag.as_deref(), StoreOp::GetManifest)
            .await?
        {
            Fetched::NotModified => Ok((self.last(), false)),
            Fetched::Missing => {
                let mut last = self.last.lock();
                let changed = last.0.is_some();
                *last = (None, Arc::new(Manifest::default()));
                Ok((last.1.clone(), changed))
            }
            Fetched::Body { bytes, etag } => {
                let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "{}/{}: not a manifest: {e}",
                        self.bucket.url(),
                        self.key
                    ))
                })?;
                let manifest = Arc::new(manifest);
                let mut last = self.last.lock();
                // An older copy never replaces a newer one (a slow read racing a write).
                if manifest.generation >= last.1.generation || etag.is_none() {
                    *last = (etag, manifest.clone());
                }
                Ok((last.1.clone(), true))
            }
        }
    }

    /// Applies `change` to the manifest and writes it conditionally, reading again and
    /// reapplying after every lost race; returns the manifest written. `change` may refuse
    /// (it sees the newest manifest each time).
    pub async fn update<E>(
        &self,
        mut change: impl FnMut(&mut Manifest) -> Result<(), E>,
    ) -> Result<Arc<Manifest>, Refused<E>> {
        for race in 0..MAX_RACES {
            let (current, _) = self.poll().await?;
            let etag = self.last.lock().0.clone();
            let mut next = (*current).clone();
            change(&mut next).map_err(Refused::Change)?;
            next.generation = current.generation + 1;
            next.written_at_ms = crate::tune::jobs::now_ms();
            let bytes = Bytes::from(serde_json::to_vec(&next).unwrap_or_default());
            let write = match etag {
                Some(etag) => Write::IfMatch(etag),
                None => Write::Create,
            };
            match self
                .bucket
                .put(&self.key, bytes, write, StoreOp::PutManifest)
                .await?
            {
                Some(etag) => {
                    let next = Arc::new(next);
                    *self.last.lock() = (Some(etag).filter(|e| !e.is_empty()), next.clone());
                    return Ok(next);
                }
                None => {
                    // Lost the race: another replica wrote first. Back off a little (jittered,
                    // growing) so the writers do not collide again in lockstep.
                    let jitter = (crate::tune::jobs::now_ms() ^ (u64::from(race) * 7919)) % 20;
                    let wait = 5 * u64::from(race.min(10)) + jitter;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
        Err(Refused::Store(StoreError::Contended(format!(
            "{}/{}: {MAX_RACES} conditional writes in a row lost to other writers",
            self.bucket.url(),
            self.key
        ))))
    }
}
