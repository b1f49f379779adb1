//! Off-policy evaluation (beyond the paper): estimating what a new policy would score from the
//! decisions a running scheduler logged, before swapping it in.
//!
//! Inverse propensity scoring: for each logged decision with logging propensity `p` of the
//! action taken, reward `r` observed for it, and `m` = 1 when the new policy would have taken
//! the same action, `IPS = mean(m · r / p)`; the self-normalised `SNIPS = Σ m·r/p / Σ m/p` has
//! lower variance and a small bias. Both are unbiased/consistent only when (1) the logged
//! propensities are the logging policy's true probabilities, (2) every action the new policy can
//! take had positive logging probability (the scheduler's ε-exploration guarantees ε / eligible),
//! (3) the set of eligible experts is the same for both policies (no outage or budget changes it
//! between logging and evaluation), and (4) rewards are joined to decisions without bias.

/// One logged decision as the estimator sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Whether the new policy takes the logged action.
    pub matches: bool,
    pub reward: f64,
    pub propensity: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub samples: usize,
    /// Samples where the new policy agrees with the logged action.
    pub matched: usize,
    pub ips: f64,
    pub snips: f64,
    /// Effective sample size of the importance weights, `(Σw)² / Σw²` over matched samples.
    pub effective_samples: f64,
}

pub fn estimate(samples: &[Sample]) -> Estimate {
    let (mut weighted, mut weights, mut squares, mut matched) = (0.0, 0.0, 0.0, 0);
    for s in samples.iter().filter(|s| s.matches && s.propensity > 0.0) {
        let w = 1.0 / s.propensity;
        weighted += w * s.reward;
        weights += w;
        squares += w * w;
        matched += 1;
    }
    let n = samples.len().max(1) as f64;
    Estimate {
        samples: samples.len(),
        matched,
        ips: weighted / n,
        snips: if weights > 0.0 {
            weighted / weights
        } else {
            0.0
        },
        effective_samples: if squares > 0.0 {
            weights * weights / squares
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn ips_recovers_a_new_policys_value_from_epsilon_greedy_logs() {
        // Three actions with known success rates; the logger is ε-greedy around action 0, the new
        // policy always takes action 2. Its true value is 0.9.
        let rates = [0.5, 0.7, 0.9];
        let epsilon = 0.3;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let samples: Vec<Sample> = (0..60_000)
            .map(|_| {
                let action = if rng.random::<f64>() < epsilon {
                    rng.random_range(0..3)
                } else {
                    0
                };
                let propensity = if action == 0 {
                    1.0 - epsilon + epsilon / 3.0
                } else {
                    epsilon / 3.0
                };
                let reward = f64::from(u8::from(rng.random::<f64>() < rates[action]));
                Sample {
                    matches: action == 2,
                    reward,
                    propensity,
                }
            })
            .collect();
        let e = estimate(&samples);
        assert!((e.ips - 0.9).abs() < 0.03, "{e:?}");
        assert!((e.snips - 0.9).abs() < 0.02, "{e:?}");
        assert!(e.matched > 5000 && e.effective_samples > 5000.0);
    }

    #[test]
    fn no_overlap_means_no_estimate() {
        let e = estimate(&[Sample {
            matches: false,
            reward: 1.0,
            propensity: 1.0,
        }]);
        assert_eq!((e.matched, e.ips, e.snips), (0, 0.0, 0.0));
    }
}
