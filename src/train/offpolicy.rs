//! `l2d eval --from-log`: what a candidate policy would score, estimated from a scheduler's
//! decision log (IPS, SNIPS and doubly robust; see `core::offpolicy` for the assumptions).
//!
//! - With `--labels` ([`evaluate_from_log`]), the rewards are joined from the labels by query id.
//!   Because the labels hold every expert's answer, the report also gives the candidate's
//!   directly computed value on the same queries, so the estimate can be checked.
//! - From the log alone ([`evaluate_log_alone`]): the rewards are the outcomes reported to the
//!   scheduler (`Router.ReportOutcome`), the queries and the answers seen before each decision
//!   are logged with `--decision-log-queries`, and each estimate gets a bootstrap interval.

use super::labels::Labels;
use super::{probe_answers, probe_indices};
use crate::core::learned::PolicyFile;
use crate::core::offpolicy::{Estimate, Intervals, Sample, estimate};
use crate::core::rejector::argmax;
use crate::scheduler::decision_log::LoggedDecision;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OffPolicyReport {
    /// Log lines read, and those joined to a labelled question.
    pub logged: usize,
    pub joined: usize,
    /// The logging policy's own mean reward (EM of the answers it returned) on the joined lines.
    pub logging_em: f64,
    /// The candidate's estimated EM (percent), from the log.
    pub estimated_em: Estimate,
    pub direct_model: DirectModel,
    /// The candidate's EM (percent) computed directly from the labels on the same queries.
    pub direct_em: f64,
    /// The candidate's mean cost per query on the same queries (known from declared costs).
    pub mean_cost: f64,
}

/// The decisions a scheduler served (its shadow decisions left out), from the log at `path`
/// and its rotated files.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<LoggedDecision>> {
    let mut log = crate::scheduler::decision_log::read_log(path)?;
    // A candidate's shadow decision served nothing: it carries no reward.
    log.retain(|entry| !entry.shadow);
    Ok(log)
}

/// The policy's own estimate that its action `pick` is right, from its calibrated expected
/// deferral cost at bank entry `entry` (which adds `lambda × price / max price` to the expected
/// loss): `1 − (cost − lambda × price / max price)`, within [0, 1]. `None` for a policy without
/// calibration, whose scores are not probabilities. `logits` are the entry's.
fn own_estimate(policy: &PolicyFile, entry: usize, logits: &[f64], pick: usize) -> Option<f64> {
    policy.bank[entry].calibration.first()?;
    let mut costs = logits.to_vec();
    let valid = vec![true; costs.len()];
    policy.expected_costs(entry, 0, &mut costs, &valid);
    let max_price = policy
        .experts
        .iter()
        .map(|a| a.cost)
        .fold(f64::MIN_POSITIVE, f64::max);
    let priced = policy.bank[entry].lambda * policy.experts[pick].cost / max_price;
    Some((1.0 - (costs[pick] - priced)).clamp(0.0, 1.0))
}

/// Doubly robust's direct model, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectModel {
    /// The candidate's own calibrated estimate that its choice is right.
    Calibrated,
    /// The candidate has no calibration: the mean reward the log holds for each action.
    LoggedMeans,
}

/// One decision the candidate was evaluated on, before its direct estimate is known.
struct Evaluated {
    pick: usize,
    /// The logged action, as an index of the candidate's experts (`None`: not one of them).
    chosen: Option<usize>,
    reward: f64,
    propensity: f64,
    own: Option<f64>,
}

/// The estimator's samples (rewards in percent) and the direct model used: the candidate's own
/// estimates when it has them for every decision, else each action's mean logged reward (the
/// overall mean for an action never logged).
fn samples(evaluated: &[Evaluated], actions: usize) -> (Vec<Sample>, DirectModel) {
    let calibrated = evaluated.iter().all(|e| e.own.is_some());
    let (mut sums, mut counts) = (vec![0.0; actions], vec![0usize; actions]);
    for e in evaluated {
        if let Some(c) = e.chosen {
            sums[c] += e.reward;
            counts[c] += 1;
        }
    }
    let overall = evaluated.iter().map(|e| e.reward).sum::<f64>() / evaluated.len().max(1) as f64;
    let means: Vec<f64> = sums
        .iter()
        .zip(&counts)
        .map(|(s, &n)| if n > 0 { s / n as f64 } else { overall })
        .collect();
    let samples = evaluated
        .iter()
        .map(|e| Sample {
            matches: e.chosen == Some(e.pick),
            reward: 100.0 * e.reward,
            propensity: e.propensity,
            estimate: 100.0
                * match (calibrated, e.own) {
                    (true, Some(own)) => own,
                    _ => means[e.pick],
                },
        })
        .collect();
    let model = if calibrated {
        DirectModel::Calibrated
    } else {
        DirectModel::LoggedMeans
    };
    (samples, model)
}

/// What [`evaluate_log_alone`] reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogOnlyReport {
    /// Decisions read, those with a reported outcome, and those of them the candidate could not
    /// decide (no logged query, or an answer it reads was not seen).
    pub logged: usize,
    pub rewarded: usize,
    pub unobserved: usize,
    /// The logging policy's mean reward (percent) on the decisions evaluated.
    pub logging_reward: f64,
    /// The candidate's estimated reward (percent): IPS, SNIPS and DR with 95% intervals, the
    /// effective sample size, and the direct model's estimate.
    pub estimated: Intervals,
    pub direct_model: DirectModel,
}

