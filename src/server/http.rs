//! The HTTP accept loop, with the limits a server facing the open network needs: a cap on open
//! connections, and a deadline for each request's headers that also ends idle keep-alive
//! connections (slowloris and idle floods both end there). The gRPC door runs on the same loop
//! ([`super::grpc`]), so both have the same limits.
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;

/// Limits on HTTP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time a connection has to deliver a request's complete headers, counted from when it
    /// opened or answered its previous request: the slow-header and the keep-alive idle limit.
    pub header_read_timeout: Duration,
    /// Open connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(15),
            max_connections: 4096,
        }
    }
}

/// The metrics of one door's connections.
#[derive(Clone)]
pub struct ConnectionGauges {
    /// Connections open now.
    pub open: prometheus::IntGauge,
    /// Connections closed on accept because the limit was reached.
    pub refused: prometheus::IntCounter,
}

/// Serves `router` on `listener` until `stop` resolves, then lets open connections finish
/// their requests (the caller bounds how long) and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnectionLimits,
    gauges: ConnectionGauges,
    stop: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Pings find dead peers of idle HTTP/2 connections.
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    tokio::pin!(stop);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            gauges.refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let open = gauges.open.clone();
        open.inc();
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let first_bytes = limits.header_read_timeout;
        tokio::spawn(async move {
            // hyper's header timer starts once the protocol is known, i.e. after the first
            // bytes: a connection that never sends any is closed here instead.
            let mut probe = [0u8; 1];
            if let Ok(Ok(n)) = tokio::time::timeout(first_bytes, stream.peek(&mut probe)).await {
                if n > 0 {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!("connection ended: {e}");
                    }
                }
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
