//! One S3-compatible bucket under a key prefix, through Apache Arrow's `object_store`: the few
//! operations a catalog needs (read, conditional read, conditional write, list, delete), each
//! counted in `promptd_store_requests_total{op,outcome}` and each setting `promptd_store_up`.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::ClientConfigKey;
use object_store::path::Path;
use object_store::{
    BackoffConfig, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};

use super::error::StoreError;
use crate::metrics::{StoreMetrics, StoreOp, StoreOutcome};

/// A bucket and key prefix, as `s3://bucket/prefix`.
#[derive(Clone)]
pub struct Bucket {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("url", &self.url).finish()
    }
}

/// What a conditional read found.
#[derive(Debug)]
pub enum Fetched {
    /// The object is unchanged since the ETag given (304).
    NotModified,
    /// No such object.
    Missing,
    /// The object's bytes and ETag.
    Body {
        /// Its bytes.
        bytes: Bytes,
        /// Its ETag, for the next conditional read or write.
        etag: Option<String>,
    },
}

/// How a write may replace what is there.
#[derive(Debug, Clone)]
pub enum Write {
    /// Replace whatever is there.
    Overwrite,
    /// Only if nothing is there (If-None-Match: *).
    Create,
    /// Only if the object still has this ETag (If-Match).
    IfMatch(String),
}

/// One listed object.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its key below the bucket's prefix.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, ms since the Unix epoch.
    pub modified_ms: u64,
}

/// Timeouts and retries for a store that must fail fast when it is down: a write answers 503
/// within seconds instead of hanging the client (defaults; `AWS_TIMEOUT` and
/// `AWS_CONNECT_TIMEOUT` override them).
const TIMEOUT: &str = "10s";
const CONNECT_TIMEOUT: &str = "2s";

fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(5),
    }
}

impl Bucket {
    /// The bucket of `url` (`s3://bucket[/prefix]`), configured by the standard `AWS_*`
    /// variables (endpoint, region, credentials, `AWS_ALLOW_HTTP` for a plain-HTTP endpoint).
    pub fn open(url: &str, metrics: StoreMetrics) -> Result<Self, StoreError> {
        Self::open_with(url, &[], metrics)
    }

    /// [`Bucket::open`] with `settings` (`aws_endpoint`, `aws_allow_http`, … as the `AWS_*`
    /// variables are named, lower case) taking precedence over the environment.
    pub fn open_with(
        url: &str,
        settings: &[(String, String)],
        metrics: StoreMetrics,
    ) -> Result<Self, StoreError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| StoreError::Config(format!("{url:?} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Config(format!("{url:?} names no bucket")));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let env = |k: &str| std::env::var_os(k).is_some();
        if !env("AWS_TIMEOUT") {
            builder =
                builder.with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), TIMEOUT);
        }
        if !env("AWS_CONNECT_TIMEOUT") {
            builder = builder.with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                CONNECT_TIMEOUT,
            );
        }
        if !env("AWS_REGION") && !env("AWS_DEFAULT_REGION") {
            builder = builder.with_region("us-east-1");
        }
        for (key, value) in settings {
            let key: AmazonS3ConfigKey = key
                .to_ascii_lowercase()
                .parse()
                .map_err(|e| StoreError::Config(format!("{key}: {e}")))?;
            builder = builder.with_config(key, value);
        }
        let inner = builder
            .with_retry(retry())
            .build()
            .map_err(|e| StoreError::Config(format!("{url}: {e}")))?;
        let prefix = prefix.trim_matches('/').to_string();
        Ok(Self {
            inner: Arc::new(inner),
            prefix,
            url: url.trim_end_matches('/').to_string(),
            metrics,
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store's metrics.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    fn count(&self, op: StoreOp, outcome: StoreOutcome) {
        self.metrics.request(op, outcome);
        self.metrics
            .up
            .set(i64::from(outcome != StoreOutcome::Error));
    }

    fn failed(&self, op: StoreOp, key: &str, e: object_store::Error) -> StoreError {
        self.count(op, StoreOutcome::Error);
        StoreError::Unreachable(format!("{} {key}: {e}", self.url))
    }

    /// Reads `key` unless its ETag is still `etag` (a 304 costs the store nothing).
    pub async fn fetch(
        &self,
        key: &str,
        etag: Option<&str>,
        op: StoreOp,
    ) -> Result<Fetched, StoreError> {
        let options = GetOptions {
            if_none_match: etag.map(str::to_string),
            ..Default::default()
        };
        match self.inner.get_opts(&self.path(key), options).await {
            Ok(got) => {
                let etag = got.meta.e_tag.clone();
                match got.bytes().await {
                    Ok(bytes) => {
                        self.count(op, StoreOutcome::Ok);
                        Ok(Fetched::Body { bytes, etag })
                    }
                    Err(e) => Err(self.failed(op, key, e)),
                }
            }
            Err(object_store::Error::NotModified { .. }) => {
                self.count(op, StoreOutcome::NotModified);
                Ok(Fetched::NotModified)
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.count(op, StoreOutcome::NotFound);
                Ok(Fetched::Missing)
            }
            Err(e) => Err(self.failed(op, key, e)),
        }
    }

    /// Reads `key`; None when it does not exist.
    pub async fn get(&self, key: &str, op: StoreOp) -> Result<Option<Bytes>, StoreError> {
        match self.fetch(key, None, op).await? {
            Fetched::Body { bytes, .. } => Ok(Some(bytes)),
            Fetched::Missing | Fetched::NotModified => Ok(None),
        }
    }

    /// Writes `key` atomically; `Ok(None)` when the condition failed (the object exists, or
    /// no longer has the ETag), else the new ETag.
    pub async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        write: Write,
        op: StoreOp,
    ) -> Result<Option<String>, StoreError> {
        let mode = match write {
            Write::Overwrite => PutMode::Overwrite,
            Write::Create => PutMode::Create,
            Write::IfMatch(etag) => PutMode::Update(UpdateVersion {
                e_tag: Some(etag),
                version: None,
            }),
        };
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        let put = self
            .inner
            .put_opts(&self.path(key), PutPayload::from_bytes(bytes), options)
            .await;
        match put {
            Ok(done) => {
                self.count(op, StoreOutcome::Ok);
                Ok(Some(done.e_tag.unwrap_or_default()))
            }
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => {
                self.count(op, StoreOutcome::PreconditionFailed);
                Ok(None)
            }
            Err(e) => Err(self.failed(op, key, e)),
        }
    }

    /// Every object whose key starts with `dir/`, keys relative to the bucket's prefix.
    pub async fn list(&self, dir: &str) -> Result<Vec<Listed>, StoreError> {
        let base = self.path(dir);
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut stream = self.inner.list(Some(&base));
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let meta = item.map_err(|e| self.failed(StoreOp::List, dir, e))?;
            let full = meta.location.to_string();
            out.push(Listed {
                key: full.strip_prefix(&strip).unwrap_or(&full).to_string(),
                size: meta.size,
                modified_ms: meta.last_modified.timestamp_millis().max(0) as u64,
            });
        }
        self.count(StoreOp::List, StoreOutcome::Ok);
        Ok(out)
    }

    /// Removes `key` (nothing there is not an error).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.count(StoreOp::Delete, StoreOutcome::Ok);
                Ok(())
            }
            Err(e) => Err(self.failed(StoreOp::Delete, key, e)),
        }
    }
}
