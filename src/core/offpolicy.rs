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
//!
//! Doubly robust (Dudík, Langford, Li 2011): with a direct model `q̂(x, a)` of the reward (the new
//! policy's own estimate of how likely its choice is right),
//! `DR = mean(q̂(x, π(x)) + m · (r − q̂(x, π(x))) / p)`: unbiased when the propensities are right
//! whatever `q̂`, and of lower variance than IPS when `q̂` is good. [`with_intervals`] adds a
//! percentile bootstrap interval to each estimate.
//!
//! The action is the expert the logging policy chose first; its reward is what the caller got
//! (a fallback's answer when the chosen expert failed). So the estimate is of the new policy as
//! served, with the failures and fallbacks the log saw.

/// One logged decision as the estimator sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Whether the new policy takes the logged action.
    pub matches: bool,
    pub reward: f64,
    pub propensity: f64,
    /// The direct model's reward for the new policy's action on this query (DR's `q̂`).
    pub estimate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub samples: usize,
    /// Samples where the new policy agrees with the logged action.
    pub matched: usize,
    pub ips: f64,
    /// `None` when no sample matches (the ratio is 0/0).
    pub snips: Option<f64>,
    /// Effective sample size of the importance weights, `(Σw)² / Σw²` over matched samples.
    pub effective_samples: f64,
    /// Doubly robust.
    pub dr: f64,
    /// The direct model alone: the mean of `q̂` (biased by the model's own errors).
    pub direct: f64,
}

pub fn estimate(samples: &[Sample]) -> Estimate {
    let (mut weighted, mut weights, mut squares, mut matched) = (0.0, 0.0, 0.0, 0);
    let (mut corrected, mut direct) = (0.0, 0.0);
    for s in samples {
        direct += s.estimate;
        corrected += s.estimate;
        if !(s.matches && s.propensity > 0.0) {
            continue;
        }
        let w = 1.0 / s.propensity;
        weighted += w * s.reward;
        corrected += w * (s.reward - s.estimate);
        weights += w;
        squares += w * w;
        matched += 1;
    }
    let n = samples.len().max(1) as f64;
    Estimate {
        samples: samples.len(),
        matched,
        dr: corrected / n,
        direct: direct / n,
        ips: weighted / n,
        snips: (weights > 0.0).then(|| weighted / weights),
        effective_samples: if squares > 0.0 {
            weights * weights / squares
        } else {
            0.0
        },
    }
}

/// An estimate and its percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// IPS, SNIPS and DR with `level` (e.g. 0.95) bootstrap intervals from `rounds` resamples.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Intervals {
    pub samples: usize,
    pub matched: usize,
    pub effective_samples: f64,
    pub level: f64,
    pub rounds: usize,
    pub ips: Interval,
    /// `None` when no sample matches; its interval is over the resamples with a match.
    pub snips: Option<Interval>,
    pub dr: Interval,
    pub direct: f64,
}

pub fn with_intervals(samples: &[Sample], rounds: usize, level: f64, seed: u64) -> Intervals {
    use rand::{Rng, SeedableRng};
    let point = estimate(samples);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut drawn = Vec::with_capacity(samples.len());
    let (mut ips, mut snips, mut dr) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        drawn.clear();
        drawn.extend((0..samples.len()).map(|_| samples[rng.random_range(0..samples.len())]));
        let e = estimate(&drawn);
        ips.push(e.ips);
        snips.extend(e.snips);
        dr.push(e.dr);
    }
    let interval = |value: f64, mut draws: Vec<f64>| {
        if draws.is_empty() {
            return Interval {
                value,
                low: value,
                high: value,
            };
        }
        draws.sort_by(f64::total_cmp);
        Interval {
            value,
            low: quantile(&draws, (1.0 - level) / 2.0),
            high: quantile(&draws, (1.0 + level) / 2.0),
        }
    };
    Intervals {
        samples: point.samples,
        matched: point.matched,
        effective_samples: point.effective_samples,
        level,
        rounds,
        ips: interval(point.ips, ips),
        snips: point.snips.map(|value| interval(value, snips)),
        dr: interval(point.dr, dr),
        direct: point.direct,
    }
}

/// The `q`-quantile of non-empty `sorted` draws: the draw at rank `q·(n − 1)`, rounded (so
/// that the bounds of a central interval leave as many draws out on either side).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
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
                    // A direct model that is off by 0.2: DR corrects it.
                    estimate: 0.7,
                }
            })
            .collect();
        let e = estimate(&samples);
        assert!((e.ips - 0.9).abs() < 0.03, "{e:?}");
        assert!((e.snips.unwrap() - 0.9).abs() < 0.02, "{e:?}");
        assert!((e.dr - 0.9).abs() < 0.03, "{e:?}");
        assert!((e.direct - 0.7).abs() < 1e-9, "{e:?}");
        assert!(e.matched > 5000 && e.effective_samples > 5000.0);
        // The intervals hold the point estimates and the true value, and are not wide.
        let i = with_intervals(&samples[..6000], 200, 0.95, 1);
        for interval in [i.ips, i.snips.unwrap(), i.dr] {
            assert!(
                interval.low <= interval.value && interval.value <= interval.high,
                "{i:?}"
            );
            assert!(interval.low < 0.9 && 0.9 < interval.high, "{i:?}");
            assert!(interval.high - interval.low < 0.2, "{i:?}");
        }
    }

    #[test]
    fn no_overlap_means_no_estimate() {
        let e = estimate(&[Sample {
            matches: false,
            reward: 1.0,
            propensity: 1.0,
            estimate: 0.0,
        }]);
        assert_eq!((e.matched, e.ips, e.snips), (0, 0.0, None));
    }

    #[test]
    fn interval_bounds_are_symmetric_ranks_of_the_sorted_draws() {
        // 1000 draws: the 95% bounds leave 25 draws out on each side (ranks 25 and 974); an
        // off-by-one rank takes 975 for the upper bound, leaving 24 above it.
        let draws: Vec<f64> = (0..1000).map(f64::from).collect();
        assert_eq!(
            (quantile(&draws, 0.025), quantile(&draws, 0.975)),
            (25.0, 974.0)
        );
        assert_eq!((quantile(&draws, 0.0), quantile(&draws, 1.0)), (0.0, 999.0));
        assert_eq!(quantile(&[7.0], 0.975), 7.0);
    }
}
