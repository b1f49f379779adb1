//! The pure core of l2d: validated queries, what experts can take, the allocation policy
//! interface, the dispatch decision, lease arithmetic.
//!
//! Nothing here performs I/O or depends on tokio, tonic, prost, dashmap or metrics: every
//! function is a function of its arguments (time is passed in as `now`), so it is unit- and
//! property-tested without servers. The shells in [`crate::scheduler`] and [`crate::expert`]
//! gather the inputs, call the core and perform the RPCs.

pub mod allow_list;
pub mod answer_type;
pub mod ask;
pub mod calibration;
pub mod call;
pub mod capability;
pub mod cost_target;
pub mod decision;
pub mod error_kind;
pub mod features;
pub mod learned;
pub mod lease;
pub mod metric;
pub mod offpolicy;
pub mod policy;
pub mod pool_state;
pub mod query;
pub mod rate_limit;
pub mod reading;
pub mod rejector;
pub mod replica_health;
pub mod rng;
pub mod service_time;
pub mod text;
