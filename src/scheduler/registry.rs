//! The registry of experts and their replicas, with each replica's live load.
//!
//! Concurrency: membership lives in dashmaps (mutated by `Pool` calls and the lease reaper);
//! the request path never touches them. It reads an immutable [`PoolSnapshot`] through an
//! `ArcSwap`, rebuilt after every membership change, and updates per-replica atomics. Leases sit
//! behind a std `Mutex`, held for a few instructions and never across an `.await`.

use crate::core::call::{Failure, Miss, Verdict};
use crate::core::capability::{Capabilities, QueryFit, Unfit};
use crate::core::decision::{Exclusion, ReplicaLoad};
use crate::core::lease::{Lease, LeasePolicy};
pub use crate::core::pool_state::{ExpertState, LoadReport, Origin, ReplicaState};
use crate::core::replica_health::{FailureOutcome, HealthParams, ReplicaHealth};
use crate::grpc::pb::expert_client::ExpertClient;
use crate::grpc::status::code_of_miss;
use crate::telemetry::{CodeCounts, LatencyHistogram, PoolSeries};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

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
    #[error("lease {lease:?} was taken by another credential; only its holder may renew or end it")]
    NotLeaseHolder { lease: String },
    #[error("address {address:?} is already served by a replica of {holder}; deregister it first")]
    AddressTaken { address: String, holder: String },
    #[error("the pool holds its maximum of {limit} {what}; no more can register")]
    Full { what: &'static str, limit: usize },
}

impl crate::core::error_kind::HasKind for RegistryError {
    fn kind(&self) -> crate::core::error_kind::ErrorKind {
        use crate::core::error_kind::ErrorKind;
        match self {
            RegistryError::Invalid { .. } => ErrorKind::InvalidInput,
            RegistryError::CostConflict { .. } => ErrorKind::Unsatisfiable,
            RegistryError::UnknownLease(_) => ErrorKind::NotFound,
            RegistryError::NotLeaseHolder { .. } => ErrorKind::Forbidden,
            RegistryError::AddressTaken { .. } => ErrorKind::Conflict,
            RegistryError::Full { .. } => ErrorKind::Exhausted { retry_after: None },
        }
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> Self {
        crate::grpc::status::status_of(&e)
    }
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
    /// Queries whose first choice it was.
    decisions: AtomicU64,
    /// Failed calls that moved a query on, by code.
    fallbacks: CodeCounts,
    /// What the pool file declares it takes (on top of what each replica declares).
    declared_capabilities: ArcSwap<Capabilities>,
    /// Queries answered with its answer (probes' answers kept included).
    served: AtomicU64,
    /// Calls sent to it as a probe or a cascade stage.
    probe_calls: AtomicU64,
    /// Final decisions that excluded it, by reason ([`Exclusion::LABELS`]).
    exclusions: [AtomicU64; Exclusion::LABELS.len()],
}

impl ExpertEntry {
    fn new(id: &str, cost: f64, backend: &str, declared: bool) -> Self {
        Self {
            id: id.to_owned(),
            cost,
            backend: backend.to_owned(),
            declared,
            answered: AtomicU64::new(0),
            charged_micro_units: AtomicU64::new(0),
            decisions: AtomicU64::new(0),
            fallbacks: CodeCounts::default(),
            declared_capabilities: ArcSwap::from_pointee(Capabilities::default()),
            served: AtomicU64::new(0),
            probe_calls: AtomicU64::new(0),
            exclusions: Default::default(),
        }
    }

