//! The scheduler node: the registry of experts and replicas, the active policy, and the
//! `Router` and `Pool` services.
//!
//! The request path ([`dispatch`]) snapshots the registry, asks the policy for scores, calls the
//! pure [`crate::core::decision::decide`], and walks the plan over gRPC. Membership changes go
//! through [`Registry`]; a background task reaps expired leases.

pub mod dispatch;
mod pool_service;
pub mod registry;

pub use registry::{Registry, RegistryError};

use crate::core::decision::DecisionParams;
use crate::core::lease::LeasePolicy;
use crate::core::policy::Policy;
use crate::core::query::QueryLimits;
use crate::grpc::pb::{pool_server::PoolServer, router_server::RouterServer};
use crate::grpc::server;
use arc_swap::ArcSwap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Knobs of the scheduler, with documented defaults.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub limits: QueryLimits,
    pub leases: LeasePolicy,
    /// Attempts per request (first try, retry on another replica, fallbacks), in total.
    pub max_attempts: usize,
    /// Attempts on distinct replicas of one expert before falling back to the next expert.
    pub tries_per_expert: usize,
    /// How often expired leases are removed (they are masked from decisions at once anyway).
    pub reap_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let decision = DecisionParams::default();
        Self {
            limits: QueryLimits::default(),
            leases: LeasePolicy::default(),
            max_attempts: decision.max_attempts,
            tries_per_expert: decision.tries_per_expert,
            reap_interval: Duration::from_millis(100),
        }
    }
}

/// The policy slot: swapped whole, read lock-free on every request.
pub struct ActivePolicy(pub Box<dyn Policy>);

pub struct Scheduler {
    pub registry: Arc<Registry>,
    policy: ArcSwap<ActivePolicy>,
    config: SchedulerConfig,
    requests: AtomicU64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, policy: Box<dyn Policy>) -> Self {
        Self {
            registry: Arc::new(Registry::new(config.leases)),
            policy: ArcSwap::from_pointee(ActivePolicy(policy)),
            config,
            requests: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn policy(&self) -> Arc<ActivePolicy> {
        self.policy.load_full()
    }

    /// Replaces the active policy; requests already deciding keep the one they loaded.
    pub fn set_policy(&self, policy: Box<dyn Policy>) {
        self.policy.store(Arc::new(ActivePolicy(policy)));
    }
}

/// Serves `Router` and `Pool` on `listener` until `shutdown` completes, reaping expired leases
/// in the background.
pub async fn serve(
    listener: TcpListener,
    scheduler: Arc<Scheduler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reporter, routes) = server::standard_routes()?;
    let routes = routes
        .add_service(RouterServer::new(dispatch::RouterService::new(
            scheduler.clone(),
        )))
        .add_service(PoolServer::new(pool_service::PoolService::new(
            scheduler.clone(),
        )));
    let reaper = tokio::spawn(reap_leases(scheduler.clone()));
    tracing::info!(
        address = %listener.local_addr()?,
        policy = %scheduler.policy().0.identity().id,
        experts = scheduler.registry.snapshot().experts.len(),
        "scheduler serving"
    );
    let result = server::serve(
        listener,
        routes,
        reporter,
        &["l2d.v1.Router", "l2d.v1.Pool"],
        shutdown,
    )
    .await;
    reaper.abort();
    result
}

async fn reap_leases(scheduler: Arc<Scheduler>) {
    let mut tick = tokio::time::interval(scheduler.config.reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (expert, address) in scheduler.registry.reap_expired(Instant::now()) {
            tracing::warn!(%expert, %address, "lease expired; replica removed from the pool");
        }
    }
}
