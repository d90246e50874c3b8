//! One catalog's items in the bucket, as bytes: immutable content-addressed objects
//! (`<kind>/objects/<sha256>.<ext>`, verified on every read) and the manifest that says which
//! object each name's version is (`<kind>/manifest.json`). Object first, manifest second: a
//! crash between the two leaves an unreferenced object (collected later), never a manifest
//! pointing at nothing.
use std::sync::Arc;

use bytes::Bytes;

use super::bucket::{Bucket, Write};
use super::error::StoreError;
use super::manifest::{Manifest, ManifestCell, ManifestEntry, Refused};
use crate::metrics::StoreOp;
use crate::prompts::store::sha256_hex;

/// Where one stored version lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// SHA-256 of its bytes.
    pub object: String,
    /// The version the manifest gives it.
    pub version: u64,
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteRefused {
    /// Another replica wrote this version (or a later one) first.
    #[error("version {wanted} of {name} was taken: the store holds version {stored}")]
    Taken {
        /// The name.
        name: String,
        /// The version this write wanted.
        wanted: u64,
        /// The version the store holds.
        stored: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One catalog's objects and manifest.
pub struct Objects {
    bucket: Bucket,
    kind: &'static str,
    ext: &'static str,
    manifest: ManifestCell,
    replica: String,
}

impl Objects {
    /// The catalog `kind` ("prompts", "ensembles") in `bucket`, objects named `*.ext`.
    pub fn new(bucket: Bucket, kind: &'static str, ext: &'static str, replica: String) -> Self {
        let manifest = ManifestCell::new(bucket.clone(), format!("{kind}/manifest.json"));
        Self {
            bucket,
            kind,
            ext,
            manifest,
            replica,
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// The manifest itself (for changes of many names at once).
    pub fn manifest_cell(&self) -> &ManifestCell {
        &self.manifest
    }

    /// The manifest as last read.
    pub fn last(&self) -> Arc<Manifest> {
        self.manifest.last()
    }

    /// The manifest now (one conditional GET), and whether it changed since the last read.
    pub async fn poll(&self) -> Result<(Arc<Manifest>, bool), StoreError> {
        self.manifest.poll().await
    }

    /// The key of the object with digest `sha`.
    pub fn object_key(&self, sha: &str) -> String {
        format!("{}/objects/{sha}.{}", self.kind, self.ext)
    }

    /// Reads an object and checks its bytes against its hash; a mismatch is counted and
    /// refused.
    pub async fn read(&self, object: &str) -> Result<Bytes, StoreError> {
        let key = self.object_key(object);
        let bytes = self
            .bucket
            .get(&key, StoreOp::GetObject)
            .await?
            .ok_or_else(|| StoreError::Missing(format!("{}/{key}", self.bucket.url())))?;
        let actual = sha256_hex(&bytes);
        if actual != object {
            self.bucket.metrics().corrupt_objects.inc();
            return Err(StoreError::Corrupt(format!(
                "{}/{key}: its bytes hash to {actual}, not to its name",
                self.bucket.url()
            )));
        }
        Ok(bytes)
    }

    /// Stores `bytes` as an object; its digest. Written even when present (same bytes, same
    /// key): that renews its age, so garbage collection never takes an object a write is
    /// about to reference again.
    pub async fn put_object(&self, bytes: Bytes) -> Result<String, StoreError> {
        let sha = sha256_hex(&bytes);
        self.bucket
            .put(
                &self.object_key(&sha),
                bytes,
                Write::Overwrite,
                StoreOp::PutObject,
            )
            .await?;
        Ok(sha)
    }

    /// The highest version `name` has had in the store (a fresh read of the manifest).
    pub async fn stored_version(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self.poll().await?.0.last_version(name))
    }

    /// Stores `bytes` as `name`'s version `version`: the object, then the manifest entry.
    /// Refused when the store already holds `version` or a later one (a concurrent writer).
    pub async fn write(
        &self,
        name: &str,
        bytes: Bytes,
        version: u64,
    ) -> Result<(Arc<Manifest>, ObjectRef), WriteRefused> {
        let size = bytes.len() as u64;
        let object = self.put_object(bytes).await?;
        let entry = ManifestEntry {
            version,
            object: object.clone(),
            size,
            written_at_ms: crate::tune::jobs::now_ms(),
            replica: self.replica.clone(),
        };
        let written = self
            .manifest
            .update(|m| {
                let stored = m.last_version(name);
                if stored >= version {
                    return Err(stored);
                }
                m.entries.insert(name.to_string(), entry.clone());
                Ok(())
            })
            .await;
        match written {
            Ok(m) => Ok((m, ObjectRef { object, version })),
            Err(Refused::Change(stored)) => Err(WriteRefused::Taken {
                name: name.to_string(),
                wanted: version,
                stored,
            }),
            Err(Refused::Store(e)) => Err(e.into()),
        }
    }

    /// Removes `name` from the manifest (its version retired); false when it was not there.
    pub async fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let mut existed = false;
        let done = self
            .manifest
            .update(|m| match m.entries.remove(name) {
                Some(e) => {
                    existed = true;
                    m.retired.insert(name.to_string(), e.version);
                    Ok(())
                }
                None => {
                    existed = false;
                    Err(())
                }
            })
            .await;
        match done {
            Ok(_) => Ok(existed),
            Err(Refused::Change(())) => Ok(false),
            Err(Refused::Store(e)) => Err(e),
        }
    }

    /// Objects no manifest entry refers to and older than `grace_ms`: removed, counted.
    pub async fn collect_garbage(&self, grace_ms: u64) -> Result<usize, StoreError> {
        let (manifest, _) = self.poll().await?;
        let now = crate::tune::jobs::now_ms();
        let live: std::collections::HashSet<String> = manifest
            .entries
            .values()
            .map(|e| self.object_key(&e.object))
            .collect();
        let mut removed = 0;
        for obj in self.bucket.list(&format!("{}/objects", self.kind)).await? {
            if !live.contains(&obj.key) && now.saturating_sub(obj.modified_ms) > grace_ms {
                self.bucket.delete(&obj.key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
