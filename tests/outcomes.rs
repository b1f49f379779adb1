//! Outcomes reported after the answer (`Router.ReportOutcome`): recorded in the decision log
//! beside the request's decision, once per request, authorised like Pool mutations.

mod common;

use common::*;
use l2d::scheduler::SchedulerConfig;
use l2d::scheduler::access::{Access, Credential, Gate};
use l2d::{Ask, RouterClient};
use std::sync::Arc;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_recorded_beside_their_decisions_once_and_only_with_a_pool_credential() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &two_experts());
    let log = dir.path().join("decisions.jsonl");
    let config = SchedulerConfig {
        decision_log: Some(log.clone()),
        gate: Arc::new(Gate {
            pool: Access::new(vec![Credential::token("grader", "pool-token")]),
            router: Access::new(vec![Credential::token("client", "ask-token")]),
            registration: false,
        }),
        ..SchedulerConfig::default()
    };
    let (node, scheduler, local) = spawn_scheduler(config, Some(&pool), 0.1).await;
    let connect = |token: &str| {
        let uri = node.uri();
        let token = token.to_owned();
        async move {
            RouterClient::connect_with(&uri, None, Some(token))
                .await
                .unwrap()
        }
    };
    let mut client = connect("ask-token").await;
    let mut ids = Vec::new();
    for question in [SB_AFC, "Where was Super Bowl 50 played?"] {
        let reply = client
            .ask(Ask::new(question, SB_CONTEXT).id("sb-afc"))
            .await
            .unwrap();
        ids.push((reply.request_id, reply.text));
    }
    // The client's token does not open outcomes: they train the next policy.
    let refused = client
        .report_outcome(&ids[0].0, Some(1.0), vec![])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let mut grader = connect("pool-token").await;
    // Gold answers: scored with the official exact match against the answer given.
    let gold = vec!["Denver Broncos".to_owned()];
    let first = grader
        .report_outcome(&ids[0].0, None, gold.clone())
        .await
        .unwrap();
    let expected = f64::from(u8::from(ids[0].1 == "Denver Broncos"));
    assert_eq!(first.reward, expected, "{ids:?}");
    assert!(first.f1.is_some());
    // Once per request; unknown ids and bad rewards say so.
    let again = grader
        .report_outcome(&ids[0].0, Some(0.0), vec![])
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let unknown = grader
        .report_outcome("no-such-request", Some(1.0), vec![])
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    for (reward, gold) in [(Some(1.5), vec![]), (None, vec![]), (Some(1.0), gold)] {
        let bad = grader
            .report_outcome(&ids[1].0, reward, gold)
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    }
    let second = grader
        .report_outcome(&ids[1].0, Some(0.25), vec![])
        .await
        .unwrap();
    assert_eq!((second.reward, second.f1), (0.25, None));

    // The log: each decision with the answer given, and the reward joined to it.
    drop(scheduler);
    local.shutdown().await.unwrap();
    let decisions = l2d::scheduler::decision_log::read_log(&log).unwrap();
    assert_eq!(decisions.len(), 2);
    for (d, (id, text)) in decisions.iter().zip(&ids) {
        assert_eq!(&d.request_id, id);
        assert_eq!(d.answer.as_deref(), Some(text.as_str()));
    }
    assert_eq!(
        (decisions[0].reward, decisions[1].reward),
        (Some(expected), Some(0.25))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_without_a_decision_log_refuses_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &two_experts());
    let (node, _scheduler, _local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;
    let mut client = RouterClient::connect(&node.uri()).await.unwrap();
    let reply = client.ask(Ask::new(SB_AFC, SB_CONTEXT)).await.unwrap();
    let refused = client
        .report_outcome(&reply.request_id, Some(1.0), vec![])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("--decision-log"), "{refused:?}");
}

/// The whole loop on the default pool: the shipped defer-mode policy serves with exploration and logs its
/// queries, a grader reports outcomes from gold answers, and another policy is evaluated from
/// the log alone: every rewarded decision usable (the probes' answers were logged as seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_is_evaluated_from_the_served_log_and_its_reported_outcomes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let pool = l2d::pool_file::PoolFile::load(&root.join("pools/squad-v1.1.toml")).unwrap();
    let policy_path = root.join("policies/squad-v1.1-defer.json");
    let config = SchedulerConfig {
        explore: 0.3,
        decision_log: Some(log.clone()),
        decision_log_queries: true,
        ..SchedulerConfig::default()
    };
    let (node, _scheduler, local) = spawn_policy_scheduler(config, &pool, &policy_path).await;
    let mut client = RouterClient::connect(&node.uri()).await.unwrap();
    let dataset = l2d::squad::Dataset::load(&root.join("data/squad-v1.1/dev.json")).unwrap();
    let mut rewards = 0.0;
    let asked: Vec<_> = dataset.questions().step_by(50).collect();
    for (_, paragraph, q) in &asked {
        let reply = client
            .ask(Ask::new(q.question.clone(), paragraph.context.clone()).id(q.id.clone()))
            .await
            .unwrap();
        let gold = q.answers.iter().map(|a| a.text.clone()).collect();
        rewards += client
            .report_outcome(&reply.request_id, None, gold)
            .await
            .unwrap()
            .reward;
    }
    local.shutdown().await.unwrap();
    let decisions = l2d::train::offpolicy::read_log(&log).unwrap();
    let policy =
        l2d::core::learned::PolicyFile::parse(&std::fs::read_to_string(&policy_path).unwrap())
            .unwrap();
    for d in &decisions {
        let query = d.query.as_ref().unwrap();
        for probe in &policy.probes {
            assert!(query.observed.contains_key(probe), "{d:?}");
        }
    }
    let report = l2d::train::offpolicy::evaluate_log_alone(&decisions, &policy, 7).unwrap();
    assert_eq!(
        (report.logged, report.rewarded, report.unobserved),
        (asked.len(), asked.len(), 0)
    );
    assert!((report.logging_reward - 100.0 * rewards / asked.len() as f64).abs() < 1e-9);
    // The same policy as the logger: it agrees wherever exploration did not move the choice.
    assert!(
        report.estimated.matched * 10 > asked.len() * 6,
        "{report:?}"
    );
    let dr = report.estimated.dr;
    assert!(dr.low <= dr.value && dr.value <= dr.high, "{report:?}");
}
