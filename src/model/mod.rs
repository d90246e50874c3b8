//! Frozen T5 from a Hugging Face directory (config.json; safetensors or pytorch_model.bin;
//! tokenizer.json or spiece.model).
pub mod config;
pub mod host;
pub mod layers;
pub mod matmul;
pub mod pickle;
pub mod profile;
pub mod random;
pub mod spiece;
pub mod stack;
pub mod t5;
pub mod tokenizer;
pub mod torch_bin;
pub mod weights;

use std::path::PathBuf;

pub use config::T5Config;
pub use matmul::{set_cpu_matmul, CpuMatmul};
pub use t5::{DecoderState, ModelOptions, T5Model};
pub use tokenizer::{T5Tokenizer, TokenizerSource};

/// Errors while loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// config.json is missing, malformed or inconsistent.
    #[error("model config: {0}")]
    Config(String),
    /// A weight the architecture needs is absent.
    #[error("checkpoint is missing tensor {0}")]
    MissingTensor(String),
    /// A weight has the wrong shape for the config.
    #[error("tensor {name} has shape {found:?}, config.json implies {expected:?}")]
    TensorShape {
        /// The tensor's state-dict name.
        name: String,
        /// Shape implied by config.json.
        expected: Vec<i64>,
        /// Shape in the file.
        found: Vec<i64>,
    },
    /// The checkpoint files are malformed.
    #[error("checkpoint: {0}")]
    Weights(String),
    /// The tokenizer (tokenizer.json or spiece.model) failed to load or run.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// libtorch refused an operation.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}
