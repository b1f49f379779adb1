//! `l2d eval --from-log`: what a candidate policy would score, estimated from a scheduler's
//! decision log (inverse propensity scoring; see `core::offpolicy` for the assumptions), with the
//! rewards joined from labels by query id. Because the labels hold every expert's answer, the
//! report also gives the candidate's directly computed value on the same queries, so the
//! estimate can be checked.

use super::labels::Labels;
use super::{extra_cost, probe_answers, probe_indices};
use crate::core::learned::PolicyFile;
use crate::core::offpolicy::{Estimate, Sample, estimate};
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
