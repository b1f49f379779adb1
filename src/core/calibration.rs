//! From the learned rejector's softmax to an expected deferral cost, in the units the
//! scheduler prices everything in (a wrong answer costs 1).
//!
//! The rejector is trained so that its highest-scoring action has the lowest expected cost
//! `c_j = loss_j + λ · price_j`, but its softmax probabilities are not those costs: two experts
//! whose probabilities differ by a few thousandths may differ by whole accuracy points in
//! expected cost, or not at all. [`Calibration`] is a decreasing map `q ↦ E[c | q]`, fitted by
//! isotonic regression (pool-adjacent-violators) on held-out questions: every action's
//! probability paired with the cost that action turned out to have. It is one map for all of
//! an entry's actions (per stage in cascade mode), so it keeps the rejector's order of the
//! actions, and the policy serves the same choices as before at zero load; what it adds is
//! the size of each gap, comparable with the price of waiting.

use serde::{Deserialize, Serialize};

/// A decreasing piecewise-linear map from a softmax probability to an expected cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `[probability, expected cost]`, probabilities strictly increasing, costs decreasing.
    pub knots: Vec<[f64; 2]>,
    /// How many (probability, cost) pairs it was fitted on.
    pub pairs: usize,
}

/// Below the map's resolution: keeps the rejector's own order where the map is flat.
const TIE_BREAK: f64 = 1e-6;

/// At most this many bins of probability are pooled before the isotonic fit.
const MAX_BINS: usize = 256;

impl Calibration {
    /// Fits the map on `(probability, realised cost)` pairs; `None` without pairs.
    pub fn fit(mut pairs: Vec<(f64, f64)>) -> Option<Self> {
        pairs.retain(|(q, c)| q.is_finite() && c.is_finite());
        if pairs.is_empty() {
            return None;
        }
        let n = pairs.len();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Equal-count bins of probability: (weight, mean probability, mean cost).
        let bins = MAX_BINS.min(n);
        let mut blocks: Vec<(f64, f64, f64)> = Vec::with_capacity(bins);
        for b in 0..bins {
            let chunk = &pairs[b * n / bins..(b + 1) * n / bins];
            let w = chunk.len() as f64;
            let q = chunk.iter().map(|p| p.0).sum::<f64>() / w;
            let c = chunk.iter().map(|p| p.1).sum::<f64>() / w;
            blocks.push((w, q, c));
        }
        // Pool adjacent violators: cost must not rise with probability.
        let mut fitted: Vec<(f64, f64, f64)> = Vec::with_capacity(blocks.len());
        for block in blocks {
            fitted.push(block);
            while fitted.len() > 1 {
                let (w2, q2, c2) = fitted[fitted.len() - 1];
                let (w1, q1, c1) = fitted[fitted.len() - 2];
                if c2 < c1 && q2 > q1 {
                    break;
                }
                let w = w1 + w2;
                fitted.truncate(fitted.len() - 2);
                fitted.push((w, (w1 * q1 + w2 * q2) / w, (w1 * c1 + w2 * c2) / w));
            }
        }
        Some(Self {
            knots: fitted.into_iter().map(|(_, q, c)| [q, c]).collect(),
            pairs: n,
        })
    }

    /// The expected cost of an action the rejector gives probability `q`.
    pub fn expected_cost(&self, q: f64) -> f64 {
        let k = &self.knots;
        let base = match k.iter().position(|p| p[0] >= q) {
            None => k[k.len() - 1][1],
            Some(0) => k[0][1],
            Some(i) => {
                let ([q0, c0], [q1, c1]) = (k[i - 1], k[i]);
                c0 + (c1 - c0) * (q - q0) / (q1 - q0)
            }
        };
        base + TIE_BREAK * (1.0 - q)
    }

    /// Checks a map read from a file.
    pub fn check(&self) -> Result<(), String> {
        if self.knots.is_empty() {
            return Err("a calibration has no knots".into());
        }
        if self.knots.iter().flatten().any(|x| !x.is_finite()) {
            return Err("a calibration knot is not a finite number".into());
        }
        if self
            .knots
            .windows(2)
            .any(|w| w[1][0] <= w[0][0] || w[1][1] > w[0][1])
        {
            return Err(
                "calibration knots must have increasing probabilities and decreasing costs".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_decreasing_relation_and_keeps_the_order() {
        // Cost 1 − q exactly, on a grid: the map reproduces it.
        let pairs: Vec<(f64, f64)> = (0..1000)
            .map(|i| (i as f64 / 999.0, 1.0 - i as f64 / 999.0))
            .collect();
        let cal = Calibration::fit(pairs).unwrap();
        cal.check().unwrap();
        for q in [0.05, 0.3, 0.5, 0.9] {
            assert!((cal.expected_cost(q) - (1.0 - q)).abs() < 0.01, "{q}");
        }
        // Strictly decreasing everywhere, also beyond the ends and inside flat stretches.
        let grid: Vec<f64> = (0..=200)
            .map(|i| cal.expected_cost(i as f64 / 200.0))
            .collect();
        assert!(grid.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn pools_violators_into_their_mean() {
        // Two probability levels where the higher one is costlier: one pooled block.
        let mut pairs = vec![(0.2, 0.1); 10];
        pairs.extend(vec![(0.8, 0.5); 10]);
        let cal = Calibration::fit(pairs).unwrap();
        assert_eq!(cal.knots.len(), 1);
        assert!((cal.knots[0][1] - 0.3).abs() < 1e-12);
        assert!((cal.knots[0][0] - 0.5).abs() < 1e-12);
        assert_eq!(cal.pairs, 20);
        // Noisy 0/1 costs with P(cost 1) = 1 − q: means follow 1 − q.
        let pairs: Vec<(f64, f64)> = (0..20_000)
            .map(|i| {
                let q = (i % 100) as f64 / 100.0;
                let wrong = ((i / 100) as f64 / 200.0) < 1.0 - q;
                (q, if wrong { 1.0 } else { 0.0 })
            })
            .collect();
        let cal = Calibration::fit(pairs).unwrap();
        cal.check().unwrap();
        assert!((cal.expected_cost(0.25) - 0.75).abs() < 0.03);
        assert!((cal.expected_cost(0.75) - 0.25).abs() < 0.03);
    }

    #[test]
    fn refuses_a_map_that_rises() {
        let bad = Calibration {
            knots: vec![[0.1, 0.2], [0.5, 0.4]],
            pairs: 2,
        };
        assert!(bad.check().is_err());
        assert!(Calibration::fit(Vec::new()).is_none());
    }
}
