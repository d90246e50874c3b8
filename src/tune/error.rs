//! What can fail in a tuning run.
use std::path::PathBuf;

use crate::engine::EngineError;
use crate::model::ModelError;
use crate::prompts::PromptError;

/// Errors of a tuning run.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// A data file line is not a `{"input", "target"}` row.
    #[error("{path}:{line}: {why}")]
    BadRow {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The data is unusable as a whole (empty, too large, ...).
    #[error("{0}")]
    Data(String),
    /// A setting is out of range or inconsistent with another.
    #[error("{0}")]
    Settings(String),
    /// The initial prompt could not be built.
    #[error("init: {0}")]
    Init(String),
    /// The initial prompt file is unusable.
    #[error("init file: {0}")]
    Prompt(#[from] PromptError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An evaluation pass failed.
    #[error("evaluation: {0}")]
    Engine(#[from] EngineError),
    /// The curve picture could not be drawn.
    #[error("drawing the tuning curve: {0}")]
    Plot(#[from] plotters::drawing::DrawingAreaErrorKind<std::io::Error>),
    /// The loss is NaN or infinite (learning rate too high?).
    #[error("the loss became {loss} at step {step}; try a lower --lr or --clip-grad-norm")]
    Diverged {
        /// The step.
        step: usize,
        /// The loss value.
        loss: f64,
    },
}

impl From<tch::TchError> for TuneError {
    fn from(e: tch::TchError) -> Self {
        TuneError::Model(ModelError::Torch(e))
    }
}
