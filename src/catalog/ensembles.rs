//! The ensemble catalog: name → the ensemble served now, over `<name>.ensemble.json` files in
//! the prompts folder, so replicas sharing the folder see each other's ensembles.
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;

use std::sync::Arc;

use super::prompts::now_secs;
use super::shelf::{Shelf, Source};
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

/// Ensembles as files in the prompts folder, or objects in the fleet's bucket.
#[derive(Clone)]
pub struct EnsembleStore {
    folder: Option<Folder>,
    shelf: Option<Arc<Shelf>>,
}

/// Name → served ensemble.
pub type Ensembles = Catalog<EnsembleStore>;

impl EnsembleStore {
    /// Ensembles in `folder`.
    pub fn new(folder: Folder) -> Self {
        Self {
            folder: Some(folder),
            shelf: None,
        }
    }

    /// Ensembles in a bucket.
    pub fn in_bucket(shelf: Arc<Shelf>) -> Self {
        Self {
            folder: None,
            shelf: Some(shelf),
        }
    }

    /// The bucket's catalog, when ensembles are kept in one.
    pub fn shelf(&self) -> Option<&Arc<Shelf>> {
        self.shelf.as_ref()
    }

    fn folder(&self) -> io::Result<&Folder> {
        self.folder
            .as_ref()
            .ok_or_else(|| io::Error::other("ensembles are kept in a bucket"))
    }

    fn path(&self, name: &TaskName) -> io::Result<PathBuf> {
        Ok(self.folder()?.dir().join(format!("{name}{SUFFIX}")))
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
    type Source = Source<PathBuf>;
    const NOUN: &'static str = "ensemble";

    fn scan(&self) -> Result<Scan<Self::Source>, CatalogError> {
        if let Some(shelf) = &self.shelf {
            return shelf.scan();
        }
        let (mut items, mut present) = (HashMap::new(), HashSet::new());
        for entry in fs::read_dir(self.folder()?.dir())? {
            let path = entry?.path();
            let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = file.strip_suffix(SUFFIX).map(str::to_string) else {
                continue;
            };
            if stem.starts_with('.') || !path.is_file() {
                continue;
            }
            let fingerprint = Fingerprint::of(std::slice::from_ref(&path)).unwrap_or_default();
            let source = Source::File(path);
            present.insert(source.clone());
            items.insert(
                stem,
                Found {
                    source,
                    fingerprint,
                },
            );
        }
        Ok(Scan { items, present })
    }

    fn load(&self, source: &Self::Source) -> Result<StoredEnsemble, String> {
        match (source, &self.shelf) {
            (Source::File(path), _) => StoredEnsemble::read(path),
            (Source::Object(object), Some(shelf)) => {
                let mut stored = StoredEnsemble::parse(&shelf.read(object)?)?;
                stored.version = object.version;
                Ok(stored)
            }
            (Source::Object(_), None) => Err("an object without a bucket".to_string()),
        }
    }

    fn stored_version(&self, name: &TaskName) -> Result<Option<u64>, CatalogError> {
        if let Some(shelf) = &self.shelf {
            return shelf.stored_version(name);
        }
        Ok(StoredEnsemble::read(&self.path(name)?)
            .ok()
            .map(|s| s.version))
    }

    fn write(
        &self,
        name: &TaskName,
        spec: &EnsembleSpec,
        version: u64,
    ) -> Result<Fingerprint, CatalogError> {
        let stored = |version| StoredEnsemble {
            members: spec.members.clone(),
            combine: spec.combine,
            version,
        };
        if let Some(shelf) = &self.shelf {
            // The object is content-addressed: its version lives in the manifest.
            return shelf.write(name, stored(0).encode()?, version);
        }
        let folder = self.folder()?;
        let path = folder.write_file(&format!("{name}{SUFFIX}"), &stored(version).encode()?)?;
        folder.sync_dir()?;
        Ok(Fingerprint::of(&[path])?)
    }

    fn remove(&self, name: &TaskName) -> Result<bool, CatalogError> {
        if let Some(shelf) = &self.shelf {
            return shelf.remove(name);
        }
        match fs::remove_file(self.path(name)?) {
            Ok(()) => Ok(self.folder()?.sync_dir().map(|()| true)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
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
