//! The dispatch decision: given the policy's scores and the live state of every expert's
//! replicas, which (expert, replica) pairs to try, in order.
//!
//! Pure: a function of its inputs (randomness is passed in as `seed`), property-tested below.
//! The scheduler's shell snapshots the registry, asks the policy for scores, calls [`decide`],
//! then walks [`Plan::attempts`].
//!
//! # The formula: one currency
//!
//! Every action is priced in the units of the deferral cost `c_j = loss_j + λ · price_j` (a
//! wrong answer costs 1, the learned policy's score estimates `E[c_j | x]`). For each expert `e`:
//!
//! ```text
//! T(r)        = rtt(r) · (1 + W(ρ(r), c(r)))     expected completion of a call on replica r, s
//! W(ρ, c)     = ρ^(√(2(c+1)) − 1) / (c (1 − ρ))  mean queueing, in service times (Sakasegawa)
//! T(e)        = min over usable replicas r of T(r)
//! adjusted(e) = expected_cost(e) + wait_price · T(e)
//! ```
//!
//! `rtt` is the replica's PeakEWMA latency, `c` its slot limit and `ρ = in_flight / c` the share
//! of its slots taken (a replica with no limit never queues). `W` is Sakasegawa's approximation
//! of the M/M/c mean wait (exact for one slot): negligible at light load, unbounded as the
//! replica fills, so work shifts to the next-best expert before anything queues.
//! `wait_price` is in cost units per second: `--wait-price` gives it in accuracy points a
//! second of waiting is worth (default 1, i.e. 0.01 per second).
//!
//! With a deadline, an expert whose `T(e)` exceeds the time left is excluded while another
//! expert fits ([`Exclusion::TooSlow`]).
//!
//! # The rules, in order
//!
//! 1. An expert is *excluded* when it cannot take the query (no replica of it can: see
//!    [`super::capability`]), when its declared cost exceeds the request's budget, when none of
//!    its replicas is available, or when every available replica is saturated. Excluded experts
//!    are never attempted.
//! 2. Eligible experts are ranked by `adjusted` (lower first); experts the policy did not score
//!    come after every scored one, cheapest first, then by `load`. Ties go to the cheaper
//!    expert, then to pool order. Only the experts the plan can reach are sorted (a partial
//!    selection: linear in the pool size); the rest of [`Plan::ranked`] follows in pool order.
//! 3. Within an expert, the replica is chosen on its PeakEWMA load `rtt · (in_flight + 1)`
//!    (tower's and linkerd's balancer cost): by a full scan when the expert has at most
//!    `full_scan_up_to` usable replicas (ties broken by distance from a position drawn from
//!    `seed`, so idle replicas share work), otherwise by power of two choices (two replicas drawn from `seed`, the
//!    cheaper first).
//! 4. Each expert gets up to `tries_per_expert` attempts on distinct replicas (a retry on another
//!    replica), then the next expert is the fallback; at most `max_attempts` in total.

use super::capability::Unfit;
use super::rng::mix;
use std::cmp::Ordering;

/// What the decision knows about one replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaLoad {
    /// Calls outstanding on this replica: the larger of this scheduler's own count and what
    /// the replica last reported (its in-flight plus its queue).
    pub in_flight: u32,
    /// Concurrency limit: with `in_flight >= limit` the replica is saturated. `u32::MAX` for none.
    pub limit: u32,
    /// PeakEWMA latency estimate, seconds.
    pub rtt: f64,
    /// False when the replica must not receive traffic (lease expired, ejected, unhealthy).
    pub available: bool,
}

impl ReplicaLoad {
    /// An available, idle replica with no limit and `rtt` seconds of expected latency.
    pub const fn idle(rtt: f64) -> Self {
        Self {
            in_flight: 0,
            limit: u32::MAX,
            rtt,
            available: true,
        }
    }

    pub fn saturated(&self) -> bool {
        self.in_flight >= self.limit
    }

    pub fn usable(&self) -> bool {
        self.available && !self.saturated()
    }

    /// In-flight over the limit, in [0, 1].
    pub fn utilisation(&self) -> f64 {
        if self.limit == u32::MAX || self.limit == 0 {
            return if self.saturated() { 1.0 } else { 0.0 };
        }
        (f64::from(self.in_flight) / f64::from(self.limit)).min(1.0)
    }

