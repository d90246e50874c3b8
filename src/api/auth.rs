//! Authentication on every route but the probes: `Authorization: Bearer <key>` resolves to a
//! [`Caller`], which the handlers authorize per task. Open servers let everyone in.
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::metrics::Rejection;
use crate::tenants::{Caller, TenantSet};

/// Paths answered without a key: liveness and readiness probes, and the API description.
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/v2/health/live" | "/v2/health/ready" | "/openapi.json"
    )
}

/// The middleware: puts the [`Caller`] into the request's extensions, or answers 401. Metrics
/// name every tenant's tasks, so `/metrics` is for admins.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if is_public(path) {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match state.tenants.authenticate(header) {
        Ok(caller) => caller,
        Err(e) => {
            state
                .metrics
                .tenant_rejection(None, Rejection::Unauthenticated);
            return ApiError::from(e).into_response();
        }
    };
    if path == "/metrics" && !caller.is_admin() {
        return forbidden(&state, &caller, "/metrics is for admin keys").into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// 403, counted by tenant.
pub fn forbidden(state: &AppState, caller: &Caller, why: &str) -> ApiError {
    reject(state, caller, Rejection::Forbidden);
    ApiError::Forbidden(format!("tenant {:?}: {why}", caller.name()))
}

/// Counts a refusal of `caller` in `promptd_tenant_rejections_total`.
pub fn reject(state: &AppState, caller: &Caller, reason: Rejection) {
    state.metrics.tenant_rejection(Some(caller.name()), reason);
}

/// 403 unless `caller` may predict with / see `task`.
pub fn check_read(
    state: &AppState,
    caller: &Caller,
    set: &TenantSet,
    task: &str,
) -> Result<(), ApiError> {
    if caller.may_read(set, task) {
        Ok(())
    } else {
        Err(forbidden(
            state,
            caller,
            &format!("task {task:?} belongs to another tenant"),
        ))
    }
}
