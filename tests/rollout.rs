//! A candidate policy beside the one in force: in shadow it changes no answer and a copy of the
//! policy in force agrees with it on every request; on a share of the requests it decides, and
//! the metrics tell the two apart by policy id.

mod common;

use common::*;
use l2d::scheduler::SchedulerConfig;
use l2d::{Ask, RouterClient};
use std::path::Path;

/// The first `n` dev questions as asks (with their ids, so the recordings answer).
fn dev_asks(n: usize) -> Vec<Ask> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dataset = l2d::squad::Dataset::load(&root.join("data/squad-v1.1/dev.json")).unwrap();
    dataset
        .questions()
        .take(n)
        .map(|(_, p, q)| Ask::new(q.question.clone(), p.context.clone()).id(q.id.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_in_shadow_changes_no_answer_and_a_copy_of_the_policy_agrees_always() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pool = l2d::pool_file::PoolFile::load(&root.join("pools/squad-v1.1.toml")).unwrap();
    let serving = root.join("policies/squad-v1.1.json");
    // The candidate is the same policy under another file: same decisions, same cost.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("candidate.json");
    std::fs::copy(&serving, &copy).unwrap();
    let (node, scheduler, local) =
        spawn_scheduler_with_candidate(SchedulerConfig::default(), &pool, &serving, &copy, 0.0)
            .await;
    let mut router = RouterClient::from_channel(node.channel().await);
    let policy_id = scheduler.policy().identity().id.clone();
    let mut charged = 0.0;
    let n = 25;
    for ask in dev_asks(n) {
        let answer = router.ask(ask).await.unwrap();
        assert_eq!(answer.decision.unwrap().policy_id, policy_id);
        charged += answer.cost;
    }
    let text = scheduler.publish_metrics();
    let shadow = |outcome: &str| {
        series_value(
            &text,
            &format!(
                "l2d_shadow_decisions_total{{policy_id=\"{policy_id}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(shadow("agree"), n as f64, "{text}");
    assert_eq!(shadow("disagree") + shadow("unobserved"), 0.0, "{text}");
    let cost =
        |family: &str| series_value(&text, &format!("{family}{{policy_id=\"{policy_id}\"}}"));
    // What it would have paid is what the policy in force paid.
    assert!(
        (cost("l2d_shadow_cost_units_total") - charged).abs() < 1e-6,
        "{text}"
    );
    assert!(
        (cost("l2d_shadow_serving_cost_units_total") - charged).abs() < 1e-6,
        "{text}"
    );
    assert_eq!(
        series_value(
            &text,
            &format!(
                "l2d_policy_asks_total{{policy_id=\"{policy_id}\",role=\"serving\",code=\"OK\"}}"
            )
        ),
        n as f64
    );
    assert!(!text.contains("role=\"candidate\""), "{text}");
    node.stop().await;
    local.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_decides_its_share_of_requests_and_shadows_the_rest() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pool = l2d::pool_file::PoolFile::load(&root.join("pools/squad-v1.1.toml")).unwrap();
    let serving = root.join("policies/squad-v1.1.json");
    let cascade = root.join("policies/squad-v1.1-cascade.json");
    let (node, scheduler, local) =
        spawn_scheduler_with_candidate(SchedulerConfig::default(), &pool, &serving, &cascade, 0.5)
            .await;
    let mut router = RouterClient::from_channel(node.channel().await);
    let serving_id = scheduler.policy().identity().id.clone();
    let candidate_id = scheduler
        .candidate()
        .unwrap()
        .policy()
        .identity()
        .id
        .clone();
    assert_ne!(serving_id, candidate_id);
    let n = 60;
    let mut decided_by = std::collections::HashMap::<String, usize>::new();
    for ask in dev_asks(n) {
        let answer = router.ask(ask).await.unwrap();
        *decided_by
            .entry(answer.decision.unwrap().policy_id)
            .or_default() += 1;
    }
    let (by_serving, by_candidate) = (decided_by[&serving_id], decided_by[&candidate_id]);
    assert_eq!(by_serving + by_candidate, n);
    // Half in expectation; 60 fair draws land within 12 of 30 but for odds of about 1 in 1000.
    assert!(by_candidate.abs_diff(n / 2) <= 12, "{decided_by:?}");
    let text = scheduler.publish_metrics();
    let asks = |id: &str, role: &str| {
        series_value(
            &text,
            &format!("l2d_policy_asks_total{{policy_id=\"{id}\",role=\"{role}\",code=\"OK\"}}"),
        )
    };
    assert_eq!(asks(&serving_id, "serving"), by_serving as f64, "{text}");
    assert_eq!(
        asks(&candidate_id, "candidate"),
        by_candidate as f64,
        "{text}"
    );
    // Every request the candidate did not decide, it decided in shadow (or could not know).
    let shadowed: f64 = ["agree", "disagree", "unobserved"]
        .iter()
        .map(|o| {
            series_value(
                &text,
                &format!(
                    "l2d_shadow_decisions_total{{policy_id=\"{candidate_id}\",outcome=\"{o}\"}}"
                ),
            )
        })
        .sum();
    assert_eq!(shadowed, by_serving as f64, "{text}");
    node.stop().await;
    local.shutdown().await.unwrap();
}
