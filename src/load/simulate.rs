//! `l2d simulate`: the scheduler's decision on pools far larger than the shipped one, in
//! process, on simulated time.
//!
//! A pool of `experts × replicas` is built from copies of the labelled experts (expert `k` is a
//! copy of labelled expert `k mod J`, its cost raised by 1% per copy so the copies are not tied).
//! Queries (the labelled questions, cycled) arrive at even intervals of simulated time; each is
//! decided by the real code path's pure part (prior policy scoring + `decide`, replicas' in-flight
//! counts taken from the simulation), measured in wall-clock time; the chosen replica serves it
//! for `cost × unit` of simulated time after whatever it is already doing. What the decision costs
//! as the pool grows, and what the routing realises (EM from the labels, cost, simulated latency).

use crate::core::decision::{Candidate, DecisionParams, ReplicaLoad, decide};
use crate::core::policy::{ExpertMeta, Policy, PriorPolicy};
use crate::core::query::{Query, QueryLimits};
use crate::train::labels::Labels;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct SimRow {
    pub experts: usize,
    pub replicas: usize,
    pub queries: usize,
    /// Wall-clock time of scoring + deciding one query, mean, in microseconds.
    pub decision_us: f64,
    pub em: f64,
    pub mean_cost: f64,
    /// Simulated latency (queueing + service), in units of simulated microseconds.
    pub latency_p50: u64,
    pub latency_p99: u64,
}

/// Simulates one pool size. `unit` is the simulated service time of one cost unit; queries
/// arrive every `interval` of simulated time.
pub fn simulate(
    labels: &Labels,
    experts: usize,
    replicas: usize,
    queries: usize,
    unit: Duration,
    interval: Duration,
    lambda: f64,
) -> anyhow::Result<SimRow> {
    let base = &labels.header.experts;
    anyhow::ensure!(
        !base.is_empty() && !labels.records.is_empty(),
        "the labels hold no experts or questions"
    );
    let n = labels.records.len() as f64;
    // Prior accuracy of each labelled expert: its mean EM over the labels.
    let accuracy: Vec<f64> = (0..base.len())
        .map(|j| labels.records.iter().map(|r| r.experts[j].em).sum::<f64>() / n)
        .collect();
    let ids: Vec<String> = (0..experts)
        .map(|k| format!("{}#{}", base[k % base.len()].id, k / base.len()))
        .collect();
    let costs: Vec<f64> = (0..experts)
        .map(|k| base[k % base.len()].cost * (1.0 + 0.01 * (k / base.len()) as f64))
        .collect();
    let policy = PriorPolicy::new(
        lambda,
        ids.iter()
            .enumerate()
            .map(|(k, id)| (id.clone(), accuracy[k % base.len()])),
    )?;
    let metas: Vec<ExpertMeta<'_>> = ids
        .iter()
        .zip(&costs)
        .map(|(id, &cost)| ExpertMeta { id, cost })
        .collect();
    // Each replica: when it is free again (simulated µs), and its queue of completion times.
    let mut busy_until: Vec<Vec<u64>> = vec![vec![0; replicas]; experts];
    let mut in_flight: Vec<Vec<Vec<u64>>> = vec![vec![Vec::new(); replicas]; experts];
    let mut latency = Histogram::<u64>::new_with_bounds(1, u64::MAX / 4, 3)?;
    let (mut em, mut cost, mut decide_time) = (0.0, 0.0, Duration::ZERO);
    let mut scores = Vec::with_capacity(experts);
    let mut loads: Vec<Vec<ReplicaLoad>> = vec![Vec::with_capacity(replicas); experts];
    let limits = QueryLimits::default();
    let prepared: Vec<Query> = labels
        .records
        .iter()
        .map(|r| Query::new(r.question.clone(), r.context.clone(), None, &limits))
        .collect::<Result<_, _>>()?;
    for i in 0..queries {
        let now = i as u64 * interval.as_micros() as u64;
        let r = i % labels.records.len();
        // Replicas' load as the scheduler would see it: calls still in progress.
        for (e, reps) in in_flight.iter_mut().enumerate() {
            loads[e].clear();
            for q in reps.iter_mut() {
                q.retain(|&done| done > now);
                loads[e].push(ReplicaLoad {
                    in_flight: q.len() as u32,
                    ..ReplicaLoad::idle(costs[e] * unit.as_secs_f64())
                });
            }
        }
        let started = Instant::now();
        policy.score(0, &prepared[r], &[], &metas, &mut scores);
        let candidates: Vec<Candidate<'_>> = (0..experts)
            .map(|e| Candidate {
                cost: costs[e],
                expected_cost: scores[e],
                replicas: &loads[e],
                unfit: None,
            })
            .collect();
        let plan = decide(
            &candidates,
            &DecisionParams {
                seed: i as u64,
                ..DecisionParams::default()
            },
        )?;
        decide_time += started.elapsed();
        let a = plan.attempts[0];
        let service = (costs[a.expert] * unit.as_micros() as f64) as u64;
        let start = busy_until[a.expert][a.replica].max(now);
        let done = start + service;
        busy_until[a.expert][a.replica] = done;
        in_flight[a.expert][a.replica].push(done);
        latency.saturating_record((done - now).max(1));
        em += labels.records[r].experts[a.expert % base.len()].em;
        cost += costs[a.expert];
    }
    Ok(SimRow {
        experts,
        replicas,
        queries,
        decision_us: decide_time.as_secs_f64() * 1e6 / queries.max(1) as f64,
        em: 100.0 * em / queries.max(1) as f64,
        mean_cost: cost / queries.max(1) as f64,
        latency_p50: latency.value_at_quantile(0.5),
        latency_p99: latency.value_at_quantile(0.99),
    })
}