/// Bootstrap resamples for the intervals of [`evaluate_log_alone`].
pub const BOOTSTRAP_ROUNDS: usize = 1000;

/// Estimates what `policy` would score from the decisions of `log` with a reported outcome and
/// a logged query (`--decision-log-queries`); route and defer policies (a cascade would need
/// the answers of experts the logging policy may not have asked).
pub fn evaluate_log_alone(
    log: &[LoggedDecision],
    policy: &PolicyFile,
    seed: u64,
) -> anyhow::Result<LogOnlyReport> {
    anyhow::ensure!(
        policy.mode != crate::core::learned::Mode::Cascade,
        "a cascade policy cannot be evaluated from the log alone yet (it reads the answers of \
         experts the logging policy may not have asked); evaluate it with --labels"
    );
    let entry = policy.nearest(policy.default_lambda);
    let (mut evaluated, mut logging, mut unobserved, mut rewarded) = (Vec::new(), 0.0, 0, 0);
    let mut logits = Vec::new();
    for d in log {
        let Some(reward) = d.reward else { continue };
        rewarded += 1;
        let Some(query) = &d.query else {
            unobserved += 1;
            continue;
        };
        let probes: Option<Vec<Option<&str>>> = policy
            .probes
            .iter()
            .map(|p| query.observed.get(p).map(|a| Some(a.as_str())))
            .collect();
        let Some(probes) = probes else {
            unobserved += 1;
            continue;
        };
        let features = policy.features(&query.question, &query.context, None, &probes);
        policy.logits(entry, &features, &mut logits);
        let pick = argmax(&logits);
        logging += reward;
        evaluated.push(Evaluated {
            pick,
            chosen: policy.experts.iter().position(|a| a.id == d.chosen),
            reward,
            propensity: d.propensity,
            own: own_estimate(policy, entry, &logits, pick),
        });
    }
    let (samples, direct_model) = samples(&evaluated, policy.experts.len());
    Ok(LogOnlyReport {
        logged: log.len(),
        rewarded,
        unobserved,
        logging_reward: 100.0 * logging / samples.len().max(1) as f64,
        estimated: crate::core::offpolicy::with_intervals(&samples, BOOTSTRAP_ROUNDS, 0.95, seed),
        direct_model,
    })
}

pub fn evaluate_from_log(
    log: &[LoggedDecision],
    labels: &Labels,
    policy: &PolicyFile,
) -> anyhow::Result<OffPolicyReport> {
    let ids: Vec<&str> = labels
        .header
        .experts
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    anyhow::ensure!(
        policy
            .experts
            .iter()
            .map(|a| a.id.as_str())
            .eq(ids.iter().copied()),
        "the policy and the labels name different experts"
    );
    let probes = probe_indices(labels, &policy.probes)?;
    let by_id: HashMap<&str, usize> = labels
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let entry = policy.nearest(policy.default_lambda);
    let joined: Vec<(&LoggedDecision, &super::labels::LabelRecord)> = log
        .iter()
        .filter_map(|d| {
            let &i = by_id.get(d.query_id.as_deref()?)?;
            Some((d, &labels.records[i]))
        })
        .collect();
    // The answer the candidate would give and what it would pay, as `l2d eval` computes them
    // (a cascade walks its stages over the labelled answers).
    let records: Vec<_> = joined.iter().map(|&(_, r)| r).collect();
    let picks = super::eval::choices(policy, entry, &records, labels, &probes);
    let (mut evaluated, mut logging, mut direct, mut cost) = (Vec::new(), 0.0, 0.0, 0.0);
    let mut logits = Vec::new();
    for (&(d, record), &(pick, paid)) in joined.iter().zip(&picks) {
        direct += record.experts[pick].em;
        cost += paid;
        // Its own estimate that the answer is right: a route or defer policy's calibrated
        // score of its one decision (a cascade's last decision depends on the stages before
        // it: the logged means stand in).
        let own = if policy.mode == crate::core::learned::Mode::Cascade {
            None
        } else {
            let features = policy.features(
                &record.question,
                &record.context,
                None,
                &probe_answers(record, &probes),
            );
            policy.logits(entry, &features, &mut logits);
            own_estimate(policy, entry, &logits, pick)
        };
        let reward = d
            .answered_by
            .as_deref()
            .and_then(|a| ids.iter().position(|x| *x == a))
            .map_or(0.0, |j| record.experts[j].em);
        logging += reward;
        evaluated.push(Evaluated {
            pick,
            chosen: ids.iter().position(|x| *x == d.chosen),
            reward,
            propensity: d.propensity,
            own,
        });
    }
    let (samples, direct_model) = samples(&evaluated, ids.len());
    let n = samples.len().max(1) as f64;
    Ok(OffPolicyReport {
        logged: log.len(),
        joined: samples.len(),
        logging_em: 100.0 * logging / n,
        estimated_em: estimate(&samples),
        direct_model,
        direct_em: 100.0 * direct / n,
        mean_cost: cost / n,
    })
}
