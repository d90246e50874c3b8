//! A folder of prompts: `<task>.safetensors`, `<task>.npy`, or a PEFT adapter folder `<task>/`.
//!
//! The folder rule, the same for `promptd serve`, `promptd predict` and the bench: hidden
//! entries are ignored; a task defined by several entries (say `task.npy` next to
//! `task.safetensors`, which a replica's upload leaves for a moment) is read from the most
//! recently modified one, and the others are ignored ([`newest`]).
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::PromptError;
use super::name::TaskName;
use super::prompt::{Prompt, PromptLimits};

/// What a prompt folder held.
#[derive(Debug, Default)]
pub struct PromptDir {
    /// Valid prompts by task.
    pub prompts: BTreeMap<TaskName, Prompt>,
    /// Entries that look like prompts but failed, with the reason.
    pub errors: Vec<(PathBuf, PromptError)>,
}

/// Where a task's prompt lives in a folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PromptSource {
    /// `<task>.safetensors` or `<task>.npy`
    TensorFile(PathBuf),
    /// `<task>/adapter_config.json` + `<task>/adapter_model.safetensors`
    PeftDir(PathBuf),
    /// Task `t` of a multitask adapter folder `<name>/` (served as `<name>.<t>`).
    PeftTask(PathBuf, usize),
}

/// Identity of a prompt source on disk: length, mtime and inode of each of its files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(u64, i128, u64)>);

impl Fingerprint {
    pub(crate) fn of(paths: &[PathBuf]) -> io::Result<Self> {
        let mut parts = Vec::with_capacity(paths.len());
        for p in paths {
            let m = std::fs::metadata(p)?;
            let mtime = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
            parts.push((m.len(), mtime, m.ino()));
        }
        Ok(Self(parts))
    }

    /// The identity of a stored object: its version and digest (objects never change).
    pub fn object(version: u64, sha256: &str) -> Self {
        let head = sha256
            .get(..16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        Self(vec![(version, 0, head)])
    }

    /// Latest modification time among the files (ns since the epoch).
    pub fn mtime(&self) -> i128 {
        self.0.iter().map(|p| p.1).max().unwrap_or(0)
    }
}

/// A prompt source found in the folder.
#[derive(Debug, Clone)]
pub struct Found {
    /// Where it lives.
    pub source: PromptSource,
    /// Its identity now.
    pub fingerprint: Fingerprint,
}

impl PromptSource {
    /// The file or folder.
    pub fn path(&self) -> &Path {
        match self {
            PromptSource::TensorFile(p)
            | PromptSource::PeftDir(p)
            | PromptSource::PeftTask(p, _) => p,
        }
    }
}

/// Every prompt source in `dir` by task name (several when a task is defined twice).
pub fn scan(dir: &Path) -> io::Result<HashMap<String, Vec<Found>>> {
    let mut out: HashMap<String, Vec<Found>> = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some((task, source)) = classify(&path) else {
            continue;
        };
        let files = match &source {
            PromptSource::TensorFile(p) => vec![p.clone()],
            PromptSource::PeftDir(d) | PromptSource::PeftTask(d, _) => vec![
                d.join("adapter_config.json"),
                d.join("adapter_model.safetensors"),
            ],
        };
        // A file removed or half-present between listing and stat shows up next scan.
        let fingerprint = Fingerprint::of(&files).unwrap_or_default();
        if let PromptSource::PeftDir(d) = &source {
            // A multitask adapter is one task per prompt it holds.
            let tasks = std::fs::read(d.join("adapter_config.json"))
                .ok()
                .and_then(|config| super::multitask::task_count(&config));
            if let Some(tasks) = tasks {
                for t in 0..tasks {
                    out.entry(format!("{task}.{t}")).or_default().push(Found {
                        source: PromptSource::PeftTask(d.clone(), t),
                        fingerprint: fingerprint.clone(),
                    });
                }
                continue;
            }
        }
        out.entry(task).or_default().push(Found {
            source,
            fingerprint,
        });
    }
    Ok(out)
}

