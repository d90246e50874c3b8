//! The on-disk prompt store: one folder, one entry per task. Uploads are written as
//! `<task>.safetensors` (encoder rows as `prompt_embeddings`, PEFT decoder rows as
//! `decoder_prompt_embeddings`, version and upload hash in the header metadata) through a
//! hidden temporary file, fsync and rename, so a reader sees the old file or the new one.
//! A LoRA or IA3 task is stored the same way: its PEFT tensors under their PEFT names, and
//! its `adapter_config.json` in the header metadata.
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

use super::dir::{classify, load_source, PromptSource};
pub use super::dir::{Fingerprint, Found};
use super::error::PromptError;
use super::name::TaskName;
use super::prompt::{Prompt, PromptLimits};
use super::tensor::{is_safetensors, safetensors_tensor, RawTensor};
use crate::engine::PromptRows;

/// Header metadata key of the prompt version.
pub const VERSION_KEY: &str = "promptd.version";
/// Header metadata key of the uploaded file's SHA-256.
pub const SHA256_KEY: &str = "promptd.sha256";
const DECODER_KEY: &str = "decoder_prompt_embeddings";
/// Header metadata key of a LoRA or IA3 task's `adapter_config.json`.
pub const ADAPTER_CONFIG_KEY: &str = "promptd.adapter_config";
const TEMP_MARK: &str = ".tmp-";

