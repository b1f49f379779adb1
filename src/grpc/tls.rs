//! TLS and mutual TLS for every l2d listener and client (rustls, through tonic), off unless
//! configured: local runs stay plain HTTP/2 on loopback.
//!
//! A server with a certificate and key speaks TLS; with a client CA as well, it demands a client
//! certificate signed by that CA (mutual TLS). A client with a CA verifies the server against it
//! (no system roots: l2d deployments use their own CA); with a certificate and key it presents
//! them. Files are PEM.

use anyhow::Context;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
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

/// A server's TLS, re-read from its files when they change: cert-manager (or any rotation that
/// rewrites or re-links the files) reaches new connections without a restart. Connections
/// already open keep the certificate they were accepted with.
///
/// The handshake is rustls (ring), as tonic's own; the stream handed to tonic is a
/// `tokio_rustls::server::TlsStream`, so `Request::peer_certs()` works as with tonic's TLS.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    current: ArcSwap<LoadedTls>,
}

struct LoadedTls {
    acceptor: TlsAcceptor,
    /// The bytes of the certificate, key and client CA the acceptor was built from.
    files: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A server's TLS: its certificate chain and key, and the CA its clients' certificates must
    /// be signed by (mutual TLS), if any. Fails on unreadable or invalid files.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<Arc<Self>> {
        let files = Self::read_files(cert, key, client_ca)?;
        let acceptor = acceptor(&files, cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            client_ca: client_ca.map(Path::to_owned),
            current: ArcSwap::from_pointee(LoadedTls { acceptor, files }),
        }))
    }

    fn read_files(cert: &Path, key: &Path, ca: Option<&Path>) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut files = vec![read(cert, "TLS certificate")?, read(key, "TLS key")?];
        if let Some(ca) = ca {
            files.push(read(ca, "client CA")?);
        }
        Ok(files)
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.load().acceptor.clone()
    }

    /// Whether mutual TLS is demanded.
    pub fn verifies_clients(&self) -> bool {
        self.client_ca.is_some()
    }

    /// Re-reads the files: `Ok(true)` when they changed and the new ones are in force,
    /// `Ok(false)` when unchanged; on error (unreadable, a key that does not match, a file
    /// half-written) the previous configuration stays.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let files = Self::read_files(&self.cert, &self.key, self.client_ca.as_deref())?;
        if files == self.current.load().files {
            return Ok(false);
        }
        let acceptor = acceptor(&files, &self.cert, &self.key)?;
        self.current.store(Arc::new(LoadedTls { acceptor, files }));
        Ok(true)
    }
}

/// A rustls acceptor from PEM bytes: `[certificate chain, key, client CA?]`.
fn acceptor(files: &[Vec<u8>], cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files[0])
        .collect::<Result<_, _>>()
        .with_context(|| format!("the TLS certificate {} is not PEM", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the TLS certificate {} holds no certificate",
        cert.display()
    );
    let private = PrivateKeyDer::from_pem_slice(&files[1])
        .with_context(|| format!("the TLS key {} holds no PEM private key", key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match files.get(2) {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots
                    .add(c.context("the client CA is not PEM")?)
                    .context("the client CA holds an unusable certificate")?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("the client CA")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .with_context(|| format!("the TLS key {} does not fit the certificate", key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
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