/// The folder rule for a task with several sources: the most recently modified wins (ties:
/// the last by path, so the choice is stable).
pub fn newest(mut found: Vec<Found>) -> Option<Found> {
    found.sort_by(|a, b| {
        (a.fingerprint.mtime(), a.source.path()).cmp(&(b.fingerprint.mtime(), b.source.path()))
    });
    found.pop()
}

/// The task name and source an entry of a prompt folder stands for, if any.
pub fn classify(path: &Path) -> Option<(String, PromptSource)> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None; // hidden files and in-progress temporary files
    }
    if path.is_dir() {
        return path
            .join("adapter_config.json")
            .is_file()
            .then(|| (name.to_string(), PromptSource::PeftDir(path.to_path_buf())));
    }
    for ext in [".safetensors", ".npy"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return Some((
                stem.to_string(),
                PromptSource::TensorFile(path.to_path_buf()),
            ));
        }
    }
    None
}

fn read_capped(path: &Path, limits: &PromptLimits) -> Result<Vec<u8>, PromptError> {
    let meta = std::fs::metadata(path).map_err(|e| PromptError::io(path, e))?;
    if meta.len() > limits.max_file_bytes as u64 {
        return Err(PromptError::Format(format!(
            "{} is {} bytes; the limit is {}",
            path.display(),
            meta.len(),
            limits.max_file_bytes
        )));
    }
    std::fs::read(path).map_err(|e| PromptError::io(path, e))
}

/// Reads one prompt from its source.
pub fn load_source(
    source: &PromptSource,
    d_model: usize,
    limits: &PromptLimits,
) -> Result<Prompt, PromptError> {
    match source {
        PromptSource::TensorFile(path) => {
            Prompt::from_tensor_file(&read_capped(path, limits)?, d_model, limits)
        }
        PromptSource::PeftDir(dir) | PromptSource::PeftTask(dir, _) => {
            let config = read_capped(&dir.join("adapter_config.json"), limits)?;
            let weights_path = dir.join("adapter_model.safetensors");
            if !weights_path.is_file() {
                let hint = if dir.join("adapter_model.bin").is_file() {
                    " (adapter_model.bin pickles are not read: save with safe_serialization=True)"
                } else {
                    ""
                };
                return Err(PromptError::io(
                    &weights_path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, format!("missing{hint}")),
                ));
            }
            let weights = read_capped(&weights_path, limits)?;
            match source {
                PromptSource::PeftTask(_, t) => {
                    let mut all = Prompt::from_peft_tasks(&config, &weights, d_model, limits)?;
                    if *t >= all.len() {
                        return Err(PromptError::Invalid(format!(
                            "{} holds {} task prompts, not task {t}",
                            dir.display(),
                            all.len()
                        )));
                    }
                    Ok(all.swap_remove(*t))
                }
                _ => Prompt::from_peft(&config, &weights, d_model, limits),
            }
        }
    }
}

/// Loads every prompt in `dir` by the folder rule (module docs); bad entries are reported,
/// not fatal.
pub fn load_prompt_dir(
    dir: &Path,
    d_model: usize,
    limits: &PromptLimits,
) -> Result<PromptDir, PromptError> {
    let scanned = scan(dir).map_err(|e| PromptError::io(dir, e))?;
    let mut out = PromptDir::default();
    for (name, found) in scanned {
        let Some(found) = newest(found) else {
            continue;
        };
        let path = found.source.path().to_path_buf();
        match TaskName::parse(&name) {
            Err(e) => out.errors.push((path, e)),
            Ok(task) => match load_source(&found.source, d_model, limits) {
                Ok(prompt) => {
                    out.prompts.insert(task, prompt);
                }
                Err(e) => out.errors.push((path, e)),
            },
        }
    }
    out.errors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
