//! Fitting one rejector of the bank: Adam (minibatch or full batch, cosine-decayed step) on the
//! mean surrogate loss plus an L2 penalty on the weights (not the biases). Deterministic for a seed: the only randomness is
//! the order of examples, drawn from ChaCha8.

use crate::core::rejector::{LinearRejector, surrogate};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// One training query: standardised dense features, hashed features, and per agent its loss
/// (1 − EM or 1 − F1) and its priced compute (cost charged beyond the probes / max cost).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub dense: Vec<f64>,
    pub hashed: Vec<(u32, f64)>,
    pub loss: Vec<f64>,
    pub price: Vec<f64>,
    /// The agents that are actions here (cascade mode: the last stage can only keep an answer
    /// seen); empty when every agent is. The surrogate runs over these only.
    pub valid: Vec<bool>,
}

impl Example {
    /// `c_j = loss_j + lambda × price_j`.
    pub fn costs(&self, lambda: f64, out: &mut Vec<f64>) {
        out.clear();
        out.extend(
            self.loss
                .iter()
                .zip(&self.price)
                .map(|(l, p)| l + lambda * p),
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    pub epochs: usize,
    pub learning_rate: f64,
    pub l2: f64,
    /// L2 penalty on the hashed n-gram weights (many, sparse, noisy: usually stronger).
    pub l2_hashed: f64,
    /// L2 penalty on the dense weights from index `probe_features_from` on (the probe features
    /// of defer mode), which carry most of the signal there.
    pub l2_probe: f64,
    pub probe_features_from: usize,
    pub batch_size: usize,
    pub seed: u64,
}

impl FitConfig {
    /// The L2 strength on the weights of dense feature `feature`.
    fn dense_l2(&self, feature: usize) -> f64 {
        if feature >= self.probe_features_from {
            self.l2_probe
        } else {
            self.l2
        }
    }
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            epochs: 500,
            learning_rate: 0.05,
            l2: 1.0,
            l2_hashed: 1.0,
            l2_probe: 0.01,
            probe_features_from: usize::MAX,
            batch_size: usize::MAX,
            seed: 1,
        }
    }
}

struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    fn new(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    fn step(&mut self, params: &mut [&mut [f64]], grads: &[&[f64]], lr: f64) {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        self.t += 1;
        let (c1, c2) = (1.0 - B1.powi(self.t), 1.0 - B2.powi(self.t));
        let mut k = 0;
        for (p, g) in params.iter_mut().zip(grads) {
            for (w, &g) in p.iter_mut().zip(g.iter()) {
                self.m[k] = B1 * self.m[k] + (1.0 - B1) * g;
                self.v[k] = B2 * self.v[k] + (1.0 - B2) * g * g;
                *w -= lr * (self.m[k] / c1) / ((self.v[k] / c2).sqrt() + 1e-8);
                k += 1;
            }
        }
    }
}

/// Fits a rejector for `agents` agents at price of compute `lambda`.
pub fn fit(
    examples: &[Example],
    agents: usize,
    dense_len: usize,
    hash_buckets: usize,
    lambda: f64,
    config: &FitConfig,
) -> LinearRejector {
    let (mut costs, mut scratch) = (Vec::new(), Scratch::default());
    descend(
        examples,
        agents,
        dense_len,
        hash_buckets,
        config,
        |x, _, logits, grad| {
            x.costs(lambda, &mut costs);
            example_surrogate(x, logits, &costs, grad, &mut scratch);
        },
    )
}

