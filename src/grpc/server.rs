//! What every l2d node serves besides its own services: gRPC health (`grpc.health.v1`),
//! reflection (v1 and v1alpha), and a graceful stop. Servers start from an already-bound
//! listener and a shutdown future, so tests bind `127.0.0.1:0` and stop them cleanly.

use std::future::Future;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Health, reflection v1 and reflection v1alpha, ready to be joined by a node's own services.
pub fn standard_routes() -> anyhow::Result<(HealthReporter, Routes)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(super::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1()?;
    let v1alpha = reflection().build_v1alpha()?;
    let routes = Routes::new(health).add_service(v1).add_service(v1alpha);
    Ok((reporter, routes))
}

/// How a node serves, beyond its services.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// After the stop signal: report NOT_SERVING, keep serving this long, then drain.
    pub drain_delay: std::time::Duration,
    /// TLS (and, with a client CA, mutual TLS) on the listener; plain HTTP/2 without.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

/// Marks `services` (and the whole server, the empty name) as serving, runs the server until
/// `shutdown` completes, then marks them not serving, keeps accepting calls for `drain_delay`
/// (so load balancers and Kubernetes endpoints see the change before the listener closes), and
/// drains the calls in flight.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    reporter: HealthReporter,
    services: &[&str],
    shutdown: impl Future<Output = ()> + Send,
    options: &ServeOptions,
) -> anyhow::Result<()> {
    let drain_delay = options.drain_delay;
    for name in std::iter::once(&"").chain(services) {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let names: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    let drain = async move {
        shutdown.await;
        for name in std::iter::once("").chain(names.iter().map(String::as_str)) {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        if !drain_delay.is_zero() {
            tracing::info!(
                delay_ms = drain_delay.as_millis() as u64,
                "not serving; draining after the delay"
            );
            tokio::time::sleep(drain_delay).await;
        }
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = Server::builder();
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls.clone())?;
    }
    builder
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, drain)
        .await?;
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM: what a process waits for before draining.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT, shutting down"),
        () = terminate => tracing::info!("received SIGTERM, shutting down"),
    }
}