pub fn table(rows: &[SimRow], unit: Duration, interval: Duration) -> String {
    let mut out = format!(
        "Simulated time: one cost unit = {} µs of service, a query every {} µs.\n\n\
         | experts × replicas | queries | decision µs (wall, mean) | EM | mean cost | latency p50 (sim µs) | latency p99 (sim µs) |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        unit.as_micros(),
        interval.as_micros()
    );
    for r in rows {
        out.push_str(&format!(
            "| {} × {} | {} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
            r.experts,
            r.replicas,
            r.queries,
            r.decision_us,
            r.em,
            r.mean_cost,
            r.latency_p50,
            r.latency_p99
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::learned::Agent;
    use crate::train::labels::{ExpertLabel, LabelHeader, LabelRecord};

    fn labels() -> Labels {
        let label = |expert: &str, em: f64, cost: f64| ExpertLabel {
            expert: expert.into(),
            answer: Some("x".into()),
            em,
            f1: em,
            latency_us: 1,
            cost,
            error: None,
        };
        Labels {
            header: LabelHeader {
                format: crate::train::labels::LABELS_FORMAT.into(),
                data: "t".into(),
                metric: "v1.1".into(),
                experts: vec![
                    Agent {
                        id: "a".into(),
                        cost: 1.0,
                    },
                    Agent {
                        id: "b".into(),
                        cost: 10.0,
                    },
                ],
            },
            records: (0..10)
                .map(|i| LabelRecord {
                    id: format!("q{i}"),
                    title: "t".into(),
                    question: "Who?".into(),
                    context: "Someone did.".into(),
                    experts: vec![
                        label("a", f64::from(u8::from(i % 2 == 0)), 1.0),
                        label("b", 1.0, 10.0),
                    ],
                })
                .collect(),
        }
    }

    #[test]
    fn the_simulation_accounts_every_query_and_spreads_replicas() {
        let l = labels();
        // lambda 0: accuracy only, so the copies of "b" (always right) win.
        let row = simulate(
            &l,
            6,
            4,
            100,
            Duration::from_micros(10),
            Duration::from_micros(50),
            0.0,
        )
        .unwrap();
        assert_eq!(row.queries, 100);
        assert_eq!(row.em, 100.0);
        assert!(
            (row.mean_cost - 10.0).abs() < 1e-9,
            "the cheapest copy of b: {}",
            row.mean_cost
        );
        // 100 µs of service every 50 µs over 4 replicas: no queueing past one service time.
        assert!(row.latency_p99 <= 101, "{row:?}");
        // A high price of compute sends everything to the cheap expert.
        let cheap = simulate(
            &l,
            6,
            4,
            100,
            Duration::from_micros(10),
            Duration::from_micros(50),
            10.0,
        )
        .unwrap();
        assert_eq!((cheap.em, cheap.mean_cost), (50.0, 1.0));
    }
}
