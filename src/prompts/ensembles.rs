//! Prompt ensembles (paper §6): a name → N member tasks and how their answers combine. Stored
//! beside the prompts as `<name>.ensemble.json` (written atomically, versioned like prompts)
//! and served from an in-memory map that a folder sync keeps in step, so replicas sharing the
//! folder see each other's ensembles. Members are task names, checked against the served
//! prompts when an ensemble is written and again on every request.
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::registry::RegistryError;
use super::store::{sha256_hex, Fingerprint, Store};
use super::TaskName;

/// File name suffix of a stored ensemble.
pub const SUFFIX: &str = ".ensemble.json";

/// Largest ensemble file read from the folder.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// How an ensemble turns its members' answers into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Combine {
    /// Majority of the members' answers; ties go to the answer with the highest summed
    /// log-probability.
    Vote,
    /// With `labels`: each label's log-probability averaged over the members, highest wins.
    MeanLogprob,
}

impl Combine {
    /// The name used in requests and files.
    pub fn as_str(self) -> &'static str {
        match self {
            Combine::Vote => "vote",
            Combine::MeanLogprob => "mean-logprob",
        }
    }
}

/// What an ensemble is: its member tasks, in order, and the combine rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsembleSpec {
    /// Member task names (distinct).
    pub members: Vec<String>,
    /// How answers combine.
    pub combine: Combine,
}

impl EnsembleSpec {
    /// SHA-256 of the spec's canonical JSON (the same members and rule hash the same).
    pub fn sha256(&self) -> String {
        sha256_hex(&serde_json::to_vec(self).unwrap_or_default())
    }
}

/// What clients see about an ensemble.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EnsembleInfo {
    /// Ensemble name.
    pub name: String,
    /// Member tasks, in order.
    pub members: Vec<String>,
    /// `vote` or `mean-logprob`.
    pub combine: Combine,
    /// 1 for the first write, +1 per replacement (kept in the file).
    pub version: u64,
    /// SHA-256 of the members and rule as stored.
    pub sha256: String,
    /// When this version was loaded, seconds since the Unix epoch.
    pub loaded_at: u64,
}

/// The stored form.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    members: Vec<String>,
    combine: Combine,
    version: u64,
}

struct Entry {
    info: Arc<EnsembleInfo>,
    fingerprint: Fingerprint,
}

/// Name → served ensemble.
pub struct Ensembles {
    store: Store,
    entries: RwLock<HashMap<TaskName, Entry>>,
    writer: tokio::sync::Mutex<()>,
    /// Last version of deleted ensembles, so a re-created one keeps counting up.
    retired: Mutex<HashMap<TaskName, u64>>,
    /// Files that failed to load, at the fingerprint that failed (reported once).
    failed: Mutex<HashMap<PathBuf, Fingerprint>>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn task_failed(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> RegistryError {
    move |source| RegistryError::Task { what, source }
}

/// Reads one ensemble file: bounded, parsed (never executed), member names checked.
fn read(path: &std::path::Path) -> Result<Stored, String> {
    let meta = fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes; an ensemble file may have {MAX_FILE_BYTES}",
            meta.len()
        ));
    }
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    for m in &stored.members {
        TaskName::parse(m).map_err(|e| format!("member: {e}"))?;
    }
    if stored.members.is_empty() {
        return Err("no members".into());
    }
    Ok(stored)
}

