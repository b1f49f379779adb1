//! From the learned rejector's softmax to an expected deferral cost, in the units the
//! scheduler prices everything in (a wrong answer costs 1).
//!
//! The rejector is trained so that its highest-scoring action has the lowest expected cost
//! `c_j = loss_j + λ · price_j`, but its softmax probabilities are not those costs.
//! [`Calibration`] is a decreasing map `q ↦ E[c | q]` fitted on held-out questions: every
//! action's probability paired with the cost that action turned out to have. It is one map for
//! all of an entry's actions (per stage in cascade mode), so it keeps the rejector's order of
//! the actions, and the policy serves the same choices as before at zero load; what it adds is
//! the size of each gap, comparable with the price of waiting.
//!
//! The map is isotonic, interpolated between blocks and extended linearly to the ends, at
//! probability 0 no higher than the highest cost seen (see [`Calibration::fit`]): a step
//! function, or one flat past its last block, would make every near-choice among the
//! rejector's favourite actions a tie that the smallest waiting price decides.

use serde::{Deserialize, Serialize};

/// A decreasing piecewise-linear map from a softmax probability to an expected cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `[probability, expected cost]`, probabilities strictly increasing, costs decreasing.
    pub knots: Vec<[f64; 2]>,
    /// How many (probability, cost) pairs it was fitted on.
    pub pairs: usize,
}

/// At most this many bins of probability are pooled before the isotonic fit.
const MAX_BINS: usize = 256;

/// A line through the pairs (slope at most 0), as knots at its mean probability and 1 beyond.
fn least_squares(pairs: &[(f64, f64)]) -> Vec<[f64; 2]> {
    let n = pairs.len() as f64;
    let mean_q = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_c = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    let var_q = pairs.iter().map(|p| (p.0 - mean_q).powi(2)).sum::<f64>();
    let cov = pairs
        .iter()
        .map(|p| (p.0 - mean_q) * (p.1 - mean_c))
        .sum::<f64>();
    let slope = if var_q > 0.0 {
        (cov / var_q).min(0.0)
    } else {
        0.0
    };
    if slope == 0.0 || mean_q >= 1.0 {
        return vec![[mean_q, mean_c]];
    }
    vec![[mean_q, mean_c], [1.0, mean_c + slope * (1.0 - mean_q)]]
}

/// Extends decreasing knots to probabilities 0 and 1 along their end segments, stopping at a
/// cost of 0 (a flat 0 beyond) and, at probability 0, at `highest`, the highest cost an action
/// had: two first blocks a hair apart in probability make a near-vertical segment, whose line
/// would reach costs no action can have (10^14 was seen).
fn extend_to_the_ends(knots: &mut Vec<[f64; 2]>, highest: f64) {
    if knots.len() < 2 {
        let c = knots.first().map_or(0.0, |k| k[1]);
        *knots = vec![[0.0, c], [1.0, c]];
        return;
    }
    let slope = |a: [f64; 2], b: [f64; 2]| (b[1] - a[1]) / (b[0] - a[0]);
    let [first, second] = [knots[0], knots[1]];
    if first[0] > 0.0 {
        let along = first[1] - slope(first, second) * first[0];
        knots.insert(0, [0.0, along.min(highest.max(first[1]))]);
    }
    let (a, b) = (knots[knots.len() - 2], knots[knots.len() - 1]);
    if b[0] < 1.0 {
        let at_one = b[1] + slope(a, b) * (1.0 - b[0]);
        if at_one >= 0.0 {
            knots.push([1.0, at_one]);
        } else if b[1] > 0.0 {
            // Where the line reaches 0, then flat.
            knots.push([b[0] - b[1] / slope(a, b), 0.0]);
            knots.push([1.0, 0.0]);
        } else {
            knots.push([1.0, b[1]]);
        }
    }
    for k in knots.iter_mut() {
        k[1] = k[1].max(0.0);
    }
}

/// Below the map's resolution: keeps the rejector's own order where the map is flat.
const TIE_BREAK: f64 = 1e-6;