    /// Expected completion time of one more call, seconds (see the module docs): the PeakEWMA
    /// latency, stretched by the mean queueing of an M/M/c server with `limit` slots at the
    /// share of slots taken. 0 for an unknown latency (the registry fills in the pool's mean
    /// before a decision; one with none prices no waiting).
    pub fn expected_completion(&self) -> f64 {
        let rtt = self.latency_floor();
        // No limit, or no call in flight (no queueing: the wait term is 0).
        if self.limit == u32::MAX || self.limit == 0 || self.in_flight == 0 {
            return rtt;
        }
        let slots = f64::from(self.limit);
        let rho = (f64::from(self.in_flight) / slots).min(1.0 - 1e-9);
        let wait = rho.powf((2.0 * (slots + 1.0)).sqrt() - 1.0) / (slots * (1.0 - rho));
        rtt * (1.0 + wait)
    }

    /// The least [`Self::expected_completion`] can be: the latency estimate (waiting only adds to
    /// it); 0 for an unknown latency (and +0 for -0, so that a zero's sign cannot depend on
    /// which replica the scan skipped).
    fn latency_floor(&self) -> f64 {
        if self.rtt.is_finite() && self.rtt > 0.0 {
            self.rtt
        } else {
            0.0
        }
    }

    /// PeakEWMA balancer cost: expected latency times the calls it would queue behind.
    pub fn cost(&self) -> f64 {
        let rtt = if self.rtt.is_finite() && self.rtt >= 0.0 {
            self.rtt
        } else {
            f64::MAX
        };
        rtt * (f64::from(self.in_flight) + 1.0)
    }
}

/// One expert of the pool as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    /// Declared cost of one call.
    pub cost: f64,
    /// The policy's expected deferral cost, lower is better; `None` when the policy has no score.
    pub expected_cost: Option<f64>,
    pub replicas: &'a [ReplicaLoad],
    /// Why the expert cannot take this query, when none of its replicas can (see
    /// [`super::capability`]); such an expert is excluded before anything else.
    pub unfit: Option<Unfit>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionParams {
    /// The request's maximum cost per call, if any (validated positive and finite at the edge).
    pub budget: Option<f64>,
    pub max_attempts: usize,
    pub tries_per_expert: usize,
    /// Random bits for replica choice (power of two choices, tie-breaks); the shell passes a
    /// different value per request.
    pub seed: u64,
    /// ε of ε-greedy exploration (see [`explore`]); 0 for none.
    pub explore: f64,
    /// Price of one second of expected completion time, in the score's units (see the module
    /// docs).
    pub wait_price: f64,
    /// Experts with at most this many usable replicas get a full scan; more use two choices.
    pub full_scan_up_to: usize,
    /// Seconds the request has left, when the decision must respect it: an expert whose every
    /// usable replica expects a longer completion time is excluded, unless no other expert is
    /// eligible.
    pub time_left: Option<f64>,
}

impl Default for DecisionParams {
    fn default() -> Self {
        Self {
            budget: None,
            max_attempts: 4,
            tries_per_expert: 2,
            seed: 0,
            explore: 0.0,
            wait_price: DEFAULT_WAIT_PRICE,
            full_scan_up_to: 8,
            time_left: None,
        }
    }
}

/// The default price of waiting: one accuracy point (0.01 of a wrong answer) per second.
pub const DEFAULT_WAIT_PRICE: f64 = 0.01;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// It cannot take the query (no recording of it, a context over its limits, ...).
    Unfit(Unfit),
    OverBudget,
    NoAvailableReplica,
    Saturated,
    /// Every usable replica's expected latency exceeds the time the request has left.
    TooSlow,
}

impl Exclusion {
    /// Every reason as a metric label, in [`Exclusion::index`] order.
    pub const LABELS: [&'static str; 7] = [
        "no_recording",
        "context_limit",
        "language",
        "over_budget",
        "no_available_replica",
        "saturated",
        "too_slow",
    ];

    /// The reason's position in [`Exclusion::LABELS`] (what cannot take the query grouped by
    /// kind, not by the numbers in it).
    pub fn index(self) -> usize {
        match self {
            Exclusion::Unfit(Unfit::NotHeld) => 0,
            Exclusion::Unfit(Unfit::ContextChars { .. } | Unfit::ContextTokens { .. }) => 1,
            Exclusion::Unfit(Unfit::Language) => 2,
            Exclusion::OverBudget => 3,
            Exclusion::NoAvailableReplica => 4,
            Exclusion::Saturated => 5,
            Exclusion::TooSlow => 6,
        }
    }
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exclusion::Unfit(why) => why.fmt(f),
            Exclusion::OverBudget => f.write_str("over budget"),
            Exclusion::NoAvailableReplica => f.write_str("no available replica"),
            Exclusion::Saturated => f.write_str("every replica at its concurrency limit"),
            Exclusion::TooSlow => f.write_str("expected latency beyond the deadline"),
        }
    }
}

