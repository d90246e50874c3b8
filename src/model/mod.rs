//! Frozen T5 from a Hugging Face directory (config.json; safetensors or pytorch_model.bin;
//! tokenizer.json or spiece.model).
pub mod adapters;
pub mod config;
mod error;
pub mod host;
pub mod int8;
pub mod kernels;
pub mod layers;
pub mod matmul;
pub mod packed;
pub mod pickle;
pub mod profile;
pub mod random;
pub mod spiece;
pub mod stack;
pub mod t5;
pub mod tokenizer;
pub mod torch_bin;
pub mod weights;

pub use config::T5Config;
pub use error::ModelError;
pub use matmul::{set_cpu_matmul, CpuMatmul};
pub use t5::{DecoderState, ModelOptions, T5Model};
pub use tokenizer::{T5Tokenizer, TokenizerSource};
