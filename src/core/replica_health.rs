//! What the scheduler learns about one replica from the calls it makes: a PeakEWMA latency
//! estimate, a decaying error rate, and outlier ejection with exponential backoff.
//!
//! Time is an argument (`now`), so every rule here is tested without sleeping. The shell keeps
//! one [`ReplicaHealth`] per replica behind a mutex held for a few arithmetic operations.
//!
//! **PeakEWMA** (as in Finagle, linkerd and tower's `PeakEwma`): the estimate jumps to any
//! latency above it at once (peak-sensitive), and otherwise moves toward each observation with
//! weight `1 − exp(−Δt / τ)`, where Δt is the time since the last update. Read at time `now` it
//! also decays toward zero with the same τ, so a replica that stopped receiving traffic because
//! it was slow is tried again once the estimate has faded. A replica never measured reads as
//! `default_rtt`. Defaults: τ = 10 s, `default_rtt` = 30 ms (linkerd's).
//!
//! **Outlier ejection** (as in Envoy's consecutive-errors detector): `consecutive_failures`
//! failures in a row eject the replica for `base × 2^(k−1)` (k = how many times it was ejected
//! since its last success), capped at `max`. When the time is up it receives traffic again; a
//! success clears k, another run of failures ejects it for longer. Defaults: 5 failures,
//! 1 s base, 30 s cap.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthParams {
    /// PeakEWMA decay time τ.
    pub decay: Duration,
    /// The estimate of a replica with no measurement yet.
    pub default_rtt: Duration,
    /// Failures in a row that eject a replica.
    pub consecutive_failures: u32,
    /// First ejection's length.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
}

impl Default for HealthParams {
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaHealth {
    /// PeakEWMA estimate in seconds; `None` before the first measurement.
    rtt: Option<f64>,
    rtt_stamp: Option<Instant>,
    /// Decaying failure rate in [0, 1] (same τ, per call).
    error_rate: f64,
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl Default for ReplicaHealth {
    fn default() -> Self {
        Self::new()
    }
}

/// What a failure did to the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    Counted,
    /// The replica is now ejected for this long.
    Ejected(Duration),
}

/// Weight of the old value after `elapsed` with decay time `tau`.
fn keep(elapsed: Duration, tau: Duration) -> f64 {
    (-elapsed.as_secs_f64() / tau.as_secs_f64().max(1e-9)).exp()
}

/// Weight one call adds to the error rate.
const ERROR_RATE_STEP: f64 = 0.1;

impl ReplicaHealth {
    pub fn new() -> Self {
        Self {
            rtt: None,
            rtt_stamp: None,
            error_rate: 0.0,
            consecutive_failures: 0,
            ejections: 0,
            ejected_until: None,
        }
    }

    /// Folds one measured call latency into the estimate.
    pub fn observe_latency(&mut self, latency: Duration, now: Instant, p: &HealthParams) {
        let sample = latency.as_secs_f64();
        let next = match (self.rtt, self.rtt_stamp) {
            (Some(old), Some(stamp)) if sample <= old => {
                let w = keep(now.saturating_duration_since(stamp), p.decay);
                old * w + sample * (1.0 - w)
            }
            // First sample, or a peak: take it at once.
            _ => sample,
        };
        self.rtt = Some(next);
        self.rtt_stamp = Some(now);
    }

    /// Folds in the latency of a failed call only if it is a peak: a call that hung until a
    /// timeout says the replica is at least that slow, while a fast failure (a refused
    /// connection) says nothing about its speed and must not make it look fast.
    pub fn observe_failure_latency(&mut self, latency: Duration, now: Instant, p: &HealthParams) {
        if latency.as_secs_f64() > self.rtt(now, p) {
            self.observe_latency(latency, now, p);
        }
    }

    /// The PeakEWMA estimate at `now`, in seconds (decayed toward zero since the last update).
    pub fn rtt(&self, now: Instant, p: &HealthParams) -> f64 {
        self.measured_rtt(now, p)
            .unwrap_or(p.default_rtt.as_secs_f64())
    }

    /// The estimate at `now`, `None` before the first measurement.
    pub fn measured_rtt(&self, now: Instant, p: &HealthParams) -> Option<f64> {
        match (self.rtt, self.rtt_stamp) {
            (Some(rtt), Some(stamp)) => {
                Some(rtt * keep(now.saturating_duration_since(stamp), p.decay))
            }
            _ => None,
        }
    }

    pub fn error_rate(&self) -> f64 {
        self.error_rate
    }

    pub fn record_success(&mut self) {
        self.error_rate *= 1.0 - ERROR_RATE_STEP;
        self.consecutive_failures = 0;
        self.ejections = 0;
    }

