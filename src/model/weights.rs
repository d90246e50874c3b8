//! Memory-mapped checkpoints: `model.safetensors`, sharded `model.safetensors.index.json`,
//! `pytorch_model.bin`, or sharded `pytorch_model.bin.index.json`. Each tensor is copied once,
//! straight from the page cache into its device tensor; no file is ever read whole into RAM.
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use super::error::ModelError;
use super::torch_bin;

/// How a folder stores its weights, in the order `Weights::open` looks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `model.safetensors`
    Safetensors,
    /// `model.safetensors.index.json` + shards
    ShardedSafetensors,
    /// `pytorch_model.bin`
    Bin,
    /// `pytorch_model.bin.index.json` + shards
    ShardedBin,
}

impl Layout {
    /// The file that marks this layout.
    pub fn file_name(self) -> &'static str {
        match self {
            Layout::Safetensors => "model.safetensors",
            Layout::ShardedSafetensors => "model.safetensors.index.json",
            Layout::Bin => "pytorch_model.bin",
            Layout::ShardedBin => "pytorch_model.bin.index.json",
        }
    }

    /// The layout of `dir`, if it has one promptd reads.
    pub fn of(dir: &Path) -> Option<Self> {
        [
            Layout::Safetensors,
            Layout::ShardedSafetensors,
            Layout::Bin,
            Layout::ShardedBin,
        ]
        .into_iter()
        .find(|l| dir.join(l.file_name()).is_file())
    }

    fn is_bin(self) -> bool {
        matches!(self, Layout::Bin | Layout::ShardedBin)
    }
}

/// One tensor's place in a shard.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Index into `Weights::files`.
    pub file: usize,
    /// Element type in the file.
    pub kind: Kind,
    /// Shape.
    pub shape: Vec<i64>,
    bytes: Range<usize>,
    /// Strides (elements) of a view that is not row-major contiguous (only `.bin` has these).
    stride: Option<Vec<i64>>,
}

impl TensorInfo {
    /// Elements in the tensor.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d.max(0) as u64).product()
    }

    /// Tensors with equal keys are the same bytes viewed the same way: aliases of one stored
    /// tensor (tied embeddings in a `.bin`).
    pub fn alias_key(&self) -> (usize, Range<usize>, Vec<i64>, Option<Vec<i64>>) {
        (
            self.file,
            self.bytes.clone(),
            self.shape.clone(),
            self.stride.clone(),
        )
    }
}

/// Where a model's tensors come from: a checkpoint ([`Weights`]) or random values made on the
/// device ([`crate::model::random::Synthetic`]).
pub trait WeightSource {
    /// Whether the source holds `name`.
    fn contains(&self, name: &str) -> bool;
    /// Whether `a` and `b` are the same stored tensor (tied weights kept under two names).
    fn is_alias(&self, a: &str, b: &str) -> bool;
    /// `name`, checked against `shape`, in the model's dtype on its device.
    fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError>;
}

impl WeightSource for Weights {
    fn contains(&self, name: &str) -> bool {
        Weights::contains(self, name)
    }

    fn is_alias(&self, a: &str, b: &str) -> bool {
        Weights::is_alias(self, a, b)
    }

    fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        Weights::get(self, name, shape)
    }
}

/// Name → (shard, tensor info) over one or more memory-mapped checkpoint files.
pub struct Weights {
    layout: Layout,
    files: Vec<(PathBuf, Mmap)>,
    index: HashMap<String, TensorInfo>,
    device: Device,
    kind: Kind,
    /// Check names, shapes and dtypes only; `get` returns zero-stride stand-ins.
    dry_run: bool,
}

impl Weights {
    /// Opens the checkpoint in `dir`; tensors are converted to `kind` on `device` when read.
    pub fn open(dir: &Path, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let layout = Layout::of(dir).ok_or_else(|| {
            ModelError::Config(format!(
                "{}: no weights found (looked for model.safetensors, model.safetensors.index.json, \
                 pytorch_model.bin, pytorch_model.bin.index.json)",
                dir.display()
            ))
        })?;
        let marker = dir.join(layout.file_name());
        let paths = match layout {
            Layout::Safetensors | Layout::Bin => vec![marker],
            Layout::ShardedSafetensors | Layout::ShardedBin => shard_files(dir, &marker)?,
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            let mmap = map(&path)?;
            let bad = |msg: String| ModelError::Weights(format!("{}: {msg}", path.display()));
            let tensors = if layout.is_bin() {
                bin_tensors(&mmap, i).map_err(bad)?
            } else {
                safetensors_tensors(&mmap, i).map_err(bad)?
            };
            for (name, info) in tensors {
                if index.insert(name.clone(), info).is_some() {
                    return Err(bad(format!("tensor {name} is also in another shard")));
                }
            }
            files.push((path, mmap));
        }
        Ok(Self {
            layout,
            files,
            index,
            device,
            kind,
            dry_run: false,
        })
    }

