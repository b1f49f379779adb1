//! Cascade mode: multi-stage Learning-to-Defer, fitted by backward induction.
//!
//! A *state* of a query is the set of agents asked so far (their answers are known). Stage `t`
//! is the states with `t` agents asked; its rejector chooses among "keep the answer of an agent
//! asked" and "ask agent `k` next" (at the last stage, `stages`, only keeping is an action).
//! Training is full-information: the labels hold every agent's answer to every training
//! question, so every state of every question can be replayed. For each lambda:
//!
//! 1. the last stage's rejector is fitted with the surrogate on the costs of keeping each answer
//!    (`1 − EM`, or `1 − F1`);
//! 2. going back one stage at a time, the cost of "ask `k`" is `lambda × price_k / max price`
//!    plus the cost the already fitted later stages incur from the state with `k` added (their
//!    later asks priced the same way, and the loss of the answer they keep), and the stage's
//!    rejector is fitted on those costs;
//! 3. every stage reads the dense features of the query and of the answers seen
//!    ([`crate::core::features::cascade_dense`]); stage 0 (nothing asked) the query's alone. No
//!    stage reads the hashed question n-grams: they would multiply the policy file's size (a
//!    policy must fit a 1 MiB ConfigMap) by four.
//!
//! Every stage sees the same number of optimiser steps as a route-mode fit, each on as many
//! examples as there are training questions.

use super::fit::{Example, FitConfig, fit};
use super::labels::{LabelRecord, Labels};
use crate::core::features::{
    DENSE_NAMES, Features, cascade_dense, cascade_dense_len, featurize_dense,
};
use crate::core::learned::{BankEntry, LossKind, Standardization, walk};
use crate::core::rejector::LinearRejector;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// At most this many states of one stage are replayed per question (sampled when a stage has
/// more): bounds training on large pools.
const MAX_STATES_PER_QUESTION: usize = 64;

/// The featurization of a labelled question with every agent's answer (unstandardised): every
/// state's features are masks of it.
pub fn full_features(record: &LabelRecord) -> Features {
    let answers: Vec<Option<&str>> = record.experts.iter().map(|e| e.answer.as_deref()).collect();
    featurize_dense(&record.question, &record.context, None, &answers)
}

/// Every subset of `agents` agents of size `size`, as bit masks, in increasing order.
fn subsets(agents: usize, size: usize) -> Vec<u64> {
    (0u64..1 << agents)
        .filter(|m| m.count_ones() as usize == size)
        .collect()
}

fn flags(mask: u64, agents: usize) -> Vec<bool> {
    (0..agents).map(|j| mask >> j & 1 == 1).collect()
}

/// The states of stage `stage` replayed for question `i`.
fn states(all: &[u64], seed: u64, i: usize) -> Vec<u64> {
    if all.len() <= MAX_STATES_PER_QUESTION {
        return all.to_vec();
    }
    let mut picked = all.to_vec();
    picked.shuffle(&mut ChaCha8Rng::seed_from_u64(
        seed ^ (i as u64).wrapping_mul(0x9e37_79b9),
    ));
    picked.truncate(MAX_STATES_PER_QUESTION);
    picked
}

/// The cascade's training: the standardisation and one bank entry per lambda.
pub fn train(
    labels: &Labels,
    records: &[&LabelRecord],
    lambdas: &[f64],
    stages: usize,
    loss: LossKind,
    config: &FitConfig,
) -> anyhow::Result<(Standardization, Vec<BankEntry>)> {
    let agents = labels.header.experts.len();
    anyhow::ensure!(
        agents <= 32,
        "cascade mode handles up to 32 experts, the labels hold {agents}"
    );
    anyhow::ensure!(
        (1..=agents).contains(&stages),
        "--stages must be between 1 and the number of experts ({agents}), got {stages}"
    );
    let full: Vec<Features> = records.iter().map(|r| full_features(r)).collect();
    let by_stage: Vec<Vec<u64>> = (0..=stages).map(|t| subsets(agents, t)).collect();

    // Standardise over every replayed state of every stage.
    let d = cascade_dense_len(agents);
    let (mut sum, mut sum_sq, mut count) = (vec![0.0; d], vec![0.0; d], 0.0);
    let mut dense = Vec::with_capacity(d);
    for (i, f) in full.iter().enumerate() {
        for all in &by_stage {
            for mask in states(all, config.seed, i) {
                cascade_dense(&f.dense, &flags(mask, agents), &mut dense);
                for ((s, q), x) in sum.iter_mut().zip(&mut sum_sq).zip(&dense) {
                    *s += x;
                    *q += x * x;
                }
                count += 1.0;
            }
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
    let std: Vec<f64> = sum_sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| {
            let v = (q / count - m * m).max(0.0).sqrt();
            if v > 1e-9 { v } else { 1.0 }
        })
        .collect();
    let standardize = Standardization { mean, std };

    let max_cost = labels
        .header
        .experts
        .iter()
        .map(|a| a.cost)
        .fold(0.0, f64::max);
    let price: Vec<f64> = labels
        .header
        .experts
        .iter()
        .map(|a| a.cost / max_cost)
        .collect();
    let losses: Vec<Vec<f64>> = records
        .iter()
        .map(|r| r.experts.iter().map(|e| e.loss(loss)).collect())
        .collect();
    let problem = Problem {
        agents,
        stages,
        full: &full,
        losses: &losses,
        price: &price,
        by_stage: &by_stage,
        standardize: &standardize,
        config,
    };
    let bank = super::on_every_core(lambdas, |lambda| problem.fit_bank_entry(lambda));
    Ok((standardize, bank))
}

struct Problem<'a> {
    agents: usize,
    stages: usize,
    full: &'a [Features],
    losses: &'a [Vec<f64>],
    price: &'a [f64],
    by_stage: &'a [Vec<u64>],
    standardize: &'a Standardization,
    config: &'a FitConfig,
}

