//! The application, transport-free: every capability is one method on [`Service`] (predict,
//! ensembles, prompt writes, neighbours, tuning jobs and their curves, model readiness), and every front door
//! (HTTP, gRPC, KServe v2, the CLI) calls the same methods, as text-generation-inference's
//! `Infer` is called by each of its routers. Errors are one [`Error`] enum; each front door
//! keeps its own table from it to status codes. Nothing here knows axum, tonic or HTTP.
pub mod combine;
pub mod ensembles;
pub mod error;
pub mod fleet;
pub mod generation;
pub mod lifecycle;
pub mod models;
pub mod neighbors;
pub mod predict;
pub mod prompts;
pub mod rows;
pub mod state;
pub mod stream;
pub mod tune_curve;
pub mod tuning;

pub use error::Error;
pub use lifecycle::Lifecycle;
pub use state::{Limits, Service};
