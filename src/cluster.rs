//! Running a pool file: spawning its in-process experts on loopback and putting every expert
//! into a scheduler's registry. Shared by `l2d up` and `l2d scheduler --pool`.

use crate::core::policy::{DEFAULT_LAMBDA, PriorPolicy};
use crate::expert::kserve::KServeBackend;
use crate::expert::lexical::LexicalReader;
use crate::expert::openai::OpenAiBackend;
use crate::expert::replay::ReplayBackend;
use crate::expert::typed::TypedReader;
use crate::expert::{Backend, ExpertNode, Local, Model};
use crate::pool_file::{BackendSpec, ExpertSpec, Placement, PoolFile};
use crate::scheduler::Scheduler;
use crate::scheduler::discovery::DnsTarget;
use crate::scheduler::registry::Origin;
use crate::squad::DatasetCache;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Builds the model an expert spec describes: loads its files, or makes the client of its
/// model server (which connects when first used).
pub fn build_model(spec: &ExpertSpec, cache: &DatasetCache) -> anyhow::Result<Arc<dyn Model>> {
    let local = |backend: Arc<dyn Backend>| -> Arc<dyn Model> { Arc::new(Local(backend)) };
    let context = || format!("expert {:?}", spec.id);
    Ok(match &spec.backend {
        BackendSpec::Replay { predictions, data } => {
            let dataset = data
                .as_deref()
                .map(|d| cache.get(d))
                .transpose()
                .with_context(context)?;
            let backend =
                ReplayBackend::load(predictions, dataset, spec.cost).with_context(context)?;
            local(Arc::new(backend))
        }
        BackendSpec::Lexical => local(Arc::new(LexicalReader::default())),
        BackendSpec::Typed => local(Arc::new(TypedReader::default())),
        BackendSpec::OpenAi(config) => {
            Arc::new(OpenAiBackend::new(config.clone()).with_context(context)?)
        }
        BackendSpec::KServe(config) => {
            Arc::new(KServeBackend::new(config.clone(), spec.cost).with_context(context)?)
        }
    })
}

pub fn prior_policy(pool: &PoolFile, lambda: Option<f64>) -> anyhow::Result<PriorPolicy> {
    let accuracies = pool
        .experts
        .iter()
        .filter_map(|e| e.accuracy.map(|a| (e.id.clone(), a)));
    Ok(PriorPolicy::new(
        lambda.unwrap_or(DEFAULT_LAMBDA),
        accuracies,
    )?)
}

/// Experts served inside this process; stopped together.
#[derive(Default)]
pub struct LocalExperts {
    running: Vec<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
    /// (expert id, address) of every in-process replica.
    pub addresses: Vec<(String, SocketAddr)>,
}

impl LocalExperts {
    /// Stops every in-process expert and waits for each to drain.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let mut first_error = None;
        for (stop, task) in self.running {
            let _ = stop.send(());
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(e) => first_error = first_error.or(Some(e.into())),
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Spawns the in-process replicas of every expert of `pool` on `127.0.0.1:0`.
pub async fn spawn_local_experts(pool: &PoolFile) -> anyhow::Result<LocalExperts> {
    let cache = DatasetCache::default();
    let mut local = LocalExperts::default();
    for spec in &pool.experts {
        let Placement::InProcess { replicas } = spec.placement else {
            continue;
        };
        if replicas == 0 {
            continue;
        }
        let model = build_model(spec, &cache)?;
        for _ in 0..replicas {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let address = listener.local_addr()?;
            let node = ExpertNode::for_model(spec.id.clone(), spec.cost, model.clone())
                .with_capabilities(&spec.capabilities)
                .with_service_time(spec.service_time)
                .with_max_concurrency(spec.max_in_flight.unwrap_or(0));
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(crate::expert::serve(listener, node, None, async {
                let _ = stopped.await;
            }));
            local.addresses.push((spec.id.clone(), address));
            local.running.push((stop, task));
        }
    }
    Ok(local)
}

/// Every fixed address at which an expert of `pool` can be reached: its in-process replicas in
/// `local`, or its static addresses (none for DNS placement: see [`resolve`]).
pub fn expert_addresses(spec: &ExpertSpec, local: &LocalExperts) -> Vec<SocketAddr> {
    match &spec.placement {
        Placement::Remote { addresses } => addresses.clone(),
        Placement::Dns { .. } => Vec::new(),
        Placement::InProcess { .. } => local
            .addresses
            .iter()
            .filter(|(id, _)| *id == spec.id)
            .map(|(_, a)| *a)
            .collect(),
    }
}

/// Declares every expert of `pool` in the scheduler, spawns the in-process replicas on
/// `127.0.0.1:0`, adds them and the static addresses to the registry, resolves DNS names once
/// and hands them to the scheduler to resolve again periodically.
pub async fn start_pool(pool: &PoolFile, scheduler: &Scheduler) -> anyhow::Result<LocalExperts> {
    let local = spawn_local_experts(pool).await?;
    let registry = &scheduler.registry;
    for spec in &pool.experts {
        registry.declare_expert(&spec.id, spec.cost, spec.backend.kind());
        registry.declare_capabilities(&spec.id, spec.capabilities.clone());
        let origin = match spec.placement {
            Placement::Remote { .. } => Origin::Static,
            Placement::InProcess { .. } => Origin::InProcess,
            Placement::Dns { ref name } => {
                let target = DnsTarget {
                    expert_id: spec.id.clone(),
                    name: name.clone(),
                    max_in_flight: spec.max_in_flight,
                };
                // A name that does not resolve yet (its pods are starting) is not fatal: the
                // expert waits, unavailable, for the next resolution.
                if let Err(e) = target.sync(registry).await {
                    tracing::warn!(expert = %spec.id, %name, error = %e, "DNS name does not resolve yet");
                }
                scheduler.add_dns_target(target);
                continue;
            }
        };
        for address in expert_addresses(spec, &local) {
            registry.add_fixed_replica(
                &spec.id,
                &address.to_string(),
                origin,
                spec.max_in_flight,
            )?;
        }
    }
    // What each replica takes (a replay expert's recorded questions), before the first query.
    scheduler.learn_capabilities(true).await;
    scheduler.set_pool_file(pool.clone());
    Ok(local)
}
