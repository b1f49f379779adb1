//! Load- and cost-aware dispatch over real processes: separate `l2d expert` workers and an
//! `l2d scheduler` on loopback. A replica killed under load loses no call, a slow replica loses
//! its share, a saturated expert sheds to the next one (or the scheduler answers
//! RESOURCE_EXHAUSTED with a retry hint), a short deadline ends promptly and frees the expert's
//! slot, DNS names become replicas, and `/metrics` tells what happened without query text.

mod common;

use common::fixture;
use common::process::Proc;
use l2d::grpc::status::retry_after;
use l2d::pb::{self, expert_client::ExpertClient, pool_client::PoolClient};
use l2d::squad::Dataset;
use l2d::{Ask, RouterClient};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;
use tonic::Code;

/// An `l2d expert` replaying the strong (cost 10) or cheap (cost 1) fixture recordings.
fn expert(id: &str, extra: &[&str]) -> (Proc, String) {
    let (predictions, cost) = match id {
        "strong" => ("strong-predictions.json", "10"),
        _ => ("cheap-predictions.json", "1"),
    };
    let predictions = fixture(predictions);
    let data = fixture("mini-squad.json");
    let mut args = vec![
        "expert",
        "--listen",
        "127.0.0.1:0",
        "--id",
        id,
        "--backend",
        "replay",
        "--predictions",
        predictions.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--cost",
        cost,
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&args);
    let address = proc.address_in("expert serving");
    (proc, address)
}

/// Pool-file text placing `id` (replay, prior accuracy) on `placement` lines.
fn pool_entry(id: &str, accuracy: f64, placement: &str) -> String {
    let (predictions, cost) = match id {
        "strong" => ("strong-predictions.json", 10),
        _ => ("cheap-predictions.json", 1),
    };
    format!(
        "[[expert]]\nid = \"{id}\"\nbackend = \"replay\"\npredictions = \"{}\"\ncost = {cost}\naccuracy = {accuracy}\n{placement}\n",
        fixture(predictions).display()
    )
}

fn addresses(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|a| format!("\"{a}\"")).collect();
    format!("addresses = [{}]", quoted.join(", "))
}

/// A scheduler process on the pool `body` (prior policy), with metrics on a free port.
fn scheduler(dir: &Path, body: &str, extra: &[&str]) -> (Proc, String, String) {
    let path = dir.join("pool.toml");
    std::fs::write(&path, body).unwrap();
    let mut args = vec![
        "scheduler",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        path.to_str().unwrap(),
        "--prior",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&args);
    let metrics = proc.address_in("metrics serving");
    let router = proc.address_in("scheduler serving");
    (proc, router, metrics)
}

/// The fixture's questions (the strong recordings answer all of them).
fn questions() -> Vec<(String, String, String)> {
    let data = Dataset::load(&fixture("mini-squad.json")).unwrap();
    data.questions()
        .map(|(_, p, q)| (q.id.clone(), q.question.clone(), p.context.clone()))
        .collect()
}

/// The fixture's questions the cheap recordings answer too.
fn questions_both_answer() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(fixture("cheap-predictions.json")).unwrap();
    let cheap: HashMap<String, String> = serde_json::from_str(&text).unwrap();
    questions()
        .into_iter()
        .filter(|(id, _, _)| cheap.contains_key(id))
        .collect()
}

