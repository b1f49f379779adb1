//! TLS and mutual TLS for every l2d listener and client (rustls, through tonic), off unless
//! configured: local runs stay plain HTTP/2 on loopback.
//!
//! A server with a certificate and key speaks TLS; with a client CA as well, it demands a client
//! certificate signed by that CA (mutual TLS). A client with a CA verifies the server against it
//! (no system roots: l2d deployments use their own CA); with a certificate and key it presents
//! them. Files are PEM.

use anyhow::Context;
use std::path::Path;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// A server's TLS: its certificate chain and key, and the CA its clients' certificates must be
/// signed by (mutual TLS), if any.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<ServerTlsConfig> {
    let identity = Identity::from_pem(read(cert, "TLS certificate")?, read(key, "TLS key")?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
    }
    Ok(config)
}

/// A client's TLS: the CA that signed the server's certificate, the client's own certificate and
/// key for mutual TLS, and the name to expect in the server's certificate when it is not the
/// host dialled (e.g. a pod IP behind a DNS name).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    domain: Option<&str>,
) -> anyhow::Result<ClientTlsConfig> {
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA")?));
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(
            read(cert, "TLS certificate")?,
            read(key, "TLS key")?,
        ));
    }
    if let Some(domain) = domain {
        config = config.domain_name(domain);
    }
    Ok(config)
}

/// An endpoint for `address` (`host:port` or a URI): `https://` with `tls`, `http://` without.
pub fn endpoint(
    address: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("{scheme}://{address}")
    };
    let endpoint = Endpoint::from_shared(uri)?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.clone()),
        None => Ok(endpoint),
    }
}

/// The identities a verified client certificate carries: its DNS and URI subject alternative
/// names and its subject's common name.
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push((*n).to_owned()),
                _ => {}
            }
        }
    }
    names
}
