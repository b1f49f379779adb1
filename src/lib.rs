//! # l2d: a Learning-to-Defer scheduler for a pool of QA experts
//!
//! A scheduler node receives (question, context) queries, scores every expert of a pool with an
//! allocation policy (expected error plus the price of its compute), and forwards each query to
//! a replica of the chosen expert, falling back to the next-best one on failure.
//!
//! ## Map of the crate
//!
//! | module | what | may depend on |
//! | --- | --- | --- |
//! | [`core`] | pure logic: query validation, the policy interface and the prior policy, the dispatch decision, leases | std, thiserror |
//! | [`squad`] | SQuAD v1.1 / v2.0 data sets, and resolving (question, context) to an id | serde |
//! | [`pool_file`] | the TOML pool file: experts, costs, backends, placement | serde, toml |
//! | [`expert`] | the expert worker: backends (replay, lexical, typed), the `Expert` service, lease keeping | core, grpc |
//! | [`scheduler`] | the scheduler: registry (dashmap + snapshot), `Router` and `Pool` services | core, grpc |
//! | [`cluster`] | running a pool file: in-process experts plus a scheduler's registry | all of the above |
//! | [`report`] | `experts-report`: every expert of a pool over a data set, through gRPC | cluster, squad |
//! | [`grpc`] | generated contracts, the error → status table, deadlines, server scaffolding, the typed client | tonic |
//!
//! The binary (`src/main.rs`) is a thin clap front end over these modules.
//!
//! ## Calling a scheduler from Rust
//!
//! [`RouterClient`] is a typed client of the `Router` service; see [`grpc::client`] for an
//! example.

pub mod cli;
pub mod cluster;
pub mod core;
pub mod demo;
pub mod expert;
pub mod grpc;
pub mod pool_file;
pub mod report;
pub mod scheduler;
pub mod squad;
pub mod train;

pub use grpc::client::{Ask, RouterClient};
pub use grpc::pb;
