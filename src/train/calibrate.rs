//! Fitting each bank entry's [`Calibration`] on questions the rejectors were not trained on,
//! and the reliability table that shows how well the maps hold on others.
//!
//! Every action the served policy can take on a held-out question gives one pair: the
//! rejector's probability for it, and the deferral cost it turned out to have,
//! `loss + λ · price / max price` of what it commits to. Route and defer mode: answering with
//! expert `j` (prices beyond the probes). Cascade mode, in each state the policy reaches:
//! keeping an answer seen costs its loss; asking expert `k` costs its price plus what the
//! policy then does from the state with `k` asked.

use super::labels::{LabelRecord, Labels};
use super::{extra_cost, probe_answers, probe_indices};
use crate::core::calibration::Calibration;
use crate::core::learned::{Mode, PolicyFile, best_action, walk};
use anyhow::Context;
use serde::Serialize;

/// The (probability, realised cost) pairs of bank entry `entry` on `records`, by stage.
pub fn pairs(
    labels: &Labels,
    policy: &PolicyFile,
    entry: usize,
    records: &[&LabelRecord],
) -> anyhow::Result<Vec<Vec<(f64, f64)>>> {
    let lambda = policy.bank[entry].lambda;
    let costs: Vec<f64> = policy.experts.iter().map(|a| a.cost).collect();
    let max_cost = costs.iter().copied().fold(0.0, f64::max);
    let agents = costs.len();
    let mut out = vec![Vec::new(); policy.stages + 1];
    let mut p = Vec::new();
    if policy.mode != Mode::Cascade {
        let probes = probe_indices(labels, &policy.probes)?;
        for r in records {
            let f = policy.features(&r.question, &r.context, None, &probe_answers(r, &probes));
            policy.logits(entry, &f, &mut p);
            PolicyFile::action_probabilities(&mut p, &vec![true; agents]);
            for (j, &q) in p.iter().enumerate() {
                let price = extra_cost(labels, &probes, j) / max_cost;
                out[0].push((q, r.experts[j].loss(policy.loss) + lambda * price));
            }
        }
        return Ok(out);
    }
    let stages = policy.stage_rejectors(entry);
    let last = stages.len() - 1;
    let mut scratch = (Vec::new(), Vec::new());
    for r in records {
        let full = super::cascade::full_features(r);
        let mut asked = vec![false; agents];
        loop {
            let (stage, valid) = policy.state_logits(entry, &full, &asked, &mut p);
            let logits = p.clone();
            PolicyFile::action_probabilities(&mut p, &valid);
            for j in (0..agents).filter(|&j| valid[j]) {
                let cost = if asked[j] {
                    r.experts[j].loss(policy.loss)
                } else {
                    // Ask j, then follow the policy (paying for what it still asks).
                    let mut next = asked.clone();
                    next[j] = true;
                    let kept = walk(&stages, &policy.standardize, &full, &mut next, &mut scratch);
                    let paid: f64 = (0..agents)
                        .filter(|&k| next[k] && !asked[k])
                        .map(|k| costs[k] / max_cost)
                        .sum();
                    r.experts[kept].loss(policy.loss) + lambda * paid
                };
                out[stage].push((p[j], cost));
            }
            let action = best_action(&logits, &asked, &[], stage == last);
            if asked[action] {
                break;
            }
            asked[action] = true;
        }
    }
    Ok(out)
}

/// Fits every bank entry's maps and stores them in `target` (the same configuration, trained
/// on more questions: its entries match by lambda, each of which every fitted bank must hold).
/// Each of `fitted_on_fewer` is a policy and questions held out from its training; the pairs of
/// all of them are pooled.
pub fn calibrate(
    labels: &Labels,
    fitted_on_fewer: &[(&PolicyFile, &[&LabelRecord])],
    target: &mut PolicyFile,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        fitted_on_fewer
            .iter()
            .all(|(p, _)| p.mode == target.mode && p.stages == target.stages),
        "the calibrated bank and the served bank differ"
    );
    for entry in target.bank.iter_mut() {
        let mut by_stage: Vec<Vec<(f64, f64)>> = Vec::new();
        for (policy, records) in fitted_on_fewer {
            // Each served entry is calibrated on the fitted entry of its own lambda, wherever
            // that entry sits in the fitted bank.
            let e = policy
                .bank
                .iter()
                .position(|fitted| fitted.lambda == entry.lambda)
                .with_context(|| {
                    format!(
                        "the calibrated bank has no entry at lambda {} of the served bank",
                        entry.lambda
                    )
                })?;
            let stages = pairs(labels, policy, e, records)?;
            by_stage.resize(stages.len(), Vec::new());
            for (all, stage) in by_stage.iter_mut().zip(stages) {
                all.extend(stage);
            }
        }
        entry.calibration = by_stage
            .into_iter()
            .map(Calibration::fit)
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
    }
    Ok(())
}

/// One row of a reliability table: actions whose predicted expected cost fell in a bin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReliabilityRow {
    /// Predicted expected cost, bin bounds.
    pub from: f64,
    pub to: f64,
    pub actions: usize,
    pub mean_predicted: f64,
    pub mean_realised: f64,
}

/// How the served entry's calibration holds on `records`: every action of every question,
/// in ten bins of equal count by predicted cost (empty for an uncalibrated file).
pub fn reliability(
    labels: &Labels,
    policy: &PolicyFile,
    entry: usize,
    records: &[&LabelRecord],
) -> anyhow::Result<Vec<ReliabilityRow>> {
    let maps = &policy.bank[entry].calibration;
    if maps.is_empty() {
        return Ok(Vec::new());
    }
    let mut predicted: Vec<(f64, f64)> = pairs(labels, policy, entry, records)?
        .into_iter()
        .zip(maps)
        .flat_map(|(stage, map)| {
            stage
                .into_iter()
                .map(move |(q, c)| (map.expected_cost(q), c))
        })
        .collect();
    predicted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = predicted.len();
    let bins = 10.min(n);
    Ok((0..bins)
        .map(|b| {
            let chunk = &predicted[b * n / bins..(b + 1) * n / bins];
            let w = chunk.len() as f64;
            ReliabilityRow {
                from: chunk[0].0,
                to: chunk[chunk.len() - 1].0,
                actions: chunk.len(),
                mean_predicted: chunk.iter().map(|x| x.0).sum::<f64>() / w,
                mean_realised: chunk.iter().map(|x| x.1).sum::<f64>() / w,
            }
        })
        .collect())
}
