//! Memory-mapped safetensors checkpoints: `model.safetensors` or a sharded
//! `model.safetensors.index.json`. Each tensor is copied once, straight from the page cache
//! into its device tensor; the file is never read whole into RAM.
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use super::ModelError;

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

/// Name → (shard, tensor info) over one or more memory-mapped safetensors files.
pub struct Weights {
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
    device: Device,
    kind: Kind,
}

impl Weights {
    /// Opens the checkpoint in `dir`; tensors are converted to `kind` on `device` when read.
    pub fn open(dir: &Path, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.is_file() {
            shard_files(dir, &index_path)?
        } else {
            return Err(ModelError::Config(format!(
                "{}: neither model.safetensors nor model.safetensors.index.json found \
                 (PyTorch .bin checkpoints are not supported: convert them to safetensors)",
                dir.display()
            )));
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let shard = open_shard(path)?;
            for name in shard.metadata.tensors().keys() {
                index.insert(name.clone(), i);
            }
            shards.push(shard);
        }
        Ok(Self {
            shards,
            index,
            device,
            kind,
        })
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Reads `name`, checks its shape, converts it to the model dtype and device.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let shard = self
            .index
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if found != shape {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found,
            });
        }
        let kind = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            other => {
                return Err(ModelError::Weights(format!(
                    "{name}: unsupported dtype {other:?} in {}",
                    shard.path.display()
                )))
            }
        };
        let (start, end) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + start..shard.data_start + end];
        let cpu = Tensor::f_from_data_size(bytes, &found, kind)?;
        let converted = if self.device == Device::Cpu {
            cpu.f_to_kind(self.kind)?
        } else {
            // Convert on the device: the host keeps at most one tensor of the checkpoint.
            cpu.f_to_device(self.device)?.f_to_kind(self.kind)?
        };
        Ok(converted)
    }
}

fn shard_files(dir: &Path, index_path: &Path) -> Result<Vec<PathBuf>, ModelError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index_path).map_err(|e| ModelError::Io {
        path: index_path.to_path_buf(),
        source: e,
    })?;
    let index: Index = serde_json::from_str(&text)
        .map_err(|e| ModelError::Weights(format!("{}: {e}", index_path.display())))?;
    let mut names: Vec<&String> = index.weight_map.values().collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            // A shard name is a bare file name; anything else could escape the model folder.
            if name.contains('/') || name.contains('\\') || name == ".." {
                return Err(ModelError::Weights(format!(
                    "{}: bad shard name {name:?}",
                    index_path.display()
                )));
            }
            Ok(dir.join(name))
        })
        .collect()
}

fn open_shard(path: PathBuf) -> Result<Shard, ModelError> {
    let file = File::open(&path).map_err(|e| ModelError::Io {
        path: path.clone(),
        source: e,
    })?;
    // SAFETY: the checkpoint is treated as read-only for the life of the process; a file
    // truncated under us would fault, as with every mmap-based loader.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::Io {
        path: path.clone(),
        source: e,
    })?;
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
    Ok(Shard {
        path,
        mmap,
        data_start: 8 + header_len,
        metadata,
    })
}