/// Sends `total` asks from `concurrency` tasks, calling `midway` once after `trigger` answers.
/// Returns every outcome.
async fn load(
    router: &str,
    questions: Vec<(String, String, String)>,
    total: usize,
    concurrency: usize,
    trigger: usize,
    midway: impl FnOnce() + Send + 'static,
) -> Vec<Result<pb::AskResponse, tonic::Status>> {
    let questions = std::sync::Arc::new(questions);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let midway = std::sync::Arc::new(std::sync::Mutex::new(Some(midway)));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (questions, next, done, midway) = (
            questions.clone(),
            next.clone(),
            done.clone(),
            midway.clone(),
        );
        let mut client = RouterClient::connect(router).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return outcomes;
                }
                let (id, question, context) = &questions[i % questions.len()];
                let ask = Ask::new(question.as_str(), context.as_str())
                    .id(id.as_str())
                    .timeout(Duration::from_secs(10));
                outcomes.push(client.ask(ask).await);
                if done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == trigger
                    && let Some(f) = midway.lock().unwrap().take()
                {
                    f();
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn by_replica(outcomes: &[Result<pb::AskResponse, tonic::Status>]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in outcomes.iter().flatten() {
        *counts.entry(r.replica.clone()).or_default() += 1;
    }
    counts
}

fn failures(outcomes: &[Result<pb::AskResponse, tonic::Status>]) -> Vec<String> {
    outcomes
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|s| format!("{:?}: {}", s.code(), s.message()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_no_call() {
    let (a, addr_a) = expert("strong", &[]);
    let (_b, addr_b) = expert("strong", &[]);
    let (_c, addr_c) = expert("cheap", &[]);
    let dir = tempfile::tempdir().unwrap();
    let body = pool_entry("strong", 0.9, &addresses(&[&addr_a, &addr_b]))
        + &pool_entry("cheap", 0.5, &addresses(&[&addr_c]));
    // Health checks slowed down: the killed replica must be found out by the calls themselves.
    let (_s, router, _) = scheduler(dir.path(), &body, &["--health-interval", "60s"]);

    let pid = a.child.id();
    let outcomes = load(&router, questions(), 600, 4, 150, move || {
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    })
    .await;
    assert_eq!(outcomes.len(), 600);
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    let counts = by_replica(&outcomes);
    assert!(counts.get(&addr_a).copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(counts.get(&addr_b).copied().unwrap_or(0) > 0, "{counts:?}");
    // The calls that hit the dead replica were retried elsewhere, and said so.
    let retried: Vec<&pb::AskResponse> = outcomes
        .iter()
        .flatten()
        .filter(|r| {
            r.decision
                .as_ref()
                .is_some_and(|d| d.fallbacks.iter().any(|f| f.replica == addr_a))
        })
        .collect();
    assert!(
        !retried.is_empty(),
        "no call recorded a fallback from the killed replica"
    );
    assert!(retried.iter().all(|r| r.replica != addr_a));
    drop(a);

    // The pool shows the dead replica's failures, and ejected it.
    let mut pool = PoolClient::connect(format!("http://{router}"))
        .await
        .unwrap();
    let listed = pool
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    let dead = listed
        .experts
        .iter()
        .flat_map(|e| &e.replicas)
        .find(|r| r.address == addr_a)
        .unwrap_or_else(|| panic!("{addr_a} not in {listed:?}"));
    assert!(dead.failed_total >= 1, "{dead:?}");
    assert!(dead.error_rate > 0.0, "{dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_gets_a_smaller_share() {
    let (_fast, addr_fast) = expert("strong", &[]);
    let (_slow, addr_slow) = expert("strong", &["--delay", "20ms"]);
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

    // The expert's own slot is freed (the scheduler cancelled the call), and so is the
    // scheduler's.
    let mut direct = ExpertClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    common::eventually(Duration::from_secs(10), "the expert's slot to free", || {
        let mut direct = direct.clone();
        async move {
            let d = direct
                .describe(pb::DescribeRequest {})
                .await
                .unwrap()
                .into_inner();
            d.in_flight == 0 && d.queue_depth == 0 && d.max_concurrency == 1
        }
    })
    .await;
    let _ = &mut direct;
    let mut pool = PoolClient::connect(format!("http://{router}"))
        .await
        .unwrap();
    let listed = pool
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.experts[0].replicas[0].in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_client_call_cancels_the_expert_call() {
    let (_stuck, addr) = expert("strong", &["--delay", "1h", "--max-concurrency", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let body = pool_entry("strong", 0.9, &addresses(&[&addr]));
    let (_s, router, _) = scheduler(dir.path(), &body, &[]);
    let describe = |mut client: ExpertClient<tonic::transport::Channel>| async move {
        client
            .describe(pb::DescribeRequest {})
            .await
            .unwrap()
            .into_inner()
    };
    let direct = ExpertClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    // No deadline anywhere: only the cancellation can end the expert's call.
    let (id, question, context) = questions().remove(0);
    let mut client = RouterClient::connect(&router).await.unwrap();
    let call = tokio::spawn(async move { client.ask(Ask::new(question, context).id(id)).await });
    common::eventually(
        Duration::from_secs(10),
        "the call to reach the expert",
        || {
            let direct = direct.clone();
            async move { describe(direct).await.in_flight == 1 }
        },
    )
    .await;
    call.abort();
    common::eventually(
        Duration::from_secs(10),
        "the expert's call to be cancelled",
        || {
            let direct = direct.clone();
            async move { describe(direct).await.in_flight == 0 }
        },
    )
    .await;
}

/// `GET /metrics` over a plain TCP connection.
fn scrape(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: l2d\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
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
    let mut pool = PoolClient::connect(format!("http://{router}"))
        .await
        .unwrap();
    let listed = pool
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner();
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
        "l2d_cost_charged_units{expert=\"strong\"} 210",
        "l2d_cost_realized 10",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    // No query text: not a word of the question appears.
    for word in question.split_whitespace().filter(|w| w.len() > 5) {
        assert!(!text.contains(word), "{word:?} leaked into /metrics");
    }
}
