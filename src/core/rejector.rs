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
    pub fn logits(&self, z: &[f64], hashed: &[(u32, f64)], out: &mut Vec<f64>) {
        out.clear();
        for j in 0..self.agents {
            let row = &self.dense[j * self.dense_len..(j + 1) * self.dense_len];
            let mut r = self.bias[j] + row.iter().zip(z).map(|(w, x)| w * x).sum::<f64>();
            if self.hash_buckets > 0 {
                let hrow = &self.hashed[j * self.hash_buckets..(j + 1) * self.hash_buckets];
                for &(h, v) in hashed {
                    r += hrow[h as usize] * v;
                }
            }
            out.push(r);
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
