//! Prompt tuning (Lester et al. 2021): learn only the prompt matrix P by backpropagation
//! through the frozen T5. The model's tensors never require grad; P and the optimizer state
//! are f32 whatever the model's dtype. A [`Tuner`] runs one step at a time so the CLI can drive
//! it in a loop and the server's engine thread can interleave its steps with serving passes.
pub mod data;
pub mod init;
pub mod jobs;
pub mod metric;
pub mod optim;
pub mod output;
pub mod scheduler;
pub mod tuner;

use std::path::PathBuf;

pub use data::{load_jsonl, Example};
pub use init::InitSpec;
pub use metric::{evaluate, EvalOutcome, EvalSet, Metric};
pub use optim::{OptimizerKind, OptimizerSettings};
pub use tuner::{StepReport, TuneSettings, Tuner};

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

/// A small seeded generator (SplitMix64) for data order and initial prompts: the same seed
/// gives the same run on every device, independent of libtorch's own generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n.max(1)
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}
