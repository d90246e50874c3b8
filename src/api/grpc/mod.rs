//! The gRPC front door: promptd's own service ([`promptd`]) and KServe's
//! `inference.GRPCInferenceService` ([`kserve`]), started by `server/grpc.rs`. What they share is
//! here: the caller from the `authorization` metadata, message size checks, request metrics, and
//! the only table from the service's [`Error`] to a gRPC code; the `error-type` trailer carries
//! the same `error_type` as HTTP bodies.
pub mod kserve;
pub mod promptd;

use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use crate::service::{Error, Service};
use crate::tenants::Caller;

/// The encoded descriptors of `proto/promptd.proto`, served by gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("promptd_descriptor");

/// Code generated from `proto/promptd.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("promptd.v1");
}

/// Room for protobuf framing around the largest payload a request may carry.
pub const FRAMING_BYTES: usize = 64 << 10;

/// The gRPC status of each error: the only such table.
pub fn status(e: Error) -> Status {
    let code = match &e {
        Error::UnknownTask(_)
        | Error::UnknownJob(_)
        | Error::UnknownEnsemble(_)
        | Error::UnknownVersion(_) => Code::NotFound,
        Error::Malformed(_) | Error::Invalid(_) | Error::TooLarge(_) => Code::InvalidArgument,
        Error::Unauthorized(_) => Code::Unauthenticated,
        Error::Forbidden(_) | Error::QuotaExceeded(_) => Code::PermissionDenied,
        Error::RateLimited { .. } | Error::QueueFull { .. } | Error::TaskQueueFull { .. } => {
            Code::ResourceExhausted
        }
        Error::Timeout(_) => Code::DeadlineExceeded,
        Error::Conflict(_) => Code::FailedPrecondition,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Storage(_) | Error::Internal(_) => Code::Internal,
    };
    let mut status = Status::new(code, e.to_string());
    status
        .metadata_mut()
        .insert("error-type", MetadataValue::from_static(e.error_type()));
    status
}

/// A failure as request metrics count it: the HTTP status the same outcome has on the HTTP
/// door (one set of label values for both), and the error.
pub(crate) fn outcome(e: &Error) -> (axum::http::StatusCode, Option<&Error>) {
    (crate::api::http::error::http_status(e), Some(e))
}

/// The caller, from the `authorization` metadata (`Bearer <key>`), as over HTTP.
pub fn caller<T>(svc: &Service, request: &Request<T>) -> Result<Caller, Status> {
    let header = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    svc.authenticate(header).map_err(status)
}

/// A request's encoded size, refused past `max` bytes (`flag` names the limit).
pub(crate) fn check_size(encoded_len: usize, max: usize, flag: &str) -> Result<(), Error> {
    if encoded_len > max {
        return Err(Error::TooLarge(format!(
            "request is {encoded_len} bytes; the limit is {max} ({flag})"
        )));
    }
    Ok(())
}
