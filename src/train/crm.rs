//! `l2d train --from-log`: a route policy learned from logged bandit feedback (the decision
//! log's queries, the expert each was sent to and with which probability, and the reward
//! reported for it by `Router.ReportOutcome`), without labels, by counterfactual risk
//! minimisation (Swaminathan and Joachims, "Batch learning from logged bandit feedback through
//! counterfactual risk minimization", JMLR 2015) with clipped importance weights.
//!
//! For the softmax policy `π_w` of a linear rejector, the bank entry at `lambda` maximises the
//! clipped inverse-propensity estimate of its net reward
//!
//! ```text
//!   (1/n) Σ_i (u_i − b) · π_w(a_i | x_i) · min(1 / p_i, M)      u_i = r_i − lambda · price(a_i)
//! ```
//!
//! (`a_i` the logged expert, `p_i` its propensity, `r_i` the reported reward, prices relative
//! to the dearest expert), minus the same L2 penalties as training on labels. `b`, the mean net
//! reward of the log, is a baseline: without clipping it leaves the objective's expectation
//! unchanged (the weighted probabilities have expectation 1) and keeps the optimiser from
//! merely pushing probability away from every logged action (Joachims, Swaminathan and de
//! Rijke, "Deep learning with logged bandit feedback", ICLR 2018). The clip `M` (the inverse of
//! `min_propensity`) bounds the variance at the price of a bias towards the logging policy.
//! Served, the policy takes the expert of highest score, like any route policy; it carries no
//! calibration (its scores are not probabilities of being right).

use super::fit::{Example, FitConfig, descend};
use crate::core::features::{HASH_BUCKETS, dense_len, featurize};
use crate::core::learned::{
    Agent, BankEntry, LossKind, Mode, POLICY_FORMAT, PolicyFile, SplitRecord,
};
use crate::core::rejector::softmax;
use crate::scheduler::decision_log::LoggedDecision;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct CrmOptions {
    pub lambdas: Vec<f64>,
    /// The bank entry served by default (default: the first lambda).
    pub default_lambda: Option<f64>,
    /// Propensities below this are taken as this (importance weights at most its inverse).
    pub min_propensity: f64,
    pub fit: FitConfig,
}

/// Which decisions of the log were learned from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LogUse {
    /// Decisions served (shadow decisions aside).
    pub logged: usize,
    /// With a reported outcome.
    pub rewarded: usize,
    /// Rewarded but without their query (logged without `--decision-log-queries`).
    pub without_query: usize,
    /// Rewarded but sent to an expert the pool does not have (or of propensity 0).
    pub unknown_expert: usize,
    /// Learned from.
    pub used: usize,
}

/// One logged decision as the objective sees it.
struct Feedback {
    action: usize,
    reward: f64,
    weight: f64,
}

