//! promptd: serve one frozen T5 encoder–decoder to many tasks through soft prompts, with
//! requests of different tasks sharing one forward pass.
#![warn(missing_docs)]

pub mod api;
pub mod batcher;
pub mod catalog;
pub mod cli;
pub mod engine;
#[cfg(debug_assertions)]
pub mod fault;
pub mod metrics;
pub mod model;
pub mod prompts;
pub mod server;
pub mod service;
pub mod store;
pub mod tenants;
pub mod tune;
