//! A folder of prompts: `<task>.safetensors`, `<task>.npy`, or a PEFT adapter folder `<task>/`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Prompt, PromptError, PromptLimits, TaskName};

/// What a prompt folder held.
#[derive(Debug, Default)]
pub struct PromptDir {
    /// Valid prompts by task.
    pub prompts: BTreeMap<TaskName, Prompt>,
    /// Entries that look like prompts but failed, with the reason.
    pub errors: Vec<(PathBuf, PromptError)>,
}

/// Where a task's prompt lives in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptSource {
    /// `<task>.safetensors` or `<task>.npy`
    TensorFile(PathBuf),
    /// `<task>/adapter_config.json` + `<task>/adapter_model.safetensors`
    PeftDir(PathBuf),
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
    let meta =
        std::fs::metadata(path).map_err(|e| PromptError::Io(format!("{}: {e}", path.display())))?;
    if meta.len() > limits.max_file_bytes as u64 {
        return Err(PromptError::Format(format!(
            "{} is {} bytes; the limit is {}",
            path.display(),
            meta.len(),
            limits.max_file_bytes
        )));
    }
    std::fs::read(path).map_err(|e| PromptError::Io(format!("{}: {e}", path.display())))
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
        PromptSource::PeftDir(dir) => {
            let config = read_capped(&dir.join("adapter_config.json"), limits)?;
            let weights_path = dir.join("adapter_model.safetensors");
            if !weights_path.is_file() {
                let hint = if dir.join("adapter_model.bin").is_file() {
                    " (adapter_model.bin pickles are not read: save with safe_serialization=True)"
                } else {
                    ""
                };
                return Err(PromptError::Io(format!(
                    "{} is missing{hint}",
                    weights_path.display()
                )));
            }
            let weights = read_capped(&weights_path, limits)?;
            Prompt::from_peft(&config, &weights, d_model, limits)
        }
    }
}

/// Loads every prompt in `dir`; bad entries are reported, not fatal.
pub fn load_prompt_dir(
    dir: &Path,
    d_model: usize,
    limits: &PromptLimits,
) -> Result<PromptDir, PromptError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| PromptError::Io(format!("{}: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut out = PromptDir::default();
    let mut seen: BTreeMap<TaskName, PathBuf> = BTreeMap::new();
    for path in paths {
        let Some((name, source)) = classify(&path) else {
            continue;
        };
        let task = match TaskName::parse(&name) {
            Ok(task) => task,
            Err(e) => {
                out.errors.push((path, e));
                continue;
            }
        };
        if let Some(first) = seen.get(&task) {
            let why = format!(
                "task {task} is defined twice: {} and {}",
                first.display(),
                path.display()
            );
            out.prompts.remove(&task);
            out.errors.push((path, PromptError::Invalid(why)));
            continue;
        }
        seen.insert(task.clone(), path.clone());
        match load_source(&source, d_model, limits) {
            Ok(prompt) => {
                out.prompts.insert(task, prompt);
            }
            Err(e) => out.errors.push((path, e)),
        }
    }
    Ok(out)
}
