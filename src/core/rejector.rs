//! The rejector: a linear scorer `r(x) ∈ R^J` over the featurizer's output, and the paper's
//! consistent surrogate loss (comp-sum with log-softmax; DESIGN.md §1, arXiv 2410.15761,
//! Mao et al. NeurIPS 2023).
//!
//! For agent costs `c_j` (loss plus priced compute), with `C = Σ c_i` and `w_j = C − c_j`:
//!
//! ```text
//!     Φ(r) = Σ_j w_j · (−log softmax(r)_j)        ∂Φ/∂r = (Σ_j w_j) · softmax(r) − w
//! ```
//!
//! Cross-entropy with soft, unnormalised targets. Its minimiser ranks agents by expected cost,
//! so `argmax r(x)` is the Bayes rule `argmin_j E[c_j | x]`.

use serde::{Deserialize, Serialize};

/// A linear rejector: `r_j(x) = bias_j + dense_j · z(x) + Σ_{(h, v) ∈ hashed(x)} hashed_j[h] · v`,
/// where `z` is the standardised dense feature vector.
///
/// Weights are written with single precision (the shortest decimal that reads back as the same
/// `f32`) and read back as `f64`: seven significant digits are far more than the fit resolves,
/// and they halve the file (a policy must fit a 1 MiB Kubernetes ConfigMap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearRejector {
    pub agents: usize,
    pub dense_len: usize,
    pub hash_buckets: usize,
    #[serde(serialize_with = "single_precision")]
    pub bias: Vec<f64>,
    /// Row-major `agents × dense_len`.
    #[serde(serialize_with = "single_precision")]
    pub dense: Vec<f64>,
    /// Row-major `agents × hash_buckets`.
    #[serde(serialize_with = "single_precision")]
    pub hashed: Vec<f64>,
}

fn single_precision<S: serde::Serializer>(weights: &[f64], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(weights.iter().map(|&w| w as f32))
}

impl LinearRejector {
    pub fn zeros(agents: usize, dense_len: usize, hash_buckets: usize) -> Self {
        Self {
            agents,
            dense_len,
            hash_buckets,
            bias: vec![0.0; agents],
            dense: vec![0.0; agents * dense_len],
            hashed: vec![0.0; agents * hash_buckets],
        }
    }

    /// Whether the weight arrays have the sizes the shape says.
    pub fn is_well_formed(&self) -> bool {
        self.bias.len() == self.agents
            && self.dense.len() == self.agents * self.dense_len
            && self.hashed.len() == self.agents * self.hash_buckets
            && self
                .bias
                .iter()
                .chain(&self.dense)
                .chain(&self.hashed)
                .all(|w| w.is_finite())
    }

    /// `r(x)` for standardised dense features `z` and hashed features (ignored by a rejector
    /// without hash buckets).
    ///
    /// The agents' dot products run four at a time, interleaved feature by feature: each one is
    /// still summed in feature order (the same value, bit for bit, as one agent at a time), but
    /// four independent sums keep the floating-point adder busy instead of one waiting on its
    /// own last result. Fitting spends most of its time here.
    pub fn logits(&self, z: &[f64], hashed: &[(u32, f64)], out: &mut Vec<f64>) {
        out.clear();
        let d = self.dense_len;
        let z = &z[..d];
        let mut j = 0;
        while j + 4 <= self.agents {
            let rows = &self.dense[j * d..(j + 4) * d];
            let (r0, rest) = rows.split_at(d);
            let (r1, rest) = rest.split_at(d);
            let (r2, r3) = rest.split_at(d);
            let mut acc = [-0.0f64; 4];
            for k in 0..d {
                let x = z[k];
                acc[0] += r0[k] * x;
                acc[1] += r1[k] * x;
                acc[2] += r2[k] * x;
                acc[3] += r3[k] * x;
            }
            for (a, sum) in acc.into_iter().enumerate() {
                out.push(self.bias[j + a] + sum);
            }
            j += 4;
        }
        for j in j..self.agents {
            let row = &self.dense[j * d..(j + 1) * d];
            out.push(self.bias[j] + row.iter().zip(z).map(|(w, x)| w * x).sum::<f64>());
        }
        if self.hash_buckets > 0 {
            for (j, r) in out.iter_mut().enumerate() {
                let hrow = &self.hashed[j * self.hash_buckets..(j + 1) * self.hash_buckets];
                for &(h, v) in hashed {
                    *r += hrow[h as usize] * v;
                }
            }
        }
    }
}

/// Numerically stable softmax, in place.
pub fn softmax(values: &mut [f64]) {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in values.iter_mut() {
        *v /= sum;
    }
}

/// The surrogate's value at `logits` for agent costs `costs`, and its gradient in `grad`.
pub fn surrogate(logits: &[f64], costs: &[f64], grad: &mut Vec<f64>) -> f64 {
    let total: f64 = costs.iter().sum();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = max + logits.iter().map(|r| (r - max).exp()).sum::<f64>().ln();
    let mut value = 0.0;
    let mut weight_sum = 0.0;
    grad.clear();
    for (&r, &c) in logits.iter().zip(costs) {
        let w = total - c;
        value += w * (log_sum - r);
        weight_sum += w;
        grad.push(-w);
    }
    for (g, &r) in grad.iter_mut().zip(logits) {
        *g += weight_sum * (r - log_sum).exp();
    }
    value
}

