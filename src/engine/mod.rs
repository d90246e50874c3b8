//! The engine: the only code that runs the model. It owns the model and the prompt bank,
//! turns a batch of rows (each with its own prompt) into one encoder pass, then greedy
//! decoding and label scoring. There is one decoder, [`continuous::Running`]: a batch run to
//! its end ([`Engine::run_rows`], static batching) is a running batch that admits rows only
//! once.
pub mod adapters;
pub mod bank;
pub mod continuous;
pub mod device;
mod encoded;
mod error;
pub mod neighbors;
mod passes;
mod rows;
pub mod sampling;
pub mod score;
pub mod side;
mod task;
pub mod worker;

pub use adapters::{AdapterBank, AdapterSlot, AdapterStats};
pub use bank::{PromptBank, PromptRows, PromptSlot};
/// The batcher's contract with the engine thread (continuous batching).
pub use continuous::{Admitted, DecodeWork, Joining, RowResult};
pub use device::{DeviceSpec, DtypeSpec};
pub(crate) use error::guarded;
pub use error::EngineError;
pub use passes::Engine;
pub use rows::{
    count_label_pairs, count_tasks, split_by_token_budget, within_token_budget, BatchStats,
    RowInput, RowOutput,
};
pub use sampling::{Sampling, StreamToken, TokenLogprob, TokenSender};
pub use task::TaskWeights;