    /// A query was answered with its answer.
    pub fn record_served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// A call was sent to it as a probe or a cascade stage.
    pub fn record_probe_call(&self) {
        self.probe_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// A query's final decision excluded it.
    pub fn record_exclusion(&self, why: Exclusion) {
        self.exclusions[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// What the pool file declares this expert takes.
    pub fn declared_capabilities(&self) -> Arc<Capabilities> {
        self.declared_capabilities.load_full()
    }

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

    /// The query's first choice was this expert.
    pub fn record_decision(&self) {
        self.decisions.fetch_add(1, Ordering::Relaxed);
    }

    /// A failed call to it moved a query on (a retry or a fallback).
    pub fn record_fallback(&self, code: Code) {
        self.fallbacks.increment(code);
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
    /// The connection, for health checks.
    pub channel: Channel,
    /// Calls this scheduler sends to the replica at once, at most (changed by a pool reload).
    limit: AtomicU32,
    lease: Option<LeaseSlot>,
    in_flight: AtomicU32,
    answered: AtomicU64,
    failed: AtomicU64,
    reported: Mutex<LoadReport>,
    health: Mutex<ReplicaHealth>,
    health_params: HealthParams,
    /// Finished calls by code, their latency, and ejections (written out at scrape time).
    calls: CodeCounts,
    latency: LatencyHistogram,
    ejections: AtomicU64,
    /// Calls it refused because it could not take the query (kept apart from `failed`).
    refused: AtomicU64,
    /// What the replica declares it takes (its registration, then its `Describe` reply).
    capabilities: ArcSwap<Capabilities>,
    /// Where reading its `Describe` reply stands: not asked, being asked, asked without a
    /// reply, described.
    description: AtomicU8,
    /// Its health check said NOT_SERVING (it is shutting down): no traffic, and no ejection,
    /// until it says SERVING again.
    draining: AtomicBool,
}

/// What an active health check of a replica found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheck {
    Serving,
    /// It answered NOT_SERVING: shutting down (draining) or otherwise out of rotation.
    NotServing,
    /// No answer, or an error.
    Failed,
}

/// Where reading a replica's `Describe` stands.
const NOT_ASKED: u8 = 0;
const ASKING: u8 = 1;
const ASKED: u8 = 2;
const DESCRIBED: u8 = 3;

/// A registered replica's lease: its id, the credential that took it, its clock.
#[derive(Debug)]
struct LeaseSlot {
    id: String,
    holder: String,
    lease: Mutex<Lease>,
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
    /// Takes one of the replica's slots, or `None` when it is at its limit (the decision saw a
    /// slot free, but a concurrent request took it first).
    pub fn try_begin_call(&self) -> Option<InFlightGuard<'_>> {
        let limit = self.limit();
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlightGuard(self))
    }

    /// Calls this scheduler may have in flight to the replica at once.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Calls this scheduler has in flight to the replica.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records a finished call: counters, PeakEWMA, error rate, ejection. Returns the ejection
    /// length when this call ejected the replica.
    pub fn record_call(
        &self,
        ending: Result<(), Failure>,
        latency: Duration,
        now: Instant,
    ) -> Option<Duration> {
        let code = match ending {
            Ok(()) => {
                self.answered.fetch_add(1, Ordering::Relaxed);
                Code::Ok
            }
            Err(failure) => {
                if failure.could_not_take() {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
                code_of_miss(Miss::Failed(failure))
            }
        };
        self.calls.increment(code);
        self.latency.record(latency);
        let mut health = lock(&self.health);
        match Verdict::of(ending) {
            Verdict::Healthy => {
                health.observe_latency(latency, now, &self.health_params);
                health.record_success();
                None
            }
            Verdict::TimedOut => {
                health.observe_latency(latency, now, &self.health_params);
                None
            }
            Verdict::Unhealthy => {
                health.observe_failure_latency(latency, now, &self.health_params);
                match health.record_failure(now, &self.health_params) {
                    FailureOutcome::Ejected(length) => {
                        self.ejections.fetch_add(1, Ordering::Relaxed);
                        Some(length)
                    }
                    FailureOutcome::Counted => None,
                }
            }
        }
    }

    /// What the replica declares it takes (nothing known yet: anything).
    pub fn capabilities(&self) -> arc_swap::Guard<Arc<Capabilities>> {
        self.capabilities.load()
    }

    /// Records what the replica declares; `described` when it comes from its `Describe` reply
    /// (which is then not asked for again).
    pub fn set_capabilities(&self, capabilities: Capabilities, described: bool) {
        self.capabilities.store(Arc::new(capabilities));
        if described {
            self.description.store(DESCRIBED, Ordering::Relaxed);
        }
    }

    /// Its `Describe` was read without anything to take from it (no such method, or declarations
    /// that are not valid): what it declared before stands, and it is not asked again.
    pub fn mark_described(&self) {
        self.description.store(DESCRIBED, Ordering::Relaxed);
    }

    /// Takes the job of reading its `Describe` reply: true when it was never asked, or (with
    /// `retry`) when it was asked and did not answer. Two readers never take the same replica
    /// at once.
    pub fn claim_description(&self, retry: bool) -> bool {
        let claim = |from| {
            self.description
                .compare_exchange(from, ASKING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        };
        claim(NOT_ASKED) || (retry && claim(ASKED))
    }

    /// The `Describe` call ended without a reply: another round may try again.
    pub fn description_failed(&self) {
        let _ =
            self.description
                .compare_exchange(ASKING, ASKED, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// The result of an active health check; returns the ejection length when it ejected.
    /// NOT_SERVING takes the replica out of rotation without an ejection (a worker says it when
    /// it starts to drain); so does a failed check after it, when the drained worker is gone.
    pub fn record_health_check(&self, check: HealthCheck, now: Instant) -> Option<Duration> {
        let mut health = lock(&self.health);
        match check {
            HealthCheck::Serving => {
                self.draining.store(false, Ordering::Relaxed);
                if health.is_ejected(now) {
                    health.readmit();
                }
                None
            }
            HealthCheck::NotServing => {
                self.draining.store(true, Ordering::Relaxed);
                None
            }
            HealthCheck::Failed if self.is_draining() || health.is_ejected(now) => None,
            HealthCheck::Failed => {
                self.ejections.fetch_add(1, Ordering::Relaxed);
                Some(health.eject(now, &self.health_params))
            }
        }
    }

    /// Said NOT_SERVING at its last health check.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// May receive traffic: a registered replica while its lease holds, any replica while it
    /// is not ejected.
    pub fn is_available(&self, now: Instant) -> bool {
        !self.lease_expired(now) && !self.is_draining() && !lock(&self.health).is_ejected(now)
    }

    /// A registered replica whose lease ran out (ejected replicas stay: they come back).
    pub fn lease_expired(&self, now: Instant) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|slot| lock(&slot.lease).is_expired(now))
    }

    /// What the decision needs to know about this replica now; `rtt` is NaN before the first
    /// measurement (see [`ExpertGroup::loads`]).
    fn load(&self, now: Instant) -> ReplicaLoad {
        let queued = if self.lease.is_some() {
            lock(&self.reported).queue_depth
        } else {
            0
        };
        let (rtt, ejected) = {
            let health = lock(&self.health);
            (
                health
                    .measured_rtt(now, &self.health_params)
                    .unwrap_or(f64::NAN),
                health.is_ejected(now),
            )
        };
        ReplicaLoad {
            in_flight: self.in_flight().saturating_add(queued),
            limit: self.limit(),
            rtt,
            available: !self.lease_expired(now) && !ejected && !self.is_draining(),
        }
    }

    /// Writes the replica's series (at scrape time).
    fn write_series(&self, out: &mut PoolSeries, now: Instant) {
        let labels: &[(&str, &str)] = &[("expert", &self.expert_id), ("replica", &self.address)];
        let (rtt, ejected) = {
            let health = lock(&self.health);
            (health.rtt(now, &self.health_params), health.is_ejected(now))
        };
        out.codes("l2d_expert_calls_total", labels, &self.calls);
        out.histogram("l2d_expert_call_duration_seconds", labels, &self.latency);
        out.sample("l2d_replica_in_flight", labels, f64::from(self.in_flight()));
        out.sample("l2d_replica_max_in_flight", labels, f64::from(self.limit()));
        out.sample("l2d_replica_rtt_seconds", labels, rtt);
        out.sample(
            "l2d_replica_ejected",
            labels,
            if ejected { 1.0 } else { 0.0 },
        );
        let ejections = self.ejections.load(Ordering::Relaxed) as f64;
        out.sample("l2d_replica_ejections_total", labels, ejections);
        let draining = if self.is_draining() { 1.0 } else { 0.0 };
        out.sample("l2d_replica_draining", labels, draining);
    }

    fn state(&self, now: Instant, declared: &Capabilities) -> ReplicaState {
        let lease_remaining = self
            .lease
            .as_ref()
            .map(|slot| lock(&slot.lease).remaining(now));
        let health = lock(&self.health).clone();
        ReplicaState {
            address: self.address.clone(),
            origin: self.origin,
            lease_remaining,
            in_flight: self.in_flight(),
            reported: self.lease.as_ref().map(|_| *lock(&self.reported)),
            answered_total: self.answered.load(Ordering::Relaxed),
            failed_total: self.failed.load(Ordering::Relaxed),
            refused_total: self.refused.load(Ordering::Relaxed),
            capabilities: self.capabilities().tightened_by(declared),
            max_in_flight: self.limit(),
            rtt_seconds: health.rtt(now, &self.health_params),
            error_rate: health.error_rate(),
            ejected_for: health.ejected_for(now),
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

impl ExpertGroup {
    /// What the decision knows about each replica now. A replica not measured yet is given its
    /// measured siblings' mean latency (the default, 30 ms, when none is measured): a new or
    /// idle replica of an expert whose others answer in a millisecond must get its share at
    /// once, not wait behind a pessimistic default that nothing would ever correct.
    pub fn loads(&self, now: Instant) -> Vec<ReplicaLoad> {
        let mut loads: Vec<ReplicaLoad> = self.replicas.iter().map(|r| r.load(now)).collect();
        let (sum, measured) = loads
            .iter()
            .filter(|l| !l.rtt.is_nan())
            .fold((0.0, 0usize), |(sum, n), l| (sum + l.rtt, n + 1));
        let fill = if measured == 0 {
            self.replicas
                .first()
                .map_or(0.03, |r| r.health_params.default_rtt.as_secs_f64())
        } else {
            sum / measured as f64
        };
        for l in loads.iter_mut().filter(|l| l.rtt.is_nan()) {
            l.rtt = fill;
        }
        loads
    }

    /// Whether the expert can take the query: marks each replica that cannot as unavailable in
    /// `loads` (the expert's [`ExpertGroup::loads`]) and, when none can (or the pool file's
    /// declaration rules the query out), says why.
    pub fn fit(&self, query: &QueryFit<'_>, loads: &mut [ReplicaLoad]) -> Option<Unfit> {
        if let Err(why) = self.entry.declared_capabilities.load().admits(query) {
            return Some(why);
        }
        let mut first = None;
        let mut any = self.replicas.is_empty();
        for (replica, load) in self.replicas.iter().zip(loads.iter_mut()) {
            match replica.capabilities().admits(query) {
                Ok(()) => any = true,
                Err(why) => {
                    load.available = false;
                    first.get_or_insert(why);
                }
            }
        }
        if any { None } else { first }
    }
}

/// The pool at one moment: immutable, cheap to read, replaced on membership change.
#[derive(Debug, Default)]
pub struct PoolSnapshot {
    /// Experts in a stable order: declared ones in pool-file order, then registered ones by id.
    pub experts: Vec<ExpertGroup>,
}

/// A worker asking to join (the fields of `Pool.Register`, validated).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Join<'a> {
    /// The credential registering (see [`crate::scheduler::access`]): it alone may renew or end
    /// the lease.
    pub holder: &'a str,
    pub expert_id: &'a str,
    pub address: &'a str,
    pub cost: f64,
    pub backend: &'a str,
    pub requested_ttl: Option<Duration>,
    /// Calls it accepts at once (`None`: the registry's default).
    pub limit: Option<u32>,
    /// Its context limits and languages (its holdings come later, from `Describe`).
    pub capabilities: &'a Capabilities,
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
    /// Serialises registrations (see [`Registry::register`]).
    joining: Mutex<()>,
    lease_policy: LeasePolicy,
    health: HealthParams,
    default_limit: u32,
    max_experts: usize,
    max_replicas: usize,
    client_tls: Option<tonic::transport::ClientTlsConfig>,
}

/// How the registry treats replicas: leases, health, and the default concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaPolicy {
    pub leases: LeasePolicy,
    pub health: HealthParams,
    /// Calls in flight per replica when neither the pool file nor the replica says otherwise:
    /// by default the concurrent streams an l2d worker accepts on the one HTTP/2 connection the
    /// scheduler keeps to it (more would wait in that connection anyway).
    pub max_in_flight: u32,
    /// Experts the pool may hold; a registration that would add one more is refused.
    pub max_experts: usize,
    /// Replicas (of every origin) the pool may hold; a registration beyond it is refused.
    pub max_replicas: usize,
}

impl Default for ReplicaPolicy {
    fn default() -> Self {
        Self {
            leases: LeasePolicy::default(),
            health: HealthParams::default(),
            max_in_flight: crate::grpc::server::ServerLimits::DEFAULT_STREAMS,
            max_experts: 64,
            max_replicas: 1024,
        }
    }
}

impl Registry {
    pub fn new(policy: ReplicaPolicy) -> Self {
        Self {
            experts: DashMap::new(),
            declared_order: Mutex::new(Vec::new()),
            replicas: DashMap::new(),
            leases: DashMap::new(),
            next_key: AtomicU64::new(1),
            snapshot: ArcSwap::from_pointee(PoolSnapshot::default()),
            rebuild: Mutex::new(()),
            joining: Mutex::new(()),
            lease_policy: policy.leases,
            health: policy.health,
            default_limit: policy.max_in_flight.max(1),
            max_experts: policy.max_experts,
            max_replicas: policy.max_replicas,
            client_tls: None,
        }
    }

    /// Calls replicas over TLS with this configuration.
    pub fn with_client_tls(mut self, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        self.client_tls = tls;
        self
    }

    pub fn lease_policy(&self) -> &LeasePolicy {
        &self.lease_policy
    }

    pub fn snapshot(&self) -> Arc<PoolSnapshot> {
        self.snapshot.load_full()
    }

    /// Declares an expert from the pool file: it stays in the pool even with no replica.
    pub fn declare_expert(&self, id: &str, cost: f64, backend: &str) {
        self.experts
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(ExpertEntry::new(id, cost, backend, true)));
        let mut order = lock(&self.declared_order);
        if !order.iter().any(|known| known == id) {
            order.push(id.to_owned());
        }
        drop(order);
        self.rebuild_snapshot();
    }

    /// Sets what the pool file declares an expert takes (a reload replaces it).
    pub fn declare_capabilities(&self, expert_id: &str, capabilities: Capabilities) {
        if let Some(entry) = self.experts.get(expert_id) {
            entry.declared_capabilities.store(Arc::new(capabilities));
        }
    }

    /// Adds a replica that needs no lease (in-process, or a static address from the pool file),
    /// accepting at most `limit` calls at once (`None`: the registry's default).
    pub fn add_fixed_replica(
        &self,
        expert_id: &str,
        address: &str,
        origin: Origin,
        limit: Option<u32>,
    ) -> Result<(), RegistryError> {
        self.check_declared(expert_id)?;
        self.insert_replica(expert_id, address, origin, None, limit)?;
        self.rebuild_snapshot();
        Ok(())
    }

    fn check_declared(&self, expert_id: &str) -> Result<(), RegistryError> {
        if self.experts.contains_key(expert_id) {
            Ok(())
        } else {
            Err(RegistryError::Invalid {
                field: "expert_id",
                message: format!("expert {expert_id:?} is not declared"),
            })
        }
    }

    /// Makes the static replicas of `expert_id` exactly `addresses` (a pool-file reload):
    /// (added, removed).
    pub fn sync_static(
        &self,
        expert_id: &str,
        addresses: &[String],
        limit: Option<u32>,
    ) -> Result<(usize, usize), RegistryError> {
        self.sync_origin(expert_id, Origin::Static, addresses, limit)
    }

    /// Sets the concurrency limit of the expert's replicas of `origins` (`None`: the default).
    pub fn set_limit(&self, expert_id: &str, origins: &[Origin], limit: Option<u32>) {
        let limit = limit.filter(|&l| l > 0).unwrap_or(self.default_limit);
        for r in self.replicas.iter() {
            if r.expert_id == expert_id && origins.contains(&r.origin) {
                r.limit.store(limit, Ordering::Relaxed);
            }
        }
    }

    /// Removes a declared expert and its static and DNS replicas (a pool-file reload). Replicas
    /// that registered themselves stay, and keep the expert in the pool.
    pub fn undeclare(&self, expert_id: &str) {
        let keys: Vec<u64> = self
            .replicas
            .iter()
            .filter(|r| {
                r.expert_id == expert_id && matches!(r.origin, Origin::Static | Origin::Dns)
            })
            .map(|r| r.key)
            .collect();
        for key in keys {
            self.remove_replica(key);
        }
        if self.replicas.iter().any(|r| r.expert_id == expert_id) {
            if let Some(mut entry) = self.experts.get_mut(expert_id) {
                let old = entry.value();
                *entry = Arc::new(ExpertEntry::new(&old.id, old.cost, &old.backend, false));
            }
        } else {
            self.experts.remove(expert_id);
        }
        lock(&self.declared_order).retain(|id| id != expert_id);
        self.rebuild_snapshot();
    }

    /// Makes the DNS-discovered replicas of `expert_id` exactly `addresses`: new ones join,
    /// vanished ones leave (their in-flight calls finish on the `Arc` they hold). Returns
    /// (added, removed).
    pub fn sync_dns(
        &self,
        expert_id: &str,
        addresses: &[String],
        limit: Option<u32>,
    ) -> Result<(usize, usize), RegistryError> {
        self.sync_origin(expert_id, Origin::Dns, addresses, limit)
    }

    fn sync_origin(
        &self,
        expert_id: &str,
        origin: Origin,
        addresses: &[String],
        limit: Option<u32>,
    ) -> Result<(usize, usize), RegistryError> {
        self.check_declared(expert_id)?;
        let known: Vec<(u64, String)> = self
            .replicas
            .iter()
            .filter(|r| r.expert_id == expert_id && r.origin == origin)
            .map(|r| (r.key, r.address.clone()))
            .collect();
        let gone: Vec<u64> = known
            .iter()
            .filter(|(_, a)| !addresses.contains(a))
            .map(|(k, _)| *k)
            .collect();
        let mut added = 0;
        for address in addresses {
            if !known.iter().any(|(_, a)| a == address) {
                self.insert_replica(expert_id, address, origin, None, limit)?;
                added += 1;
            }
        }
        for key in &gone {
            self.remove_replica(*key);
        }
        if added > 0 || !gone.is_empty() {
            self.rebuild_snapshot();
        }
        Ok((added, gone.len()))
    }

    /// A worker joins the pool with a lease (the `Pool.Register` call, validated and authorised
    /// at the edge). Re-registering the same expert at the same address under the same holder
    /// replaces the old lease (a worker that lost it, or raced a restart); an address served by
    /// anyone else is refused, never taken over.
    pub fn register(&self, join: Join<'_>, now: Instant) -> Result<Granted, RegistryError> {
        let Join {
            holder,
            expert_id,
            address,
            cost,
            backend,
            requested_ttl,
            limit,
            capabilities,
        } = join;
        // One registration at a time: the checks below and the insert must not interleave with
        // another registration's (two could pass the caps, or take one address, together).
        let _one_at_a_time = lock(&self.joining);
        let mut stale = Vec::new();
        for r in self.replicas.iter().filter(|r| r.address == address) {
            match &r.lease {
                Some(slot) if slot.holder == holder && r.expert_id == expert_id => {
                    stale.push(r.key)
                }
                _ => {
                    return Err(RegistryError::AddressTaken {
                        address: address.to_owned(),
                        holder: format!("expert {:?}", r.expert_id),
                    });
                }
            }
        }
        let known = self.experts.get(expert_id).map(|e| e.clone());
        if let Some(entry) = &known
            && (entry.cost - cost).abs() > 1e-9 * entry.cost.max(1.0)
        {
            return Err(RegistryError::CostConflict {
                expert: expert_id.to_owned(),
                known: entry.cost,
                declared: cost,
            });
        }
        if known.is_none() && self.experts.len() >= self.max_experts {
            return Err(RegistryError::Full {
                what: "experts",
                limit: self.max_experts,
            });
        }
        if self.replicas.len() - stale.len() >= self.max_replicas {
            return Err(RegistryError::Full {
                what: "replicas",
                limit: self.max_replicas,
            });
        }
        self.experts
            .entry(expert_id.to_owned())
            .or_insert_with(|| Arc::new(ExpertEntry::new(expert_id, cost, backend, false)));
        let ttl = self.lease_policy.grant(requested_ttl);
        let lease_id = new_lease_id();
        let slot = LeaseSlot {
            id: lease_id.clone(),
            holder: holder.to_owned(),
            lease: Mutex::new(Lease::new(ttl, now)),
        };
        let inserted =
            self.insert_replica(expert_id, address, Origin::Registered, Some(slot), limit);
        match inserted {
            Ok(replica) => replica.set_capabilities(capabilities.clone(), false),
            Err(e) => {
                self.forget_if_empty(expert_id);
                return Err(e);
            }
        }
        // The old lease goes after the new one is in, so the expert (and its counters) stays.
        for key in stale {
            self.remove_replica(key);
        }
        self.rebuild_snapshot();
        Ok(Granted { lease_id, ttl })
    }

    /// Renews a lease (only its holder may) and records the load the replica reports.
    pub fn heartbeat(
        &self,
        lease_id: &str,
        holder: &str,
        load: Option<LoadReport>,
        now: Instant,
    ) -> Result<Duration, RegistryError> {
        let replica = self.leased(lease_id, holder)?;
        let slot = replica
            .lease
            .as_ref()
            .expect("a leased replica has a lease");
        let mut lease = lock(&slot.lease);
        if lease.is_expired(now) {
            // Expired but not yet reaped: the worker must register again, like after a reap.
            drop(lease);
            self.remove_replica(replica.key);
            self.rebuild_snapshot();
            return Err(RegistryError::UnknownLease(lease_id.to_owned()));
        }
        lease.renew(now);
        let ttl = lease.ttl();
        drop(lease);
        if let Some(load) = load {
            *lock(&replica.reported) = load;
        }
        Ok(ttl)
    }

    /// Ends a lease (only its holder may).
    pub fn deregister(&self, lease_id: &str, holder: &str) -> Result<(), RegistryError> {
        let replica = self.leased(lease_id, holder)?;
        self.remove_replica(replica.key);
        self.rebuild_snapshot();
        Ok(())
    }

    /// The replica holding `lease_id`, if `holder` took it.
    fn leased(&self, lease_id: &str, holder: &str) -> Result<Arc<Replica>, RegistryError> {
        let unknown = || RegistryError::UnknownLease(lease_id.to_owned());
        let key = *self.leases.get(lease_id).ok_or_else(unknown)?;
        let replica = self
            .replicas
            .get(&key)
            .map(|r| r.clone())
            .ok_or_else(unknown)?;
        let slot = replica.lease.as_ref().ok_or_else(unknown)?;
        if slot.holder != holder {
            return Err(RegistryError::NotLeaseHolder {
                lease: lease_id.to_owned(),
            });
        }
        Ok(replica)
    }

    /// Removes replicas whose lease expired; returns what was removed as (expert, address).
    pub fn reap_expired(&self, now: Instant) -> Vec<(String, String)> {
        let expired: Vec<Arc<Replica>> = self
            .replicas
            .iter()
            .filter(|r| r.lease_expired(now))
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

    /// Writes the series of every expert and replica in the pool now: one that left has none.
    pub fn write_metrics(&self, out: &mut PoolSeries, now: Instant) {
        for group in &self.snapshot().experts {
            let entry = &group.entry;
            let labels: &[(&str, &str)] = &[("expert", &entry.id)];
            let decisions = entry.decisions.load(Ordering::Relaxed) as f64;
            out.sample("l2d_decisions_total", labels, decisions);
            out.sample("l2d_answers_total", labels, entry.answered_total() as f64);
            let served = entry.served.load(Ordering::Relaxed) as f64;
            out.sample("l2d_served_total", labels, served);
            let probes = entry.probe_calls.load(Ordering::Relaxed) as f64;
            out.sample("l2d_probe_calls_total", labels, probes);
            out.sample(
                "l2d_cost_charged_units_total",
                labels,
                entry.cost_charged_total(),
            );
            out.codes("l2d_fallbacks_total", labels, &entry.fallbacks);
            for (reason, n) in Exclusion::LABELS.iter().zip(&entry.exclusions) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let labels: &[(&str, &str)] = &[("expert", &entry.id), ("reason", reason)];
                    out.sample("l2d_exclusions_total", labels, n as f64);
                }
            }
            let available = group
                .replicas
                .iter()
                .filter(|r| r.is_available(now))
                .count();
            out.sample("l2d_expert_available_replicas", labels, available as f64);
            for replica in &group.replicas {
                replica.write_series(out, now);
            }
        }
    }

    /// The pool now, expert by expert in snapshot order (what `Pool.ListPool` reports).
    pub fn states(&self, now: Instant) -> Vec<ExpertState> {
        self.snapshot()
            .experts
            .iter()
            .map(|group| ExpertState {
                expert_id: group.entry.id.clone(),
                cost: group.entry.cost,
                backend: group.entry.backend.clone(),
                replicas: {
                    let declared = group.entry.declared_capabilities();
                    group
                        .replicas
                        .iter()
                        .map(|r| r.state(now, &declared))
                        .collect()
                },
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
        lease: Option<LeaseSlot>,
        limit: Option<u32>,
    ) -> Result<Arc<Replica>, RegistryError> {
        let endpoint = crate::grpc::tls::endpoint(address, self.client_tls.as_ref())
            .map_err(|e| RegistryError::Invalid {
                field: "address",
                message: format!("{address:?} is not a usable address ({e})"),
            })?
            .connect_timeout(Duration::from_secs(2))
            // A peer that goes silent (a dead node, a partition: no reset) is found by the
            // HTTP/2 ping within 10 s + 5 s even between health checks, and its connection closed.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = &lease {
            self.leases.insert(slot.id.clone(), key);
        }
        let channel = endpoint.connect_lazy();
        let replica = Replica {
            key,
            expert_id: expert_id.to_owned(),
            address: address.to_owned(),
            origin,
            channel: channel.clone(),
            client: ExpertClient::new(channel)
                .max_decoding_message_size(crate::grpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::grpc::MAX_MESSAGE_BYTES),
            limit: AtomicU32::new(limit.filter(|&l| l > 0).unwrap_or(self.default_limit)),
            lease,
            in_flight: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            reported: Mutex::new(LoadReport::default()),
            health: Mutex::new(ReplicaHealth::new()),
            health_params: self.health,
            calls: CodeCounts::default(),
            latency: LatencyHistogram::default(),
            ejections: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            capabilities: ArcSwap::from_pointee(Capabilities::default()),
            description: AtomicU8::new(NOT_ASKED),
            draining: AtomicBool::new(false),
        };
        let replica = Arc::new(replica);
        self.replicas.insert(key, replica.clone());
        Ok(replica)
    }

    /// Removes a replica; an expert only registered replicas made (none declared in the pool
    /// file) leaves with its last replica, so its id and cost are free again.
    fn remove_replica(&self, key: u64) {
        if let Some((_, replica)) = self.replicas.remove(&key) {
            if let Some(slot) = &replica.lease {
                self.leases.remove(&slot.id);
            }
            self.forget_if_empty(&replica.expert_id);
        }
    }

    /// Forgets an undeclared expert with no replica left.
    fn forget_if_empty(&self, expert_id: &str) {
        if !self.replicas.iter().any(|r| r.expert_id == expert_id) {
            self.experts.remove_if(expert_id, |_, e| !e.declared);
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
        Registry::new(ReplicaPolicy::default())
    }

    fn join<'a>(
        expert_id: &'a str,
        address: &'a str,
        cost: f64,
        backend: &'a str,
        requested_ttl: Option<Duration>,
    ) -> Join<'a> {
        Join {
            holder: "w",
            expert_id,
            address,
            cost,
            backend,
            requested_ttl,
            limit: None,
            capabilities: Box::leak(Box::default()),
        }
    }

    #[tokio::test]
    async fn leases_expire_unless_renewed_and_are_reaped() {
        let reg = registry();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1);
        let a = reg
            .register(
                join("bert", "127.0.0.1:9001", 100.0, "replay", Some(ttl)),
                t0,
            )
            .unwrap();
        let b = reg
            .register(
                join("bert", "127.0.0.1:9002", 100.0, "replay", Some(ttl)),
                t0,
            )
            .unwrap();
        assert_eq!(reg.snapshot().experts[0].replicas.len(), 2);
        reg.heartbeat(&a.lease_id, "w", None, t0 + Duration::from_millis(800))
            .unwrap();
        let reaped = reg.reap_expired(t0 + Duration::from_millis(1200));
        assert_eq!(
            reaped,
            vec![("bert".to_string(), "127.0.0.1:9002".to_string())]
        );
        assert_eq!(
            reg.heartbeat(&b.lease_id, "w", None, t0 + Duration::from_millis(1200)),
            Err(RegistryError::UnknownLease(b.lease_id.clone()))
        );
        reg.deregister(&a.lease_id, "w").unwrap();
        // A registered-only expert with no replica left is gone from the pool.
        assert!(reg.snapshot().experts.is_empty());
        assert!(reg.deregister(&a.lease_id, "w").is_err());
    }

    #[tokio::test]
    async fn declared_experts_keep_order_and_refuse_conflicting_costs() {
        let reg = registry();
        reg.declare_expert("lr", 1.0, "replay");
        reg.declare_expert("bert", 100.0, "replay");
        let now = Instant::now();
        reg.register(join("aaa", "127.0.0.1:9003", 3.0, "lexical", None), now)
            .unwrap();
        let ids: Vec<String> = reg
            .snapshot()
            .experts
            .iter()
            .map(|g| g.entry.id.clone())
            .collect();
        assert_eq!(ids, ["lr", "bert", "aaa"]);
        let err = reg
            .register(join("bert", "127.0.0.1:9004", 50.0, "replay", None), now)
            .unwrap_err();
        assert!(matches!(err, RegistryError::CostConflict { known, .. } if known == 100.0));
    }

    #[tokio::test]
    async fn re_registering_the_same_address_replaces_the_old_lease() {
        let reg = registry();
        let now = Instant::now();
        let first = reg
            .register(join("x", "127.0.0.1:9005", 1.0, "replay", None), now)
            .unwrap();
        reg.snapshot().experts[0].entry.record_answer(1.0);
        let second = reg
            .register(join("x", "127.0.0.1:9005", 1.0, "replay", None), now)
            .unwrap();
        assert_ne!(first.lease_id, second.lease_id);
        assert_eq!(reg.snapshot().experts[0].replicas.len(), 1);
        // The expert stayed across the replacement: its counters too.
        assert_eq!(reg.snapshot().experts[0].entry.answered_total(), 1);
        assert!(reg.heartbeat(&first.lease_id, "w", None, now).is_err());
        assert!(reg.heartbeat(&second.lease_id, "w", None, now).is_ok());
    }

    #[tokio::test]
    async fn an_expired_lease_is_unavailable_before_it_is_reaped() {
        let reg = registry();
        let t0 = Instant::now();
        reg.register(
            join(
                "x",
                "127.0.0.1:9006",
                1.0,
                "replay",
                Some(Duration::from_secs(1)),
            ),
            t0,
        )
        .unwrap();
        let snap = reg.snapshot();
        let replica = &snap.experts[0].replicas[0];
        assert!(replica.is_available(t0));
        assert!(!replica.is_available(t0 + Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn dns_replicas_follow_the_resolved_addresses() {
        let reg = registry();
        reg.declare_expert("bert", 100.0, "replay");
        let addrs = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(
            reg.sync_dns(
                "bert",
                &addrs(&["10.0.0.1:50061", "10.0.0.2:50061"]),
                Some(4)
            ),
            Ok((2, 0))
        );
        assert_eq!(
            reg.sync_dns(
                "bert",
                &addrs(&["10.0.0.2:50061", "10.0.0.3:50061"]),
                Some(4)
            ),
            Ok((1, 1))
        );
        let snap = reg.snapshot();
        let mut known: Vec<&str> = snap.experts[0]
            .replicas
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        known.sort();
        assert_eq!(known, ["10.0.0.2:50061", "10.0.0.3:50061"]);
        assert!(
            snap.experts[0]
                .replicas
                .iter()
                .all(|r| r.limit() == 4 && r.origin == Origin::Dns)
        );
        assert_eq!(
            reg.sync_dns("bert", &addrs(&["10.0.0.2:50061", "10.0.0.3:50061"]), None),
            Ok((0, 0))
        );
        assert!(reg.sync_dns("nobody", &[], None).is_err());
    }

    #[tokio::test]
    async fn slots_are_bounded_by_the_limit_and_freed_on_drop() {
        let reg = registry();
        reg.declare_expert("x", 1.0, "replay");
        reg.add_fixed_replica("x", "127.0.0.1:9007", Origin::Static, Some(2))
            .unwrap();
        let snap = reg.snapshot();
        let replica = &snap.experts[0].replicas[0];
        let a = replica.try_begin_call().unwrap();
        let b = replica.try_begin_call().unwrap();
        assert!(replica.try_begin_call().is_none());
        assert!(snap.experts[0].loads(Instant::now())[0].saturated());
        drop(a);
        assert_eq!(replica.in_flight(), 1);
        let _c = replica.try_begin_call().unwrap();
        drop(b);
        assert_eq!(replica.in_flight(), 1);
    }

    #[tokio::test]
    async fn failing_calls_eject_a_replica_and_a_passing_health_check_readmits_it() {
        let reg = registry();
        reg.declare_expert("x", 1.0, "replay");
        reg.add_fixed_replica("x", "127.0.0.1:9008", Origin::Static, None)
            .unwrap();
        let snap = reg.snapshot();
        let replica = &snap.experts[0].replicas[0];
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        // A refusal (NOT_FOUND) is a working replica; a deadline is the caller's choice.
        for _ in 0..10 {
            assert_eq!(replica.record_call(Err(Failure::NoAnswer), ms, t0), None);
            assert_eq!(
                replica.record_call(Err(Failure::DeadlinePassed), ms, t0),
                None
            );
        }
        assert!(replica.is_available(t0));
        for _ in 0..4 {
            assert_eq!(replica.record_call(Err(Failure::Unreachable), ms, t0), None);
        }
        assert_eq!(
            replica.record_call(Err(Failure::Unreachable), ms, t0),
            Some(Duration::from_secs(1))
        );
        assert!(!replica.is_available(t0));
        assert!(!snap.experts[0].loads(t0)[0].available);
        assert!(reg.states(t0)[0].replicas[0].ejected_for > Duration::ZERO);
        // Ejected is not gone: the reaper only removes lapsed leases.
        assert!(reg.reap_expired(t0).is_empty());
        assert_eq!(reg.snapshot().experts[0].replicas.len(), 1);
        assert_eq!(replica.record_health_check(HealthCheck::Serving, t0), None);
        assert!(replica.is_available(t0));
        // A failed check ejects at once.
        assert!(
            replica
                .record_health_check(HealthCheck::Failed, t0)
                .is_some()
        );
        assert!(!replica.is_available(t0));
    }

    #[tokio::test]
    async fn an_unmeasured_replica_is_given_its_siblings_latency() {
        let reg = registry();
        reg.declare_expert("x", 1.0, "replay");
        for port in [9011, 9012] {
            reg.add_fixed_replica("x", &format!("127.0.0.1:{port}"), Origin::Static, None)
                .unwrap();
        }
        let snap = reg.snapshot();
        let t0 = Instant::now();
        // Nothing measured: the default for both.
        assert!(
            snap.experts[0]
                .loads(t0)
                .iter()
                .all(|l| (l.rtt - 0.030).abs() < 1e-12)
        );
        snap.experts[0].replicas[0].record_call(Ok(()), Duration::from_millis(1), t0);
        let loads = snap.experts[0].loads(t0);
        assert!((loads[0].rtt - 0.001).abs() < 1e-12);
        assert_eq!(loads[1].rtt, loads[0].rtt);
    }
}
