//! What can fail running a batch, and the guard that turns a panic into such a failure.
use crate::model::ModelError;

/// Errors while running a batch.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A row is malformed (caught before any tensor work).
    #[error("invalid row {row}: {why}")]
    InvalidRow {
        /// Index of the row in the batch.
        row: usize,
        /// What is wrong.
        why: String,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Running the batch panicked; the engine itself is still usable.
    #[error("batch failed: {0}")]
    Panic(String),
    /// A decode step of a running batch failed, so every row in it failed (the reason).
    #[error("decoding failed: {0}")]
    Decode(String),
    /// The engine thread is gone: the row was never answered.
    #[error("the engine is not running")]
    Stopped,
}

impl From<tch::TchError> for EngineError {
    fn from(e: tch::TchError) -> Self {
        EngineError::Model(ModelError::Torch(e))
    }
}

/// Runs `f`, turning a panic inside it into [`EngineError::Panic`].
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(EngineError::Panic(why))
    })
}