impl Calibration {
    /// Fits the map on `(probability, realised cost)` pairs; `None` without pairs.
    ///
    /// Isotonic regression (pool-adjacent-violators, on at most 256 equal-count bins of
    /// probability), interpolated linearly between the blocks' centroids and extended to
    /// probabilities 0 and 1 along the end segments (never below a cost of 0): the map falls
    /// strictly, so the rejector's preference among its favourite actions stays a gap, not a
    /// tie that the smallest waiting price would decide. With a single block, a least-squares
    /// line (slope at most 0).
    pub fn fit(mut pairs: Vec<(f64, f64)>) -> Option<Self> {
        pairs.retain(|(q, c)| q.is_finite() && c.is_finite());
        if pairs.is_empty() {
            return None;
        }
        let n = pairs.len();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Equal-count bins of probability: (weight, mean probability, mean cost).
        let bins = MAX_BINS.min(n);
        let mut fitted: Vec<(f64, f64, f64)> = Vec::with_capacity(bins);
        for b in 0..bins {
            let chunk = &pairs[b * n / bins..(b + 1) * n / bins];
            let w = chunk.len() as f64;
            let q = chunk.iter().map(|p| p.0).sum::<f64>() / w;
            let c = chunk.iter().map(|p| p.1).sum::<f64>() / w;
            fitted.push((w, q, c));
            // Pool adjacent violators: cost must fall as probability rises.
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
        let mut knots: Vec<[f64; 2]> = if fitted.len() >= 2 {
            fitted.iter().map(|&(_, q, c)| [q, c]).collect()
        } else {
            least_squares(&pairs)
        };
        let highest = pairs.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        extend_to_the_ends(&mut knots, highest);
        Some(Self { knots, pairs: n })
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
    fn fits_the_mean_cost_by_probability_and_never_rises() {
        // Noisy 0/1 costs with P(cost 1) = 1 − q: the line follows 1 − q.
        let pairs: Vec<(f64, f64)> = (0..20_000)
            .map(|i| {
                let q = (i % 100) as f64 / 100.0;
                let wrong = ((i / 100) as f64 / 200.0) < 1.0 - q;
                (q, if wrong { 1.0 } else { 0.0 })
            })
            .collect();
        let cal = Calibration::fit(pairs).unwrap();
        cal.check().unwrap();
        assert_eq!(cal.pairs, 20_000);
        assert!((cal.expected_cost(0.25) - 0.75).abs() < 0.03);
        assert!((cal.expected_cost(0.75) - 0.25).abs() < 0.03);
        // Cost rising with probability: held flat at the mean, not inverted.
        let mut pairs = vec![(0.2, 0.1); 10];
        pairs.extend(vec![(0.8, 0.5); 10]);
        let cal = Calibration::fit(pairs).unwrap();
        cal.check().unwrap();
        assert!((cal.expected_cost(0.2) - 0.3).abs() < 1e-5);
        assert!((cal.expected_cost(0.8) - 0.3).abs() < 1e-5);
        // A line that would fall below zero stops at zero.
        let cal = Calibration::fit(vec![(0.0, 0.6), (0.5, 0.0), (0.5, 0.0), (0.5, 0.0)]).unwrap();
        cal.check().unwrap();
        assert!(cal.expected_cost(1.0) >= 0.0 && cal.expected_cost(1.0) < 1e-5);
        assert!(cal.expected_cost(0.0) > 0.5);
    }

    #[test]
    fn the_extension_to_probability_zero_stays_within_the_costs_seen() {
        // The first two blocks a hair apart in probability: their segment is near vertical,
        // and its line at probability 0 would be about 10^11.
        let mut pairs = vec![(0.2, 1.0); 100];
        pairs.extend(vec![(0.2 + 1e-12, 0.5); 100]);
        pairs.extend(vec![(0.9, 0.0); 100]);
        let map = Calibration::fit(pairs).unwrap();
        map.check().unwrap();
        assert!(map.expected_cost(0.0) <= 1.0 + 1e-5, "{:?}", map.knots);
        assert!(map.expected_cost(0.1) >= map.expected_cost(0.2));
        assert!(map.expected_cost(0.2) > map.expected_cost(0.5));
        // A gentle first segment (0.8 at 0.2, 0.5 at 0.5) is still extended along its line, to
        // 1.0 at 0, under the highest cost seen (1.1).
        let gentle =
            Calibration::fit(vec![(0.2, 0.5), (0.2, 1.1), (0.5, 0.5), (0.8, 0.2)]).unwrap();
        assert!(
            (gentle.expected_cost(0.0) - 1.0).abs() < 1e-5,
            "{:?}",
            gentle.knots
        );
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