/// One call to make: indexes into the candidates and into that candidate's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub expert: usize,
    pub replica: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Eligible experts: the ones the plan reaches best first, then the others in pool order.
    pub ranked: Vec<usize>,
    /// Excluded experts and why, in pool order.
    pub excluded: Vec<(usize, Exclusion)>,
    /// The price of waiting added to each candidate's score (0 for excluded ones), by pool
    /// index.
    pub load: Vec<f64>,
    /// The calls to make, in order, until one succeeds. Never empty.
    pub attempts: Vec<Attempt>,
    /// The expert the scores alone rank first, exclusions and the price of waiting aside: what
    /// the policy would choose with the whole pool idle and able to take the query.
    pub preferred: usize,
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
    #[error("no expert can take this query")]
    NoneCanTake,
    #[error("no expert fits the budget of {budget}: the cheapest costs {cheapest}")]
    OverBudget { budget: f64, cheapest: f64 },
    #[error("no expert has an available replica ({over_budget} more are over budget)")]
    NoAvailableReplica { over_budget: usize },
    #[error(
        "every eligible expert is at its concurrency limit ({saturated} saturated); retry in {:.0} ms",
        retry_after * 1e3
    )]
    Saturated {
        saturated: usize,
        /// Seconds until a slot is likely free: the fastest saturated replica's latency.
        retry_after: f64,
    },
}

/// The expected completion time of an expert's best usable replica, seconds; infinite when no
/// replica is usable.
pub fn expected_completion(replicas: &[ReplicaLoad]) -> f64 {
    let mut best = f64::INFINITY;
    for r in replicas.iter().filter(|r| r.usable()) {
        // A replica no faster than the best so far cannot beat it (waiting only adds): its
        // queueing term, a power, is not worked out.
        if r.latency_floor() < best {
            best = best.min(r.expected_completion());
        }
    }
    best
}

/// The price of an expert's expected waiting (see the module docs); infinite when no replica is
/// usable.
pub fn load_term(replicas: &[ReplicaLoad], wait_price: f64) -> f64 {
    let t = expected_completion(replicas);
    if !t.is_finite() {
        return f64::INFINITY;
    }
    wait_price.max(0.0) * t
}

/// How long a caller shed by a saturated pool should wait, in seconds: the fastest of the
/// saturated replicas' latencies (about when a slot frees), between 5 ms and 1 s; 1 s when none
/// is known.
pub fn retry_after(latencies: impl IntoIterator<Item = f64>) -> f64 {
    let fastest = latencies
        .into_iter()
        .filter(|rtt| rtt.is_finite())
        .fold(f64::INFINITY, f64::min);
    if fastest.is_finite() {
        fastest.clamp(0.005, 1.0)
    } else {
        1.0
    }
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
    let mut load = vec![0.0; candidates.len()];
    // Expected completion of each eligible expert's best replica, computed once.
    let mut completion = vec![f64::INFINITY; candidates.len()];
    for (i, c) in candidates.iter().enumerate() {
        if let Some(why) = c.unfit {
            excluded.push((i, Exclusion::Unfit(why)));
        } else if params.budget.is_some_and(|b| c.cost > b) {
            excluded.push((i, Exclusion::OverBudget));
        } else if !c.replicas.iter().any(|r| r.available) {
            excluded.push((i, Exclusion::NoAvailableReplica));
        } else if !c.replicas.iter().any(ReplicaLoad::usable) {
            excluded.push((i, Exclusion::Saturated));
        } else {
            completion[i] = expected_completion(c.replicas);
            load[i] = params.wait_price.max(0.0) * completion[i];
            ranked.push(i);
        }
    }
    if ranked.is_empty() {
        return Err(nothing_eligible(candidates, &excluded, params));
    }
    if let Some(left) = params.time_left {
        let too_slow = |i: usize| completion[i] > left;
        if ranked.iter().any(|&i| !too_slow(i)) {
            for &i in ranked.iter().filter(|&&i| too_slow(i)) {
                excluded.push((i, Exclusion::TooSlow));
                load[i] = 0.0;
            }
            ranked.retain(|&i| !too_slow(i));
            excluded.sort_unstable_by_key(|&(i, _)| i);
        }
    }
    let order =
        |&a: &usize, &b: &usize| rank_order(a, &candidates[a], load[a], b, &candidates[b], load[b]);
    // Only the first `reach` experts can appear in the plan: select them, sort only them.
    let reach = params.max_attempts.max(1).min(ranked.len());
    if reach < ranked.len() {
        ranked.select_nth_unstable_by(reach - 1, order);
        let (head, tail) = ranked.split_at_mut(reach);
        head.sort_unstable_by(order);
        tail.sort_unstable();
    } else {
        ranked.sort_unstable_by(order);
    }

    let mut attempts = Vec::new();
    let mut replica_order = Vec::new();
    'experts: for &e in &ranked[..reach] {
        order_replicas(candidates[e].replicas, params, e, &mut replica_order);
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
    let preferred = (0..candidates.len())
        .min_by(|&a, &b| rank_order(a, &candidates[a], 0.0, b, &candidates[b], 0.0))
        .unwrap_or(0);
    Ok(Plan {
        ranked,
        excluded,
        load,
        attempts,
        preferred,
    })
}

