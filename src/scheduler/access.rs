//! Who may call what, decided on a request's headers before its body is read.
//!
//! A *credential* is a bearer token (read from a file, re-read when the file changes) or the
//! identity of a verified client certificate (its common name or a DNS/URI subject alternative
//! name). Each has a name, the expert ids it may serve, and whether it may reload the policy.
//! The scheduler has two sets: one for `Pool` (membership) and one for `Router.Ask`.
//!
//! | call | needs |
//! | --- | --- |
//! | `Router.Ask` | a router credential, when any is configured |
//! | `Router.ReportOutcome` | a pool credential allowed to report outcomes; with none configured, a caller on the scheduler's own host (loopback): an outcome trains the next policy, so it is never open to the network |
//! | `Pool.Register`, `Heartbeat`, `Deregister` | registration on, and a pool credential when any is configured; the credential's expert ids bound what it may register as, and a lease answers only to the name that took it |
//! | `Pool.ReloadPolicy` | a pool credential allowed to reload the policy |
//! | `Pool.ListPool`, `Pool.GetPolicy` | a pool or a router credential, when any is configured |
//! | health, reflection | nothing |
//!
//! Refusals: UNAUTHENTICATED for no credential or a wrong token, PERMISSION_DENIED for a
//! certificate or token that is not allowed this call, UNIMPLEMENTED for membership calls with
//! registration off. Tokens are compared without an early exit.

use crate::core::error_kind::{ErrorKind, Refusal};
use crate::grpc::server::{Authorize, Caller};
use crate::grpc::tls::certificate_identities;
use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// The name of callers where no credential is needed.
pub const ANONYMOUS: &str = "anonymous";

/// How a credential is proven.
#[derive(Debug)]
pub enum Proof {
    /// `authorization: Bearer TOKEN`; `file` is re-read by [`Access::refresh`].
    Token {
        value: RwLock<String>,
        file: Option<PathBuf>,
    },
    /// A client certificate (mutual TLS) naming this identity.
    Certificate(String),
}

#[derive(Debug)]
pub struct Credential {
    pub name: String,
    pub proof: Proof,
    /// Expert ids it may register replicas for; `None`: any.
    pub experts: Option<Vec<String>>,
    /// May call `Pool.ReloadPolicy`.
    pub reload_policy: bool,
    /// May call `Router.ReportOutcome`.
    pub report_outcomes: bool,
}

impl Credential {
    /// A token credential (any expert, may reload).
    pub fn token(name: &str, value: &str) -> Self {
        Self {
            name: name.to_owned(),
            proof: Proof::Token {
                value: RwLock::new(value.to_owned()),
                file: None,
            },
            experts: None,
            reload_policy: true,
            report_outcomes: true,
        }
    }

    /// A token read from `file` now and again by [`Access::refresh`].
    pub fn token_file(name: &str, file: &Path) -> anyhow::Result<Self> {
        let mut credential = Self::token(name, &read_token(file)?);
        if let Proof::Token { file: f, .. } = &mut credential.proof {
            *f = Some(file.to_owned());
        }
        Ok(credential)
    }

    /// A client-certificate identity (any expert, may reload); the name is the identity.
    pub fn certificate(identity: &str) -> Self {
        Self {
            name: identity.to_owned(),
            proof: Proof::Certificate(identity.to_owned()),
            experts: None,
            reload_policy: true,
            report_outcomes: true,
        }
    }

    /// Only these experts, and no policy reloads or outcome reports.
    pub fn for_experts(mut self, experts: &[&str]) -> Self {
        self.experts = Some(experts.iter().map(|e| e.to_string()).collect());
        self.reload_policy = false;
        self.report_outcomes = false;
        self
    }

    /// May register replicas of `expert_id`.
    pub fn may_serve(&self, expert_id: &str) -> bool {
        self.experts
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|id| id == "*" || id == expert_id))
    }
}

/// A secret read from a file (surrounding white space trimmed), refused when empty.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?
        .trim()
        .to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        path.display()
    );
    Ok(token)
}

/// The credentials that may make one kind of call; none: everybody may.
#[derive(Debug, Default)]
pub struct Access {
    pub credentials: Vec<Credential>,
}

