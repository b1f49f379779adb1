//! An expert replica that shuts down drains without costing a query: it says NOT_SERVING, the
//! scheduler's health check takes it out of rotation within one interval (no ejection), and it
//! keeps answering for its drain delay, longer than that interval, before it stops.

mod common;

use common::*;
use l2d::expert::ExpertNode;
use l2d::expert::replay::ReplayBackend;
use l2d::scheduler::SchedulerConfig;
use l2d::{Ask, RouterClient};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

async fn draining_replica(drain: Duration) -> Node {
    let backend = ReplayBackend::load(
        &fixture("strong-predictions.json"),
        Some(mini_squad()),
        10.0,
    )
    .unwrap();
    let node = ExpertNode::new("strong", 10.0, Arc::new(backend)).with_drain_delay(drain);
    spawn_node(move |listener, stopped| {
        l2d::expert::serve(listener, node, None, async {
            let _ = stopped.await;
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_drains_costs_no_query_and_no_ejection() {
    // The health interval is well inside the drain delay, as in the manifests (5 s and 15 s).
    let leaving = draining_replica(Duration::from_millis(1500)).await;
    let staying = draining_replica(Duration::ZERO).await;
    let (leaving_at, staying_at) = (leaving.addr.to_string(), staying.addr.to_string());
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(
        dir.path(),
        &format!(
            "[[expert]]\nid = \"strong\"\nbackend = \"replay\"\n\
             predictions = \"FIXTURES/strong-predictions.json\"\n\
             data = \"FIXTURES/mini-squad.json\"\ncost = 10\n\
             addresses = [\"{leaving_at}\", \"{staying_at}\"]\n"
        ),
    );
    let config = SchedulerConfig {
        health_interval: Duration::from_millis(100),
        ..SchedulerConfig::default()
    };
    let (node, scheduler, _local) = spawn_scheduler(config, Some(&pool), 0.1).await;

    // Queries without a pause, from two clients, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut router = RouterClient::from_channel(node.channel().await);
        let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match router.ask(Ask::new(SB_AFC, SB_CONTEXT).id("sb-afc")).await {
                    Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(format!("{:?}: {}", e.code(), e.message()));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        }));
    }
    let calls_to = |address: &str| {
        let text = scheduler.publish_metrics();
        series_value(
            &text,
            &format!(
                "l2d_expert_calls_total{{expert=\"strong\",replica=\"{address}\",code=\"OK\"}}"
            ),
        )
    };
    eventually(
        Duration::from_secs(10),
        "calls to both replicas",
        || async { calls_to(&leaving_at) > 0.0 && calls_to(&staying_at) > 0.0 },
    )
    .await;

    // The leaving replica shuts down: NOT_SERVING, answers for its drain delay, then stops.
    let stopped = tokio::spawn(leaving.stop());
    eventually(
        Duration::from_secs(10),
        "the replica seen draining",
        || async {
            let text = scheduler.publish_metrics();
            series_value(
                &text,
                &format!("l2d_replica_draining{{expert=\"strong\",replica=\"{leaving_at}\"}}"),
            ) == 1.0
        },
    )
    .await;
    let calls_when_seen = calls_to(&leaving_at);
    stopped.await.unwrap();
    // Traffic goes on after it has gone.
    let after = answered.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(10),
        "queries after the drain",
        || async { answered.load(Ordering::Relaxed) > after + 50 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for client in clients {
        errors.extend(client.await.unwrap());
    }

    assert!(
        errors.is_empty(),
        "{} failed: {errors:?}",
        failed.load(Ordering::Relaxed)
    );
    let text = scheduler.publish_metrics();
    for address in [&leaving_at, &staying_at] {
        assert_eq!(
            series_value(
                &text,
                &format!("l2d_replica_ejections_total{{expert=\"strong\",replica=\"{address}\"}}")
            ),
            0.0,
            "{text}"
        );
    }
    // Nothing failed over, and once the scheduler saw it draining, no call went there but the
    // two clients' calls already in flight.
    assert!(!text.contains("l2d_fallbacks_total{"), "{text}");
    assert!(calls_to(&leaving_at) - calls_when_seen <= 2.0, "{text}");
    assert_eq!(
        series_value(&text, "l2d_expert_available_replicas{expert=\"strong\"}"),
        1.0
    );
    node.stop().await;
}
