//! The allocation policy interface, and the prior policy that serves until a learned one is
//! loaded.
//!
//! A policy scores every expert of the pool for one query with its *expected deferral cost*
//!
//! ```text
//!     E[c_j | x] = E[loss_j | x] + lambda * cost_j / max_cost
//! ```
//!
//! (DESIGN.md §1; arXiv 2410.15761): lower is better. The decision ([`super::decision`]) takes
//! those scores, masks what is unavailable or over budget, and orders the rest. A learned
//! rejector implements the same trait with `E[loss_j | x]` predicted from query features.

use super::query::Query;
use std::collections::HashMap;

/// What the policy needs to know of one expert of the pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertMeta<'a> {
    pub id: &'a str,
    /// Declared relative cost of one call (> 0).
    pub cost: f64,
}

/// Who the active policy is, as reported by `Pool.GetPolicy` and in every decision record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIdentity {
    pub id: String,
    pub kind: String,
    pub description: String,
}

/// An expert the request has asked already, and its answer (`None` when it gave none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed<'a> {
    pub expert: &'a str,
    pub answer: Option<&'a str>,
}

pub trait Policy: Send + Sync {
    fn identity(&self) -> &PolicyIdentity;

    /// The prices of compute the policy can serve at, ascending: a learned policy's bank, one
    /// price for a fixed policy. A *position* indexes this list; which one is served is the
    /// caller's state (the scheduler's cost target moves it), not the policy's.
    fn lambdas(&self) -> &[f64];

    /// The position served unless the caller moves it (the price the policy was loaded for).
    fn default_position(&self) -> usize {
        0
    }

    /// Whether the policy reads the query's context (then a caller that keeps analyses of
    /// recent contexts attaches one to the query first, see [`Query::with_analysis`]).
    fn reads_context(&self) -> bool {
        false
    }

    /// Experts whose answers the policy reads before it decides (defer mode: they always run
    /// first and are always charged); empty for a policy that decides from the query alone.
    fn probes(&self) -> &[String] {
        &[]
    }

    /// A sequential (cascade) policy: how many experts it may have asked, one after the other,
    /// before it keeps an answer. After each answer the caller scores again with what was
    /// observed; an unasked expert scored best is asked next while fewer than this many were
    /// asked. 0 for a policy that decides once.
    fn stages(&self) -> usize {
        0
    }

    /// Fills `out` with one entry per expert of `experts`, in order: the expected deferral cost of
    /// sending `query` to it at the price of `position` (lower is better; out of range is
    /// clamped), or `None` when the policy has no estimate for that expert (such experts are
    /// tried after every scored one, cheapest first). `observed` holds the experts asked so far
    /// and their answers: the [`Policy::probes`], or a sequential policy's earlier stages.
    fn score(
        &self,
        position: usize,
        query: &Query,
        observed: &[Observed<'_>],
        experts: &[ExpertMeta<'_>],
        out: &mut Vec<Option<f64>>,
    );
}

/// The policy without features: each expert's expected loss is its declared prior error rate
/// (`1 - accuracy`, from the pool file), the same for every query. With the published EM of the
/// five SQuAD systems and `lambda = 0.1` it sends everything to r-net+ (82.5 EM at a fifth of
/// BERT's price): the best single expert at that price of compute, which is the Bayes rule when
/// nothing is known about the query. The learned policy improves on it per query.
#[derive(Debug, Clone)]
pub struct PriorPolicy {
    identity: PolicyIdentity,
    /// Its one price of compute.
    lambda: [f64; 1],
    accuracy: HashMap<String, f64>,
}

/// The price of compute the prior policy uses unless told otherwise.
pub const DEFAULT_LAMBDA: f64 = 0.1;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("lambda must be a finite number >= 0, got {0}")]
    BadLambda(f64),
    #[error("accuracy of expert {expert:?} must be in [0, 1], got {value}")]
    BadAccuracy { expert: String, value: f64 },
}