    /// A call that says the replica is unwell (unreachable, timed out, internal error).
    pub fn record_failure(&mut self, now: Instant, p: &HealthParams) -> FailureOutcome {
        self.error_rate = self.error_rate * (1.0 - ERROR_RATE_STEP) + ERROR_RATE_STEP;
        self.consecutive_failures += 1;
        if self.consecutive_failures < p.consecutive_failures.max(1) || self.is_ejected(now) {
            return FailureOutcome::Counted;
        }
        FailureOutcome::Ejected(self.eject(now, p))
    }

    /// Ejects the replica now (a failed health check), with the same backoff.
    pub fn eject(&mut self, now: Instant, p: &HealthParams) -> Duration {
        self.ejections = self.ejections.saturating_add(1);
        self.consecutive_failures = 0;
        let factor = 2u32.saturating_pow(self.ejections - 1);
        let length = p.base_ejection.saturating_mul(factor).min(p.max_ejection);
        self.ejected_until = Some(now + length);
        length
    }

    /// Ends an ejection early (a health check passed).
    pub fn readmit(&mut self) {
        self.ejected_until = None;
        self.consecutive_failures = 0;
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// Time left in the current ejection.
    pub fn ejected_for(&self, now: Instant) -> Duration {
        self.ejected_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays_toward_lower_samples() {
        let p = HealthParams::default();
        let t0 = Instant::now();
        let mut h = ReplicaHealth::new();
        assert_eq!(h.rtt(t0, &p), 0.030);
        h.observe_latency(10 * MS, t0, &p);
        assert!((h.rtt(t0, &p) - 0.010).abs() < 1e-12);
        // A peak replaces the estimate.
        h.observe_latency(50 * MS, t0, &p);
        assert!((h.rtt(t0, &p) - 0.050).abs() < 1e-12);
        // A lower sample one τ later: weight e^-1 on the old value.
        let t1 = t0 + p.decay;
        h.observe_latency(10 * MS, t1, &p);
        let expected = 0.050 * (-1f64).exp() + 0.010 * (1.0 - (-1f64).exp());
        assert!((h.rtt(t1, &p) - expected).abs() < 1e-12);
        // Unused, it fades toward zero.
        let faded = h.rtt(t1 + 3 * p.decay, &p);
        assert!((faded - expected * (-3f64).exp()).abs() < 1e-12);
    }

    #[test]
    fn failures_only_raise_the_estimate() {
        let p = HealthParams::default();
        let t0 = Instant::now();
        let mut h = ReplicaHealth::new();
        h.observe_latency(10 * MS, t0, &p);
        h.observe_failure_latency(MS, t0, &p);
        assert!((h.rtt(t0, &p) - 0.010).abs() < 1e-12);
        h.observe_failure_latency(300 * MS, t0, &p);
        assert!((h.rtt(t0, &p) - 0.300).abs() < 1e-12);
    }

    #[test]
    fn consecutive_failures_eject_with_doubling_backoff_and_a_success_resets() {
        let p = HealthParams::default();
        let t0 = Instant::now();
        let mut h = ReplicaHealth::new();
        for _ in 0..4 {
            assert_eq!(h.record_failure(t0, &p), FailureOutcome::Counted);
        }
        assert!(!h.is_ejected(t0));
        assert_eq!(
            h.record_failure(t0, &p),
            FailureOutcome::Ejected(Duration::from_secs(1))
        );
        assert!(h.is_ejected(t0 + 999 * MS));
        assert!(!h.is_ejected(t0 + 1000 * MS));
        // Back, fails again five times: two seconds this time.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..4 {
            h.record_failure(t1, &p);
        }
        assert_eq!(
            h.record_failure(t1, &p),
            FailureOutcome::Ejected(Duration::from_secs(2))
        );
        // A success clears the backoff.
        let t2 = t1 + Duration::from_secs(2);
        h.record_success();
        for _ in 0..4 {
            h.record_failure(t2, &p);
        }
        assert_eq!(
            h.record_failure(t2, &p),
            FailureOutcome::Ejected(Duration::from_secs(1))
        );
        assert!(h.error_rate() > 0.5);
    }

    #[test]
    fn ejection_length_is_capped_and_readmission_ends_it() {
        let p = HealthParams::default();
        let t0 = Instant::now();
        let mut h = ReplicaHealth::new();
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = h.eject(t0, &p);
        }
        assert_eq!(last, p.max_ejection);
        assert_eq!(h.ejected_for(t0), p.max_ejection);
        h.readmit();
        assert!(!h.is_ejected(t0));
        assert_eq!(h.ejected_for(t0), Duration::ZERO);
    }
}
