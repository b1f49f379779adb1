//! The dispatch decision: given the policy's scores and the live state of every expert's
//! replicas, which (expert, replica) pairs to try, in order.
//!
//! Pure: a function of its inputs, property-tested below. The scheduler's shell snapshots the
//! registry, asks the policy for scores, calls [`decide`], then walks [`Plan::attempts`].
//!
//! Rules, in order:
//! 1. An expert is *excluded* when its declared cost exceeds the request's budget, or when none
//!    of its replicas is available. Excluded experts are never attempted.
//! 2. Eligible experts are ranked by the policy's expected deferral cost (lower first); experts
//!    the policy did not score come after every scored one, cheapest first. Ties go to the
//!    cheaper expert, then to pool order.
//! 3. Within an expert, available replicas are tried least in-flight first; equal loads are
//!    broken by `rotation` (the shell passes a request counter) so idle replicas share work.
//! 4. Each expert gets up to `tries_per_expert` attempts on distinct replicas (a retry on another
//!    replica), then the next expert is the fallback; at most `max_attempts` in total.

use std::cmp::Ordering;

/// What the decision knows about one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLoad {
    /// Calls in flight from this scheduler.
    pub in_flight: u32,
    /// False when the replica must not receive traffic (lease expired, draining, ejected).
    pub available: bool,
}

/// One expert of the pool as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    /// Declared cost of one call.
    pub cost: f64,
    /// The policy's expected deferral cost, lower is better; `None` when the policy has no score.
    pub expected_cost: Option<f64>,
    pub replicas: &'a [ReplicaLoad],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionParams {
    /// The request's maximum cost per call, if any (validated positive and finite at the edge).
    pub budget: Option<f64>,
    pub max_attempts: usize,
    pub tries_per_expert: usize,
    /// Tie-break among equally loaded replicas.
    pub rotation: usize,
    /// ε of ε-greedy exploration (see [`explore`]); 0 for none.
    pub explore: f64,
}

impl Default for DecisionParams {
    fn default() -> Self {
        Self {
            budget: None,
            max_attempts: 4,
            tries_per_expert: 2,
            rotation: 0,
            explore: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    OverBudget,
    NoAvailableReplica,
}

impl Exclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::OverBudget => "over budget",
            Exclusion::NoAvailableReplica => "no available replica",
        }
    }
}

/// One call to make: indexes into the candidates and into that candidate's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub expert: usize,
    pub replica: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Eligible experts, best first.
    pub ranked: Vec<usize>,
    /// Excluded experts and why, in pool order.
    pub excluded: Vec<(usize, Exclusion)>,
    /// The calls to make, in order, until one succeeds. Never empty.
    pub attempts: Vec<Attempt>,
}