impl PriorPolicy {
    /// `accuracy` maps expert ids to their prior probability of answering correctly.
    pub fn new(
        lambda: f64,
        accuracy: impl IntoIterator<Item = (String, f64)>,
    ) -> Result<Self, PolicyError> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(PolicyError::BadLambda(lambda));
        }
        let accuracy: HashMap<String, f64> = accuracy.into_iter().collect();
        if let Some((expert, &value)) = accuracy.iter().find(|(_, a)| !(0.0..=1.0).contains(*a)) {
            return Err(PolicyError::BadAccuracy {
                expert: expert.clone(),
                value,
            });
        }
        let identity = PolicyIdentity {
            id: format!("prior:lambda={lambda}"),
            kind: "prior".into(),
            description: format!(
                "expected deferral cost = (1 - declared accuracy) + {lambda} * cost / max cost, \
                 the same for every query ({} experts with a declared accuracy)",
                accuracy.len()
            ),
        };
        Ok(Self {
            identity,
            lambda: [lambda],
            accuracy,
        })
    }

    pub fn lambda(&self) -> f64 {
        self.lambda[0]
    }
}

impl Policy for PriorPolicy {
    fn identity(&self) -> &PolicyIdentity {
        &self.identity
    }

    fn lambdas(&self) -> &[f64] {
        &self.lambda
    }

    fn score(
        &self,
        _position: usize,
        _query: &Query,
        _observed: &[Observed<'_>],
        experts: &[ExpertMeta<'_>],
        out: &mut Vec<Option<f64>>,
    ) {
        out.clear();
        let max_cost = experts.iter().map(|e| e.cost).fold(0.0_f64, f64::max);
        out.extend(experts.iter().map(|e| {
            let accuracy = self.accuracy.get(e.id)?;
            let price = if max_cost > 0.0 {
                e.cost / max_cost
            } else {
                0.0
            };
            Some((1.0 - accuracy) + self.lambda() * price)
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::query::QueryLimits;

    fn squad_prior(lambda: f64) -> PriorPolicy {
        PriorPolicy::new(
            lambda,
            [
                ("lr".to_string(), 0.401),
                ("match-lstm".to_string(), 0.676),
                ("rnet".to_string(), 0.825),
                ("slqa".to_string(), 0.819),
                ("bert".to_string(), 0.862),
            ],
        )
        .unwrap()
    }

    fn pool() -> Vec<ExpertMeta<'static>> {
        [
            ("lr", 1.0),
            ("match-lstm", 5.0),
            ("rnet", 20.0),
            ("slqa", 25.0),
            ("bert", 100.0),
            ("unknown", 2.0),
        ]
        .into_iter()
        .map(|(id, cost)| ExpertMeta { id, cost })
        .collect()
    }

    fn best(policy: &PriorPolicy) -> &'static str {
        let q = Query::new("Who?", "Someone.", None, &QueryLimits::default()).unwrap();
        let experts = pool();
        let mut scores = Vec::new();
        policy.score(0, &q, &[], &experts, &mut scores);
        let (i, _) = scores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        experts[i].id
    }

    #[test]
    fn price_of_compute_moves_the_choice_along_the_pool() {
        assert_eq!(best(&squad_prior(0.0)), "bert");
        assert_eq!(best(&squad_prior(0.1)), "rnet");
        assert_eq!(best(&squad_prior(1.0)), "match-lstm");
        assert_eq!(best(&squad_prior(10.0)), "lr");
    }

    #[test]
    fn score_is_error_plus_priced_cost_and_none_for_unknown_experts() {
        let q = Query::new("Who?", "Someone.", None, &QueryLimits::default()).unwrap();
        let mut scores = vec![Some(42.0)];
        squad_prior(0.5).score(0, &q, &[], &pool(), &mut scores);
        assert_eq!(scores.len(), 6);
        let bert = scores[4].unwrap();
        assert!((bert - (0.138 + 0.5)).abs() < 1e-12, "{bert}");
        let lr = scores[0].unwrap();
        assert!((lr - (0.599 + 0.5 * 0.01)).abs() < 1e-12, "{lr}");
        assert_eq!(scores[5], None);
    }

    #[test]
    fn refuses_bad_parameters() {
        assert_eq!(
            PriorPolicy::new(f64::NAN, []).unwrap_err().to_string(),
            "lambda must be a finite number >= 0, got NaN"
        );
        assert!(PriorPolicy::new(-1.0, []).is_err());
        let err = PriorPolicy::new(0.1, [("x".to_string(), 1.5)]).unwrap_err();
        assert_eq!(
            err,
            PolicyError::BadAccuracy {
                expert: "x".into(),
                value: 1.5
            }
        );
    }
}
