//! Who may call what: a bearer token, or the identity of a verified client certificate.
//!
//! `Pool` mutations (Register, Heartbeat, Deregister, ReloadPolicy) re-route traffic, so a
//! scheduler given a token or a list of identities refuses them to anyone else; `Router.Ask` can
//! be protected the same way, separately. A request passes with `authorization: Bearer TOKEN`
//! metadata matching the token, or over mutual TLS with a client certificate whose common name
//! or DNS/URI subject alternative name is listed. Otherwise: UNAUTHENTICATED when it carries no
//! credential or a wrong token, PERMISSION_DENIED when its certificate names someone not listed.

use crate::grpc::tls::certificate_identities;
use tonic::{Request, Status};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// The bearer token that grants access.
    pub token: Option<String>,
    /// Client-certificate identities that grant access (mutual TLS).
    pub identities: Vec<String>,
}

/// Compares without an early exit on the first differing byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    /// Nobody is checked.
    pub fn is_open(&self) -> bool {
        self.token.is_none() && self.identities.is_empty()
    }

    /// Lets `request` through or says why not; `what` names the call in the message.
    pub fn check<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        if self.is_open() {
            return Ok(());
        }
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let (Some(expected), Some(given)) = (&self.token, bearer)
            && same_secret(expected.as_bytes(), given.trim().as_bytes())
        {
            return Ok(());
        }
        let presented: Vec<String> = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| certificate_identities(c)))
            .unwrap_or_default();
        if presented.iter().any(|id| self.identities.contains(id)) {
            return Ok(());
        }
        if bearer.is_some() {
            return Err(Status::unauthenticated(format!("{what}: invalid token")));
        }
        if !presented.is_empty() {
            return Err(Status::permission_denied(format!(
                "{what}: client certificate {} may not make this call",
                presented.join(", ")
            )));
        }
        Err(Status::unauthenticated(format!(
            "{what} needs credentials: `authorization: Bearer TOKEN` metadata or an allowed client certificate"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_match_exactly() {
        let access = Access {
            token: Some("s3cret".into()),
            identities: vec![],
        };
        let with = |value: Option<&str>| {
            let mut r = Request::new(());
            if let Some(v) = value {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            access.check(&r, "Pool.Register")
        };
        assert!(with(Some("Bearer s3cret")).is_ok());
        for bad in [Some("Bearer s3cre"), Some("Bearer s3cret2"), Some("s3cret")] {
            assert_eq!(with(bad).unwrap_err().code(), tonic::Code::Unauthenticated);
        }
        let none = with(None).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        assert!(
            none.message()
                .starts_with("Pool.Register needs credentials")
        );
        assert!(Access::default().check(&Request::new(()), "x").is_ok());
    }
}
