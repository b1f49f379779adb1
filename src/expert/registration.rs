//! Keeping a lease with a scheduler: register, heartbeat with the live load, register again when
//! the scheduler forgot the lease (it restarted, or the lease expired), deregister on shutdown.

use crate::core::error_kind::ErrorKind;
use crate::grpc::pb::{self, pool_client::PoolClient};
use crate::grpc::status::kind_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer TOKEN` to every call, when there is a token.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// `None` when there is no token; an error for a token that cannot be sent as metadata.
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let value = token
            .map(|t| format!("Bearer {}", t.trim()).parse())
            .transpose()
            .map_err(|_| anyhow::anyhow!("the token must be visible ASCII"))?;
        Ok(Self(value))
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Pool = PoolClient<InterceptedService<Channel, BearerToken>>;

/// Where and how to join a pool.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The scheduler's address, `host:port` or a full `http://` URI.
    pub scheduler: String,
    /// The `host:port` the scheduler should dial to reach this worker.
    pub advertise: String,
    /// Requested lease TTL; `None` takes the scheduler's default.
    pub lease_ttl: Option<Duration>,
    /// TLS to the scheduler (mutual TLS with a client identity).
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Bearer token for the scheduler's `Pool` mutations, if it asks for one.
    pub token: Option<String>,
}

/// What the worker tells the scheduler about itself.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub expert_id: String,
    pub cost: f64,
    pub backend: String,
    /// The node's concurrency limit (0: none), so the scheduler sends no more than it takes.
    pub max_in_flight: u32,
    /// What it takes. Registration carries the limits and languages; the scheduler reads the
    /// holdings (too large for a registration) with `Expert.Describe`.
    pub capabilities: crate::core::capability::Capabilities,
}

/// Live load of one worker, reported to the scheduler with every heartbeat.
#[derive(Debug, Default)]
pub struct LoadCounters {
    pub(super) in_flight: AtomicU32,
    pub(super) queued: AtomicU32,
    pub(super) answered_total: AtomicU64,
}

impl LoadCounters {
    pub fn report(&self) -> pb::LoadReport {
        pb::LoadReport {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            queue_depth: self.queued.load(Ordering::Relaxed),
            answered_total: self.answered_total.load(Ordering::Relaxed),
        }
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `stop` fires (or its sender is dropped), then deregisters.
pub async fn keep_lease(
    registration: Registration,
    announcement: Announcement,
    load: Arc<LoadCounters>,
    mut stop: oneshot::Receiver<()>,
) {
    let channel = match crate::grpc::tls::endpoint(
        &registration.scheduler,
        registration.tls.as_ref(),
    ) {
        Ok(endpoint) => endpoint
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
        Err(e) => {
            tracing::error!(scheduler = %registration.scheduler, error = %e, "bad scheduler address; not registering");
            return;
        }
    };
    let token = match BearerToken::new(registration.token.as_deref()) {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(error = %e, "bad pool token; not registering");
            return;
        }
    };
    let mut client = PoolClient::with_interceptor(channel, token)
        .max_decoding_message_size(crate::grpc::MAX_MESSAGE_BYTES);
    let request = pb::RegisterRequest {
        expert_id: announcement.expert_id.clone(),
        address: registration.advertise.clone(),
        cost: announcement.cost,
        backend: announcement.backend.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        lease_ttl_ms: registration.lease_ttl.map_or(0, |d| d.as_millis() as u64),
        max_in_flight: announcement.max_in_flight,
        capabilities: Some(crate::grpc::convert::capabilities_to_pb(
            &announcement.capabilities,
            false,
        )),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        // Register, retrying with capped exponential backoff until the scheduler answers.
        let lease = tokio::select! {
            _ = &mut stop => return,
            lease = register(&mut client, &request) => lease,
        };
        let lease = match lease {
            Ok(lease) => {
                backoff = Duration::from_millis(100);
                tracing::info!(
                    scheduler = %registration.scheduler,
                    lease = %lease.lease_id,
                    ttl_ms = lease.lease_ttl_ms,
                    "registered with scheduler"
                );
                lease
            }
            Err(status) => {
                tracing::warn!(scheduler = %registration.scheduler, code = ?status.code(), message = status.message(), "registration failed; retrying");
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let interval = Duration::from_millis(lease.heartbeat_interval_ms.max(10));
        loop {
            tokio::select! {
                _ = &mut stop => {
                    deregister(&mut client, &lease.lease_id).await;
                    return;
                }
                () = tokio::time::sleep(interval) => {}
            }
            let beat = pb::HeartbeatRequest {
                lease_id: lease.lease_id.clone(),
                load: Some(load.report()),
            };
            match client.heartbeat(beat).await {
                Ok(_) => {}
                Err(status) if kind_of(status.code()) == Some(ErrorKind::NotFound) => {
                    tracing::info!(lease = %lease.lease_id, "scheduler no longer knows the lease; registering again");
                    break;
                }
                Err(status) => {
                    // Keep beating: if the scheduler comes back before the lease expires, nothing
                    // was lost; if not, it answers NOT_FOUND and we register again.
                    tracing::warn!(code = ?status.code(), message = status.message(), "heartbeat failed");
                }
            }
        }
    }
}

async fn register(
    client: &mut Pool,
    request: &pb::RegisterRequest,
) -> Result<pb::RegisterResponse, tonic::Status> {
    client
        .register(request.clone())
        .await
        .map(tonic::Response::into_inner)
}

async fn deregister(client: &mut Pool, lease_id: &str) {
    let request = pb::DeregisterRequest {
        lease_id: lease_id.to_owned(),
    };
    match tokio::time::timeout(Duration::from_secs(2), client.deregister(request)).await {
        Ok(Ok(_)) => tracing::info!(lease = %lease_id, "left the pool"),
        Ok(Err(status)) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "deregistration failed")
        }
        Err(_) => tracing::warn!("deregistration timed out"),
    }
}