/// Compares without an early exit on the first differing byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    pub fn new(credentials: Vec<Credential>) -> Self {
        Self { credentials }
    }

    /// Nobody is checked.
    pub fn is_open(&self) -> bool {
        self.credentials.is_empty()
    }

    /// Some credential is a bearer token.
    pub fn has_tokens(&self) -> bool {
        self.credentials
            .iter()
            .any(|c| matches!(c.proof, Proof::Token { .. }))
    }

    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.credentials.iter().find(|c| c.name == name)
    }

    /// The credential the request proves, or why it is refused; `what` names the call in the
    /// message. Open access: `None`.
    pub fn check(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        what: &str,
    ) -> Result<Option<&Credential>, Refusal> {
        if self.is_open() {
            return Ok(None);
        }
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if let Some(given) = bearer {
            let mut found = None;
            for c in &self.credentials {
                if let Proof::Token { value, .. } = &c.proof {
                    let value = value.read().unwrap_or_else(|e| e.into_inner());
                    // Every token is compared, so the time taken says nothing of which matched.
                    if same_secret(value.as_bytes(), given.as_bytes()) && found.is_none() {
                        found = Some(c);
                    }
                }
            }
            if let Some(c) = found {
                return Ok(Some(c));
            }
        }
        let presented = peer_identities(extensions);
        if let Some(c) = self.credentials.iter().find(
            |c| matches!(&c.proof, Proof::Certificate(id) if presented.iter().any(|p| p == id)),
        ) {
            return Ok(Some(c));
        }
        if bearer.is_some() {
            return Err(Refusal::new(
                ErrorKind::Unauthenticated,
                format!("{what}: invalid token"),
            ));
        }
        if !presented.is_empty() {
            return Err(Refusal::new(
                ErrorKind::Forbidden,
                format!(
                    "{what}: client certificate {} may not make this call",
                    presented.join(", ")
                ),
            ));
        }
        Err(Refusal::new(
            ErrorKind::Unauthenticated,
            format!(
                "{what} needs credentials: `authorization: Bearer TOKEN` metadata or an allowed client certificate"
            ),
        ))
    }

    /// Re-reads every token file: `Ok(true)` when a token changed. A file that cannot be read
    /// or is empty leaves its token as it was, and the first such error is returned.
    pub fn refresh(&self) -> Result<bool, String> {
        let mut changed = false;
        let mut error = None;
        for c in &self.credentials {
            if let Proof::Token {
                value,
                file: Some(file),
            } = &c.proof
            {
                match read_token(file) {
                    Ok(new) => {
                        let mut value = value.write().unwrap_or_else(|e| e.into_inner());
                        if *value != new {
                            *value = new;
                            changed = true;
                        }
                    }
                    Err(e) => {
                        error.get_or_insert(format!("{e:#}"));
                    }
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }
}

/// Whether the connection comes from this host (a loopback address); unknown is no.
fn peer_is_loopback(extensions: &http::Extensions) -> bool {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(|tls| tls.get_ref())
    });
    tcp.and_then(|info| info.remote_addr())
        .is_some_and(|addr| addr.ip().to_canonical().is_loopback())
}

/// The identities in the verified client certificate of the connection, if any.
fn peer_identities(extensions: &http::Extensions) -> Vec<String> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .and_then(|certs| certs.first().map(|c| certificate_identities(c)))
        .unwrap_or_default()
}

/// The `--pool-credentials` file: one `[[credential]]` table per token or certificate.
///
/// ```toml
/// [[credential]]
/// name = "bert-workers"
/// token_file = "/etc/l2d/tokens/bert"   # or: certificate = "expert-bert.l2d.svc"
/// experts = ["bert-large"]              # ["*"]: any expert
/// reload_policy = false                 # may call Pool.ReloadPolicy (default false)
/// report_outcomes = false               # may call Router.ReportOutcome (default false)
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    credential: Vec<CredentialEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialEntry {
    name: String,
    token_file: Option<PathBuf>,
    certificate: Option<String>,
    experts: Vec<String>,
    #[serde(default)]
    reload_policy: bool,
    #[serde(default)]
    report_outcomes: bool,
}