/// A prompt read from the store with what its file says about itself.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated prompt.
    pub prompt: Prompt,
    /// Version from promptd's header metadata (None for files promptd did not write).
    pub version: Option<u64>,
    /// SHA-256 of the file as uploaded (from metadata), else of the file itself.
    pub sha256: String,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The prompts folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the folder and removes temporary files left by crashed
    /// writers more than an hour ago (younger ones may belong to another live replica).
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let store = Self {
            dir: dir.to_path_buf(),
        };
        for entry in fs::read_dir(dir)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(TEMP_MARK) {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > Duration::from_secs(3600));
                if old {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(store)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every prompt source in the folder by task name (several when a task is defined twice).
    pub fn scan(&self) -> io::Result<HashMap<String, Vec<Found>>> {
        super::dir::scan(&self.dir)
    }

    /// Reads and validates one source.
    pub fn load(
        &self,
        source: &PromptSource,
        d_model: usize,
        limits: &PromptLimits,
    ) -> Result<Loaded, PromptError> {
        match source {
            PromptSource::TensorFile(path) => {
                let bytes = fs::read(path).map_err(|e| PromptError::io(path, e))?;
                parse_stored(&bytes, d_model, limits)
            }
            PromptSource::PeftDir(dir) | PromptSource::PeftTask(dir, _) => {
                let prompt = load_source(source, d_model, limits)?;
                let weights = dir.join("adapter_model.safetensors");
                let bytes = fs::read(&weights).map_err(|e| PromptError::io(&weights, e))?;
                Ok(Loaded {
                    prompt,
                    version: None,
                    sha256: sha256_hex(&bytes),
                })
            }
        }
    }

    /// The version recorded in the task's stored file, if any. Read before each write so a
    /// replica that has not yet seen another replica's upload still counts past it.
    pub fn stored_version(&self, task: &TaskName) -> Option<u64> {
        use std::io::Read;
        let mut f = File::open(self.dir.join(format!("{task}.safetensors"))).ok()?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).ok()?;
        let n = u64::from_le_bytes(len);
        if n > 1 << 20 {
            return None;
        }
        let mut header = len.to_vec();
        header.resize(8 + n as usize, 0);
        f.read_exact(&mut header[8..]).ok()?;
        let header: serde_json::Value = serde_json::from_slice(&header[8..]).ok()?;
        header["__metadata__"][VERSION_KEY].as_str()?.parse().ok()
    }

    /// Writes `prompt` as the task's only source, atomically, and returns its fingerprint.
    /// Other sources of the same task (`.npy`, a PEFT folder) are removed afterwards.
    pub fn write(
        &self,
        task: &TaskName,
        prompt: &Prompt,
        version: u64,
        sha256: &str,
    ) -> io::Result<Fingerprint> {
        #[cfg(debug_assertions)]
        if crate::fault::take(&crate::fault::PANIC_STORE_WRITES) {
            panic!("injected fault: writing a prompt panicked");
        }
        let bytes = encode(prompt, Some(version), sha256)?;
        let path = self.write_file(&format!("{task}.safetensors"), &bytes)?;
        self.remove_other_sources(task, &path)?;
        self.sync_dir()?;
        Fingerprint::of(&[path])
    }

    /// Writes `bytes` as `name` in the folder through a hidden temporary file, fsync and
    /// rename (a reader sees the old file or the new one, never part of one); returns the path.
    /// The folder itself is synced by the caller once its other changes are done.
    pub(crate) fn write_file(&self, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        let path = self.dir.join(name);
        let temp = self.dir.join(format!(
            ".{name}{TEMP_MARK}{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let written = (|| {
            let mut f = File::create(&temp)?;
            #[cfg(debug_assertions)]
            match crate::fault::STORE_WRITE_ERRNO.load(std::sync::atomic::Ordering::Acquire) {
                0 => {}
                errno => {
                    f.write_all(&bytes[..bytes.len() / 2])?;
                    return Err(io::Error::from_raw_os_error(errno));
                }
            }
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&temp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        Ok(path)
    }

    /// Removes every source of `task`; false when there was none.
    pub fn remove(&self, task: &TaskName) -> io::Result<bool> {
        let removed = self.remove_other_sources(task, Path::new(""))?;
        if removed {
            self.sync_dir()?;
        }
        Ok(removed)
    }

    fn remove_other_sources(&self, task: &TaskName, keep: &Path) -> io::Result<bool> {
        let mut removed = false;
        for name in [
            format!("{task}.safetensors"),
            format!("{task}.npy"),
            task.to_string(),
        ] {
            let path = self.dir.join(name);
            if path == keep {
                continue;
            }
            let result = match classify(&path) {
                Some((_, PromptSource::PeftDir(_))) => fs::remove_dir_all(&path),
                Some((_, PromptSource::TensorFile(_))) if path.is_file() => fs::remove_file(&path),
                _ => continue,
            };
            match result {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Syncs the folder, so renames and removals in it survive a crash.
    pub(crate) fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

fn decoder_rows(raw: RawTensor, d_model: usize) -> Result<PromptRows, PromptError> {
    match raw.shape.as_slice() {
        &[rows, cols] if cols as usize == d_model => Ok(PromptRows {
            rows: rows as usize,
            cols: d_model,
            values: raw.values,
        }),
        other => Err(PromptError::Invalid(format!(
            "`{DECODER_KEY}` has shape {other:?}; expected [rows, {d_model}]"
        ))),
    }
}

fn rows_bytes(rows: &PromptRows) -> Vec<u8> {
    rows.values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// promptd's header metadata of a safetensors file (empty for other files).
fn metadata(bytes: &[u8]) -> HashMap<String, String> {
    SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().clone())
        .unwrap_or_default()
}

/// The `adapter_config.json` a safetensors file carries in its metadata (an adapter as promptd
/// stores it, or as `promptd tune` writes its weights), if any.
pub fn embedded_adapter_config(bytes: &[u8]) -> Option<String> {
    metadata(bytes).remove(ADAPTER_CONFIG_KEY)
}

/// Reads a prompt file as stored (a `.safetensors` or `.npy` prompt, with promptd's metadata
/// when promptd wrote it: version, upload digest, PEFT decoder rows).
pub fn parse_stored(
    bytes: &[u8],
    d_model: usize,
    limits: &PromptLimits,
) -> Result<Loaded, PromptError> {
    if bytes.len() > limits.max_file_bytes {
        return Err(PromptError::Format(format!(
            "the prompt is {} bytes; the limit is {}",
            bytes.len(),
            limits.max_file_bytes
        )));
    }
    let meta = metadata(bytes);
    let version = meta.get(VERSION_KEY).and_then(|v| v.parse().ok());
    let mut prompt = match meta.get(ADAPTER_CONFIG_KEY) {
        Some(config) => Prompt::from_peft(config.as_bytes(), bytes, d_model, limits)?,
        None => Prompt::from_tensor_file(bytes, d_model, limits)?,
    };
    let decoder = if is_safetensors(bytes) && prompt.adapter.is_none() {
        safetensors_tensor(bytes, DECODER_KEY)?
    } else {
        None
    };
    if let Some(raw) = decoder {
        prompt.decoder = Some(decoder_rows(raw, d_model)?);
        prompt.validate(d_model, limits)?;
    }
    let sha256 = meta
        .get(SHA256_KEY)
        .cloned()
        .unwrap_or_else(|| sha256_hex(bytes));
    Ok(Loaded {
        prompt,
        version,
        sha256,
    })
}

/// The stored form of a prompt: safetensors with f32 rows and promptd's metadata (the version
/// left out for a content-addressed object, whose version the manifest holds).
pub fn encode(prompt: &Prompt, version: Option<u64>, sha256: &str) -> io::Result<Vec<u8>> {
    let invalid = |e: safetensors::SafeTensorError| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut meta = HashMap::from([(SHA256_KEY.to_string(), sha256.to_string())]);
    if let Some(version) = version {
        meta.insert(VERSION_KEY.to_string(), version.to_string());
    }
    if let Some(adapter) = &prompt.adapter {
        meta.insert(ADAPTER_CONFIG_KEY.to_string(), adapter.config.clone());
        let bytes: Vec<Vec<u8>> = adapter
            .tensors
            .iter()
            .map(|(_, t)| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for ((name, t), data) in adapter.tensors.iter().zip(&bytes) {
            let shape = t.shape.iter().map(|&d| d as usize).collect();
            views.push((
                name.as_str(),
                TensorView::new(Dtype::F32, shape, data).map_err(invalid)?,
            ));
        }
        return safetensors::tensor::serialize(views, Some(meta)).map_err(invalid);
    }
    let enc = rows_bytes(&prompt.encoder);
    let dec = prompt.decoder.as_ref().map(rows_bytes);
    let mut tensors = vec![(
        super::tensor::PEFT_KEY,
        TensorView::new(
            Dtype::F32,
            vec![prompt.encoder.rows, prompt.encoder.cols],
            &enc,
        )
        .map_err(invalid)?,
    )];
    if let (Some(d), Some(bytes)) = (&prompt.decoder, &dec) {
        tensors.push((
            DECODER_KEY,
            TensorView::new(Dtype::F32, vec![d.rows, d.cols], bytes).map_err(invalid)?,
        ));
    }
    safetensors::tensor::serialize(tensors, Some(meta)).map_err(invalid)
}
