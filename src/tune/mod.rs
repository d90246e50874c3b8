//! Prompt tuning (Lester et al. 2021): learn only the prompt matrix P by backpropagation
//! through the frozen T5. The model's tensors never require grad; P and the optimizer state
//! are f32 whatever the model's dtype. A [`Tuner`] runs one step at a time so the CLI can drive
//! it in a loop and the server's engine thread can interleave its steps with serving passes.
pub mod adapter;
pub mod curve;
pub mod data;
mod error;
pub mod ia3;
pub mod init;
pub mod jobs;
pub mod lora;
pub mod metric;
pub mod optim;
pub mod output;
mod peft;
mod rng;
pub mod scheduler;
pub mod tuner;

pub use adapter::{AdapterLayout, AdapterSpec};
pub use curve::Curve;
pub use data::{load_jsonl, Example};
pub use error::TuneError;
pub use ia3::{Ia3Layout, Ia3Spec};
pub use init::InitSpec;
pub use lora::{LoraLayout, LoraSpec};
pub use metric::{evaluate, EvalOutcome, EvalSet, Metric};
pub use optim::{OptimizerKind, OptimizerSettings};
pub use rng::Rng;
pub use tuner::{StepReport, TuneSettings, Tuner};