/// Minimises the mean over `examples` of a loss of the rejector's logits, plus the L2 penalties
/// of `config`, by Adam (minibatches, cosine-decayed step). `gradient(example, index, logits,
/// grad)` writes the gradient of the example's loss with respect to its logits.
pub fn descend(
    examples: &[Example],
    agents: usize,
    dense_len: usize,
    hash_buckets: usize,
    config: &FitConfig,
    mut gradient: impl FnMut(&Example, usize, &[f64], &mut Vec<f64>),
) -> LinearRejector {
    let mut model = LinearRejector::zeros(agents, dense_len, hash_buckets);
    let mut adam = Adam::new(agents * (1 + dense_len + hash_buckets));
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let (mut g_bias, mut g_dense, mut g_hashed) = (
        vec![0.0; agents],
        vec![0.0; agents * dense_len],
        vec![0.0; agents * hash_buckets],
    );
    let (mut logits, mut grad) = (Vec::new(), Vec::new());
    let batch_size = config.batch_size.max(1);
    let steps = config.epochs * examples.len().div_ceil(batch_size);
    let mut step = 0usize;
    for _ in 0..config.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(batch_size) {
            g_bias.iter_mut().for_each(|g| *g = 0.0);
            // L2 on the weights; the data gradient is added below.
            for (k, (g, w)) in g_dense.iter_mut().zip(&model.dense).enumerate() {
                *g = config.dense_l2(k % dense_len) * w;
            }
            for (g, w) in g_hashed.iter_mut().zip(&model.hashed) {
                *g = config.l2_hashed * w;
            }
            let scale = 1.0 / batch.len() as f64;
            for (pos, &i) in batch.iter().enumerate() {
                // The order is shuffled, so each example is a cache miss (its record, then
                // its vectors): start loading those of the examples a few places ahead.
                if let Some(&ahead) = batch.get(pos + 6) {
                    prefetch_lines(std::slice::from_ref(&examples[ahead]));
                }
                if let Some(&next) = batch.get(pos + 3) {
                    let x = &examples[next];
                    prefetch_lines(&x.dense);
                    prefetch_lines(&x.hashed);
                    prefetch_lines(&x.loss);
                    prefetch_lines(&x.price);
                    prefetch_lines(&x.valid);
                }
                let x = &examples[i];
                model.logits(&x.dense, &x.hashed, &mut logits);
                gradient(x, i, &logits, &mut grad);
                for j in 0..agents {
                    let gj = grad[j] * scale;
                    g_bias[j] += gj;
                    let row = &mut g_dense[j * dense_len..(j + 1) * dense_len];
                    for (g, z) in row.iter_mut().zip(&x.dense) {
                        *g += gj * z;
                    }
                    let hrow = &mut g_hashed[j * hash_buckets..(j + 1) * hash_buckets];
                    for &(h, v) in &x.hashed {
                        hrow[h as usize] += gj * v;
                    }
                }
            }
            // Cosine decay to zero: a vanishing step lets Adam settle at a minimum (the
            // surrogate's objective is convex) instead of circling it.
            let progress = step as f64 / steps.max(1) as f64;
            let lr = config.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
            step += 1;
            adam.step(
                &mut [&mut model.bias, &mut model.dense, &mut model.hashed],
                &[&g_bias, &g_dense, &g_hashed],
                lr,
            );
        }
    }
    model
}