impl Ensembles {
    /// An empty map over the prompts folder; [`Ensembles::sync`] loads it.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            entries: RwLock::new(HashMap::new()),
            writer: tokio::sync::Mutex::new(()),
            retired: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// The ensemble served now under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<EnsembleInfo>> {
        let name = TaskName::parse(name).ok()?;
        self.entries.read().get(&name).map(|e| e.info.clone())
    }

    /// Every served ensemble, by name.
    pub fn list(&self) -> Vec<EnsembleInfo> {
        let mut out: Vec<EnsembleInfo> = self
            .entries
            .read()
            .values()
            .map(|e| (*e.info).clone())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Ensembles served.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    /// Whether none is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn file_name(name: &TaskName) -> String {
        format!("{name}{SUFFIX}")
    }

    /// Stores and serves an ensemble (the caller has validated its members). Returns its info
    /// and whether the name is new. On any error nothing changes.
    pub async fn put(
        &self,
        name: TaskName,
        spec: EnsembleSpec,
    ) -> Result<(EnsembleInfo, bool), RegistryError> {
        let _writer = self.writer.lock().await;
        let store = self.store.clone();
        let file = Self::file_name(&name);
        let on_disk = tokio::task::spawn_blocking({
            let path = store.dir().join(&file);
            move || read(&path).ok().map(|s| s.version)
        })
        .await
        .unwrap_or(None);
        let current = self.entries.read().get(&name).map(|e| e.info.version);
        let retired = self.retired.lock().get(&name).copied();
        let version = [current, retired, on_disk]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
            + 1;
        let stored = Stored {
            members: spec.members.clone(),
            combine: spec.combine,
            version,
        };
        let bytes = serde_json::to_vec_pretty(&stored).map_err(io::Error::other)?;
        let fingerprint = tokio::task::spawn_blocking(move || {
            let path = store.write_file(&file, &bytes)?;
            store.sync_dir()?;
            Fingerprint::of(&[path])
        })
        .await
        .map_err(task_failed("ensemble store"))??;
        let info = EnsembleInfo {
            name: name.to_string(),
            sha256: spec.sha256(),
            members: spec.members,
            combine: spec.combine,
            version,
            loaded_at: now_secs(),
        };
        let created = current.is_none();
        self.entries.write().insert(
            name,
            Entry {
                info: Arc::new(info.clone()),
                fingerprint,
            },
        );
        Ok((info, created))
    }

    /// Deletes an ensemble's file and stops serving it; false when it did not exist.
    pub async fn delete(&self, name: &TaskName) -> Result<bool, RegistryError> {
        let _writer = self.writer.lock().await;
        let store = self.store.clone();
        let path = store.dir().join(Self::file_name(name));
        let removed_file = tokio::task::spawn_blocking(move || match fs::remove_file(&path) {
            Ok(()) => store.sync_dir().map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .await
        .map_err(task_failed("ensemble store"))??;
        let removed = self.entries.write().remove(name);
        if let Some(old) = &removed {
            self.retired.lock().insert(name.clone(), old.info.version);
        }
        Ok(removed_file || removed.is_some())
    }

    /// Brings the map in line with the folder: new or changed files are loaded, ensembles
    /// whose files are gone are dropped; a file that fails to load is reported once and the
    /// version already served (if any) stays.
    pub async fn sync(&self) -> Result<(), RegistryError> {
        let _writer = self.writer.lock().await;
        let dir = self.store.dir().to_path_buf();
        // What is known already (served or failed), so only changed files are read.
        let mut known: HashMap<PathBuf, Fingerprint> = self
            .entries
            .read()
            .iter()
            .map(|(n, e)| (dir.join(Self::file_name(n)), e.fingerprint.clone()))
            .collect();
        known.extend(self.failed.lock().clone());
        type Scanned = (
            std::collections::HashSet<String>,
            Vec<(String, PathBuf, Fingerprint, Result<Stored, String>)>,
        );
        let (found, changed): Scanned = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let (mut found, mut changed) = (std::collections::HashSet::new(), Vec::new());
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let Some(stem) = file.strip_suffix(SUFFIX) else {
                    continue;
                };
                if stem.starts_with('.') || !path.is_file() {
                    continue;
                }
                let stem = stem.to_string();
                found.insert(stem.clone());
                let fingerprint = Fingerprint::of(std::slice::from_ref(&path)).unwrap_or_default();
                if known.get(&path) == Some(&fingerprint) {
                    continue;
                }
                let loaded = TaskName::parse(&stem)
                    .map_err(|e| e.to_string())
                    .and_then(|_| read(&path));
                changed.push((stem, path, fingerprint, loaded));
            }
            Ok((found, changed))
        })
        .await
        .map_err(task_failed("ensemble scan"))??;
        let gone: Vec<TaskName> = self
            .entries
            .read()
            .keys()
            .filter(|n| !found.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.entries.write().remove(&name) {
                self.retired.lock().insert(name.clone(), old.info.version);
                tracing::info!(ensemble = %name, "ensemble removed from the folder");
            }
        }
        self.failed.lock().retain(|p, _| p.exists());
        for (stem, path, fingerprint, loaded) in changed {
            match loaded.and_then(|s| Ok((TaskName::parse(&stem).map_err(|e| e.to_string())?, s))) {
                Ok((name, stored)) => {
                    let spec = EnsembleSpec {
                        members: stored.members,
                        combine: stored.combine,
                    };
                    let info = EnsembleInfo {
                        name: name.to_string(),
                        sha256: spec.sha256(),
                        members: spec.members,
                        combine: spec.combine,
                        version: stored.version,
                        loaded_at: now_secs(),
                    };
                    tracing::info!(ensemble = %name, version = info.version, "ensemble loaded from the folder");
                    self.failed.lock().remove(&path);
                    self.entries.write().insert(
                        name,
                        Entry {
                            info: Arc::new(info),
                            fingerprint,
                        },
                    );
                }
                Err(why) => {
                    tracing::warn!(path = %path.display(), "ensemble failed to load: {why}");
                    self.failed.lock().insert(path, fingerprint);
                }
            }
        }
        Ok(())
    }
}