fn nothing_eligible(
    candidates: &[Candidate<'_>],
    excluded: &[(usize, Exclusion)],
    params: &DecisionParams,
) -> DecisionError {
    if excluded
        .iter()
        .all(|(_, e)| matches!(e, Exclusion::Unfit(_)))
    {
        return DecisionError::NoneCanTake;
    }
    let count = |kind| excluded.iter().filter(|(_, e)| *e == kind).count();
    let (over_budget, saturated) = (count(Exclusion::OverBudget), count(Exclusion::Saturated));
    if saturated > 0 {
        let latencies = excluded
            .iter()
            .filter(|(_, e)| *e == Exclusion::Saturated)
            .flat_map(|&(i, _)| candidates[i].replicas.iter().filter(|r| r.available))
            .map(|r| r.rtt);
        return DecisionError::Saturated {
            saturated,
            retry_after: retry_after(latencies),
        };
    }
    match params.budget {
        Some(budget) if over_budget == candidates.len() => DecisionError::OverBudget {
            budget,
            cheapest: candidates
                .iter()
                .map(|c| c.cost)
                .fold(f64::INFINITY, f64::min),
        },
        _ => DecisionError::NoAvailableReplica { over_budget },
    }
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
        // The drawn expert's attempts first, on its best usable replicas (computed afresh:
        // max_attempts may have cut it from the plan); the plan's others follow.
        let mut order = Vec::new();
        order_replicas(candidates[chosen].replicas, params, chosen, &mut order);
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

fn rank_order(
    a: usize,
    ca: &Candidate<'_>,
    la: f64,
    b: usize,
    cb: &Candidate<'_>,
    lb: f64,
) -> Ordering {
    let (sa, sb) = (usable(ca.expected_cost), usable(cb.expected_cost));
    let by_score = match (sa, sb) {
        (Some(x), Some(y)) => (x + la).total_cmp(&(y + lb)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => ca.cost.total_cmp(&cb.cost).then(la.total_cmp(&lb)),
    };
    by_score.then(ca.cost.total_cmp(&cb.cost)).then(a.cmp(&b))
}

/// The usable replicas of one expert in the order to try them (see rule 3).
fn order_replicas(
    replicas: &[ReplicaLoad],
    params: &DecisionParams,
    expert: usize,
    out: &mut Vec<usize>,
) {
    out.clear();
    out.extend((0..replicas.len()).filter(|&r| replicas[r].usable()));
    let n = out.len();
    if n <= 1 {
        return;
    }
    let by_cost = |a: usize, b: usize| replicas[a].cost().total_cmp(&replicas[b].cost());
    if n <= params.full_scan_up_to.max(1) {
        let len = replicas.len();
        // Mixed, so periodic traffic (the same query every N requests) does not always land on
        // the same replica of a tie.
        let start = (mix(params.seed ^ expert as u64) % len as u64) as usize;
        out.sort_by(|&a, &b| {
            by_cost(a, b).then(((a + len - start) % len).cmp(&((b + len - start) % len)))
        });
        return;
    }
    // Power of two choices: two distinct draws, the cheaper first; further tries (if any) take
    // the next replicas after them in index order.
    let bits = mix(params.seed ^ (expert as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let i = (bits % n as u64) as usize;
    let j = (i + 1 + ((bits >> 32) % (n as u64 - 1)) as usize) % n;
    let (first, second) = if by_cost(out[j], out[i]) == Ordering::Less {
        (out[j], out[i])
    } else {
        (out[i], out[j])
    };
    if params.tries_per_expert <= 2 {
        out.clear();
        out.extend([first, second]);
        return;
    }
    let rest: Vec<usize> = (1..n)
        .map(|k| out[(i + k) % n])
        .filter(|&r| r != first && r != second)
        .collect();
    out.clear();
    out.extend([first, second]);
    out.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UP: ReplicaLoad = ReplicaLoad::idle(0.01);
    const DOWN: ReplicaLoad = ReplicaLoad {
        available: false,
        ..UP
    };

    fn busy(in_flight: u32, limit: u32) -> ReplicaLoad {
        ReplicaLoad {
            in_flight,
            limit,
            ..UP
        }
    }

    fn cand(cost: f64, score: Option<f64>, replicas: &[ReplicaLoad]) -> Candidate<'_> {
        Candidate {
            cost,
            expected_cost: score,
            replicas,
            unfit: None,
        }
    }

    fn pairs(plan: &Plan) -> Vec<(usize, usize)> {
        plan.attempts
            .iter()
            .map(|a| (a.expert, a.replica))
            .collect()
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
        let attempts = pairs(&plan);
        // Both replicas of the best expert (in an order the seed picks), then the fallbacks.
        let mut retry = attempts[..2].to_vec();
        retry.sort_unstable();
        assert_eq!(retry, vec![(1, 0), (1, 1)]);
        assert_eq!(attempts[2..], [(2, 0), (0, 0)]);
    }

    #[test]
    fn an_expert_that_cannot_take_the_query_is_excluded_first_and_never_attempted() {
        let one = [UP];
        let held_elsewhere = Candidate {
            unfit: Some(Unfit::NotHeld),
            ..cand(100.0, Some(0.0), &one)
        };
        let cands = [held_elsewhere, cand(1.0, Some(0.9), &one)];
        // The unfit expert has the best score and is over the budget: its exclusion says why
        // it cannot take the query, not the budget.
        let params = DecisionParams {
            budget: Some(10.0),
            ..DecisionParams::default()
        };
        let plan = decide(&cands, &params).unwrap();
        assert_eq!(plan.ranked, vec![1]);
        assert_eq!(plan.excluded, vec![(0, Exclusion::Unfit(Unfit::NotHeld))]);
        assert!(pairs(&plan).iter().all(|&(e, _)| e == 1));
        assert_eq!(
            plan.excluded[0].1.to_string(),
            "no recording of this question"
        );
        // When no expert can take it, the decision says so (not "no available replica").
        let none = [held_elsewhere, held_elsewhere];
        assert_eq!(
            decide(&none, &DecisionParams::default()),
            Err(DecisionError::NoneCanTake)
        );
        // Unfit beside unavailable: the unavailable one is the reason given.
        let down = [ReplicaLoad {
            available: false,
            ..UP
        }];
        let mixed = [held_elsewhere, cand(1.0, Some(0.9), &down)];
        assert!(matches!(
            decide(&mixed, &DecisionParams::default()),
            Err(DecisionError::NoAvailableReplica { .. })
        ));
    }

    #[test]
    fn experts_slower_than_the_time_left_are_excluded_while_another_fits() {
        let slow = [ReplicaLoad { rtt: 2.0, ..UP }, busy(4, 4)];
        let fast = [ReplicaLoad { rtt: 0.01, ..UP }];
        let cands = [cand(100.0, Some(0.1), &slow), cand(20.0, Some(0.3), &fast)];
        let params = DecisionParams {
            time_left: Some(0.5),
            ..DecisionParams::default()
        };
        let plan = decide(&cands, &params).unwrap();
        assert_eq!(plan.ranked, vec![1]);
        assert_eq!(plan.excluded, vec![(0, Exclusion::TooSlow)]);
        // With time enough, or nothing else that fits, the slow expert is still the best.
        let roomy = DecisionParams {
            time_left: Some(3.0),
            ..params
        };
        assert_eq!(decide(&cands, &roomy).unwrap().chosen(), 0);
        let alone = decide(&cands[..1], &params).unwrap();
        assert_eq!((alone.chosen(), alone.excluded.len()), (0, 0));
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
    fn budget_availability_and_saturation_exclude_with_reasons() {
        let one = [UP];
        let down = [DOWN, DOWN];
        let full = [busy(4, 4), DOWN];
        let cands = [
            cand(1.0, Some(0.6), &one),
            cand(20.0, Some(0.2), &down),
            cand(100.0, Some(0.1), &one),
            cand(30.0, Some(0.0), &full),
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
                (2, Exclusion::OverBudget),
                (3, Exclusion::Saturated),
            ]
        );
    }

    #[test]
    fn expected_completion_grows_as_the_slots_fill() {
        let at = |in_flight, limit| {
            ReplicaLoad {
                rtt: 0.1,
                ..busy(in_flight, limit)
            }
            .expected_completion()
        };
        // Idle, or no limit: the service time alone.
        assert_eq!(at(0, 4), 0.1);
        assert_eq!(at(50, u32::MAX), 0.1);
        // 3 of 4 slots: W = 0.75^(sqrt(10) - 1) / (4 x 0.25) = 0.5369...
        assert!((at(3, 4) - 0.1 * (1.0 + 0.75f64.powf(10f64.sqrt() - 1.0))).abs() < 1e-12);
        assert!((at(3, 4) - 0.15369).abs() < 1e-4);
        let fills: Vec<f64> = (0..8).map(|n| at(n, 8)).collect();
        assert!(fills.windows(2).all(|w| w[0] < w[1]), "{fills:?}");
        // An unknown latency prices no waiting (not NaN).
        let unknown = ReplicaLoad {
            rtt: f64::NAN,
            ..busy(3, 4)
        };
        assert_eq!(unknown.expected_completion(), 0.0);
    }

    #[test]
    fn a_loaded_expert_costs_more_and_a_saturated_one_sheds_to_the_next() {
        // The strong expert scores 0.10 against 0.15 and takes 100 ms against 10 ms: with
        // waiting at 0.5 a second it is preferred while idle (0.15 < 0.155).
        let cheap = [UP];
        let ask = |strong_in_flight: u32| {
            let strong = [ReplicaLoad {
                rtt: 0.1,
                ..busy(strong_in_flight, 2)
            }];
            let cands = [
                cand(1.0, Some(0.15), &cheap),
                cand(100.0, Some(0.10), &strong),
            ];
            let params = DecisionParams {
                wait_price: 0.5,
                ..DecisionParams::default()
            };
            decide(&cands, &params).map(|p| (p.chosen(), p.load[0], p.load[1]))
        };
        let (chosen, cheap_load, strong_load) = ask(0).unwrap();
        assert_eq!(chosen, 1);
        assert!((cheap_load - 0.005).abs() < 1e-12);
        assert!((strong_load - 0.05).abs() < 1e-12);
        // One of two slots taken: 100 ms x (1 + 0.366) priced 0.068, 0.168 > 0.155.
        let (chosen, _, strong_load) = ask(1).unwrap();
        assert_eq!(chosen, 0);
        assert!((strong_load - 0.0683).abs() < 1e-3, "{strong_load}");
        // Saturated: excluded, the cheap one answers.
        assert_eq!(ask(2).unwrap().0, 0);
        // Waiting unpriced: the strong expert until it saturates.
        let unpriced = |n| {
            let strong = [ReplicaLoad {
                rtt: 0.1,
                ..busy(n, 2)
            }];
            let cands = [
                cand(1.0, Some(0.15), &cheap),
                cand(100.0, Some(0.10), &strong),
            ];
            let params = DecisionParams {
                wait_price: 0.0,
                ..DecisionParams::default()
            };
            decide(&cands, &params).unwrap().chosen()
        };
        assert_eq!((unpriced(0), unpriced(1), unpriced(2)), (1, 1, 0));
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
        // Everything saturated: a retry hint from the fastest saturated replica.
        let slow = [ReplicaLoad {
            rtt: 0.2,
            ..busy(2, 2)
        }];
        let fast = [ReplicaLoad {
            rtt: 0.05,
            ..busy(1, 1)
        }];
        assert_eq!(
            decide(
                &[
                    cand(1.0, None, &slow),
                    cand(5.0, None, &fast),
                    cand(5.0, None, &down)
                ],
                &DecisionParams::default()
            ),
            Err(DecisionError::Saturated {
                saturated: 2,
                retry_after: 0.05
            })
        );
    }

    #[test]
    fn replicas_by_peak_ewma_cost_and_the_seed_spreads_ties() {
        let reps = [
            ReplicaLoad { in_flight: 3, ..UP },
            UP,
            UP,
            ReplicaLoad { rtt: 0.5, ..UP },
        ];
        let cands = [cand(1.0, None, &reps)];
        let first = |seed| {
            let p = DecisionParams {
                seed,
                ..DecisionParams::default()
            };
            decide(&cands, &p).unwrap().attempts[0].replica
        };
        // Always an idle fast replica; the seed spreads the tie between them.
        let firsts: std::collections::HashSet<usize> = (0..64).map(first).collect();
        assert_eq!(firsts, [1, 2].into_iter().collect());
        // A slow replica is last even when idle: 0.5 × 1 > 0.01 × 4.
        let p = DecisionParams {
            tries_per_expert: 4,
            ..DecisionParams::default()
        };
        let order: Vec<usize> = decide(&cands, &p)
            .unwrap()
            .attempts
            .iter()
            .map(|a| a.replica)
            .collect();
        let mut idle = order[..2].to_vec();
        idle.sort_unstable();
        assert_eq!(idle, vec![1, 2]);
        assert_eq!(order[2..], [0, 3]);
    }

    #[test]
    fn many_replicas_use_two_choices_and_keep_the_cheaper_of_the_pair() {
        let mut reps = vec![UP; 20];
        reps[7] = ReplicaLoad { rtt: 1.0, ..UP };
        reps[3] = DOWN;
        let cands = [cand(1.0, None, &reps)];
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..200 {
            let p = DecisionParams {
                seed,
                ..DecisionParams::default()
            };
            let plan = decide(&cands, &p).unwrap();
            let [a, b] = [plan.attempts[0].replica, plan.attempts[1].replica];
            assert_ne!(a, b);
            assert!(reps[a].cost() <= reps[b].cost());
            assert_ne!(a, 3);
            assert_ne!(b, 3);
            firsts.insert(a);
        }
        // The slow replica is only ever first if drawn with... never: any partner is cheaper.
        assert!(!firsts.contains(&7));
        // The draws spread over the pool.
        assert!(firsts.len() >= 15, "{firsts:?}");
    }

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

    /// (cost, policy score, replicas as (in-flight, limit, rtt, available)) per expert.
    type RawCandidate = (f64, Option<f64>, Vec<(u32, u32, f64, bool)>);

    fn arb_candidates() -> impl Strategy<Value = Vec<RawCandidate>> {
        prop::collection::vec(
            (
                0.1f64..200.0,
                prop::option::of(prop_oneof![-1.0f64..2.0, Just(f64::NAN)]),
                prop::collection::vec(
                    (
                        0u32..8,
                        prop_oneof![1u32..8, Just(u32::MAX)],
                        prop_oneof![0.0f64..1.0, Just(f64::NAN)],
                        any::<bool>(),
                    ),
                    0..12,
                ),
            ),
            0..10,
        )
    }

    proptest! {
        /// The scan that skips replicas no faster than the best so far finds the least expected
        /// completion of every usable replica, and an idle replica completes in its latency.
        #[test]
        fn the_pruned_scan_finds_the_fastest_usable_replica(
            raw in prop::collection::vec(
                (
                    0u32..8,
                    prop_oneof![1u32..8, Just(u32::MAX - 1), Just(u32::MAX), Just(0u32)],
                    prop_oneof![
                        4 => 0.0f64..1.0,
                        1 => Just(f64::NAN),
                        1 => Just(-0.0f64),
                        1 => Just(f64::INFINITY),
                        1 => -1.0f64..0.0,
                    ],
                    any::<bool>(),
                ),
                0..12,
            ),
        ) {
            let replicas: Vec<ReplicaLoad> = raw
                .iter()
                .map(|&(in_flight, limit, rtt, available)| ReplicaLoad { in_flight, limit, rtt, available })
                .collect();
            let every = replicas
                .iter()
                .filter(|r| r.usable())
                .map(|r| {
                    let rtt = if r.rtt.is_finite() && r.rtt > 0.0 { r.rtt } else { 0.0 };
                    if r.limit == u32::MAX || r.limit == 0 {
                        return rtt;
                    }
                    let slots = f64::from(r.limit);
                    let rho = (f64::from(r.in_flight) / slots).min(1.0 - 1e-9);
                    rtt * (1.0 + rho.powf((2.0 * (slots + 1.0)).sqrt() - 1.0) / (slots * (1.0 - rho)))
                })
                .fold(f64::INFINITY, f64::min);
            prop_assert_eq!(expected_completion(&replicas).to_bits(), every.to_bits());
        }

        #[test]
        fn plans_never_name_excluded_options_and_start_with_the_best(
            raw in arb_candidates(),
            budget in prop::option::of(0.1f64..200.0),
            max_attempts in 1usize..6,
            tries_per_expert in 1usize..4,
            seed in any::<u64>(),
            wait_price in 0.0f64..0.5,
            full_scan_up_to in 1usize..10,
            draw in 0.0f64..1.0,
        ) {
            let replicas: Vec<Vec<ReplicaLoad>> = raw
                .iter()
                .map(|(_, _, r)| r.iter().map(|&(in_flight, limit, rtt, available)| ReplicaLoad { in_flight, limit, rtt, available }).collect())
                .collect();
            let cands: Vec<Candidate<'_>> = raw
                .iter()
                .zip(&replicas)
                .map(|((cost, score, _), r)| Candidate { cost: *cost, expected_cost: *score, replicas: r, unfit: None })
                .collect();
            let params = DecisionParams { budget, max_attempts, tries_per_expert, seed, explore: 0.0, wait_price, full_scan_up_to, time_left: None };
            // Eligible: within budget, with a replica neither ejected nor saturated.
            let eligible = |c: &Candidate<'_>| {
                budget.is_none_or(|b| c.cost <= b) && c.replicas.iter().any(|r| r.usable())
            };
            match decide(&cands, &params) {
                Ok(plan) => {
                    prop_assert!(!plan.attempts.is_empty());
                    prop_assert!(plan.attempts.len() <= max_attempts);
                    for a in &plan.attempts {
                        prop_assert!(eligible(&cands[a.expert]));
                        prop_assert!(cands[a.expert].replicas[a.replica].usable());
                    }
                    let mut attempted = pairs(&plan);
                    attempted.sort_unstable();
                    attempted.dedup();
                    prop_assert_eq!(attempted.len(), plan.attempts.len());
                    prop_assert_eq!(plan.ranked.len() + plan.excluded.len(), cands.len());
                    // The first attempt is a best eligible expert by score + load term.
                    let adjusted = |i: usize| usable(cands[i].expected_cost).map(|s| s + load_term(cands[i].replicas, wait_price));
                    let best = (0..cands.len()).filter(|&i| eligible(&cands[i])).filter_map(adjusted).fold(f64::INFINITY, f64::min);
                    let chosen = &cands[plan.chosen()];
                    if best.is_finite() {
                        prop_assert_eq!(adjusted(plan.chosen()), Some(best));
                    } else {
                        let cheapest = cands.iter().filter(|c| eligible(c)).map(|c| c.cost).fold(f64::INFINITY, f64::min);
                        prop_assert_eq!(chosen.cost, cheapest);
                    }
                    // With a full scan, the first replica has the lowest PeakEWMA cost.
                    let usable_count = chosen.replicas.iter().filter(|r| r.usable()).count();
                    if usable_count <= full_scan_up_to {
                        let min_cost = chosen.replicas.iter().filter(|r| r.usable()).map(ReplicaLoad::cost).fold(f64::INFINITY, f64::min);
                        prop_assert_eq!(chosen.replicas[plan.attempts[0].replica].cost(), min_cost);
                    }
                    // Exploration keeps every guarantee: eligible experts, usable replicas,
                    // the attempt budget; its propensity is a probability.
                    let mut explored = plan.clone();
                    let explore_params = DecisionParams { explore: 1.0, ..params };
                    let propensity = explore(&mut explored, &cands, &explore_params, 0.0, draw);
                    prop_assert!(propensity > 0.0 && propensity <= 1.0);
                    prop_assert!(!explored.attempts.is_empty() && explored.attempts.len() <= max_attempts);
                    for a in &explored.attempts {
                        prop_assert!(eligible(&cands[a.expert]));
                        prop_assert!(cands[a.expert].replicas[a.replica].usable());
                    }
                }
                Err(DecisionError::Saturated { retry_after, .. }) => {
                    prop_assert!(cands.iter().all(|c| !eligible(c)));
                    prop_assert!(retry_after.is_finite() && retry_after > 0.0);
                }
                Err(_) => prop_assert!(cands.iter().all(|c| !eligible(c))),
            }
        }
    }
}
