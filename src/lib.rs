//! # l2d: a Learning-to-Defer scheduler for a pool of QA experts
//!
//! A scheduler node receives (question, context) queries, scores every expert of a pool with an
//! allocation policy (expected error plus the price of its compute, learned with the two-stage
//! Learning-to-Defer surrogate), and forwards each query to a replica of the chosen expert,
//! falling back to the next-best one on failure.
//!
//! ## Map of the crate
//!
//! | module | what | may depend on |
//! | --- | --- | --- |
//! | [`core`] | pure logic: query validation, text analysis, the SQuAD metric, features, the rejector and its surrogate, policies (prior, learned), the dispatch decision, leases, the cost target, off-policy estimates, error kinds, the seeded RNG, the registration allow-list and rate | std, serde, thiserror, ipnet |
//! | [`defaults`] | where the shipped pool, policy and data set are found | std |
//! | [`squad`] | SQuAD v1.1 / v2.0 data sets, and resolving (question, context) to an id | serde |
//! | [`pool_file`] | the TOML pool file: experts, costs, backends, placement | serde, toml |
//! | [`expert`] | the expert worker: backends (replay, lexical, typed), the `Expert` service, lease keeping | core, grpc |
//! | [`scheduler`] | the scheduler: registry (dashmap + snapshot), `Router` and `Pool` services | core, grpc |
//! | [`cluster`] | running a pool file: in-process experts plus a scheduler's registry | all of the above |
//! | [`report`] | `experts-report`: every expert of a pool over a data set, through gRPC | cluster, squad |
//! | [`train`] | labelling through gRPC, the split by article, fitting the bank, evaluation beside baselines, plots, off-policy evaluation | core, report |
//! | [`demo`] | `l2d demo`: the shipped policy through a live scheduler beside the baselines | all of the above |
//! | [`telemetry`] | Prometheus metrics: names, the recorder, the pool's series written at scrape time, the `/metrics` endpoint | grpc, metrics |
//! | [`grpc`] | generated contracts, the error kind → status table, deadlines, server scaffolding and listener limits, TLS, the typed client | core, tonic |
//!
//! The command line lives in [`cli`]; the binary (`src/main.rs`) only parses and reports errors.
//!
//! ## Calling a scheduler from Rust
//!
//! [`RouterClient`] is a typed client of the `Router` service; see [`grpc::client`] for an
//! example.

pub mod cli;
pub mod cluster;
pub mod core;
pub mod defaults;
pub mod demo;
pub mod expert;
pub mod grpc;
pub mod load;
pub mod logs;
pub mod pool_file;
pub mod report;
pub mod scheduler;
pub mod squad;
pub mod telemetry;
pub mod trace;
pub mod train;

pub use grpc::client::{Ask, RouterClient};
pub use grpc::pb;
