//! The registry of experts and their replicas, with each replica's live load.
//!
//! Concurrency: membership lives in dashmaps (mutated by `Pool` calls and the lease reaper);
//! the request path never touches them. It reads an immutable [`PoolSnapshot`] through an
//! `ArcSwap`, rebuilt after every membership change, and updates per-replica atomics. Leases sit
//! behind a std `Mutex`, held for a few instructions and never across an `.await`.

use crate::core::lease::{Lease, LeasePolicy};
use crate::grpc::pb::{self, expert_client::ExpertClient, replica_state::Origin};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(
        "expert {expert:?} is known with cost {known}; a replica declaring cost {declared} cannot join it"
    )]
    CostConflict {
        expert: String,
        known: f64,
        declared: f64,
    },
    #[error("unknown or expired lease {0:?}; register again")]
    UnknownLease(String),
}

/// An expert id and what is known of it, shared by all its replicas.
#[derive(Debug)]
pub struct ExpertEntry {
    pub id: String,
    pub cost: f64,
    pub backend: String,
    /// Listed in the pool file: stays in the pool (as unavailable) with no replica.
    pub declared: bool,
    answered: AtomicU64,
    /// Cost charged, in millionths of a cost unit (atomic add of a float).
    charged_micro_units: AtomicU64,
}