/// Learns a route policy over `experts` (ids and declared costs, in the order the policy file
/// keeps) from the rewarded decisions of `log` that `keep` accepts; `split` is recorded in the
/// file (the articles a comparison evaluates on).
pub fn train_from_log(
    log: &[LoggedDecision],
    experts: &[Agent],
    options: &CrmOptions,
    split: SplitRecord,
    keep: impl Fn(&LoggedDecision) -> bool,
) -> anyhow::Result<(PolicyFile, LogUse)> {
    anyhow::ensure!(!experts.is_empty(), "the pool has no experts");
    super::check_lambdas(&options.lambdas)?;
    anyhow::ensure!(
        options.min_propensity > 0.0 && options.min_propensity <= 1.0,
        "--min-propensity must be in (0, 1], got {}",
        options.min_propensity
    );
    let mut usage = LogUse {
        logged: 0,
        rewarded: 0,
        without_query: 0,
        unknown_expert: 0,
        used: 0,
    };
    let mut features = Vec::new();
    let mut feedback = Vec::new();
    for d in log.iter().filter(|d| !d.shadow && keep(d)) {
        usage.logged += 1;
        let Some(reward) = d.reward else { continue };
        usage.rewarded += 1;
        let Some(query) = &d.query else {
            usage.without_query += 1;
            continue;
        };
        let action = experts.iter().position(|a| a.id == d.chosen);
        let (Some(action), true) = (action, d.propensity > 0.0) else {
            usage.unknown_expert += 1;
            continue;
        };
        features.push(featurize(&query.question, &query.context, &[]));
        feedback.push(Feedback {
            action,
            reward,
            weight: 1.0 / d.propensity.max(options.min_propensity),
        });
    }
    usage.used = feedback.len();
    anyhow::ensure!(
        usage.used > 0,
        "no decision of the log can be learned from: {} served, {} with an outcome, {} of them \
         without their query (log with --decision-log-queries), {} sent to experts the pool does \
         not have",
        usage.logged,
        usage.rewarded,
        usage.without_query,
        usage.unknown_expert
    );

    let d = dense_len(0);
    let standardize = super::standardization(&features, d);
    let examples: Vec<Example> = features
        .into_iter()
        .map(|mut f| {
            standardize.apply(&mut f.dense);
            Example {
                dense: f.dense,
                hashed: f.hashed,
                loss: Vec::new(),
                price: Vec::new(),
                valid: Vec::new(),
            }
        })
        .collect();
    let max_cost = experts
        .iter()
        .map(|a| a.cost)
        .fold(f64::MIN_POSITIVE, f64::max);
    let bank = options
        .lambdas
        .iter()
        .map(|&lambda| {
            let net: Vec<f64> = feedback
                .iter()
                .map(|f| f.reward - lambda * experts[f.action].cost / max_cost)
                .collect();
            let baseline = net.iter().sum::<f64>() / net.len() as f64;
            let mut probabilities = Vec::new();
            let rejector = descend(
                &examples,
                experts.len(),
                d,
                HASH_BUCKETS,
                &options.fit,
                |_, i, logits, grad| {
                    let f = &feedback[i];
                    probabilities.clear();
                    probabilities.extend_from_slice(logits);
                    softmax(&mut probabilities);
                    // d/dz_k of −(u − b)·w·π_a = −(u − b)·w·π_a·(1[k = a] − π_k).
                    let scale = -(net[i] - baseline) * f.weight * probabilities[f.action];
                    grad.clear();
                    grad.extend(
                        probabilities
                            .iter()
                            .enumerate()
                            .map(|(k, &p)| scale * (f64::from(u8::from(k == f.action)) - p)),
                    );
                },
            );
            BankEntry {
                lambda,
                rejector,
                later: Vec::new(),
                calibration: Vec::new(),
            }
        })
        .collect();
    let policy = PolicyFile {
        format: POLICY_FORMAT.into(),
        featurizer: crate::core::features::FEATURIZER_VERSION.into(),
        mode: Mode::Route,
        probes: Vec::new(),
        experts: experts.to_vec(),
        stages: 0,
        loss: LossKind::Em,
        split,
        training: super::training_record(&options.fit, usage.used),
        standardize,
        default_lambda: options.default_lambda.unwrap_or(options.lambdas[0]),
        bank,
    };
    policy.check()?;
    Ok((policy, usage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::decision_log::LoggedQuery;

    fn decision(n: usize, chosen: &str, reward: Option<f64>, query: bool) -> LoggedDecision {
        LoggedDecision {
            request_id: format!("r{n}"),
            query_id: None,
            policy_id: "p".into(),
            lambda: 0.0,
            eligible: vec!["a".into(), "b".into()],
            scores: Default::default(),
            greedy: "a".into(),
            chosen: chosen.into(),
            propensity: 0.5,
            epsilon: 1.0,
            answered_by: Some(chosen.into()),
            answer: Some(String::new()),
            query: query.then(|| LoggedQuery {
                question: format!("What is item {n}?"),
                context: format!("Item {n} is a thing among many things."),
                observed: Default::default(),
            }),
            reward,
            cost: 1.0,
            shadow: false,
            sequence: None,
        }
    }

    fn experts() -> Vec<Agent> {
        ["a", "b"]
            .map(|id| Agent {
                id: id.into(),
                cost: 1.0,
            })
            .to_vec()
    }

    fn options() -> CrmOptions {
        CrmOptions {
            lambdas: vec![0.0],
            default_lambda: None,
            min_propensity: 0.01,
            fit: FitConfig {
                epochs: 50,
                ..FitConfig::default()
            },
        }
    }

    fn split() -> SplitRecord {
        SplitRecord {
            seed: 0,
            test_fraction: 0.0,
            train_articles: Vec::new(),
            test_articles: Vec::new(),
        }
    }

    #[test]
    fn the_expert_whose_logged_answers_were_rewarded_gets_the_higher_score() {
        // Uniform logging over a and b: b was right every time, a never.
        let log: Vec<LoggedDecision> = (0..40)
            .map(|n| {
                let b = n % 2 == 0;
                decision(
                    n,
                    if b { "b" } else { "a" },
                    Some(f64::from(u8::from(b))),
                    true,
                )
            })
            .collect();
        let (policy, usage) =
            train_from_log(&log, &experts(), &options(), split(), |_| true).unwrap();
        assert_eq!(usage.used, 40);
        let features = policy.features("What is item 3?", "Item 3 is a thing.", None, &[]);
        let mut logits = Vec::new();
        policy.logits(0, &features, &mut logits);
        assert!(logits[1] > logits[0], "{logits:?}");
    }

    #[test]
    fn a_log_with_nothing_to_learn_from_says_why() {
        let log = [
            decision(0, "a", None, true),
            decision(1, "a", Some(1.0), false),
            decision(2, "z", Some(1.0), true),
            LoggedDecision {
                shadow: true,
                ..decision(3, "a", Some(1.0), true)
            },
        ];
        let error = train_from_log(&log, &experts(), &options(), split(), |_| true)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("3 served, 2 with an outcome, 1 of them without their query")
                && error.contains("1 sent to experts the pool does not have"),
            "{error}"
        );
    }
}
