//! Request metrics, the same from every door: a predict-like call is counted under its task's
//! (or ensemble's) label by the HTTP status its outcome has, so HTTP and gRPC share one set of
//! label values.
use std::future::Future;
use std::time::Instant;

use axum::http::StatusCode;

use crate::service::{Error, Service};

/// Runs `call` and counts it under `name`'s label; `outcome` gives a failure's HTTP status and
/// the service's error inside it, if any.
pub(crate) async fn counted<T, E>(
    svc: &Service,
    name: &str,
    ensemble: bool,
    outcome: impl Fn(&E) -> (StatusCode, Option<&Error>),
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let label = svc.request_label(name, ensemble);
    let started = Instant::now();
    let result = call.await;
    let (status, error) = match &result {
        Ok(_) => (StatusCode::OK, None),
        Err(e) => outcome(e),
    };
    svc.record_request(&label, started, status.as_str(), error);
    result
}
