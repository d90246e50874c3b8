//! The front doors: HTTP ([`http`]: routes, JSON ⇄ service, the error → status table, OpenAPI),
//! gRPC ([`grpc`]: promptd's service and KServe's, the error → code table) and the KServe v2
//! tensor rules both doors share ([`kserve`]). No application logic here: a handler turns a
//! wire request into one [`Service`](crate::service::Service) call.
pub mod grpc;
pub mod http;
pub mod kserve;
mod requests;

pub use http::app;
