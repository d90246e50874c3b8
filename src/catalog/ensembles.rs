//! The ensemble catalog: name → the ensemble served now, over `<name>.ensemble.json` files in
//! the prompts folder, so replicas sharing the folder see each other's ensembles.
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;

use super::prompts::now_secs;
use super::{Catalog, CatalogError, Found, Scan, Store, Stored, Versioned};
use crate::prompts::dir::Fingerprint;
use crate::prompts::ensembles::{EnsembleInfo, EnsembleSpec, StoredEnsemble, SUFFIX};
use crate::prompts::store::Store as Folder;
use crate::prompts::TaskName;

impl Stored for StoredEnsemble {
    fn version(&self) -> Option<u64> {
        Some(self.version)
    }

    /// Never consulted: an ensemble file always records its version, and the digest only
    /// decides for stored items that do not.
    fn digest(&self) -> &str {
        ""
    }
}

impl Versioned for EnsembleInfo {
    fn version(&self) -> u64 {
        self.version
    }

    fn digest(&self) -> &str {
        &self.sha256
    }
}

/// Ensembles as files in the prompts folder.
#[derive(Clone)]
pub struct EnsembleStore {
    folder: Folder,
}

/// Name → served ensemble.
pub type Ensembles = Catalog<EnsembleStore>;

impl EnsembleStore {
    /// Ensembles in `folder`.
    pub fn new(folder: Folder) -> Self {
        Self { folder }
    }

    fn path(&self, name: &TaskName) -> PathBuf {
        self.folder.dir().join(format!("{name}{SUFFIX}"))
    }
}

fn info(name: &TaskName, spec: EnsembleSpec, version: u64) -> EnsembleInfo {
    EnsembleInfo {
        name: name.to_string(),
        sha256: spec.sha256(),
        members: spec.members,
        combine: spec.combine,
        version,
        loaded_at: now_secs(),
    }
}

impl Store for EnsembleStore {
    type Item = EnsembleSpec;
    type Loaded = StoredEnsemble;
    type Value = EnsembleInfo;
    type Source = PathBuf;
    const NOUN: &'static str = "ensemble";

    fn scan(&self) -> io::Result<Scan<PathBuf>> {
        let (mut items, mut present) = (HashMap::new(), HashSet::new());
        for entry in fs::read_dir(self.folder.dir())? {
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
            let fingerprint = Fingerprint::of(std::slice::from_ref(&path)).unwrap_or_default();
            present.insert(path.clone());
            items.insert(
                stem.to_string(),
                Found {
                    source: path,
                    fingerprint,
                },
            );
        }
        Ok(Scan { items, present })
    }

    fn load(&self, source: &PathBuf) -> Result<StoredEnsemble, String> {
        StoredEnsemble::read(source)
    }

    fn stored_version(&self, name: &TaskName) -> Option<u64> {
        StoredEnsemble::read(&self.path(name))
            .ok()
            .map(|s| s.version)
    }

    fn write(&self, name: &TaskName, spec: &EnsembleSpec, version: u64) -> io::Result<Fingerprint> {
        let bytes = StoredEnsemble {
            members: spec.members.clone(),
            combine: spec.combine,
            version,
        }
        .encode()?;
        let path = self.folder.write_file(&format!("{name}{SUFFIX}"), &bytes)?;
        self.folder.sync_dir()?;
        Fingerprint::of(&[path])
    }

    fn remove(&self, name: &TaskName) -> io::Result<bool> {
        match fs::remove_file(self.path(name)) {
            Ok(()) => self.folder.sync_dir().map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn serve_new(
        &self,
        name: &TaskName,
        spec: &EnsembleSpec,
        version: u64,
    ) -> Result<EnsembleInfo, CatalogError> {
        Ok(info(name, spec.clone(), version))
    }

    async fn serve_loaded(
        &self,
        items: Vec<(TaskName, StoredEnsemble, u64)>,
    ) -> Result<Vec<Result<EnsembleInfo, String>>, CatalogError> {
        Ok(items
            .into_iter()
            .map(|(name, stored, version)| {
                let spec = EnsembleSpec {
                    members: stored.members,
                    combine: stored.combine,
                };
                Ok(info(&name, spec, version))
            })
            .collect())
    }
}

impl Catalog<EnsembleStore> {
    /// Every served ensemble, by name.
    pub fn list(&self) -> Vec<EnsembleInfo> {
        self.values()
            .into_iter()
            .map(|(_, e)| (*e).clone())
            .collect()
    }
}