/// Reads a `--pool-credentials` file (token files relative to it are resolved against its
/// folder). Names must be unique; each entry has exactly one of `token_file` and `certificate`.
pub fn load_credentials(path: &Path) -> anyhow::Result<Vec<Credential>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the credentials file {}", path.display()))?;
    let file: CredentialsFile =
        toml::from_str(&text).with_context(|| format!("credentials file {}", path.display()))?;
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut credentials: Vec<Credential> = Vec::new();
    for entry in file.credential {
        let at = |what: &str| format!("credentials file {}: {what}", path.display());
        anyhow::ensure!(
            !entry.name.is_empty() && entry.name != ANONYMOUS,
            at(&format!("the name {:?} is not usable", entry.name))
        );
        anyhow::ensure!(
            credentials.iter().all(|c| c.name != entry.name),
            at(&format!("the name {:?} is used twice", entry.name))
        );
        anyhow::ensure!(
            !entry.experts.is_empty(),
            at(&format!(
                "credential {:?} lists no experts (use [\"*\"] for any)",
                entry.name
            ))
        );
        let mut credential = match (&entry.token_file, &entry.certificate) {
            (Some(file), None) => Credential::token_file(&entry.name, &folder.join(file))
                .with_context(|| at(&format!("credential {:?}", entry.name)))?,
            (None, Some(identity)) if !identity.is_empty() => Credential {
                name: entry.name.clone(),
                ..Credential::certificate(identity)
            },
            _ => anyhow::bail!(at(&format!(
                "credential {:?} needs exactly one of token_file and certificate",
                entry.name
            ))),
        };
        credential.experts =
            (!entry.experts.iter().any(|e| e == "*")).then_some(entry.experts.clone());
        credential.reload_policy = entry.reload_policy;
        credential.report_outcomes = entry.report_outcomes;
        credentials.push(credential);
    }
    Ok(credentials)
}

/// The scheduler's rules of the table above, run on headers before any body is read.
#[derive(Debug, Default)]
pub struct Gate {
    pub pool: Access,
    pub router: Access,
    /// `Pool.Register`, `Heartbeat` and `Deregister` are served.
    pub registration: bool,
}

impl Gate {
    fn caller(credential: Option<&Credential>) -> Caller {
        Caller {
            name: credential.map_or(ANONYMOUS, |c| c.name.as_str()).to_owned(),
        }
    }

    /// Re-reads the token files of both sets.
    pub fn refresh(&self) -> Result<bool, String> {
        let pool = self.pool.refresh();
        let router = self.router.refresh();
        Ok(pool? | router?)
    }
}

