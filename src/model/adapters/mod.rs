//! Per-row adapters in one pass: LoRA factors, IA3 scales and decoder prefixes of every
//! resident adapter, kept in one device table per site (the linear layer they act on), each
//! adapter at one index of all of them; a pass gathers each row's entries by its index, so
//! rows of different adapters, ranks and kinds share every matmul of the frozen model.
//!
//! Index 0 is "no adapter": zero LoRA factors and unit IA3 scales, so a row without one (or
//! whose adapter does not touch a site) is computed exactly as the frozen model would.
//! - `sites`: the model's linear layers an adapter may change, and their sizes;
//! - `weights`: what one adapter changes, as read from its files;
//! - `tables`: the device tables of every resident adapter;
//! - `adapt`: one pass's rows over the tables.
mod adapt;
mod sites;
mod tables;
mod weights;

pub use adapt::{adapt_input, adapt_output, set_lora_kernel, Adapt, LoraKernel};
pub use sites::{ModelShape, Module, Part, Site, ALL_MODULES};
pub use tables::AdapterTables;
pub use weights::{AdapterWeights, Ia3Scale, LoraFactors, PrefixRows, PrefixWeights};
