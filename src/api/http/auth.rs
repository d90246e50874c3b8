//! Authentication on every route but the probes: `Authorization: Bearer <key>` resolves to a
//! [`Caller`](crate::tenants::Caller), which the service authorizes per task. Open servers let
//! everyone in.
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::service::Service;

/// Paths answered without a key: liveness and readiness probes, and the API description.
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/v2/health/live" | "/v2/health/ready" | "/openapi.json"
    )
}

/// The middleware: puts the [`Caller`] into the request's extensions, or answers 401. Metrics
/// name every tenant's tasks, so `/metrics` is for admins.
///
/// [`Caller`]: crate::tenants::Caller
pub async fn authenticate(State(svc): State<Service>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if is_public(path) {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match svc.authenticate(header) {
        Ok(caller) => caller,
        Err(e) if super::openai::is_openai(path) => {
            return super::openai::OpenAiError::from(e).into_response()
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    if (path == "/metrics" || path == "/v1/fleet") && !caller.is_admin() {
        return ApiError::from(svc.forbidden(&caller, &format!("{path} is for admin keys")))
            .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}
