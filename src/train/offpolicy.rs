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
use super::{extra_cost, probe_answers, probe_indices};
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
/// loss): `1 − (cost − lambda × price / max price)`, within [0, 1]. `logits` are the entry's.
fn own_estimate(policy: &PolicyFile, entry: usize, logits: &[f64], pick: usize) -> f64 {
    let mut costs = logits.to_vec();
    let valid = vec![true; costs.len()];
    policy.expected_costs(entry, 0, &mut costs, &valid);
    let max_price = policy
        .experts
        .iter()
        .map(|a| a.cost)
        .fold(f64::MIN_POSITIVE, f64::max);
    let priced = policy.bank[entry].lambda * policy.experts[pick].cost / max_price;
    (1.0 - (costs[pick] - priced)).clamp(0.0, 1.0)
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
    /// effective sample size, and its own direct estimate.
    pub estimated: Intervals,
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
    let (mut samples, mut logging, mut unobserved, mut rewarded) = (Vec::new(), 0.0, 0, 0);
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
        samples.push(Sample {
            matches: policy.experts[pick].id == d.chosen,
            reward: 100.0 * reward,
            propensity: d.propensity,
            estimate: 100.0 * own_estimate(policy, entry, &logits, pick),
        });
    }
    Ok(LogOnlyReport {
        logged: log.len(),
        rewarded,
        unobserved,
        logging_reward: 100.0 * logging / samples.len().max(1) as f64,
        estimated: crate::core::offpolicy::with_intervals(&samples, BOOTSTRAP_ROUNDS, 0.95, seed),
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
    let probe_cost: f64 = probes.iter().map(|&p| labels.header.experts[p].cost).sum();
    let by_id: HashMap<&str, usize> = labels
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let entry = policy.nearest(policy.default_lambda);
    let (mut samples, mut logging, mut direct, mut cost) = (Vec::new(), 0.0, 0.0, 0.0);
    let mut logits = Vec::new();
    for d in log {
        let Some(&i) = d.query_id.as_deref().and_then(|q| by_id.get(q)) else {
            continue;
        };
        let record = &labels.records[i];
        let features = policy.features(
            &record.question,
            &record.context,
            None,
            &probe_answers(record, &probes),
        );
        policy.logits(entry, &features, &mut logits);
        let pick = argmax(&logits);
        direct += record.experts[pick].em;
        cost += probe_cost + extra_cost(labels, &probes, pick);
        let reward = d
            .answered_by
            .as_deref()
            .and_then(|a| ids.iter().position(|x| *x == a))
            .map_or(0.0, |j| record.experts[j].em);
        logging += reward;
        samples.push(Sample {
            matches: ids[pick] == d.chosen,
            reward: 100.0 * reward,
            propensity: d.propensity,
            estimate: 100.0 * own_estimate(policy, entry, &logits, pick),
        });
    }
    let n = samples.len().max(1) as f64;
    Ok(OffPolicyReport {
        logged: log.len(),
        joined: samples.len(),
        logging_em: 100.0 * logging / n,
        estimated_em: estimate(&samples),
        direct_em: 100.0 * direct / n,
        mean_cost: cost / n,
    })
}
