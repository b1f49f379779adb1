//! Applying a changed pool file to a running scheduler, all or nothing.
//!
//! What a reload may change: experts placed at static `addresses` or by a `dns` name may be
//! added, removed, moved to other addresses or names, and get another `max_in_flight` or other
//! declared limits (`max_context_chars`, `max_context_tokens`, `languages`). What it
//! may not (the scheduler must restart): an expert's cost or backend, and anything about
//! in-process experts (their servers are started with the scheduler). A file that asks for one
//! of those, or does not parse, is refused whole; the pool keeps running as it was.

use super::Scheduler;
use super::discovery::DnsTarget;
use crate::pool_file::{ExpertSpec, Placement, PoolFile};
use crate::scheduler::registry::Origin;

/// What a reload did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.updated.is_empty()
    }
}

fn in_process(spec: &ExpertSpec) -> bool {
    matches!(spec.placement, Placement::InProcess { .. })
}

/// Why `new` cannot replace `old` without a restart, if it cannot.
pub fn check(old: &PoolFile, new: &PoolFile) -> Result<(), String> {
    let mut problems = Vec::new();
    for n in &new.experts {
        match old.experts.iter().find(|o| o.id == n.id) {
            None if in_process(n) => problems.push(format!(
                "expert {:?}: in-process experts start with the scheduler; place it at addresses or a dns name, or restart",
                n.id
            )),
            None => {}
            Some(o) => {
                if o.cost != n.cost {
                    problems.push(format!(
                        "expert {:?}: cost {} → {} needs a restart",
                        n.id, o.cost, n.cost
                    ));
                }
                if o.backend.kind() != n.backend.kind() {
                    problems.push(format!(
                        "expert {:?}: backend {} → {} needs a restart",
                        n.id,
                        o.backend.kind(),
                        n.backend.kind()
                    ));
                }
                if (in_process(o) || in_process(n)) && o.placement != n.placement {
                    problems.push(format!(
                        "expert {:?}: in-process placement changes need a restart",
                        n.id
                    ));
                }
            }
        }
    }
    for o in &old.experts {
        if in_process(o) && !new.experts.iter().any(|n| n.id == o.id) {
            problems.push(format!(
                "expert {:?}: removing an in-process expert needs a restart",
                o.id
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Applies `new` over `old` (already checked). DNS names of new or moved experts resolve at the
/// next DNS tick.
pub fn apply(scheduler: &Scheduler, old: &PoolFile, new: &PoolFile) -> Result<Changes, String> {
    let registry = &scheduler.registry;
    let mut changes = Changes::default();
    for o in &old.experts {
        if !new.experts.iter().any(|n| n.id == o.id) {
            registry.undeclare(&o.id);
            scheduler.set_dns_target(&o.id, None);
            changes.removed.push(o.id.clone());
        }
    }
    for n in &new.experts {
        let before = old.experts.iter().find(|o| o.id == n.id);
        if before == Some(n) {
            continue;
        }
        if before.is_none() {
            registry.declare_expert(&n.id, n.cost, n.backend.kind());
        }
        let addresses: Vec<String> = match &n.placement {
            Placement::Remote { addresses } => addresses.iter().map(|a| a.to_string()).collect(),
            _ => Vec::new(),
        };
        registry
            .sync_static(&n.id, &addresses, n.max_in_flight)
            .map_err(|e| format!("expert {:?}: {e}", n.id))?;
        let target = match &n.placement {
            Placement::Dns { name } => Some(DnsTarget {
                expert_id: n.id.clone(),
                name: name.clone(),
                max_in_flight: n.max_in_flight,
            }),
            _ => None,
        };
        if target.is_none() {
            registry
                .sync_dns(&n.id, &[], None)
                .map_err(|e| format!("expert {:?}: {e}", n.id))?;
        }
        scheduler.set_dns_target(&n.id, target);
        registry.set_limit(
            &n.id,
            &[Origin::Static, Origin::Dns, Origin::InProcess],
            n.max_in_flight,
        );
        registry.declare_capabilities(&n.id, n.capabilities.clone());
        if before.is_none() {
            changes.added.push(n.id.clone());
        } else {
            changes.updated.push(n.id.clone());
        }
    }
    Ok(changes)
}