impl ExpertEntry {
    /// An answer through the scheduler, charged at `cost`.
    pub fn record_answer(&self, cost: f64) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.charge(cost);
    }

    /// Compute charged without an answer (the expert ran but failed).
    pub fn charge(&self, cost: f64) {
        self.charged_micro_units
            .fetch_add((cost * 1e6).round() as u64, Ordering::Relaxed);
    }

    pub fn answered_total(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    pub fn cost_charged_total(&self) -> f64 {
        self.charged_micro_units.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// One worker serving an expert.
#[derive(Debug)]
pub struct Replica {
    pub key: u64,
    pub expert_id: String,
    pub address: String,
    pub origin: Origin,
    pub client: ExpertClient<Channel>,
    lease: Option<(String, Mutex<Lease>)>,
    in_flight: AtomicU32,
    answered: AtomicU64,
    failed: AtomicU64,
    reported: Mutex<pb::LoadReport>,
}

/// Counts a call in flight to a replica for as long as it lives (also when the call is
/// cancelled: the future holding it is dropped).
pub struct InFlightGuard<'a>(&'a Replica);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Replica {
    pub fn begin_call(&self) -> InFlightGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn record_success(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// A registered replica is available while its lease holds; others always are.
    pub fn is_available(&self, now: Instant) -> bool {
        match &self.lease {
            None => true,
            Some((_, lease)) => !lock(lease).is_expired(now),
        }
    }

    fn state(&self, now: Instant) -> pb::ReplicaState {
        let (lease_id, lease_remaining_ms) = match &self.lease {
            None => (String::new(), 0),
            Some((id, lease)) => (id.clone(), lock(lease).remaining(now).as_millis() as u64),
        };
        pb::ReplicaState {
            address: self.address.clone(),
            origin: self.origin as i32,
            lease_id,
            lease_remaining_ms,
            in_flight: self.in_flight(),
            reported: self.lease.as_ref().map(|_| *lock(&self.reported)),
            answered_total: self.answered.load(Ordering::Relaxed),
            failed_total: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// Locks a std mutex, recovering the data from a poisoned one (every critical section here is a
/// few plain assignments: a panic cannot leave them half done).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One expert and its replicas, as the request path sees them.
#[derive(Debug, Clone)]
pub struct ExpertGroup {
    pub entry: Arc<ExpertEntry>,
    pub replicas: Vec<Arc<Replica>>,
}

/// The pool at one moment: immutable, cheap to read, replaced on membership change.
#[derive(Debug, Default)]
pub struct PoolSnapshot {
    /// Experts in a stable order: declared ones in pool-file order, then registered ones by id.
    pub experts: Vec<ExpertGroup>,
}

/// What a successful registration grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub lease_id: String,
    pub ttl: Duration,
}

pub struct Registry {
    experts: DashMap<String, Arc<ExpertEntry>>,
    /// Pool-file order of declared experts.
    declared_order: Mutex<Vec<String>>,
    replicas: DashMap<u64, Arc<Replica>>,
    leases: DashMap<String, u64>,
    next_key: AtomicU64,
    snapshot: ArcSwap<PoolSnapshot>,
    rebuild: Mutex<()>,
    lease_policy: LeasePolicy,
}

impl Registry {
    pub fn new(lease_policy: LeasePolicy) -> Self {
        Self {
            experts: DashMap::new(),
            declared_order: Mutex::new(Vec::new()),
            replicas: DashMap::new(),
            leases: DashMap::new(),
            next_key: AtomicU64::new(1),
            snapshot: ArcSwap::from_pointee(PoolSnapshot::default()),
            rebuild: Mutex::new(()),
            lease_policy,
        }
    }

    pub fn lease_policy(&self) -> &LeasePolicy {
        &self.lease_policy
    }

    pub fn snapshot(&self) -> Arc<PoolSnapshot> {
        self.snapshot.load_full()
    }

    /// Declares an expert from the pool file: it stays in the pool even with no replica.
    pub fn declare_expert(&self, id: &str, cost: f64, backend: &str) {
        self.experts.entry(id.to_owned()).or_insert_with(|| {
            Arc::new(ExpertEntry {
                id: id.to_owned(),
                cost,
                backend: backend.to_owned(),
                declared: true,
                answered: AtomicU64::new(0),
                charged_micro_units: AtomicU64::new(0),
            })
        });
        let mut order = lock(&self.declared_order);
        if !order.iter().any(|known| known == id) {
            order.push(id.to_owned());
        }
        drop(order);
        self.rebuild_snapshot();
    }

    /// Adds a replica that needs no lease (in-process, or a static address from the pool file).
    pub fn add_fixed_replica(
        &self,
        expert_id: &str,
        address: &str,
        origin: Origin,
    ) -> Result<(), RegistryError> {
        if !self.experts.contains_key(expert_id) {
            return Err(RegistryError::Invalid {
                field: "expert_id",
                message: format!("expert {expert_id:?} is not declared"),
            });
        }
        self.insert_replica(expert_id, address, origin, None)?;
        self.rebuild_snapshot();
        Ok(())
    }

    /// A worker joins the pool with a lease (the `Pool.Register` call, validated at the edge).
    pub fn register(
        &self,
        expert_id: &str,
        address: &str,
        cost: f64,
        backend: &str,
        requested_ttl: Option<Duration>,
        now: Instant,
    ) -> Result<Granted, RegistryError> {
        let entry = self
            .experts
            .entry(expert_id.to_owned())
            .or_insert_with(|| {
                Arc::new(ExpertEntry {
                    id: expert_id.to_owned(),
                    cost,
                    backend: backend.to_owned(),
                    declared: false,
                    answered: AtomicU64::new(0),
                    charged_micro_units: AtomicU64::new(0),
                })
            })
            .clone();
        if (entry.cost - cost).abs() > 1e-9 * entry.cost.max(1.0) {
            return Err(RegistryError::CostConflict {
                expert: expert_id.to_owned(),
                known: entry.cost,
                declared: cost,
            });
        }
        // A worker that re-registers at the same address (it lost its lease, or the scheduler
        // restarted and the worker raced a stale heartbeat) replaces its old entry.
        let stale: Vec<u64> = self
            .replicas
            .iter()
            .filter(|r| r.expert_id == expert_id && r.address == address && r.lease.is_some())
            .map(|r| r.key)
            .collect();
        for key in stale {
            self.remove_replica(key);
        }
        let ttl = self.lease_policy.grant(requested_ttl);
        let lease_id = new_lease_id();
        self.insert_replica(
            expert_id,
            address,
            Origin::Registered,
            Some((lease_id.clone(), Lease::new(ttl, now))),
        )?;
        self.rebuild_snapshot();
        Ok(Granted { lease_id, ttl })
    }

    pub fn heartbeat(
        &self,
        lease_id: &str,
        load: Option<pb::LoadReport>,
        now: Instant,
    ) -> Result<Duration, RegistryError> {
        let unknown = || RegistryError::UnknownLease(lease_id.to_owned());
        let key = *self.leases.get(lease_id).ok_or_else(unknown)?;
        let replica = self
            .replicas
            .get(&key)
            .map(|r| r.clone())
            .ok_or_else(unknown)?;
        let (_, lease) = replica.lease.as_ref().ok_or_else(unknown)?;
        let mut lease = lock(lease);
        if lease.is_expired(now) {
            // Expired but not yet reaped: the worker must register again, like after a reap.
            drop(lease);
            self.remove_replica(key);
            self.rebuild_snapshot();
            return Err(unknown());
        }
        lease.renew(now);
        let ttl = lease.ttl();
        drop(lease);
        if let Some(load) = load {
            *lock(&replica.reported) = load;
        }
        Ok(ttl)
    }

    pub fn deregister(&self, lease_id: &str) -> Result<(), RegistryError> {
        let (_, key) = self
            .leases
            .remove(lease_id)
            .ok_or_else(|| RegistryError::UnknownLease(lease_id.to_owned()))?;
        self.remove_replica(key);
        self.rebuild_snapshot();
        Ok(())
    }

    /// Removes replicas whose lease expired; returns what was removed as (expert, address).
    pub fn reap_expired(&self, now: Instant) -> Vec<(String, String)> {
        let expired: Vec<Arc<Replica>> = self
            .replicas
            .iter()
            .filter(|r| !r.is_available(now))
            .map(|r| r.clone())
            .collect();
        if expired.is_empty() {
            return Vec::new();
        }
        for r in &expired {
            self.remove_replica(r.key);
        }
        self.rebuild_snapshot();
        expired
            .iter()
            .map(|r| (r.expert_id.clone(), r.address.clone()))
            .collect()
    }

    /// The pool as `Pool.ListPool` reports it.
    pub fn states(&self, now: Instant) -> Vec<pb::ExpertState> {
        self.snapshot()
            .experts
            .iter()
            .map(|group| pb::ExpertState {
                expert_id: group.entry.id.clone(),
                cost: group.entry.cost,
                backend: group.entry.backend.clone(),
                replicas: group.replicas.iter().map(|r| r.state(now)).collect(),
                answered_total: group.entry.answered_total(),
                cost_charged_total: group.entry.cost_charged_total(),
            })
            .collect()
    }

    fn insert_replica(
        &self,
        expert_id: &str,
        address: &str,
        origin: Origin,
        lease: Option<(String, Lease)>,
    ) -> Result<(), RegistryError> {
        let endpoint = Endpoint::from_shared(crate::expert::registration::endpoint_uri(address))
            .map_err(|e| RegistryError::Invalid {
                field: "address",
                message: format!("{address:?} is not a usable address ({e})"),
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        if let Some((lease_id, _)) = &lease {
            self.leases.insert(lease_id.clone(), key);
        }
        let replica = Replica {
            key,
            expert_id: expert_id.to_owned(),
            address: address.to_owned(),
            origin,
            client: ExpertClient::new(endpoint.connect_lazy()),
            lease: lease.map(|(id, lease)| (id, Mutex::new(lease))),
            in_flight: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            reported: Mutex::new(pb::LoadReport::default()),
        };
        self.replicas.insert(key, Arc::new(replica));
        Ok(())
    }

    fn remove_replica(&self, key: u64) {
        if let Some((_, replica)) = self.replicas.remove(&key)
            && let Some((lease_id, _)) = &replica.lease
        {
            self.leases.remove(lease_id);
        }
    }

    /// Rebuilds the snapshot from the maps. Serialised, so two concurrent changes cannot publish
    /// snapshots out of order.
    fn rebuild_snapshot(&self) {
        let _one_at_a_time = lock(&self.rebuild);
        let declared = lock(&self.declared_order).clone();
        let mut replicas: Vec<Arc<Replica>> = self.replicas.iter().map(|r| r.clone()).collect();
        replicas.sort_by_key(|r| r.key);
        let mut dynamic: Vec<Arc<ExpertEntry>> = self
            .experts
            .iter()
            .filter(|e| !e.declared)
            .map(|e| e.clone())
            .collect();
        dynamic.sort_by(|a, b| a.id.cmp(&b.id));
        let entries = declared
            .iter()
            .filter_map(|id| self.experts.get(id).map(|e| e.clone()))
            .chain(dynamic);
        let experts = entries
            .map(|entry| ExpertGroup {
                replicas: replicas
                    .iter()
                    .filter(|r| r.expert_id == entry.id)
                    .cloned()
                    .collect(),
                entry,
            })
            // A registered-only expert whose last replica left is no longer part of the pool.
            .filter(|g| g.entry.declared || !g.replicas.is_empty())
            .collect();
        self.snapshot.store(Arc::new(PoolSnapshot { experts }));
    }
}

/// An unguessable-enough lease id from the process's random hasher keys (not a secret: `Pool`
/// mutations are authenticated separately).
fn new_lease_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("lease-{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(LeasePolicy::default())
    }

    #[tokio::test]
    async fn leases_expire_unless_renewed_and_are_reaped() {
        let reg = registry();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1);
        let a = reg
            .register("bert", "127.0.0.1:9001", 100.0, "replay", Some(ttl), t0)
            .unwrap();
        let b = reg
            .register("bert", "127.0.0.1:9002", 100.0, "replay", Some(ttl), t0)
            .unwrap();
        assert_eq!(reg.snapshot().experts[0].replicas.len(), 2);
        reg.heartbeat(&a.lease_id, None, t0 + Duration::from_millis(800))
            .unwrap();
        let reaped = reg.reap_expired(t0 + Duration::from_millis(1200));
        assert_eq!(
            reaped,
            vec![("bert".to_string(), "127.0.0.1:9002".to_string())]
        );
        assert_eq!(
            reg.heartbeat(&b.lease_id, None, t0 + Duration::from_millis(1200)),
            Err(RegistryError::UnknownLease(b.lease_id.clone()))
        );
        reg.deregister(&a.lease_id).unwrap();
        // A registered-only expert with no replica left is gone from the pool.
        assert!(reg.snapshot().experts.is_empty());
        assert!(reg.deregister(&a.lease_id).is_err());
    }

    #[tokio::test]
    async fn declared_experts_keep_order_and_refuse_conflicting_costs() {
        let reg = registry();
        reg.declare_expert("lr", 1.0, "replay");
        reg.declare_expert("bert", 100.0, "replay");
        let now = Instant::now();
        reg.register("aaa", "127.0.0.1:9003", 3.0, "lexical", None, now)
            .unwrap();
        let ids: Vec<String> = reg
            .snapshot()
            .experts
            .iter()
            .map(|g| g.entry.id.clone())
            .collect();
        assert_eq!(ids, ["lr", "bert", "aaa"]);
        let err = reg
            .register("bert", "127.0.0.1:9004", 50.0, "replay", None, now)
            .unwrap_err();
        assert!(matches!(err, RegistryError::CostConflict { known, .. } if known == 100.0));
    }

    #[tokio::test]
    async fn re_registering_the_same_address_replaces_the_old_lease() {
        let reg = registry();
        let now = Instant::now();
        let first = reg
            .register("x", "127.0.0.1:9005", 1.0, "replay", None, now)
            .unwrap();
        let second = reg
            .register("x", "127.0.0.1:9005", 1.0, "replay", None, now)
            .unwrap();
        assert_ne!(first.lease_id, second.lease_id);
        assert_eq!(reg.snapshot().experts[0].replicas.len(), 1);
        assert!(reg.heartbeat(&first.lease_id, None, now).is_err());
        assert!(reg.heartbeat(&second.lease_id, None, now).is_ok());
    }

    #[tokio::test]
    async fn an_expired_lease_is_unavailable_before_it_is_reaped() {
        let reg = registry();
        let t0 = Instant::now();
        reg.register(
            "x",
            "127.0.0.1:9006",
            1.0,
            "replay",
            Some(Duration::from_secs(1)),
            t0,
        )
        .unwrap();
        let snap = reg.snapshot();
        let replica = &snap.experts[0].replicas[0];
        assert!(replica.is_available(t0));
        assert!(!replica.is_available(t0 + Duration::from_secs(2)));
    }
}
