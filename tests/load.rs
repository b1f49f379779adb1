//! The load generator against a real scheduler on loopback: its accounting (counts, statuses,
//! answers scored against the references, expert shares, cost) in both loop modes. No timing
//! assertions.

mod common;

use common::*;
use l2d::core::metric::MetricVersion;
use l2d::load::{LoadOptions, Target, queries, run};
use l2d::scheduler::SchedulerConfig;
use std::sync::Arc;
use std::time::Duration;

fn options(address: String, rps: Option<f64>, limit: u64) -> LoadOptions {
    LoadOptions {
        target: Target::Router,
        address,
        concurrency: 4,
        rps,
        duration: None,
        warmup: Duration::ZERO,
        connections: 2,
        limit: Some(limit),
        timeout: Duration::from_secs(10),
        progress: false,
        tls: None,
        token: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_and_open_loops_account_for_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &replay_pair(Some(0.6), Some(0.95)));
    // lambda 0.1: the strong expert answers everything.
    let (node, _scheduler, local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;
    let qs = Arc::new(queries(&mini_squad()));
    assert_eq!(qs.len(), 5);

    let closed = run(
        &options(node.addr.to_string(), None, 50),
        qs.clone(),
        MetricVersion::V1,
    )
    .await
    .unwrap();
    assert_eq!(closed.count, 50);
    assert_eq!(closed.errors, 0);
    assert_eq!(closed.status_codes["OK"], 50);
    // Each of the 5 questions 10 times; the strong expert is right on 4 of them, and "260
    // kilometres" against "roughly 260 kilometres" is F1 0.8.
    assert!((closed.em - 80.0).abs() < 1e-9, "{}", closed.em);
    assert!((closed.f1 - 96.0).abs() < 1e-9, "{}", closed.f1);
    assert_eq!(closed.expert_share["strong"], 1.0);
    assert_eq!(closed.mean_cost, 10.0);
    assert_eq!(closed.histogram.iter().map(|b| b.count).sum::<u64>(), 50);

    let open = run(
        &options(node.addr.to_string(), Some(500.0), 30),
        qs.clone(),
        MetricVersion::V1,
    )
    .await
    .unwrap();
    assert_eq!(open.count, 30);
    assert_eq!(open.status_codes["OK"], 30);

    // Calls that fail are counted by status, with samples.
    let bad = Arc::new(vec![l2d::load::LoadQuery {
        id: "no-such-id".into(),
        question: "Who?".into(),
        context: "Nobody.".into(),
        references: vec!["x".into()],
    }]);
    let failing = run(
        &options(node.addr.to_string(), None, 7),
        bad,
        MetricVersion::V1,
    )
    .await
    .unwrap();
    assert_eq!((failing.count, failing.errors), (7, 7));
    assert_eq!(failing.status_codes["NOT_FOUND"], 7);
    assert_eq!(failing.error_samples.values().sum::<u64>(), 7);

    // A run with neither a duration nor a limit is refused, not endless.
    let mut endless = options(node.addr.to_string(), None, 1);
    endless.limit = None;
    assert!(run(&endless, qs, MetricVersion::V1).await.is_err());
    node.stop().await;
    local.shutdown().await.unwrap();
}
