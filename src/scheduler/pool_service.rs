//! The `Pool` service: registration with leases, heartbeats, listing, the policy's identity.
//! Translates and validates at the edge; the registry does the work.
//!
//! Who calls was settled on the request's headers ([`super::access::Gate`]); here a
//! registration is also checked against what that caller may serve, the address allow-list,
//! and the caller's registration rate.

use super::registry::Join;
use super::{RegistryError, Scheduler};
use crate::core::error_kind::{ErrorKind, Refusal};
use crate::core::lease::LeasePolicy;
use crate::core::rate_limit::TokenBucket;
use crate::grpc::convert;
use crate::grpc::pb::{self, pool_server::Pool};
use crate::grpc::server::Caller;
use crate::pool_file::check_expert_id;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

pub struct PoolService {
    scheduler: Arc<Scheduler>,
    /// Registrations per caller: one bucket per credential name (a bounded set: only
    /// configured credentials, or "anonymous", get this far).
    rates: Mutex<HashMap<String, TokenBucket>>,
}

/// The caller the gate attached. None attached (the service served without the gate) counts
/// as anonymous only where the pool needs no credential.
fn caller<T>(request: &Request<T>, scheduler: &Scheduler) -> Result<String, Status> {
    match request.extensions().get::<Caller>() {
        Some(caller) => Ok(caller.name.clone()),
        None if scheduler.config().gate.pool.is_open() => Ok(super::access::ANONYMOUS.into()),
        None => Err(Refusal::new(
            ErrorKind::Unauthenticated,
            "no credential was checked for this call",
        )
        .into()),
    }
}

impl PoolService {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self {
            scheduler,
            rates: Mutex::new(HashMap::new()),
        }
    }

    /// May `who` register as `expert_id` at `address`, now?
    fn admit(&self, who: &str, expert_id: &str, address: &str) -> Result<(), Status> {
        let config = self.scheduler.config();
        if let Some(credential) = config.gate.pool.get(who)
            && !credential.may_serve(expert_id)
        {
            return Err(Refusal::new(
                ErrorKind::Forbidden,
                format!("credential {who:?} may not serve expert {expert_id:?}"),
            )
            .into());
        }
        if !config.register_allow.allows(address) {
            return Err(Refusal::new(
                ErrorKind::Forbidden,
                format!(
                    "address {address:?} is not in the registration allow-list ({})",
                    config.register_allow
                ),
            )
            .into());
        }
        let now = Instant::now();
        let mut rates = super::lock(&self.rates);
        let bucket = rates.entry(who.to_owned()).or_insert_with(|| {
            TokenBucket::new(config.register_rate, config.register_rate * 2.0, now)
        });
        bucket.take(now).map_err(|wait| {
            Refusal::new(
                ErrorKind::Exhausted {
                    retry_after: Some(wait),
                },
                format!(
                    "credential {who:?} registers more than {} times a second; retry later",
                    config.register_rate
                ),
            )
            .into()
        })
    }

    fn policy_info(&self) -> pb::PolicyInfo {
        let policy = self.scheduler.policy();
        let identity = policy.identity();
        pb::PolicyInfo {
            id: identity.id.clone(),
            kind: identity.kind.clone(),
            description: identity.description.clone(),
            lambda: policy.lambda(),
            target_cost: self.scheduler.target_cost(),
            realized_cost: self.scheduler.realized_cost(),
            probes: policy.probes().to_vec(),
        }
    }
}

fn invalid(field: &'static str, message: String) -> Status {
    RegistryError::Invalid { field, message }.into()
}

/// `host:port` with a non-empty host and a numeric port.
fn check_address(address: &str) -> Result<(), Status> {
    let bad = |why: &str| invalid("address", format!("{address:?} {why}; expected host:port"));
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    if host.is_empty() || host.len() > 253 || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(bad("has no usable host"));
    }
    port.parse::<u16>().map_err(|_| bad("has no valid port"))?;
    Ok(())
}

