//! Small records a fleet keeps in its store besides the catalogs: the tenants file as an
//! object (`--tenants s3://bucket/key`, reloaded by every replica when its ETag changes) and the
//! audit log as append-only objects (`audit/<ms>-<replica>-<n>.json`, one per change, written
//! before the change is acknowledged).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::block_on;
use super::bucket::{Bucket, Fetched, Write};
use super::error::StoreError;
use crate::metrics::{StoreMetrics, StoreOp};
use crate::prompts::audit::{AuditEntry, AuditSink};

/// An object named by a URL `s3://bucket/key`, read with a conditional GET.
pub struct WatchedObject {
    bucket: Bucket,
    key: String,
    url: String,
    etag: Mutex<Option<String>>,
}

impl WatchedObject {
    /// The object at `url`.
    pub fn open(url: &str, metrics: StoreMetrics) -> Result<Self, StoreError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| StoreError::Config(format!("{url:?} is not an s3:// URL")))?;
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(_, k)| !k.is_empty())
            .ok_or_else(|| {
                StoreError::Config(format!("{url:?} names no object (s3://bucket/key)"))
            })?;
        Ok(Self {
            bucket: Bucket::open(&format!("s3://{bucket}"), metrics)?,
            key: key.to_string(),
            url: url.to_string(),
            etag: Mutex::new(None),
        })
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its bytes if they changed since the last read (None: unchanged); missing is an error.
    pub async fn changed(&self) -> Result<Option<Bytes>, StoreError> {
        let etag = self.etag.lock().clone();
        match self
            .bucket
            .fetch(&self.key, etag.as_deref(), StoreOp::Record)
            .await?
        {
            Fetched::NotModified => Ok(None),
            Fetched::Missing => Err(StoreError::Missing(self.url.clone())),
            Fetched::Body { bytes, etag } => {
                *self.etag.lock() = etag;
                Ok(Some(bytes))
            }
        }
    }
}

/// An audit sink writing each entry as its own object, before the change is acknowledged.
/// Called on a blocking thread of the runtime.
pub fn audit_sink(bucket: Bucket, replica: String) -> AuditSink {
    let seq = Arc::new(AtomicU64::new(0));
    Box::new(move |entry: &AuditEntry| {
        let n = seq.fetch_add(1, Ordering::Relaxed);
        let key = format!("audit/{:013}-{replica}-{n}.json", entry.time_ms);
        let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        block_on(bucket.put(&key, Bytes::from(bytes), Write::Create, StoreOp::Record))
            .map_err(std::io::Error::other)?
            .map(|_| ())
            .ok_or_else(|| std::io::Error::other(format!("audit entry {key} already exists")))
    })
}
