//! Off-policy evaluation from the decision log alone: on SQuAD v1.1 dev, with rewards from the
//! gold answers, the doubly robust interval covers a new policy's true value for most seeds of
//! exploration.
//!
//! The log is written the way the scheduler writes it with `--explore 0.3
//! --decision-log-queries` and outcomes reported from gold answers: the shipped defer-mode policy
//! decides (after asking its two probes, whose answers are logged as observed), ε-greedy over
//! the pool's experts, with the propensity of the expert chosen; the reward is the official
//! exact match of that expert's recorded answer. The new policy is the same file at the most
//! accurate end of its bank, which disagrees with the logger on many questions.

use l2d::core::learned::PolicyFile;
use l2d::core::metric::{MetricVersion, score};
use l2d::core::rejector::argmax;
use l2d::pool_file::{BackendSpec, PoolFile};
use l2d::scheduler::decision_log::{LoggedDecision, LoggedQuery};
use l2d::squad::Dataset;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

struct Question {
    id: String,
    question: String,
    context: String,
    /// Each expert's recorded answer and its exact match, in the policy's expert order.
    answers: Vec<(String, f64)>,
}

fn dev_questions(policy: &PolicyFile, every: usize) -> Vec<Question> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dataset = Dataset::load(&root.join("data/squad-v1.1/dev.json")).unwrap();
    let pool = PoolFile::load(&root.join("pools/squad-v1.1.toml")).unwrap();
    let recordings: Vec<HashMap<String, String>> = policy
        .experts
        .iter()
        .map(|agent| {
            let spec = pool.experts.iter().find(|e| e.id == agent.id).unwrap();
            let BackendSpec::Replay { predictions, .. } = &spec.backend else {
                panic!("{} is not a replay expert", agent.id)
            };
            serde_json::from_str(&std::fs::read_to_string(predictions).unwrap()).unwrap()
        })
        .collect();
    dataset
        .questions()
        .step_by(every)
        .map(|(_, paragraph, q)| {
            let references: Vec<&str> = q.answers.iter().map(|a| a.text.as_str()).collect();
            let answers = recordings
                .iter()
                .map(|r| {
                    let answer = r.get(&q.id).cloned().unwrap_or_default();
                    let em = score(&answer, &references, MetricVersion::V1).exact;
                    (answer, em)
                })
                .collect();
            Question {
                id: q.id.clone(),
                question: q.question.clone(),
                context: paragraph.context.clone(),
                answers,
            }
        })
        .collect()
}

/// The policy's pick (at its default lambda) on `q`, given its probes' answers.
fn pick(policy: &PolicyFile, q: &Question, logits: &mut Vec<f64>) -> usize {
    let probes: Vec<Option<&str>> = policy
        .probes
        .iter()
        .map(|p| {
            let i = policy.experts.iter().position(|a| &a.id == p).unwrap();
            Some(q.answers[i].0.as_str())
        })
        .collect();
    let features = policy.features(&q.question, &q.context, None, &probes);
    policy.logits(policy.nearest(policy.default_lambda), &features, logits);
    argmax(logits)
}

#[test]
fn the_doubly_robust_interval_covers_a_new_policys_true_value_for_most_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("policies/squad-v1.1-defer.json")).unwrap();
    let logger = PolicyFile::parse(&text).unwrap();
    let mut new = logger.clone();
    new.default_lambda = new
        .bank
        .iter()
        .map(|e| e.lambda)
        .fold(f64::INFINITY, f64::min);
    let questions = dev_questions(&logger, 4);
    let mut logits = Vec::new();
    let greedy: Vec<usize> = questions
        .iter()
        .map(|q| pick(&logger, q, &mut logits))
        .collect();
    let new_picks: Vec<usize> = questions
        .iter()
        .map(|q| pick(&new, q, &mut logits))
        .collect();
    let truth = 100.0
        * questions
            .iter()
            .zip(&new_picks)
            .map(|(q, &p)| q.answers[p].1)
            .sum::<f64>()
        / questions.len() as f64;
    let disagree = greedy
        .iter()
        .zip(&new_picks)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        disagree * 10 > questions.len(),
        "the new policy must differ from the logger: {disagree} of {}",
        questions.len()
    );

    let epsilon = 0.3;
    let experts = logger.experts.len();
    let mut covered = 0;
    let mut intervals = Vec::new();
    for seed in 0..20 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let log: Vec<LoggedDecision> = questions
            .iter()
            .zip(&greedy)
            .enumerate()
            .map(|(n, (q, &greedy))| {
                let chosen = if rng.random::<f64>() < epsilon {
                    rng.random_range(0..experts)
                } else {
                    greedy
                };
                let propensity =
                    epsilon / experts as f64 + if chosen == greedy { 1.0 - epsilon } else { 0.0 };
                let id = |i: usize| logger.experts[i].id.clone();
                let observed: BTreeMap<String, String> = logger
                    .probes
                    .iter()
                    .map(|p| {
                        let i = logger.experts.iter().position(|a| &a.id == p).unwrap();
                        (p.clone(), q.answers[i].0.clone())
                    })
                    .collect();
                LoggedDecision {
                    request_id: format!("{seed}-{n}"),
                    query_id: Some(q.id.clone()),
                    policy_id: "logger".into(),
                    lambda: logger.default_lambda,
                    eligible: (0..experts).map(id).collect(),
                    scores: BTreeMap::new(),
                    greedy: id(greedy),
                    chosen: id(chosen),
                    propensity,
                    epsilon,
                    answered_by: Some(id(chosen)),
                    answer: Some(q.answers[chosen].0.clone()),
                    query: Some(LoggedQuery {
                        question: q.question.clone(),
                        context: q.context.clone(),
                        observed,
                    }),
                    reward: Some(q.answers[chosen].1),
                    cost: 0.0,
                    shadow: false,
                    sequence: None,
                }
            })
            .collect();
        let report = l2d::train::offpolicy::evaluate_log_alone(&log, &new, seed).unwrap();
        assert_eq!((report.rewarded, report.unobserved), (questions.len(), 0));
        let dr = report.estimated.dr;
        if dr.low <= truth && truth <= dr.high {
            covered += 1;
        }
        intervals.push((dr.low, dr.value, dr.high));
    }
    eprintln!("DR covered the true value {truth:.2} for {covered} of 20 seeds: {intervals:.2?}");
    assert!(
        covered >= 17,
        "the DR interval covered the true value {truth:.2} for {covered} of 20 seeds: {intervals:?}"
    );
}