#[tonic::async_trait]
impl Pool for PoolService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let who = caller(&request, &self.scheduler)?;
        let msg = request.into_inner();
        check_expert_id(&msg.expert_id).map_err(|m| invalid("expert_id", m))?;
        check_address(&msg.address)?;
        if !(msg.cost.is_finite() && msg.cost > 0.0) {
            return Err(invalid(
                "cost",
                format!("must be a positive finite number, got {}", msg.cost),
            ));
        }
        if msg.backend.len() > 64 {
            return Err(invalid("backend", "must be at most 64 bytes".into()));
        }
        let capabilities = convert::capabilities_from_pb(msg.capabilities.unwrap_or_default())
            .map_err(|m| invalid("capabilities", m))?;
        self.admit(&who, &msg.expert_id, &msg.address)?;
        let requested = (msg.lease_ttl_ms > 0).then(|| Duration::from_millis(msg.lease_ttl_ms));
        let granted = self.scheduler.registry.register(
            Join {
                holder: &who,
                expert_id: &msg.expert_id,
                address: &msg.address,
                cost: msg.cost,
                backend: &msg.backend,
                requested_ttl: requested,
                limit: (msg.max_in_flight > 0).then_some(msg.max_in_flight),
                capabilities: &capabilities,
            },
            Instant::now(),
        )?;
        // What it holds (a replay expert's recordings) does not fit a registration: read it.
        self.scheduler.describe_soon();
        tracing::info!(
            expert = %msg.expert_id,
            address = %msg.address,
            holder = %who,
            ttl_ms = granted.ttl.as_millis() as u64,
            "replica registered"
        );
        Ok(Response::new(pb::RegisterResponse {
            lease_id: granted.lease_id,
            lease_ttl_ms: granted.ttl.as_millis() as u64,
            heartbeat_interval_ms: LeasePolicy::heartbeat_interval(granted.ttl).as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let who = caller(&request, &self.scheduler)?;
        let msg = request.into_inner();
        let load = msg.load.map(Into::into);
        let ttl = self
            .scheduler
            .registry
            .heartbeat(&msg.lease_id, &who, load, Instant::now())?;
        Ok(Response::new(pb::HeartbeatResponse {
            lease_ttl_ms: ttl.as_millis() as u64,
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let who = caller(&request, &self.scheduler)?;
        let msg = request.into_inner();
        self.scheduler.registry.deregister(&msg.lease_id, &who)?;
        tracing::info!(holder = %who, "replica deregistered");
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn list_pool(
        &self,
        _request: Request<pb::ListPoolRequest>,
    ) -> Result<Response<pb::ListPoolResponse>, Status> {
        Ok(Response::new(pb::ListPoolResponse {
            experts: self
                .scheduler
                .registry
                .states(Instant::now())
                .into_iter()
                .map(Into::into)
                .collect(),
            policy: Some(self.policy_info()),
        }))
    }

    async fn reload_policy(
        &self,
        _request: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::PolicyInfo>, Status> {
        let scheduler = self.scheduler.clone();
        let result = tokio::task::spawn_blocking(move || scheduler.reload_policy())
            .await
            .map_err(|e| Refusal::new(ErrorKind::Internal, format!("reload task failed: {e}")))?;
        match result {
            Ok(_) => Ok(Response::new(self.policy_info())),
            Err(e) => {
                tracing::error!(error = %e, "policy reload failed; the previous policy stays active");
                Err(Refusal::new(
                    ErrorKind::Unsatisfiable,
                    format!("{e}; the previous policy stays active"),
                )
                .into())
            }
        }
    }

    async fn get_policy(
        &self,
        _request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyInfo>, Status> {
        Ok(Response::new(self.policy_info()))
    }
}

#[cfg(test)]
mod tests {
    use super::check_address;

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert!(check_address("127.0.0.1:50051").is_ok());
        assert!(check_address("expert-bert.l2d.svc:50051").is_ok());
        assert!(check_address("[::1]:50051").is_ok());
        for bad in [
            "",
            "127.0.0.1",
            ":50051",
            "host:port",
            "host:70000",
            "a b:1",
            "http://x:1",
        ] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
    }
}
