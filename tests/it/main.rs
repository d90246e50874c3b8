//! The integration tests in one binary, one module per area (each module's header says what it
//! covers): one link of the crate graph instead of one per file. Run one area with
//! `cargo test --test it <module>::` (e.g. `cargo test --test it api::`).
//! Binaries of their own, each saying why in its header: tests/engine_panic.rs and
//! tests/faults.rs (process-wide fault switches), tests/fair_share.rs (measures on idle cores).
mod common;

mod adapter_api;
mod adapters;
mod api;
#[cfg(feature = "dev-tools")]
mod bench_tools;
mod bin_weights;
mod cli_predict;
mod demo;
mod deploy;
mod ensembles;
mod fleet;
mod grpc;
mod hostile;
mod inspect_convert;
mod int8;
mod kserve;
mod model_load;
mod neighbors;
mod openai;
mod openapi;
mod outside;
mod parity;
mod prompt_files;
mod sampling;
mod server;
mod spiece;
mod tenants;
mod tune;
mod tune_cli;
mod tune_server;
