//! What can fail loading or running the model.
use std::path::PathBuf;

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
