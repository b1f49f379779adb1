//! The gRPC edge: generated contracts, the protobuf ↔ domain conversions, the one error →
//! status table, deadline parsing, the server scaffolding every node shares (health,
//! reflection, graceful shutdown), and the typed `Router` client.

pub mod client;
pub mod convert;
pub mod deadline;
pub mod server;
pub mod status;
pub mod tls;
pub mod wire;

/// Largest gRPC message an l2d client accepts or sends (the scheduler's calls to experts, the
/// `Router` client): servers are held to the tighter limits below.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest request carrying one query (`Router.Ask`, `Expert.Answer`): the question, context
/// and id at their limits, plus 4 KiB for the other fields and protobuf framing. A bigger
/// message is refused from its length prefix, before its body is read.
pub fn query_message_bytes(limits: &crate::core::query::QueryLimits) -> usize {
    limits.max_question_bytes + limits.max_context_bytes + limits.max_id_bytes + 4 * 1024
}

/// Largest reply to one query: an answer is part of its context, and the decision's
/// explanation gets 64 KiB.
pub fn answer_message_bytes(limits: &crate::core::query::QueryLimits) -> usize {
    limits.max_context_bytes + 64 * 1024
}

/// Largest `Pool` request (a registration, a heartbeat: a few hundred bytes).
pub const POOL_REQUEST_BYTES: usize = 16 * 1024;

/// The Open Inference Protocol's messages and client (`proto/inference/`), which the `kserve`
/// expert backend calls.
pub mod inference {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inference");
}

/// Messages and services generated from `proto/l2d/v1/*.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("l2d.v1");

    /// The encoded descriptors of every l2d.v1 file, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("l2d_descriptor");
}