/// Hints the processor to start loading every cache line of `data`: a hint only, which changes
/// no result (a no-op off x86-64).
#[inline(always)]
fn prefetch_lines<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = std::mem::size_of_val(data);
        let start = data.as_ptr().cast::<i8>();
        for offset in (0..bytes).step_by(64) {
            // SAFETY: a prefetch never faults and reads nothing into the program; the address
            // is inside `data` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[derive(Default)]
struct Scratch {
    logits: Vec<f64>,
    costs: Vec<f64>,
    grad: Vec<f64>,
}

/// The surrogate of one example and its gradient per agent (0 for an agent that is not an
/// action of the example).
fn example_surrogate(
    x: &Example,
    logits: &[f64],
    costs: &[f64],
    grad: &mut Vec<f64>,
    scratch: &mut Scratch,
) -> f64 {
    if x.valid.is_empty() {
        return surrogate(logits, costs, grad);
    }
    let valid = |j: &usize| x.valid[*j];
    scratch.logits.clear();
    scratch.costs.clear();
    for j in (0..logits.len()).filter(valid) {
        scratch.logits.push(logits[j]);
        scratch.costs.push(costs[j]);
    }
    let value = surrogate(&scratch.logits, &scratch.costs, &mut scratch.grad);
    grad.clear();
    grad.resize(logits.len(), 0.0);
    for (j, g) in (0..logits.len()).filter(valid).zip(&scratch.grad) {
        grad[j] = *g;
    }
    value
}

/// Mean surrogate value of `model` on `examples` at `lambda`.
pub fn mean_surrogate(model: &LinearRejector, examples: &[Example], lambda: f64) -> f64 {
    let (mut logits, mut costs, mut grad) = (Vec::new(), Vec::new(), Vec::new());
    let mut scratch = Scratch::default();
    let total: f64 = examples
        .iter()
        .map(|x| {
            model.logits(&x.dense, &x.hashed, &mut logits);
            x.costs(lambda, &mut costs);
            example_surrogate(x, &logits, &costs, &mut grad, &mut scratch)
        })
        .sum();
    total / examples.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn toy(n: usize) -> Vec<Example> {
        // Agent 0 is right when x > 0, agent 1 when x < 0.
        (0..n)
            .map(|i| {
                let x = (i as f64 / n as f64) * 2.0 - 1.0 + 0.5 / n as f64;
                let right0 = x > 0.0;
                Example {
                    dense: vec![x],
                    hashed: vec![],
                    loss: vec![f64::from(u8::from(!right0)), f64::from(u8::from(right0))],
                    price: vec![0.0, 0.0],
                    valid: Vec::new(),
                }
            })
            .collect()
    }

    #[test]
    fn fitting_lowers_the_surrogate_and_is_deterministic() {
        let data = toy(200);
        let config = FitConfig {
            epochs: 20,
            l2: 1e-3,
            batch_size: 16,
            ..FitConfig::default()
        };
        let before = mean_surrogate(&LinearRejector::zeros(2, 1, 4), &data, 0.0);
        let model = fit(&data, 2, 1, 4, 0.0, &config);
        let after = mean_surrogate(&model, &data, 0.0);
        assert!(after < 0.5 * before, "{before} -> {after}");
        assert_eq!(model, fit(&data, 2, 1, 4, 0.0, &config));
        let other = fit(&data, 2, 1, 4, 0.0, &FitConfig { seed: 2, ..config });
        assert_ne!(model, other, "the seed drives the example order");
    }

    /// What `fit` minimises at `lambda`: the mean surrogate plus the L2 penalties `descend`
    /// differentiates (`l2 · w` is the gradient of `l2 · w² / 2`).
    fn objective(model: &LinearRejector, data: &[Example], config: &FitConfig, lambda: f64) -> f64 {
        let d = model.dense.len() / model.bias.len();
        let dense: f64 = (model.dense.iter().enumerate())
            .map(|(k, w)| 0.5 * config.dense_l2(k % d) * w * w)
            .sum();
        let hashed: f64 = model
            .hashed
            .iter()
            .map(|w| 0.5 * config.l2_hashed * w * w)
            .sum();
        mean_surrogate(model, data, lambda) + dense + hashed
    }

    #[test]
    fn the_default_settings_reach_the_minimum_not_just_near_it() {
        // Three agents, eight features: each agent's loss depends on a different mix of them,
        // with noise, as with real queries. The defaults' step count and step size are solver
        // settings, not model choices, only if more steps no longer lower the (convex)
        // objective.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let data: Vec<Example> = (0..600)
            .map(|_| {
                let dense: Vec<f64> = (0..8).map(|_| rng.random_range(-2.0..2.0)).collect();
                let loss = (0..3)
                    .map(|j| {
                        let score = dense[j] - 0.5 * dense[j + 3] + rng.random_range(-1.0..1.0);
                        f64::from(u8::from(score > 0.0))
                    })
                    .collect();
                Example {
                    dense,
                    hashed: vec![],
                    loss,
                    price: vec![0.0, 0.1, 0.5],
                    valid: Vec::new(),
                }
            })
            .collect();
        let config = FitConfig {
            l2: 0.01,
            probe_features_from: 4,
            l2_probe: 0.001,
            ..FitConfig::default()
        };
        let at = |epochs: usize| {
            let config = FitConfig { epochs, ..config };
            objective(&fit(&data, 3, 8, 0, 0.1, &config), &data, &config, 0.1)
        };
        let (default, longer) = (at(config.epochs), at(4 * config.epochs));
        assert!(
            (default - longer).abs() <= 1e-6 * longer,
            "{default} after the default steps, {longer} after four times as many"
        );
    }
}
