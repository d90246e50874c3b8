//! Soft prompts: file formats, validation, PEFT adapters, prompt folders.
//!
//! The rule for which rows feed the encoder:
//! - a bare tensor file (`.safetensors` with one tensor or `prompt_embeddings`, or `.npy`)
//!   is all encoder rows;
//! - a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`) holds
//!   `num_virtual_tokens * num_transformer_submodules` rows: the first `num_virtual_tokens`
//!   are the encoder prompt (what PEFT's own `generate()` uses), the rest are decoder rows,
//!   kept but not served.
pub mod adapter;
pub mod audit;
pub mod dir;
pub mod ensembles;
mod error;
pub mod multitask;
mod name;
pub mod npy;
pub mod peft;
mod prompt;
pub mod store;
pub mod tensor;

/// The rows the engine serves (defined there: prompts depend on the engine, never the reverse).
pub use crate::engine::PromptRows;
pub use dir::{load_prompt_dir, PromptDir};
pub use error::PromptError;
pub use name::TaskName;
pub use prompt::{parse_tensor_file, Prompt, PromptLimits};
pub use tensor::RawTensor;
