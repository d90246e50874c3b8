//! The gRPC listener: promptd's own service, KServe's v2 inference service
//! (`inference.GRPCInferenceService`), standard health checking (`grpc.health.v1`, following
//! the readiness watch) and server reflection (v1 and v1alpha). It runs on the same accept
//! loop as HTTP ([`super::http::serve`]), so it has the same connection limits: at most
//! `max_connections` open, a deadline for a new connection's first bytes, HTTP/2 keep-alive
//! pings that end dead peers; the services cap message sizes themselves.
use crate::api::grpc::{self, FILE_DESCRIPTOR_SET};
use crate::service::lifecycle::Status;
use crate::service::Service;

use super::http::{ConnectionGauges, ConnectionLimits};

/// Serves the gRPC services on `listener` until `stop` resolves, then drains.
pub async fn serve(
    listener: tokio::net::TcpListener,
    svc: Service,
    limits: ConnectionLimits,
    stop: impl std::future::Future<Output = ()>,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    // grpcurl and most tools ask v1; Python's grpcio-reflection still asks v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let disabled = |e: &tonic_reflection::server::Error| {
        tracing::warn!("gRPC reflection disabled: {e}");
    };
    let mut routes = tonic::service::Routes::new(health)
        .add_service(grpc::kserve::service(svc.clone()))
        .add_service(grpc::promptd::service(svc.clone()));
    if let Ok(v1) = reflection().build_v1().inspect_err(disabled) {
        routes = routes.add_service(v1);
    }
    if let Ok(v1alpha) = reflection().build_v1alpha().inspect_err(disabled) {
        routes = routes.add_service(v1alpha);
    }
    let gauges = ConnectionGauges {
        open: svc.metrics.grpc_connections.clone(),
        refused: svc.metrics.grpc_connections_refused.clone(),
    };
    let tracker = tokio::spawn(track_health(reporter, svc));
    super::http::serve(listener, routes.into_axum_router(), limits, gauges, stop).await;
    tracker.abort();
}

/// Keeps the gRPC health status of the server ("") and of the services in step with the
/// readiness watch.
async fn track_health(reporter: tonic_health::server::HealthReporter, svc: Service) {
    use tonic_health::ServingStatus;
    let mut status = svc.lifecycle.subscribe();
    loop {
        let ready = *status.borrow_and_update() == Status::Ready;
        let serving = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in ["", grpc::promptd::SERVICE_NAME, grpc::kserve::SERVICE_NAME] {
            reporter.set_service_status(name, serving).await;
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}
