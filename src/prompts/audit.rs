//! The audit log: one JSON line per prompt change (who, what, which version and bytes, when),
//! appended and synced to disk before the change is acknowledged to the client.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::Serialize;

/// One prompt change.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Unix time in milliseconds.
    pub time_ms: u128,
    /// The tenant that made the change (`-` on an open server).
    pub tenant: String,
    /// The task (or the ensemble, when `kind` says so).
    pub task: String,
    /// `ensemble` for an ensemble's change; absent for a prompt's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// `create`, `replace` or `delete`.
    pub action: &'static str,
    /// The version stored (for a delete: the version removed).
    pub version: u64,
    /// SHA-256 of the uploaded file (for a delete: of the version removed).
    pub sha256: String,
    /// Bytes uploaded (0 for a delete).
    pub bytes: usize,
}

/// Where entries go instead of a file (a fleet's object store: one object per entry).
pub type AuditSink = Box<dyn Fn(&AuditEntry) -> std::io::Result<()> + Send + Sync>;

/// An append-only JSON-lines file, created with its first entry (or a sink).
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
    sink: Option<AuditSink>,
}

impl AuditLog {
    /// A log at `path`; its folder must exist.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            if !dir.is_dir() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("folder {} does not exist", dir.display()),
                ));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(None),
            sink: None,
        })
    }

    /// A log whose entries go to `sink` (named `name` in messages). `record` blocks until
    /// the sink has them.
    pub fn to_sink(name: &str, sink: AuditSink) -> Self {
        Self {
            path: PathBuf::from(name),
            file: Mutex::new(None),
            sink: Some(sink),
        }
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry as a single write and syncs it.
    pub fn record(&self, entry: &AuditEntry) -> std::io::Result<()> {
        if let Some(sink) = &self.sink {
            return sink(entry);
        }
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut slot = self.file.lock();
        if slot.is_none() {
            *slot = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let file = slot.as_mut().expect("opened above");
        file.write_all(&line)?;
        file.sync_data()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
