//! Replicas found by DNS: an expert whose replicas are every address a name resolves to (a
//! Kubernetes headless Service), resolved again while serving.

use super::Registry;
use anyhow::Context;

/// An expert whose replicas are every address a DNS name resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsTarget {
    pub expert_id: String,
    /// `host:port`.
    pub name: String,
    pub max_in_flight: Option<u32>,
}

impl DnsTarget {
    /// Resolves the name and makes the expert's DNS replicas match: (added, removed).
    pub async fn sync(&self, registry: &Registry) -> anyhow::Result<(usize, usize)> {
        let mut addresses: Vec<String> = tokio::net::lookup_host(&self.name)
            .await
            .with_context(|| format!("cannot resolve {}", self.name))?
            .map(|a| a.to_string())
            .collect();
        addresses.sort();
        addresses.dedup();
        Ok(registry.sync_dns(&self.expert_id, &addresses, self.max_in_flight)?)
    }
}
