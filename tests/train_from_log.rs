//! Training from the log alone (`l2d train --from-log`): on SQuAD v1.1 dev, a route policy
//! learned by counterfactual risk minimisation from an ε-greedy decision log of the training
//! articles (one expert asked per question, one reward each, from gold answers) against the
//! route policy trained on full labels of the same articles; both are evaluated on the same test
//! articles by `l2d eval`.
//!
//! The log is written as the scheduler writes it with `--explore 0.3 --decision-log-queries`
//! and outcomes reported from gold answers: the shipped policy decides, ε-greedy over the
//! pool's experts, with the propensity of the expert chosen.

mod common;

use common::process::{l2d_ok, repo};
use l2d::core::learned::PolicyFile;
use l2d::core::rejector::argmax;
use l2d::scheduler::decision_log::{DecisionLog, LogOptions, LoggedDecision, LoggedQuery, Sync};
use l2d::train::labels::Labels;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

fn l2d(args: &[&str]) -> String {
    String::from_utf8(l2d_ok(args).stderr).unwrap()
}

/// The log of `logger` deciding every labelled question ε-greedily (rewards: the exact match of
/// the chosen expert's answer).
fn write_log(path: &Path, labels: &Labels, logger: &PolicyFile, epsilon: f64, seed: u64) {
    let log = DecisionLog::open_with(
        path,
        LogOptions {
            sync: Sync::Never,
            ..LogOptions::default()
        },
    )
    .unwrap();
    let position = |id: &str| {
        labels
            .header
            .experts
            .iter()
            .position(|a| a.id == id)
            .unwrap()
    };
    let experts = logger.experts.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut logits = Vec::new();
    for (n, record) in labels.records.iter().enumerate() {
        let answer = |i: usize| {
            let label = &record.experts[position(&logger.experts[i].id)];
            (label.answer.clone().unwrap_or_default(), label.em)
        };
        let observed: BTreeMap<String, String> = logger
            .probes
            .iter()
            .map(|p| {
                let i = logger.experts.iter().position(|a| &a.id == p).unwrap();
                (p.clone(), answer(i).0)
            })
            .collect();
        let probes: Vec<Option<&str>> = observed.values().map(|a| Some(a.as_str())).collect();
        let features = logger.features(&record.question, &record.context, None, &probes);
        logger.logits(
            logger.nearest(logger.default_lambda),
            &features,
            &mut logits,
        );
        let greedy = argmax(&logits);
        let chosen = if rng.random::<f64>() < epsilon {
            rng.random_range(0..experts)
        } else {
            greedy
        };
        let id = |i: usize| logger.experts[i].id.clone();
        let (text, em) = answer(chosen);
        log.record(&LoggedDecision {
            request_id: format!("r{n}"),
            query_id: Some(record.id.clone()),
            policy_id: "logger".into(),
            lambda: logger.default_lambda,
            eligible: (0..experts).map(id).collect(),
            scores: BTreeMap::new(),
            greedy: id(greedy),
            chosen: id(chosen),
            propensity: epsilon / experts as f64
                + if chosen == greedy { 1.0 - epsilon } else { 0.0 },
            epsilon,
            answered_by: Some(id(chosen)),
            answer: Some(text),
            query: Some(LoggedQuery {
                question: record.question.clone(),
                context: record.context.clone(),
                observed,
            }),
            reward: None,
            cost: logger.experts[chosen].cost,
            shadow: false,
            sequence: None,
        });
        log.record_outcome(&l2d::scheduler::decision_log::LoggedOutcome {
            request_id: format!("r{n}"),
            reward: em,
            f1: None,
            sequence: None,
        });
    }
}