impl Problem<'_> {
    /// The cost of following `rejectors` from the state `asked` of question `i`: the priced
    /// asks it makes from there, and the loss of the answer it keeps.
    fn cost_to_go(
        &self,
        rejectors: &[&LinearRejector],
        i: usize,
        asked: &[bool],
        lambda: f64,
        scratch: &mut (Vec<f64>, Vec<f64>),
    ) -> f64 {
        let mut after = asked.to_vec();
        let kept = walk(
            rejectors,
            self.standardize,
            &self.full[i],
            &mut after,
            scratch,
        );
        let asks: f64 = (0..self.agents)
            .filter(|&j| after[j] && !asked[j])
            .map(|j| lambda * self.price[j])
            .sum();
        asks + self.losses[i][kept]
    }

    fn fit_bank_entry(&self, lambda: f64) -> BankEntry {
        let (agents, last) = (self.agents, self.stages);
        let d = cascade_dense_len(agents);
        let mut rejectors: Vec<LinearRejector> = (0..=last)
            .map(|_| LinearRejector::zeros(agents, d, 0))
            .collect();
        let n = self.full.len();
        let mut scratch = (Vec::new(), Vec::new());
        for t in (0..=last).rev() {
            let fitted: Vec<&LinearRejector> = rejectors.iter().collect();
            let mut examples = Vec::new();
            for i in 0..n {
                for mask in states(&self.by_stage[t], self.config.seed, i) {
                    let asked = flags(mask, agents);
                    let costs: Vec<f64> = (0..agents)
                        .map(|j| {
                            if asked[j] {
                                self.losses[i][j]
                            } else if t < last {
                                let mut next = asked.clone();
                                next[j] = true;
                                lambda * self.price[j]
                                    + self.cost_to_go(&fitted, i, &next, lambda, &mut scratch)
                            } else {
                                0.0 // not an action
                            }
                        })
                        .collect();
                    let mut dense = Vec::with_capacity(d);
                    cascade_dense(&self.full[i].dense, &asked, &mut dense);
                    self.standardize.apply(&mut dense);
                    examples.push(Example {
                        dense,
                        hashed: Vec::new(),
                        loss: costs,
                        price: vec![0.0; agents],
                        valid: if t == last { asked } else { Vec::new() },
                    });
                }
            }
            // As many optimiser steps as a route-mode fit, each on as many examples as there
            // are questions.
            let m = examples.len().max(1);
            let stage_config = FitConfig {
                epochs: (self.config.epochs * n).div_ceil(m).max(1),
                batch_size: self.config.batch_size.min(n.max(1)),
                probe_features_from: DENSE_NAMES.len(),
                ..*self.config
            };
            rejectors[t] = fit(&examples, agents, d, 0, 0.0, &stage_config);
        }
        let mut stages = rejectors.into_iter();
        let first = stages.next().expect("stage 0 exists");
        BankEntry {
            lambda,
            rejector: first,
            later: stages.collect(),
            calibration: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_every_mask_of_the_size() {
        assert_eq!(subsets(3, 0), vec![0]);
        assert_eq!(subsets(3, 2), vec![0b011, 0b101, 0b110]);
        assert_eq!(subsets(5, 3).len(), 10);
        assert_eq!(flags(0b101, 3), vec![true, false, true]);
    }
}
