//! How long an expert takes to answer: a lognormal distribution given by its median and its
//! 99th percentile, the shape measured service times of model servers usually have (a bulk
//! near the median and a long right tail).
//!
//! With median `m` and 99th percentile `p`, `ln T ~ Normal(ln m, σ)` where
//! `σ = ln(p / m) / z₀.₉₉` and `z₀.₉₉ = 2.3263…` is the standard normal's 99th percentile; the
//! mean is `m · exp(σ² / 2)`. `p = m` is a fixed service time.

use std::time::Duration;

/// The standard normal distribution's 99th percentile.
const Z99: f64 = 2.326_347_874_040_840_8;

/// The longest service time a pool may declare.
pub const MAX: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceTime {
    median: Duration,
    p99: Duration,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceTimeError {
    #[error(
        "the median service time must be longer than 0s and at most {}",
        humantime::format_duration(MAX)
    )]
    Median,
    #[error(
        "the 99th percentile ({}) must be at least the median ({}) and at most {}",
        humantime::format_duration(*p99),
        humantime::format_duration(*median),
        humantime::format_duration(MAX)
    )]
    P99 { median: Duration, p99: Duration },
}

impl ServiceTime {
    /// A lognormal service time; `p99` defaults to the median (a fixed time).
    pub fn new(median: Duration, p99: Option<Duration>) -> Result<Self, ServiceTimeError> {
        if median.is_zero() || median > MAX {
            return Err(ServiceTimeError::Median);
        }
        let p99 = p99.unwrap_or(median);
        if p99 < median || p99 > MAX {
            return Err(ServiceTimeError::P99 { median, p99 });
        }
        Ok(Self { median, p99 })
    }

    pub fn median(&self) -> Duration {
        self.median
    }

    pub fn p99(&self) -> Duration {
        self.p99
    }

    /// σ of `ln T`.
    pub fn sigma(&self) -> f64 {
        (self.p99.as_secs_f64() / self.median.as_secs_f64()).ln() / Z99
    }

    /// The mean service time, seconds.
    pub fn mean(&self) -> f64 {
        self.median.as_secs_f64() * (self.sigma().powi(2) / 2.0).exp()
    }

    /// The service time at standard normal deviate `z` (the caller draws it), capped at [`MAX`].
    pub fn at(&self, z: f64) -> Duration {
        let secs = self.median.as_secs_f64() * (self.sigma() * z).exp();
        Duration::from_secs_f64(secs.min(MAX.as_secs_f64()))
    }
}

impl std::fmt::Display for ServiceTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {}, p99 {}",
            humantime::format_duration(self.median),
            humantime::format_duration(self.p99)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn samples_have_the_declared_median_and_99th_percentile() {
        let t = ServiceTime::new(ms(20), Some(ms(60))).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut draws: Vec<f64> = (0..100_000)
            .map(|_| t.at(StandardNormal.sample(&mut rng)).as_secs_f64())
            .collect();
        draws.sort_by(f64::total_cmp);
        let median = draws[draws.len() / 2];
        let p99 = draws[draws.len() * 99 / 100];
        assert!((median - 0.020).abs() < 0.0005, "median {median}");
        assert!((p99 - 0.060).abs() < 0.002, "p99 {p99}");
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!(
            (mean - t.mean()).abs() < 0.0005,
            "mean {mean} vs {}",
            t.mean()
        );
    }

    #[test]
    fn a_median_alone_is_a_fixed_time() {
        let t = ServiceTime::new(ms(5), None).unwrap();
        assert_eq!(t.at(3.0), ms(5));
        assert_eq!(t.at(-3.0), ms(5));
        assert_eq!(t.mean(), 0.005);
    }

    #[test]
    fn refuses_a_zero_median_and_a_p99_below_it() {
        assert_eq!(
            ServiceTime::new(Duration::ZERO, None),
            Err(ServiceTimeError::Median)
        );
        assert!(matches!(
            ServiceTime::new(ms(20), Some(ms(10))),
            Err(ServiceTimeError::P99 { .. })
        ));
        assert!(ServiceTime::new(ms(20), Some(Duration::from_secs(3600))).is_err());
        // A huge deviate is capped, not an overflow.
        let t = ServiceTime::new(ms(20), Some(Duration::from_secs(600))).unwrap();
        assert_eq!(t.at(1e6), MAX);
    }
}
