//! Load- and cost-aware dispatch over real processes: separate `l2d expert` workers and an
//! `l2d scheduler` on loopback (a replica killed under load: `tests/faults.rs`). A slow replica
//! loses its share, a saturated expert sheds to the next one (or the scheduler answers
//! RESOURCE_EXHAUSTED with a retry hint), a short deadline ends promptly and frees the expert's
//! slot, DNS names become replicas, and `/metrics` tells what happened without query text.

mod common;

use common::cluster::*;
use l2d::grpc::status::retry_after;
use l2d::pb;
use l2d::{Ask, RouterClient};
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_replicas_share_the_work() {
    // Each call takes 5 ms, as a model would: with answers in tens of microseconds, one
    // scheduling hiccup of a few milliseconds on a busy machine is a latency peak that PeakEWMA
    // takes at once (as designed), and keeps one replica idle for the rest of a short run.
    // Against 5 ms, the load term `rtt · (in_flight + 1)` is what decides, which is what this
    // test is about.
    let (_a, addr_a) = expert("strong", &["--delay", "5ms"]);
    let (_b, addr_b) = expert("strong", &["--delay", "5ms"]);
    let dir = tempfile::tempdir().unwrap();
    let body = pool_entry("strong", 0.9, &addresses(&[&addr_a, &addr_b]));
    let (_s, router, _) = scheduler(dir.path(), &body, &[]);
    let outcomes = load(&router, questions(), 400, 4, usize::MAX, || {}).await;
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    let counts = by_replica(&outcomes);
    for addr in [&addr_a, &addr_b] {
        let n = counts.get(addr).copied().unwrap_or(0);
        // An even split is 200 each.
        assert!(n >= 80, "{addr} answered {n} of 400: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_gets_a_smaller_share() {
    // 2 ms against 40 ms rather than nothing against 20 ms: a scheduling hiccup of a few
    // milliseconds on a busy machine must not make the fast replica look as slow as the other.
    let (_fast, addr_fast) = expert("strong", &["--delay", "2ms"]);
    let (_slow, addr_slow) = expert("strong", &["--delay", "40ms"]);
    let dir = tempfile::tempdir().unwrap();
    let body = pool_entry("strong", 0.9, &addresses(&[&addr_fast, &addr_slow]));
    let (_s, router, _) = scheduler(dir.path(), &body, &[]);

    let outcomes = load(&router, questions(), 400, 4, usize::MAX, || {}).await;
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    let counts = by_replica(&outcomes);
    let slow = counts.get(&addr_slow).copied().unwrap_or(0);
    // An even split would give it 200.
    assert!(
        slow < 80,
        "the slow replica answered {slow} of 400: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_expert_sheds_to_the_next_and_a_saturated_pool_says_resource_exhausted() {
    let (_strong, addr_strong) = expert("strong", &["--delay", "300ms"]);
    let (_cheap, addr_cheap) = expert("cheap", &[]);
    let dir = tempfile::tempdir().unwrap();
    // The policy prefers strong; strong takes one call at a time.
    let body = pool_entry(
        "strong",
        0.9,
        &format!("{}\nmax_in_flight = 1", addresses(&[&addr_strong])),
    ) + &pool_entry("cheap", 0.5, &addresses(&[&addr_cheap]));
    let (_s, router, _) = scheduler(dir.path(), &body, &[]);

    // Questions the cheap recordings answer, asked eight at a time.
    let outcomes = load(&router, questions_both_answer(), 8, 8, usize::MAX, || {}).await;
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    let answered: HashMap<String, usize> =
        outcomes.iter().flatten().fold(HashMap::new(), |mut m, r| {
            *m.entry(r.expert_id.clone()).or_default() += 1;
            m
        });
    assert!(
        answered.get("strong").copied().unwrap_or(0) >= 1,
        "{answered:?}"
    );
    assert!(
        answered.get("cheap").copied().unwrap_or(0) >= 1,
        "{answered:?}"
    );
    // Each shed query says why strong was passed over.
    for r in outcomes.iter().flatten().filter(|r| r.expert_id == "cheap") {
        let d = r.decision.as_ref().unwrap();
        let strong_excluded = d
            .scores
            .iter()
            .any(|s| s.expert_id == "strong" && s.excluded_because.contains("concurrency limit"));
        let strong_full = d
            .fallbacks
            .iter()
            .any(|f| f.expert_id == "strong" && f.code == "RESOURCE_EXHAUSTED");
        assert!(strong_excluded || strong_full, "{d:?}");
    }

    // A pool of one saturated expert: RESOURCE_EXHAUSTED with a retry hint, not a queue.
    let dir = tempfile::tempdir().unwrap();
    let body = pool_entry(
        "strong",
        0.9,
        &format!("{}\nmax_in_flight = 1", addresses(&[&addr_strong])),
    );
    let (_s2, router, _) = scheduler(dir.path(), &body, &[]);
    let outcomes = load(&router, questions(), 4, 4, usize::MAX, || {}).await;
    let ok = outcomes.iter().filter(|r| r.is_ok()).count();
    let shed: Vec<&tonic::Status> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(ok >= 1, "{:?}", failures(&outcomes));
    assert!(!shed.is_empty());
    for status in shed {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let hint = retry_after(status).expect("a RetryInfo detail");
        assert!(hint > Duration::ZERO);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_deadline_ends_with_deadline_exceeded_and_frees_the_experts_slot() {
    let (_stuck, addr) = expert("strong", &["--delay", "1h", "--max-concurrency", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let body = pool_entry("strong", 0.9, &addresses(&[&addr]));
    let (_s, router, _) = scheduler(dir.path(), &body, &[]);

    let (id, question, context) = questions().remove(0);
    let mut client = RouterClient::connect(&router).await.unwrap();
    let ask = Ask::new(question, context)
        .id(id)
        .timeout(Duration::from_millis(300));
    // The expert would take an hour: returning at all means the deadline ended the call.
    let status = client.ask(ask).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // And it was the scheduler that ended it, before the caller's own timer: its status names
    // the request and says how far it got.
    assert!(
        status.metadata().get("x-request-id").is_some(),
        "{status:?}"
    );
    assert!(
        status
            .message()
            .starts_with("deadline passed after 1 expert call"),
        "{status:?}"
    );

    // The expert's own slot is freed (the scheduler cancelled the call), and so is the
    // scheduler's.
    common::eventually(
        Duration::from_secs(10),
        "the expert's slot to free",
        || async {
            let d = describe(&addr).await;
            d.in_flight == 0 && d.queue_depth == 0 && d.max_concurrency == 1
        },
    )
    .await;
    assert_eq!(list_pool(&router).await.experts[0].replicas[0].in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_client_call_cancels_the_expert_call() {
    let (_stuck, addr) = expert("strong", &["--delay", "1h", "--max-concurrency", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let body = pool_entry("strong", 0.9, &addresses(&[&addr]));
    let (_s, router, _) = scheduler(dir.path(), &body, &[]);

    // No deadline anywhere: only the cancellation can end the expert's call.
    let (id, question, context) = questions().remove(0);
    let mut client = RouterClient::connect(&router).await.unwrap();
    let call = tokio::spawn(async move { client.ask(Ask::new(question, context).id(id)).await });
    common::eventually(
        Duration::from_secs(10),
        "the call to reach the expert",
        || async { describe(&addr).await.in_flight == 1 },
    )
    .await;
    call.abort();
    common::eventually(
        Duration::from_secs(10),
        "the expert's call to be cancelled",
        || async { describe(&addr).await.in_flight == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_names_become_replicas_and_metrics_describe_the_traffic_without_query_text() {
    let (_e, addr) = expert("strong", &[]);
    let port = addr.rsplit_once(':').unwrap().1;
    let dir = tempfile::tempdir().unwrap();
    let body = pool_entry("strong", 0.9, &format!("dns = \"localhost:{port}\""));
    let (_s, router, metrics) = scheduler(dir.path(), &body, &[]);

    let outcomes = load(&router, questions(), 20, 2, usize::MAX, || {}).await;
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    let listed = list_pool(&router).await;
    let replica = &listed.experts[0].replicas[0];
    assert_eq!(replica.origin, pb::replica_state::Origin::Dns as i32);
    assert_eq!(replica.address, addr);

    // A request id chosen by the client comes back in the response and its metadata.
    let (id, question, context) = questions().remove(0);
    let mut raw = pb::router_client::RouterClient::connect(format!("http://{router}"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(pb::AskRequest {
        question: question.clone(),
        context,
        id: Some(id),
        budget: None,
        language: None,
    });
    request
        .metadata_mut()
        .insert("x-request-id", "trace-7f3a".parse().unwrap());
    let response = raw.ask(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "trace-7f3a"
    );
    assert_eq!(response.get_ref().request_id, "trace-7f3a");

    let text = scrape(&metrics);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for needle in [
        "l2d_asks_total{code=\"OK\"} 21",
        "l2d_ask_duration_seconds_bucket{le=\"0.001\"}",
        "l2d_decisions_total{expert=\"strong\"} 21",
        &format!("l2d_expert_calls_total{{expert=\"strong\",replica=\"{addr}\",code=\"OK\"}} 21"),
        &format!("l2d_replica_in_flight{{expert=\"strong\",replica=\"{addr}\"}} 0"),
        &format!("l2d_replica_ejected{{expert=\"strong\",replica=\"{addr}\"}} 0"),
        "l2d_cost_charged_units_total{expert=\"strong\"} 210",
        "l2d_cost_realized 10",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    // No query text: not a word of the question appears.
    for word in question.split_whitespace().filter(|w| w.len() > 5) {
        assert!(!text.contains(word), "{word:?} leaked into /metrics");
    }
}
