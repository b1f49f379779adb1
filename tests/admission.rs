//! Experts that take time, and the scheduler's admission limit: a query beyond the limit waits
//! its queue time, then is refused with RESOURCE_EXHAUSTED and a retry hint, before any expert
//! call and without a charge; the queries admitted are answered.

mod common;

use common::{SB_AFC, SB_CONTEXT, pool_file, spawn_scheduler};
use l2d::grpc::status::retry_after;
use l2d::scheduler::SchedulerConfig;
use l2d::scheduler::admission::AdmissionLimits;
use l2d::{Ask, RouterClient};
use std::time::Duration;
use tonic::Code;

/// One replay expert whose every answer takes `service_time`.
fn slow_pool(service_time: &str) -> String {
    format!(
        "[[expert]]\nid = \"strong\"\nbackend = \"replay\"\npredictions = \"FIXTURES/strong-predictions.json\"\n\
         data = \"FIXTURES/mini-squad.json\"\ncost = 10\naccuracy = 0.9\nservice_time = \"{service_time}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_beyond_the_limit_wait_their_queue_time_then_are_shed_with_a_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &slow_pool("2s"));
    let config = SchedulerConfig {
        admission: AdmissionLimits {
            max_in_flight: 2,
            max_queue_time: Duration::from_millis(50),
            max_queued: 64,
        },
        ..SchedulerConfig::default()
    };
    let (node, scheduler, _local) = spawn_scheduler(config, Some(&pool), 0.1).await;
    let channel = node.channel().await;
    let asks = (0..6).map(|_| {
        let mut router = RouterClient::from_channel(channel.clone());
        async move {
            router
                .ask(
                    Ask::new(SB_AFC, SB_CONTEXT)
                        .id("sb-afc")
                        .timeout(Duration::from_secs(30)),
                )
                .await
        }
    });
    let results = futures_util::future::join_all(asks).await;
    let answered: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let shed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    // Two slots, each held for the expert's 2 s: the other four wait 50 ms and are shed.
    assert_eq!(answered.len(), 2, "{results:?}");
    for a in &answered {
        assert_eq!(a.text, "Denver Broncos");
        // The worker slept its service time before answering.
        assert!(a.compute.as_ref().unwrap().micros >= 2_000_000, "{a:?}");
    }
    assert_eq!(shed.len(), 4);
    for s in &shed {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(
            s.message().contains("limit of 2 queries in flight"),
            "{s:?}"
        );
        assert_eq!(retry_after(s), Some(Duration::from_millis(50)));
    }
    let pool_series = scheduler.publish_metrics();
    let metrics = l2d::telemetry::install().unwrap().render() + &pool_series;
    assert!(
        metrics.contains("l2d_admission_shed_total{reason=\"queue_timeout\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("l2d_asks_total{code=\"RESOURCE_EXHAUSTED\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("l2d_admission_in_flight 0"), "{metrics}");
}
