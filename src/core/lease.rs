//! Lease arithmetic for registered replicas. Time is an argument, so tests drive it.

use std::time::{Duration, Instant};

/// The range of lease TTLs the scheduler grants, and the one it grants when asked for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(10),
            min_ttl: Duration::from_millis(100),
            max_ttl: Duration::from_secs(300),
        }
    }
}

impl LeasePolicy {
    /// The TTL granted for a request (`None` or zero: the default), clamped to the allowed range.
    pub fn grant(&self, requested: Option<Duration>) -> Duration {
        match requested {
            None => self.default_ttl,
            Some(d) if d.is_zero() => self.default_ttl,
            Some(d) => d.clamp(self.min_ttl, self.max_ttl),
        }
    }

    /// How often a holder should renew a lease of `ttl`: three heartbeats per TTL, so one lost
    /// heartbeat does not expire the lease.
    pub fn heartbeat_interval(ttl: Duration) -> Duration {
        ttl / 3
    }
}

/// A lease that expires `ttl` after its last renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    ttl: Duration,
    expires_at: Instant,
}

impl Lease {
    pub fn new(ttl: Duration, now: Instant) -> Self {
        Self {
            ttl,
            expires_at: now + ttl,
        }
    }

    pub fn renew(&mut self, now: Instant) {
        self.expires_at = now + self.ttl;
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.expires_at
    }

    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_uses_default_for_zero_and_clamps_the_rest() {
        let p = LeasePolicy::default();
        assert_eq!(p.grant(None), p.default_ttl);
        assert_eq!(p.grant(Some(Duration::ZERO)), p.default_ttl);
        assert_eq!(p.grant(Some(Duration::from_millis(1))), p.min_ttl);
        assert_eq!(p.grant(Some(Duration::from_secs(3600))), p.max_ttl);
        assert_eq!(
            p.grant(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn lease_expires_after_ttl_unless_renewed() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(3);
        let mut lease = Lease::new(ttl, t0);
        assert!(!lease.is_expired(t0 + Duration::from_secs(2)));
        lease.renew(t0 + Duration::from_secs(2));
        assert!(!lease.is_expired(t0 + Duration::from_secs(4)));
        assert_eq!(
            lease.remaining(t0 + Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        assert!(lease.is_expired(t0 + Duration::from_secs(5)));
        assert_eq!(lease.remaining(t0 + Duration::from_secs(9)), Duration::ZERO);
    }
}