impl Plan {
    /// The expert tried first.
    pub fn chosen(&self) -> usize {
        self.attempts[0].expert
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecisionError {
    #[error("the pool has no experts")]
    EmptyPool,
    #[error("no expert fits the budget of {budget}: the cheapest costs {cheapest}")]
    OverBudget { budget: f64, cheapest: f64 },
    #[error("no expert has an available replica ({over_budget} more are over budget)")]
    NoAvailableReplica { over_budget: usize },
}

pub fn decide(
    candidates: &[Candidate<'_>],
    params: &DecisionParams,
) -> Result<Plan, DecisionError> {
    if candidates.is_empty() {
        return Err(DecisionError::EmptyPool);
    }
    let mut ranked = Vec::with_capacity(candidates.len());
    let mut excluded = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        if params.budget.is_some_and(|b| c.cost > b) {
            excluded.push((i, Exclusion::OverBudget));
        } else if !c.replicas.iter().any(|r| r.available) {
            excluded.push((i, Exclusion::NoAvailableReplica));
        } else {
            ranked.push(i);
        }
    }
    if ranked.is_empty() {
        let over_budget = excluded
            .iter()
            .filter(|(_, e)| *e == Exclusion::OverBudget)
            .count();
        return Err(match params.budget {
            Some(budget) if over_budget == candidates.len() => DecisionError::OverBudget {
                budget,
                cheapest: candidates
                    .iter()
                    .map(|c| c.cost)
                    .fold(f64::INFINITY, f64::min),
            },
            _ => DecisionError::NoAvailableReplica { over_budget },
        });
    }
    ranked.sort_by(|&a, &b| rank_order(a, &candidates[a], b, &candidates[b]));

    let mut attempts = Vec::new();
    let mut replica_order = Vec::new();
    'experts: for &e in &ranked {
        order_replicas(candidates[e].replicas, params.rotation, &mut replica_order);
        for &r in replica_order.iter().take(params.tries_per_expert.max(1)) {
            if attempts.len() >= params.max_attempts.max(1) {
                break 'experts;
            }
            attempts.push(Attempt {
                expert: e,
                replica: r,
            });
        }
    }
    Ok(Plan {
        ranked,
        excluded,
        attempts,
    })
}

/// ε-greedy exploration (beyond the paper, for off-policy evaluation): with probability
/// `epsilon` (when `u < epsilon`) the first attempt goes to an eligible expert drawn uniformly
/// (index `floor(v × eligible)`), its retries and the rest of the plan following unchanged.
/// Returns the probability with which the expert now first in the plan was chosen: its
/// propensity, `(1 − ε)·[it is the greedy choice] + ε / eligible`. `u` and `v` are uniform in
/// [0, 1): the caller draws them, so this stays a function of its inputs.
pub fn explore(
    plan: &mut Plan,
    candidates: &[Candidate<'_>],
    params: &DecisionParams,
    u: f64,
    v: f64,
) -> f64 {
    let epsilon = params.explore;
    let eligible = plan.ranked.len();
    let greedy = plan.ranked[0];
    let epsilon = epsilon.clamp(0.0, 1.0);
    let chosen = if u < epsilon {
        plan.ranked[((v * eligible as f64) as usize).min(eligible - 1)]
    } else {
        greedy
    };
    if chosen != greedy {
        // The drawn expert's attempts first, on its least-loaded available replicas (computed
        // afresh: max_attempts may have cut it from the plan); the plan's others follow.
        let mut order = Vec::new();
        order_replicas(candidates[chosen].replicas, params.rotation, &mut order);
        let mut attempts: Vec<Attempt> = order
            .iter()
            .take(params.tries_per_expert.max(1))
            .map(|&replica| Attempt {
                expert: chosen,
                replica,
            })
            .collect();
        attempts.extend(plan.attempts.iter().copied().filter(|a| a.expert != chosen));
        attempts.truncate(params.max_attempts.max(1));
        plan.attempts = attempts;
    }
    let greedy_mass = if chosen == greedy { 1.0 - epsilon } else { 0.0 };
    greedy_mass + epsilon / eligible as f64
}

/// A usable score: NaN or infinite scores from a faulty policy count as no score.
fn usable(score: Option<f64>) -> Option<f64> {
    score.filter(|s| s.is_finite())
}

fn rank_order(a: usize, ca: &Candidate<'_>, b: usize, cb: &Candidate<'_>) -> Ordering {
    let (sa, sb) = (usable(ca.expected_cost), usable(cb.expected_cost));
    let by_score = match (sa, sb) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_score.then(ca.cost.total_cmp(&cb.cost)).then(a.cmp(&b))
}

/// Available replicas, least in-flight first; ties broken by distance from `rotation`.
fn order_replicas(replicas: &[ReplicaLoad], rotation: usize, out: &mut Vec<usize>) {
    out.clear();
    out.extend((0..replicas.len()).filter(|&r| replicas[r].available));
    let n = replicas.len().max(1);
    let start = rotation % n;
    out.sort_by_key(|&r| (replicas[r].in_flight, (r + n - start) % n));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UP: ReplicaLoad = ReplicaLoad {
        in_flight: 0,
        available: true,
    };
    const DOWN: ReplicaLoad = ReplicaLoad {
        in_flight: 0,
        available: false,
    };

    fn cand(cost: f64, score: Option<f64>, replicas: &[ReplicaLoad]) -> Candidate<'_> {
        Candidate {
            cost,
            expected_cost: score,
            replicas,
        }
    }

    #[test]
    fn lowest_expected_cost_first_then_retry_then_fallback() {
        let two = [UP, UP];
        let one = [UP];
        let cands = [
            cand(1.0, Some(0.6), &one),
            cand(20.0, Some(0.2), &two),
            cand(100.0, Some(0.3), &one),
        ];
        let plan = decide(&cands, &DecisionParams::default()).unwrap();
        assert_eq!(plan.ranked, vec![1, 2, 0]);
        assert_eq!(plan.chosen(), 1);
        let attempts: Vec<(usize, usize)> = plan
            .attempts
            .iter()
            .map(|a| (a.expert, a.replica))
            .collect();
        assert_eq!(attempts, vec![(1, 0), (1, 1), (2, 0), (0, 0)]);
    }

    #[test]
    fn unscored_experts_come_last_cheapest_first_and_nan_counts_as_unscored() {
        let one = [UP];
        let cands = [
            cand(50.0, None, &one),
            cand(5.0, None, &one),
            cand(100.0, Some(0.9), &one),
            cand(1.0, Some(f64::NAN), &one),
        ];
        let plan = decide(&cands, &DecisionParams::default()).unwrap();
        assert_eq!(plan.ranked, vec![2, 3, 1, 0]);
    }

    #[test]
    fn budget_and_availability_exclude_with_reasons() {
        let one = [UP];
        let down = [DOWN, DOWN];
        let cands = [
            cand(1.0, Some(0.6), &one),
            cand(20.0, Some(0.2), &down),
            cand(100.0, Some(0.1), &one),
        ];
        let params = DecisionParams {
            budget: Some(50.0),
            ..DecisionParams::default()
        };
        let plan = decide(&cands, &params).unwrap();
        assert_eq!(plan.ranked, vec![0]);
        assert_eq!(
            plan.excluded,
            vec![
                (1, Exclusion::NoAvailableReplica),
                (2, Exclusion::OverBudget)
            ]
        );
    }

    #[test]
    fn errors_say_what_blocked_every_expert() {
        let one = [UP];
        let down = [DOWN];
        assert_eq!(
            decide(&[], &DecisionParams::default()),
            Err(DecisionError::EmptyPool)
        );
        let over = DecisionParams {
            budget: Some(0.5),
            ..DecisionParams::default()
        };
        assert_eq!(
            decide(&[cand(1.0, None, &one), cand(5.0, None, &one)], &over),
            Err(DecisionError::OverBudget {
                budget: 0.5,
                cheapest: 1.0
            })
        );
        let some_over = DecisionParams {
            budget: Some(2.0),
            ..DecisionParams::default()
        };
        assert_eq!(
            decide(&[cand(1.0, None, &down), cand(5.0, None, &one)], &some_over),
            Err(DecisionError::NoAvailableReplica { over_budget: 1 })
        );
    }

    #[test]
    fn replicas_least_loaded_first_and_rotation_spreads_ties() {
        let reps = [
            ReplicaLoad {
                in_flight: 3,
                available: true,
            },
            UP,
            UP,
        ];
        let cands = [cand(1.0, None, &reps)];
        let first = |rotation| {
            let p = DecisionParams {
                rotation,
                ..DecisionParams::default()
            };
            decide(&cands, &p).unwrap().attempts[0].replica
        };
        assert_eq!(first(0), 1);
        assert_eq!(first(1), 1);
        assert_eq!(first(2), 2);
    }

    /// (cost, policy score, replicas as (in-flight, available)) per expert.
    type RawCandidate = (f64, Option<f64>, Vec<(u32, bool)>);

    #[test]
    fn exploration_reorders_the_plan_and_reports_the_propensity() {
        let one = [UP];
        let cands = [
            cand(1.0, Some(0.6), &one),
            cand(20.0, Some(0.2), &one),
            cand(100.0, Some(0.3), &one),
        ];
        let plan = decide(&cands, &DecisionParams::default()).unwrap();
        // No exploration drawn: the greedy plan, propensity 1 − ε + ε/3.
        let mut greedy = plan.clone();
        let params = DecisionParams {
            explore: 0.3,
            ..DecisionParams::default()
        };
        let p = explore(&mut greedy, &cands, &params, 0.9, 0.0);
        assert_eq!(greedy, plan);
        assert!((p - (0.7 + 0.1)).abs() < 1e-12);
        // Exploration drawn, landing on the third-ranked expert (index 0 in pool order).
        let mut explored = plan.clone();
        let p = explore(&mut explored, &cands, &params, 0.1, 0.9);
        assert_eq!(explored.chosen(), 0);
        assert!((p - 0.1).abs() < 1e-12);
        assert_eq!(explored.attempts.len(), plan.attempts.len());
    }

    fn arb_candidates() -> impl Strategy<Value = Vec<RawCandidate>> {
        prop::collection::vec(
            (
                0.1f64..200.0,
                prop::option::of(prop_oneof![-1.0f64..2.0, Just(f64::NAN)]),
                prop::collection::vec((0u32..8, any::<bool>()), 0..5),
            ),
            0..8,
        )
    }

    proptest! {
        #[test]
        fn plans_only_name_eligible_options_and_start_with_the_best(
            raw in arb_candidates(),
            budget in prop::option::of(0.1f64..200.0),
            max_attempts in 1usize..6,
            tries_per_expert in 1usize..3,
            rotation in 0usize..10,
            draw in 0.0f64..1.0,
        ) {
            let replicas: Vec<Vec<ReplicaLoad>> = raw
                .iter()
                .map(|(_, _, r)| r.iter().map(|&(in_flight, available)| ReplicaLoad { in_flight, available }).collect())
                .collect();
            let cands: Vec<Candidate<'_>> = raw
                .iter()
                .zip(&replicas)
                .map(|((cost, score, _), r)| Candidate { cost: *cost, expected_cost: *score, replicas: r })
                .collect();
            let params = DecisionParams { budget, max_attempts, tries_per_expert, rotation, explore: 0.0 };
            let eligible = |c: &Candidate<'_>| {
                budget.is_none_or(|b| c.cost <= b) && c.replicas.iter().any(|r| r.available)
            };
            match decide(&cands, &params) {
                Ok(plan) => {
                    prop_assert!(!plan.attempts.is_empty());
                    prop_assert!(plan.attempts.len() <= max_attempts);
                    for a in &plan.attempts {
                        prop_assert!(eligible(&cands[a.expert]));
                        prop_assert!(cands[a.expert].replicas[a.replica].available);
                    }
                    let mut pairs: Vec<_> = plan.attempts.iter().map(|a| (a.expert, a.replica)).collect();
                    pairs.sort_unstable();
                    pairs.dedup();
                    prop_assert_eq!(pairs.len(), plan.attempts.len());
                    prop_assert_eq!(plan.ranked.len() + plan.excluded.len(), cands.len());
                    // The first attempt is a best-scored eligible expert.
                    let best = cands.iter().filter(|c| eligible(c)).filter_map(|c| usable(c.expected_cost)).fold(f64::INFINITY, f64::min);
                    let chosen = &cands[plan.chosen()];
                    if best.is_finite() {
                        prop_assert_eq!(usable(chosen.expected_cost), Some(best));
                    } else {
                        let cheapest = cands.iter().filter(|c| eligible(c)).map(|c| c.cost).fold(f64::INFINITY, f64::min);
                        prop_assert_eq!(chosen.cost, cheapest);
                    }
                    // The first replica of the chosen expert is a least-loaded available one.
                    let min_load = chosen.replicas.iter().filter(|r| r.available).map(|r| r.in_flight).min().unwrap();
                    prop_assert_eq!(chosen.replicas[plan.attempts[0].replica].in_flight, min_load);
                    // Exploration keeps every guarantee: eligible experts, available replicas,
                    // the attempt budget; its propensity is a probability.
                    let mut explored = plan.clone();
                    let explore_params = DecisionParams { explore: 1.0, ..params };
                    let propensity = explore(&mut explored, &cands, &explore_params, 0.0, draw);
                    prop_assert!(propensity > 0.0 && propensity <= 1.0);
                    prop_assert!(!explored.attempts.is_empty() && explored.attempts.len() <= max_attempts);
                    for a in &explored.attempts {
                        prop_assert!(eligible(&cands[a.expert]));
                        prop_assert!(cands[a.expert].replicas[a.replica].available);
                    }
                }
                Err(_) => prop_assert!(cands.iter().all(|c| !eligible(c))),
            }
        }
    }
}
