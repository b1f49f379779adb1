//! The pool as the scheduler's registry knows it, in domain types: how a replica joined, the
//! load a worker reports, and the state of every expert and replica (what `Pool.ListPool`
//! shows). The protobuf messages are made from these at the gRPC edge (`grpc::convert`), which
//! depends on this module, never the other way.

use std::time::Duration;

/// How a replica joined the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Listed with an address in the pool file.
    Static,
    /// Spawned inside the scheduler's process from the pool file.
    InProcess,
    /// Joined with `Pool.Register` (holds a lease).
    Registered,
    /// One of the addresses a DNS name resolved to.
    Dns,
}

/// The load a registered worker reports with its heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Queries being answered right now.
    pub in_flight: u32,
    /// Queries waiting for a slot.
    pub queue_depth: u32,
    /// Queries answered since the worker started.
    pub answered_total: u64,
}

/// One replica at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaState {
    pub address: String,
    pub origin: Origin,
    /// Time left on the lease (`None`: the replica holds no lease). Lease ids are not part of
    /// the state: they are the holder's handle on its lease.
    pub lease_remaining: Option<Duration>,
    /// Calls this scheduler has in flight to the replica.
    pub in_flight: u32,
    /// The last load the worker reported (`None`: the replica holds no lease).
    pub reported: Option<LoadReport>,
    pub answered_total: u64,
    pub failed_total: u64,
    /// Calls it refused because it could not take the query (not failures: see
    /// [`super::call::Failure::could_not_take`]).
    pub refused_total: u64,
    /// What it takes, as the pool file and the replica declare.
    pub capabilities: super::capability::Capabilities,
    /// Calls this scheduler sends to the replica at once, at most.
    pub max_in_flight: u32,
    /// PeakEWMA latency estimate in seconds (the default before the first call).
    pub rtt_seconds: f64,
    /// Decaying share of recent calls that failed, in [0, 1].
    pub error_rate: f64,
    /// Time left in an outlier ejection (zero: not ejected).
    pub ejected_for: Duration,
}

/// One expert and its replicas at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertState {
    pub expert_id: String,
    pub cost: f64,
    pub backend: String,
    pub replicas: Vec<ReplicaState>,
    /// Queries it answered through the scheduler.
    pub answered_total: u64,
    /// Cost charged for its calls.
    pub cost_charged_total: f64,
}
