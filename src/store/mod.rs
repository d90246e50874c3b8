//! Where a fleet keeps what it shares: an S3-compatible object store (`--store s3://bucket/prefix`)
//! holding every catalog as immutable content-addressed objects plus one manifest per catalog,
//! changed only by conditional PUT ([`manifest`]); each replica polls the manifests with a
//! conditional GET and heartbeats what it has applied ([`fleet`]).
//!
//! Layout under the prefix:
//! - `prompts/manifest.json`, `prompts/objects/<sha256>.safetensors`
//! - `ensembles/manifest.json`, `ensembles/objects/<sha256>.json`
//! - `replicas/<id>.json`: each replica's heartbeat
//! - `tune-jobs/<id>.json`: tuning job records
//! - `audit/<ms>-<replica>-<n>.json`: the audit log, one object per entry
pub mod bucket;
mod error;
pub mod fleet;
pub mod jobs;
pub mod manifest;
pub mod objects;
pub mod records;

use std::path::PathBuf;

pub use bucket::Bucket;
pub use error::StoreError;

/// Where a catalog is kept: a folder, or a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local (or shared) folder.
    Folder(PathBuf),
    /// `s3://bucket/prefix`.
    Bucket(String),
}

impl Location {
    /// `s3://…` is a bucket; anything else a folder.
    pub fn parse(text: &str) -> Self {
        if text.starts_with("s3://") {
            Location::Bucket(text.to_string())
        } else {
            Location::Folder(PathBuf::from(text))
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Folder(p) => write!(f, "{}", p.display()),
            Location::Bucket(u) => f.write_str(u),
        }
    }
}

/// Runs a store future from blocking code (the catalog's storage methods run on tokio's
/// blocking pool, where the runtime's handle is available).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Handle::current().block_on(f)
}