impl Authorize for Gate {
    fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Option<Caller>, Refusal> {
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return Ok(None);
        };
        match (service, method) {
            ("l2d.v1.Router", "ReportOutcome") => {
                const WHAT: &str = "Router.ReportOutcome";
                if self.pool.is_open() {
                    return if peer_is_loopback(extensions) {
                        Ok(Some(Self::caller(None)))
                    } else {
                        Err(Refusal::new(
                            ErrorKind::Forbidden,
                            format!(
                                "{WHAT}: outcomes train the next policy, so with no pool \
                                 credential configured they are taken only from this host; give \
                                 the scheduler a credential allowed to report outcomes \
                                 (--pool-token-file, --pool-identities, or --pool-credentials \
                                 with report_outcomes = true)"
                            ),
                        ))
                    };
                }
                match self.pool.check(headers, extensions, WHAT)? {
                    Some(c) if !c.report_outcomes => Err(Refusal::new(
                        ErrorKind::Forbidden,
                        format!("{WHAT}: credential {:?} may not report outcomes", c.name),
                    )),
                    who => Ok(Some(Self::caller(who))),
                }
            }
            ("l2d.v1.Router", _) => {
                let who = self.router.check(headers, extensions, "Router.Ask")?;
                Ok(Some(Self::caller(who)))
            }
            ("l2d.v1.Pool", "Register" | "Heartbeat" | "Deregister") => {
                if !self.registration {
                    return Err(Refusal::new(
                        ErrorKind::Disabled,
                        format!(
                            "Pool.{method}: registration is off on this scheduler; its experts are placed by the pool file"
                        ),
                    ));
                }
                let who = self
                    .pool
                    .check(headers, extensions, &format!("Pool.{method}"))?;
                Ok(Some(Self::caller(who)))
            }
            ("l2d.v1.Pool", "ReloadPolicy") => {
                if self.pool.is_open() {
                    return Ok(Some(Self::caller(None)));
                }
                let who = self.pool.check(headers, extensions, "Pool.ReloadPolicy")?;
                match who {
                    Some(c) if !c.reload_policy => Err(Refusal::new(
                        ErrorKind::Forbidden,
                        format!(
                            "Pool.ReloadPolicy: credential {:?} may not reload the policy",
                            c.name
                        ),
                    )),
                    _ => Ok(Some(Self::caller(who))),
                }
            }
            ("l2d.v1.Pool", _) => {
                let what = format!("Pool.{method}");
                if self.pool.is_open() || self.router.is_open() {
                    return Ok(Some(Self::caller(None)));
                }
                match self.pool.check(headers, extensions, &what) {
                    Ok(who) => Ok(Some(Self::caller(who))),
                    Err(pool_refusal) => match self.router.check(headers, extensions, &what) {
                        Ok(who) => Ok(Some(Self::caller(who))),
                        Err(_) => Err(pool_refusal),
                    },
                }
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(v) = authorization {
            h.insert("authorization", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn tokens_must_match_exactly() {
        let access = Access::new(vec![Credential::token("ops", "s3cret")]);
        let none = http::Extensions::new();
        let with = |value: Option<&str>| {
            access
                .check(&headers(value), &none, "Pool.Register")
                .map(|c| c.map(|c| c.name.clone()))
        };
        assert_eq!(with(Some("Bearer s3cret")).unwrap().as_deref(), Some("ops"));
        for bad in [Some("Bearer s3cre"), Some("Bearer s3cret2"), Some("s3cret")] {
            assert_eq!(with(bad).unwrap_err().kind, ErrorKind::Unauthenticated);
        }
        let missing = with(None).unwrap_err();
        assert_eq!(missing.kind, ErrorKind::Unauthenticated);
        assert!(
            missing
                .message
                .starts_with("Pool.Register needs credentials")
        );
        assert!(
            Access::default()
                .check(&headers(None), &none, "x")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn each_token_names_its_holder() {
        let access = Access::new(vec![
            Credential::token("bert", "b-token").for_experts(&["bert-large"]),
            Credential::token("lr", "l-token").for_experts(&["lr"]),
        ]);
        let none = http::Extensions::new();
        let who = access
            .check(&headers(Some("Bearer l-token")), &none, "x")
            .unwrap()
            .unwrap();
        assert_eq!(who.name, "lr");
        assert!(who.may_serve("lr") && !who.may_serve("bert-large"));
        assert!(!who.reload_policy);
    }

    #[test]
    fn outcomes_need_a_credential_allowed_to_report_them_or_a_caller_on_this_host() {
        use tonic::transport::server::TcpConnectInfo;
        let from = |addr: &str| {
            let mut e = http::Extensions::new();
            e.insert(TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(addr.parse().unwrap()),
            });
            e
        };
        let path = "/l2d.v1.Router/ReportOutcome";
        let open = Gate::default();
        let ask = |gate: &Gate, token: Option<&str>, peer: &str| {
            gate.authorize(path, &headers(token), &from(peer))
                .map(|c| c.map(|c| c.name))
        };
        // No pool credential: this host only (IPv4, IPv6, IPv4-mapped loopback).
        for local in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert_eq!(ask(&open, None, local).unwrap().as_deref(), Some(ANONYMOUS));
        }
        let remote = ask(&open, None, "10.1.2.3:5000").unwrap_err();
        assert_eq!(remote.kind, ErrorKind::Forbidden);
        assert!(
            remote.message.contains("report_outcomes"),
            "{}",
            remote.message
        );
        assert!(
            open.authorize(path, &headers(None), &http::Extensions::new())
                .is_err()
        );
        // With credentials: only those allowed, from anywhere; an expert's credential is not.
        let guarded = Gate {
            pool: Access::new(vec![
                Credential::token("admin", "a"),
                Credential::token("bert", "b").for_experts(&["bert-large"]),
            ]),
            ..Gate::default()
        };
        assert_eq!(
            ask(&guarded, Some("Bearer a"), "10.1.2.3:5000")
                .unwrap()
                .as_deref(),
            Some("admin")
        );
        let expert = ask(&guarded, Some("Bearer b"), "127.0.0.1:5000").unwrap_err();
        assert_eq!(expert.kind, ErrorKind::Forbidden);
        assert_eq!(
            ask(&guarded, None, "127.0.0.1:5000").unwrap_err().kind,
            ErrorKind::Unauthenticated
        );
    }

    #[test]
    fn the_gate_guards_membership_and_reloads_but_not_health() {
        let gate = Gate {
            pool: Access::new(vec![
                Credential::token("admin", "a"),
                Credential::token("bert", "b").for_experts(&["bert-large"]),
            ]),
            router: Access::default(),
            registration: true,
        };
        let none = http::Extensions::new();
        let call = |path: &str, token: Option<&str>| {
            let auth = token.map(|t| format!("Bearer {t}"));
            gate.authorize(path, &headers(auth.as_deref()), &none)
        };
        let code = |r: Result<Option<Caller>, Refusal>| r.map(|_| ()).map_err(|e| e.kind);
        use ErrorKind::{
            Disabled as Unimplemented, Forbidden as PermissionDenied, Unauthenticated,
        };
        assert_eq!(
            code(call("/l2d.v1.Pool/Register", None)),
            Err(Unauthenticated)
        );
        assert_eq!(
            code(call("/l2d.v1.Pool/Deregister", Some("x"))),
            Err(Unauthenticated)
        );
        assert_eq!(
            call("/l2d.v1.Pool/Register", Some("b"))
                .unwrap()
                .unwrap()
                .name,
            "bert"
        );
        assert_eq!(
            code(call("/l2d.v1.Pool/ReloadPolicy", Some("b"))),
            Err(PermissionDenied)
        );
        assert_eq!(code(call("/l2d.v1.Pool/ReloadPolicy", Some("a"))), Ok(()));
        // Router open: reads open, Ask anonymous.
        assert_eq!(code(call("/l2d.v1.Pool/ListPool", None)), Ok(()));
        assert_eq!(
            call("/l2d.v1.Router/Ask", None).unwrap().unwrap().name,
            ANONYMOUS
        );
        assert_eq!(code(call("/grpc.health.v1.Health/Check", None)), Ok(()));

        let closed = Gate {
            registration: false,
            router: Access::new(vec![Credential::token("client", "c")]),
            ..gate
        };
        let call = |path: &str, token: Option<&str>| {
            let auth = token.map(|t| format!("Bearer {t}"));
            closed.authorize(path, &headers(auth.as_deref()), &none)
        };
        assert_eq!(
            code(call("/l2d.v1.Pool/Register", Some("a"))),
            Err(Unimplemented)
        );
        assert_eq!(
            code(call("/l2d.v1.Pool/ListPool", None)),
            Err(Unauthenticated)
        );
        assert_eq!(code(call("/l2d.v1.Pool/ListPool", Some("c"))), Ok(()));
        assert_eq!(code(call("/l2d.v1.Pool/GetPolicy", Some("a"))), Ok(()));
        assert_eq!(
            code(call("/l2d.v1.Router/Ask", Some("a"))),
            Err(Unauthenticated)
        );
    }

    #[test]
    fn token_files_are_re_read_and_a_bad_file_keeps_the_old_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let access = Access::new(vec![Credential::token_file("ops", &path).unwrap()]);
        let none = http::Extensions::new();
        let ok = |t: &str| {
            access
                .check(&headers(Some(&format!("Bearer {t}"))), &none, "x")
                .is_ok()
        };
        assert!(ok("first"));
        assert_eq!(access.refresh(), Ok(false));
        std::fs::write(&path, "second").unwrap();
        assert_eq!(access.refresh(), Ok(true));
        assert!(ok("second") && !ok("first"));
        std::fs::write(&path, "  \n").unwrap();
        assert!(access.refresh().unwrap_err().contains("is empty"));
        assert!(ok("second"));
    }

    #[test]
    fn credentials_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bert.token"), "b").unwrap();
        let write = |text: &str| {
            let path = dir.path().join("credentials.toml");
            std::fs::write(&path, text).unwrap();
            load_credentials(&path)
        };
        let good = write(
            "[[credential]]\nname = \"bert\"\ntoken_file = \"bert.token\"\nexperts = [\"bert-large\"]\n\
             [[credential]]\nname = \"ops\"\ncertificate = \"ops.example\"\nexperts = [\"*\"]\nreload_policy = true\n",
        )
        .unwrap();
        assert!(good[0].may_serve("bert-large") && !good[0].may_serve("lr"));
        assert!(good[1].may_serve("lr") && good[1].reload_policy);
        for (bad, why) in [
            (
                "[[credential]]\nname = \"a\"\nexperts = [\"x\"]\n",
                "exactly one of",
            ),
            (
                "[[credential]]\nname = \"a\"\ntoken_file = \"bert.token\"\nexperts = []\n",
                "lists no experts",
            ),
            (
                "[[credential]]\nname = \"a\"\ntoken_file = \"missing\"\nexperts = [\"x\"]\n",
                "cannot read the token file",
            ),
            (
                "[[credential]]\nname = \"a\"\ncertificate = \"c\"\nexperts = [\"x\"]\n\
                 [[credential]]\nname = \"a\"\ncertificate = \"d\"\nexperts = [\"x\"]\n",
                "used twice",
            ),
            (
                "[[credential]]\nname = \"a\"\ncolour = 1\n",
                "unknown field",
            ),
        ] {
            let err = format!("{:#}", write(bad).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