fn eval(labels: &Path, policy: &Path, json: &Path) -> serde_json::Value {
    l2d(&[
        "eval",
        "--labels",
        labels.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

/// (lambda, EM, mean cost, gap over the random mix) along the policy's bank.
fn curve(report: &serde_json::Value) -> Vec<(f64, f64, f64, f64)> {
    report["policy"]["curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let f = |k: &str| p[k].as_f64().unwrap();
            (f("lambda"), f("em"), f("mean_cost"), f("gap"))
        })
        .collect()
}

#[test]
fn a_policy_learned_from_the_log_alone_routes_nearly_as_well_as_one_learned_from_full_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    l2d(&[
        "label",
        "--data",
        "data/squad-v1.1/dev.json",
        "--experts",
        "lr,match-lstm,rnet-plus,slqa-plus,bert-large",
        "--out",
        path("labels.jsonl").to_str().unwrap(),
    ]);
    let labels = Labels::read(&path("labels.jsonl")).unwrap();
    let logger = PolicyFile::parse(
        &std::fs::read_to_string(repo().join("policies/squad-v1.1-defer.json")).unwrap(),
    )
    .unwrap();
    write_log(&path("decisions.jsonl"), &labels, &logger, 0.3, 7);

    // A short bank and fewer passes than the defaults keep the test quick; the comparison
    // holds the same for both policies.
    let (lambdas, epochs) = ("0,0.05,0.1", "150");
    let trained = l2d(&[
        "train",
        "--from-log",
        path("decisions.jsonl").to_str().unwrap(),
        "--labels",
        path("labels.jsonl").to_str().unwrap(),
        "--lambda",
        lambdas,
        "--epochs",
        epochs,
        "--out",
        path("crm.json").to_str().unwrap(),
    ]);
    eprintln!("{trained}");
    l2d(&[
        "train",
        "--labels",
        path("labels.jsonl").to_str().unwrap(),
        "--mode",
        "route",
        "--lambda",
        lambdas,
        "--epochs",
        epochs,
        "--out",
        path("full.json").to_str().unwrap(),
    ]);
    let crm = PolicyFile::parse(&std::fs::read_to_string(path("crm.json")).unwrap()).unwrap();
    let full = PolicyFile::parse(&std::fs::read_to_string(path("full.json")).unwrap()).unwrap();
    // Same split: only decisions on the training articles were learned from.
    assert_eq!(crm.split.test_articles, full.split.test_articles);
    let train_questions = labels.in_articles(&crm.split.train_articles).len();
    assert_eq!(crm.training.examples, train_questions);

    let crm_report = eval(
        &path("labels.jsonl"),
        &path("crm.json"),
        &path("crm-eval.json"),
    );
    let full_report = eval(
        &path("labels.jsonl"),
        &path("full.json"),
        &path("full-eval.json"),
    );
    let (crm_curve, full_curve) = (curve(&crm_report), curve(&full_report));
    let best_single = full_report["experts"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r["em"].as_f64().unwrap())
        .fold(0.0, f64::max);
    eprintln!("lambda  from-log: EM  cost  gap   full labels: EM  cost  gap");
    for (c, f) in crm_curve.iter().zip(&full_curve) {
        eprintln!(
            "{:<6}  {:>14.2} {:>5.2} {:>+5.2}   {:>15.2} {:>5.2} {:>+5.2}",
            c.0, c.1, c.2, c.3, f.1, f.2, f.3
        );
    }
    eprintln!("best single expert: {best_single:.2} EM");

    // Unpriced, the policy learned from one reward per question is about as accurate as the
    // best expert (a gradient of the wrong sign sends it elsewhere) and within
    // two points of the policy learned from every expert's answer to every question.
    let (crm0, full0) = (crm_curve[0], full_curve[0]);
    assert!(
        crm0.1 >= best_single - 1.0,
        "{crm0:?} vs best single {best_single}"
    );
    assert!(crm0.1 >= full0.1 - 2.0, "{crm0:?} vs {full0:?}");
    // Priced, it spends less: the bank's cost falls as lambda rises, and nowhere does it fall
    // far below the random mix of experts at the same cost.
    let last = crm_curve.last().unwrap();
    assert!(last.2 < 0.8 * crm0.2, "{crm_curve:?}");
    assert!(crm_curve.iter().all(|p| p.3 > -1.0), "{crm_curve:?}");
}
