//! TLS and credential flags: a node's listener, and a client's connection to a scheduler.

use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS on a node's gRPC listener.
#[derive(Debug, Args)]
pub struct ServerTlsArgs {
    /// PEM certificate (chain) for this node's listener: serve TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Demand client certificates signed by this CA (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    pub(super) fn config(&self) -> anyhow::Result<Option<Arc<crate::grpc::tls::ServerTls>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::grpc::tls::ServerTls::load(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?)),
            _ => Ok(None),
        }
    }
}

/// TLS of a client: the server's CA, a client identity, the expected name.
pub(super) fn client_tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    domain: Option<&str>,
) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    let Some(ca) = ca else {
        return Ok(None);
    };
    Ok(Some(crate::grpc::tls::client_config(
        ca,
        cert.zip(key),
        domain,
    )?))
}

/// TLS and credentials of a command that calls a scheduler.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// CA of the scheduler's certificate: connect over TLS.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Certificate and key to present (mutual TLS).
    #[arg(long, requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name expected in the scheduler's certificate (default: the host dialled).
    #[arg(long, requires = "tls_ca")]
    pub tls_domain: Option<String>,
    /// Send `authorization: Bearer TOKEN` with the token in this file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl ClientArgs {
    pub(super) fn tls(&self) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
        client_tls(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_domain.as_deref(),
        )
    }

    pub(super) fn token(&self) -> anyhow::Result<Option<String>> {
        self.token_file
            .as_deref()
            .map(crate::scheduler::access::read_token)
            .transpose()
    }
}