/// The deferral cost of choosing `argmax logits` (the true loss the surrogate stands in for).
pub fn deferral_cost(logits: &[f64], costs: &[f64]) -> f64 {
    costs[argmax(logits)]
}

pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn logits_are_each_agents_own_sum_bit_for_bit(
            agents in 1usize..10,
            dense_len in 0usize..12,
            seed in any::<u64>(),
        ) {
            // Deterministic pseudo-random weights and features from the seed.
            let mut state = seed | 1;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2001) as f64 / 1000.0 - 1.0
            };
            let mut model = LinearRejector::zeros(agents, dense_len, 8);
            for w in model.bias.iter_mut().chain(&mut model.dense).chain(&mut model.hashed) {
                *w = next();
            }
            let z: Vec<f64> = (0..dense_len).map(|_| next()).collect();
            let hashed = [(3u32, next()), (7, next()), (3, next())];
            let mut out = Vec::new();
            model.logits(&z, &hashed, &mut out);
            prop_assert_eq!(out.len(), agents);
            for (j, &r) in out.iter().enumerate() {
                let mut expected = model.bias[j]
                    + (0..dense_len).map(|k| model.dense[j * dense_len + k] * z[k]).sum::<f64>();
                for &(h, v) in &hashed {
                    expected += model.hashed[j * 8 + h as usize] * v;
                }
                prop_assert_eq!(r.to_bits(), expected.to_bits(), "agent {}", j);
            }
        }

        #[test]
        fn the_gradient_matches_finite_differences(
            logits in prop::collection::vec(-3.0f64..3.0, 2..6),
            seed_costs in prop::collection::vec(0.0f64..2.0, 6),
        ) {
            let costs = &seed_costs[..logits.len()];
            let mut grad = Vec::new();
            let value = surrogate(&logits, costs, &mut grad);
            prop_assert!(value.is_finite());
            let h = 1e-6;
            for k in 0..logits.len() {
                let mut up = logits.clone();
                up[k] += h;
                let mut down = logits.clone();
                down[k] -= h;
                let mut scratch = Vec::new();
                let numeric = (surrogate(&up, costs, &mut scratch) - surrogate(&down, costs, &mut scratch)) / (2.0 * h);
                prop_assert!((numeric - grad[k]).abs() < 1e-5, "k={} numeric={} analytic={}", k, numeric, grad[k]);
            }
        }
    }

    #[test]
    fn the_value_is_weighted_cross_entropy() {
        // Two agents, equal logits: softmax 1/2 each. Costs 0.2 and 1.0: C = 1.2, w = (1.0, 0.2).
        let mut grad = Vec::new();
        let value = surrogate(&[0.0, 0.0], &[0.2, 1.0], &mut grad);
        assert!((value - 1.2 * 2f64.ln()).abs() < 1e-12);
        // Gradient: (Σw) · softmax − w = 1.2 · 0.5 − (1.0, 0.2) = (−0.4, 0.4): push agent 0 up.
        assert!((grad[0] + 0.4).abs() < 1e-12 && (grad[1] - 0.4).abs() < 1e-12);
    }

    #[test]
    fn the_minimiser_ranks_agents_by_expected_cost() {
        // Gradient descent on the expected surrogate for fixed expected costs: the softmax
        // converges to (E[C] − E[c_j]) / ((J − 1) E[C]), whose argmax is the cheapest agent.
        let costs = [0.5, 0.2, 0.9];
        let mut r = vec![0.0; 3];
        let mut grad = Vec::new();
        for _ in 0..20_000 {
            surrogate(&r, &costs, &mut grad);
            for (x, g) in r.iter_mut().zip(&grad) {
                *x -= 0.05 * g;
            }
        }
        let mut p = r.clone();
        softmax(&mut p);
        let total: f64 = costs.iter().sum();
        for (pj, cj) in p.iter().zip(costs) {
            assert!((pj - (total - cj) / (2.0 * total)).abs() < 1e-3, "{p:?}");
        }
        assert_eq!(argmax(&r), 1);
        assert_eq!(deferral_cost(&r, &costs), 0.2);
    }

    #[test]
    fn logits_combine_bias_dense_and_hashed_weights() {
        let mut m = LinearRejector::zeros(2, 2, 4);
        m.bias = vec![0.5, -0.5];
        m.dense = vec![1.0, 0.0, 0.0, 2.0];
        m.hashed[3] = 1.0; // agent 0, bucket 3
        m.hashed[4 + 1] = -1.0; // agent 1, bucket 1
        assert!(m.is_well_formed());
        let mut out = Vec::new();
        m.logits(&[1.0, 1.0], &[(3, 0.5), (1, 2.0)], &mut out);
        assert_eq!(out, vec![0.5 + 1.0 + 0.5, -0.5 + 2.0 - 2.0]);
    }
}