    /// Opens the checkpoint to check it: `get` validates as usual but reads nothing and returns
    /// a zero-stride stand-in, so a model of any size can be checked in constant memory.
    pub fn open_dry_run(dir: &Path) -> Result<Self, ModelError> {
        let mut w = Self::open(dir, Device::Cpu, Kind::Float)?;
        w.dry_run = true;
        Ok(w)
    }

    /// The layout the weights were found in.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The checkpoint files, in shard order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// Every tensor, by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorInfo)> {
        self.index.iter().map(|(n, i)| (n.as_str(), i))
    }

    /// Whether `a` and `b` are both present and views of the same stored bytes (tied weights
    /// that a `.bin` keeps under several names).
    pub fn is_alias(&self, a: &str, b: &str) -> bool {
        match (self.index.get(a), self.index.get(b)) {
            (Some(x), Some(y)) => x.alias_key() == y.alias_key(),
            _ => false,
        }
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Reads `name`, checks its shape, converts it to the model dtype and device.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let info = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if info.shape != shape {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        if self.dry_run {
            check_kind(name, info.kind)?;
            let one = Tensor::f_zeros([] as [i64; 0], (self.kind, Device::Cpu))?;
            return Ok(one.f_expand(shape, true)?);
        }
        let cpu = self.read(name, info)?;
        let converted = if self.device == Device::Cpu {
            cpu.f_to_kind(self.kind)?
        } else {
            // Convert on the device: the host keeps at most one tensor of the checkpoint.
            cpu.f_to_device(self.device)?.f_to_kind(self.kind)?
        };
        Ok(converted)
    }

    /// `name` as stored, in host memory (one copy out of the page cache).
    pub fn read_raw(&self, name: &str) -> Result<Tensor, ModelError> {
        let info = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        self.read(name, info)
    }

    fn read(&self, name: &str, info: &TensorInfo) -> Result<Tensor, ModelError> {
        check_kind(name, info.kind)?;
        let mmap = &self.files[info.file].1;
        let bytes = &mmap[info.bytes.clone()];
        let tensor = match &info.stride {
            None => Tensor::f_from_data_size(bytes, &info.shape, info.kind)?,
            Some(stride) => {
                let es = info.kind.elt_size_in_bytes();
                let flat =
                    Tensor::f_from_data_size(bytes, &[(bytes.len() / es) as i64], info.kind)?;
                flat.f_as_strided(info.shape.as_slice(), stride.as_slice(), 0)?
                    .f_contiguous()?
            }
        };
        // The copy is made: drop these pages from our resident set (they stay in the page cache),
        // so resident memory peaks at the loaded model plus one tensor, not plus the file.
        // SAFETY: a read-only shared file mapping; DONTNEED only unmaps the pages, and a later
        // access faults them in again from the file.
        let _ = unsafe {
            mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, info.bytes.start, bytes.len())
        };
        Ok(tensor)
    }
}

/// Weights must be floating point (an integer tensor in a T5 checkpoint is not a weight we use).
fn check_kind(name: &str, kind: Kind) -> Result<(), ModelError> {
    if matches!(
        kind,
        Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
    ) {
        Ok(())
    } else {
        Err(ModelError::Weights(format!(
            "{name}: unsupported dtype {kind:?}"
        )))
    }
}

fn safetensors_tensors(mmap: &[u8], file: usize) -> Result<Vec<(String, TensorInfo)>, String> {
    let (header_len, metadata) = SafeTensors::read_metadata(mmap).map_err(|e| e.to_string())?;
    let data_start = 8 + header_len;
    let mut out = Vec::new();
    for (name, info) in metadata.tensors() {
        let kind = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::I16 => Kind::Int16,
            Dtype::I8 => Kind::Int8,
            Dtype::U8 => Kind::Uint8,
            Dtype::BOOL => Kind::Bool,
            other => return Err(format!("{name}: unsupported dtype {other:?}")),
        };
        let (start, end) = info.data_offsets;
        out.push((
            name,
            TensorInfo {
                file,
                kind,
                shape: info.shape.iter().map(|&d| d as i64).collect(),
                bytes: data_start + start..data_start + end,
                stride: None,
            },
        ));
    }
    Ok(out)
}

fn bin_tensors(mmap: &[u8], file: usize) -> Result<Vec<(String, TensorInfo)>, String> {
    Ok(torch_bin::read_archive(mmap)?
        .into_iter()
        .map(|(name, t)| {
            let info = TensorInfo {
                file,
                kind: t.kind,
                shape: t.shape,
                bytes: t.bytes,
                stride: t.stride,
            };
            (name, info)
        })
        .collect())
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

fn map(path: &Path) -> Result<Mmap, ModelError> {
    let io = |e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: the checkpoint is treated as read-only for the life of the process; a file
    // truncated under us would fault, as with every mmap-based loader.
    unsafe { Mmap::map(&file) }.map_err(io)
}
