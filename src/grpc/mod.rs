//! The gRPC edge: generated contracts, the one error → status table, deadline parsing, the
//! server scaffolding every node shares (health, reflection, graceful shutdown), and the typed
//! `Router` client.

pub mod client;
pub mod deadline;
pub mod server;
pub mod status;
pub mod tls;

/// Largest gRPC message every l2d server and client accepts or sends: a query's largest context
/// (256 KiB by default) and question fit many times over. A bigger message is refused from its
/// length prefix, before its body is read (tonic answers OUT_OF_RANGE).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Messages and services generated from `proto/l2d/v1/*.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("l2d.v1");

    /// The encoded descriptors of every l2d.v1 file, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("l2d_descriptor");
}
