//! End-to-end behaviour over real gRPC on loopback: experts, the scheduler's routing and
//! decision record, registration and leases, health and reflection, and bad input.

mod common;

use common::*;
use l2d::expert::Registration;
use l2d::pb::{self, expert_client::ExpertClient, pool_client::PoolClient};
use l2d::scheduler::SchedulerConfig;
use l2d::{Ask, RouterClient};
use std::time::Duration;
use tonic::Code;

const SB_CONTEXT: &str = "Super Bowl 50 was an American football game. The American Football Conference (AFC) champion Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers 24-10 to earn their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.";
const SB_AFC: &str = "Which NFL team represented the AFC at Super Bowl 50?";

fn answer_request(question: &str, context: &str, id: Option<&str>) -> pb::AnswerRequest {
    pb::AnswerRequest {
        question: question.into(),
        context: context.into(),
        id: id.map(Into::into),
    }
}

/// Two in-process replay experts: `cheap` (cost 1, prior 0.6) and `strong` (cost 10, prior 0.95).
fn two_experts() -> String {
    replay_pair(Some(0.6), Some(0.95))
}

#[tokio::test]
async fn an_expert_answers_from_its_recordings_by_id_and_by_text() {
    let expert = spawn_replay_expert("strong", 10.0, "strong-predictions.json", None).await;
    let mut client = ExpertClient::new(expert.channel().await);

    let by_id = client
        .answer(answer_request("anything", SB_CONTEXT, Some("sb-afc")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.text, "Denver Broncos");
    assert_eq!(by_id.expert_id, "strong");
    let span = by_id.span.unwrap();
    let chars: Vec<char> = SB_CONTEXT.chars().collect();
    let spanned: String = chars[span.start as usize..span.end as usize]
        .iter()
        .collect();
    assert_eq!(spanned, "Denver Broncos");
    assert_eq!(by_id.compute.unwrap().units, 10.0);

    let by_text = client
        .answer(answer_request(SB_AFC, SB_CONTEXT, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_text.text, "Denver Broncos");

    let described = client
        .describe(pb::DescribeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.expert_id, "strong");
    assert_eq!(described.backend, "replay");
    assert_eq!(described.cost, 10.0);
    assert!(
        described.detail.starts_with("5 recorded answers from"),
        "{}",
        described.detail
    );
    expert.stop().await;
}

#[tokio::test]
async fn an_expert_refuses_bad_or_unknown_queries_with_clear_statuses() {
    let expert = spawn_replay_expert("cheap", 1.0, "cheap-predictions.json", None).await;
    let mut client = ExpertClient::new(expert.channel().await);

    let empty = client
        .answer(answer_request("  ", SB_CONTEXT, None))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(empty.message(), "question is empty");

    let unknown = client
        .answer(answer_request(SB_AFC, SB_CONTEXT, Some("no-such-id")))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        unknown.message(),
        "no recorded answer for query id \"no-such-id\""
    );

    // In the data set, but the recordings have no answer for it: still NOT_FOUND, no made-up answer.
    let missing = client
        .answer(answer_request(
            "How far is Warsaw from the Baltic Sea?",
            "ctx",
            Some("wa-sea"),
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    expert.stop().await;
}

#[tokio::test]
async fn the_scheduler_forwards_an_ask_and_explains_its_decision() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &two_experts());
    // lambda 0.1: cheap scores 0.4 + 0.01, strong 0.05 + 0.1 -> strong.
    let (node, _scheduler, local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;
    let mut router = RouterClient::from_channel(node.channel().await);

    let answer = router
        .ask(Ask::new(SB_AFC, SB_CONTEXT).id("sb-afc"))
        .await
        .unwrap();
    assert_eq!(answer.text, "Denver Broncos");
    assert_eq!(answer.expert_id, "strong");
    assert_eq!(answer.cost, 10.0);
    assert!(!answer.request_id.is_empty());
    let decision = answer.decision.unwrap();
    assert_eq!(decision.policy_id, "prior:lambda=0.1");
    assert_eq!(decision.chosen_expert, "strong");
    assert!(
        decision
            .reason
            .starts_with("best policy score (0.1500) among 2 eligible experts"),
        "{}",
        decision.reason
    );
    let ranked: Vec<&str> = decision
        .scores
        .iter()
        .map(|s| s.expert_id.as_str())
        .collect();
    assert_eq!(ranked, ["strong", "cheap"]);
    let strong = decision.scores[0].expected_cost.unwrap();
    assert!((strong - 0.15).abs() < 1e-9, "{strong}");
    assert!(decision.fallbacks.is_empty());

    // A price of compute ten times higher moves the same query to the cheap expert, whose
    // recorded answer is wrong: the scheduler returns what the expert said.
    let (node2, _s2, local2) = spawn_scheduler(SchedulerConfig::default(), Some(&pool), 1.0).await;
    let mut router2 = RouterClient::from_channel(node2.channel().await);
    let cheap = router2.ask(Ask::new(SB_AFC, SB_CONTEXT)).await.unwrap();
    assert_eq!(cheap.expert_id, "cheap");
    assert_eq!(cheap.text, "Carolina Panthers");

    node.stop().await;
    node2.stop().await;
    local.shutdown().await.unwrap();
    local2.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_budget_excludes_expensive_experts_or_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &two_experts());
    let (node, _scheduler, local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;
    let mut router = RouterClient::from_channel(node.channel().await);

    let answer = router
        .ask(Ask::new(SB_AFC, SB_CONTEXT).id("sb-date").budget(5.0))
        .await
        .unwrap();
    assert_eq!(answer.expert_id, "cheap");
    let decision = answer.decision.unwrap();
    let strong = decision
        .scores
        .iter()
        .find(|s| s.expert_id == "strong")
        .unwrap();
    assert!(!strong.eligible);
    assert_eq!(strong.excluded_because, "over budget");

    let err = router
        .ask(Ask::new(SB_AFC, SB_CONTEXT).budget(0.5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "no expert fits the budget of 0.5: the cheapest costs 1"
    );
    node.stop().await;
    local.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_asks_get_invalid_argument_and_unknown_ids_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &two_experts());
    let (node, _scheduler, local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;
    let mut router = RouterClient::from_channel(node.channel().await);

    let empty = router.ask(Ask::new("", SB_CONTEXT)).await.unwrap_err();
    assert_eq!(
        (empty.code(), empty.message()),
        (Code::InvalidArgument, "question is empty")
    );

    let no_context = router.ask(Ask::new(SB_AFC, "")).await.unwrap_err();
    assert_eq!(no_context.code(), Code::InvalidArgument);
    assert!(
        no_context.message().starts_with("context is empty"),
        "{}",
        no_context.message()
    );

    let nan_budget = router
        .ask(Ask::new(SB_AFC, SB_CONTEXT).budget(f64::NAN))
        .await
        .unwrap_err();
    assert_eq!(nan_budget.code(), Code::InvalidArgument);
    assert_eq!(
        nan_budget.message(),
        "budget must be a positive finite number, got NaN"
    );

    let unknown = router
        .ask(Ask::new(SB_AFC, SB_CONTEXT).id("no-such-id"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    // Each expert's refusal, in the scheduler's words: what the replica said stays in the log.
    assert!(
        unknown
            .message()
            .contains("NOT_FOUND from strong, cheap: the expert has no answer to this query"),
        "{}",
        unknown.message()
    );
    assert!(
        !unknown.message().contains("recorded"),
        "{}",
        unknown.message()
    );
    node.stop().await;
    local.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_expert_is_retried_elsewhere_and_the_fallback_recorded() {
    // A static address where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(
        dir.path(),
        &format!(
            "{}\n[[expert]]\nid = \"best\"\nbackend = \"replay\"\npredictions = \"FIXTURES/strong-predictions.json\"\ncost = 2\naccuracy = 0.99\naddress = \"{dead}\"\n",
            two_experts()
        ),
    );
    let (node, _scheduler, local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;
    let mut router = RouterClient::from_channel(node.channel().await);

    let answer = router
        .ask(Ask::new(SB_AFC, SB_CONTEXT).id("sb-afc"))
        .await
        .unwrap();
    let decision = answer.decision.unwrap();
    assert_eq!(decision.chosen_expert, "best");
    assert_eq!(answer.expert_id, "strong");
    assert_eq!(answer.text, "Denver Broncos");
    assert_eq!(decision.fallbacks.len(), 1);
    assert_eq!(decision.fallbacks[0].expert_id, "best");
    assert_eq!(decision.fallbacks[0].code, "UNAVAILABLE");
    // The unreachable call is not charged; the answer is.
    assert_eq!(answer.cost, 10.0);
    node.stop().await;
    local.shutdown().await.unwrap();
}

#[tokio::test]
async fn registered_experts_serve_until_their_lease_lapses() {
    let config = SchedulerConfig {
        reap_interval: Duration::from_millis(20),
        ..SchedulerConfig::default()
    };
    let (node, _scheduler, _local) = spawn_scheduler(config, None, 0.1).await;
    let mut pool = PoolClient::new(node.channel().await);

    // A silent worker: registers with a short lease and never beats.
    let silent = spawn_replay_expert("strong", 10.0, "strong-predictions.json", None).await;
    let granted = pool
        .register(pb::RegisterRequest {
            expert_id: "strong".into(),
            address: silent.addr.to_string(),
            cost: 10.0,
            backend: "replay".into(),
            version: "test".into(),
            lease_ttl_ms: 200,
            max_in_flight: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(granted.lease_ttl_ms, 200);
    assert!(granted.heartbeat_interval_ms > 0 && granted.heartbeat_interval_ms < 200);

    let listed = pool
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.experts.len(), 1);
    let replica = &listed.experts[0].replicas[0];
    assert_eq!(replica.address, silent.addr.to_string());
    assert_eq!(replica.origin, pb::replica_state::Origin::Registered as i32);
    // The lease id is its holder's handle: never listed.
    assert_eq!(replica.lease_id, "");
    assert!(replica.lease_remaining_ms > 0);

    let mut router = RouterClient::from_channel(node.channel().await);
    let answer = router
        .ask(Ask::new(SB_AFC, SB_CONTEXT).id("sb-afc"))
        .await
        .unwrap();
    assert_eq!(answer.expert_id, "strong");

    // No heartbeat: the lease lapses and the expert leaves the pool.
    eventually(
        Duration::from_secs(10),
        "the silent expert to expire",
        || {
            let mut pool = pool.clone();
            async move {
                let listed = pool
                    .list_pool(pb::ListPoolRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                listed.experts.is_empty()
            }
        },
    )
    .await;
    let late = pool
        .heartbeat(pb::HeartbeatRequest {
            lease_id: granted.lease_id.clone(),
            load: None,
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::NotFound);
    let err = router.ask(Ask::new(SB_AFC, SB_CONTEXT)).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unavailable, "the pool has no experts")
    );
    silent.stop().await;
    node.stop().await;
}

#[tokio::test]
async fn a_worker_keeps_its_lease_with_heartbeats_and_leaves_on_shutdown() {
    let (node, _scheduler, _local) = spawn_scheduler(SchedulerConfig::default(), None, 0.1).await;
    let registration = Registration {
        scheduler: node.addr.to_string(),
        advertise: String::new(),
        lease_ttl: Some(Duration::from_millis(600)),
        tls: None,
        token: None,
    };
    // The advertised address must be the worker's own: bind first, then tell it.
    let expert = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registration = Registration {
            advertise: addr.to_string(),
            ..registration
        };
        let backend = l2d::expert::replay::ReplayBackend::load(
            &fixture("strong-predictions.json"),
            Some(mini_squad()),
            10.0,
        )
        .unwrap();
        let node = l2d::expert::ExpertNode::new("strong", 10.0, std::sync::Arc::new(backend));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(l2d::expert::serve(
            listener,
            node,
            Some(registration),
            async {
                let _ = stopped.await;
            },
        ));
        (stop, task)
    };
    let mut pool = PoolClient::new(node.channel().await);
    let replicas = |pool: &PoolClient<_>| {
        let mut pool = pool.clone();
        async move {
            let listed = pool
                .list_pool(pb::ListPoolRequest {})
                .await
                .unwrap()
                .into_inner();
            listed
                .experts
                .iter()
                .map(|e| e.replicas.len())
                .sum::<usize>()
        }
    };
    eventually(Duration::from_secs(10), "the worker to register", || {
        let count = replicas(&pool);
        async move { count.await == 1 }
    })
    .await;
    // Several TTLs later the heartbeats still hold the lease, and the worker's load reports arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listed = pool
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.experts.len(), 1, "lease lost despite heartbeats");
    assert!(listed.experts[0].replicas[0].reported.is_some());

    let mut router = RouterClient::from_channel(node.channel().await);
    assert_eq!(
        router.ask(Ask::new(SB_AFC, SB_CONTEXT)).await.unwrap().text,
        "Denver Broncos"
    );

    // Graceful shutdown deregisters at once, without waiting for the lease to lapse.
    let (stop, task) = expert;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let listed = pool
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.experts.is_empty(), "{listed:?}");
    node.stop().await;
}

#[tokio::test]
async fn registration_input_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let pool_spec = pool_file(dir.path(), &two_experts());
    let (node, _scheduler, local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool_spec), 0.1).await;
    let mut pool = PoolClient::new(node.channel().await);
    let request = |id: &str, address: &str, cost: f64| pb::RegisterRequest {
        expert_id: id.into(),
        address: address.into(),
        cost,
        backend: "replay".into(),
        version: "test".into(),
        lease_ttl_ms: 0,
        max_in_flight: 0,
    };
    let cases = [
        (
            request("", "127.0.0.1:1", 1.0),
            Code::InvalidArgument,
            "expert_id: must not be empty",
        ),
        (
            request("x", "nowhere", 1.0),
            Code::InvalidArgument,
            "address: \"nowhere\" has no port; expected host:port",
        ),
        (
            request("x", "127.0.0.1:1", -3.0),
            Code::InvalidArgument,
            "cost: must be a positive finite number, got -3",
        ),
        (
            request("x", "127.0.0.1:1", f64::NAN),
            Code::InvalidArgument,
            "cost: must be a positive finite number, got NaN",
        ),
        (
            request("strong", "127.0.0.1:1", 3.0),
            Code::FailedPrecondition,
            "expert \"strong\" is known with cost 10; a replica declaring cost 3 cannot join it",
        ),
    ];
    for (req, code, message) in cases {
        let err = pool.register(req).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (code, message));
    }
    let unknown = pool
        .heartbeat(pb::HeartbeatRequest {
            lease_id: "lease-nope".into(),
            load: None,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let unknown = pool
        .deregister(pb::DeregisterRequest {
            lease_id: "lease-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let policy = pool
        .get_policy(pb::GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (policy.id.as_str(), policy.kind.as_str()),
        ("prior:lambda=0.1", "prior")
    );
    node.stop().await;
    local.shutdown().await.unwrap();
}

#[tokio::test]
async fn nodes_serve_health_and_reflection() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let (node, _scheduler, _local) = spawn_scheduler(SchedulerConfig::default(), None, 0.1).await;
    let expert = spawn_replay_expert("cheap", 1.0, "cheap-predictions.json", None).await;
    for (node, service) in [
        (&node, "l2d.v1.Router"),
        (&node, "l2d.v1.Pool"),
        (&expert, "l2d.v1.Expert"),
        (&expert, ""),
    ] {
        let mut health = HealthClient::new(node.channel().await);
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    let mut health = HealthClient::new(node.channel().await);
    let unknown = health
        .check(HealthCheckRequest {
            service: "l2d.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(node.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "l2d.v1.Router",
        "l2d.v1.Pool",
        "l2d.v1.Expert",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    expert.stop().await;
    node.stop().await;
}

#[tokio::test]
async fn the_shipped_default_pool_serves_squad_dev_with_the_prior_policy() {
    let pool = l2d::pool_file::PoolFile::load(&l2d::defaults::default_pool_path()).unwrap();
    assert_eq!(pool.experts.len(), 5);
    let (node, _scheduler, local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;
    let mut router = RouterClient::from_channel(node.channel().await);
    let dataset = l2d::squad::Dataset::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/squad-v1.1/dev.json"
    )))
    .unwrap();
    assert_eq!(dataset.len(), 10_570);
    let recorded: std::collections::HashMap<String, String> = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/squad-v1.1/predictions/rnet-plus-ensemble.json"
        ))
        .unwrap(),
    )
    .unwrap();
    // Every 500th question, sent without its id: resolved by text, answered by r-net+ (the
    // prior's choice at lambda 0.1) with exactly its recorded answer.
    for (_, paragraph, question) in dataset.questions().step_by(500) {
        let answer = router
            .ask(Ask::new(
                question.question.clone(),
                paragraph.context.clone(),
            ))
            .await
            .unwrap();
        assert_eq!(answer.expert_id, "rnet-plus");
        assert_eq!(answer.text, recorded[&question.id], "{}", question.id);
    }
    node.stop().await;
    local.shutdown().await.unwrap();
}

/// A backend that takes its time: for deadline tests.
struct SlowBackend(std::time::Duration);

impl l2d::expert::Backend for SlowBackend {
    fn kind(&self) -> &'static str {
        "slow"
    }

    fn detail(&self) -> String {
        format!("answers after {:?}", self.0)
    }

    fn answer(
        &self,
        _query: &l2d::core::query::Query,
    ) -> Result<l2d::expert::BackendAnswer, l2d::expert::BackendError> {
        std::thread::sleep(self.0);
        Ok(l2d::expert::BackendAnswer {
            text: "late".into(),
            span: None,
            score: None,
            compute_units: 1.0,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_shorter_than_the_expert_ends_with_deadline_exceeded() {
    // The slow expert runs on its own runtime, as it would in its own process: its blocking
    // backend must not stall the scheduler's timers.
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let expert_addr = std_listener.local_addr().unwrap();
    let (stop_expert, stopped) = tokio::sync::oneshot::channel::<()>();
    let expert = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            std_listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let node = l2d::expert::ExpertNode::new(
                "slow",
                1.0,
                std::sync::Arc::new(SlowBackend(Duration::from_secs(2))),
            );
            l2d::expert::serve(listener, node, None, async {
                let _ = stopped.await;
            })
            .await
        })
    });
    let (node, scheduler, _local) = spawn_scheduler(SchedulerConfig::default(), None, 0.1).await;
    scheduler.registry.declare_expert("slow", 1.0, "slow");
    scheduler
        .registry
        .add_fixed_replica(
            "slow",
            &expert_addr.to_string(),
            pb::replica_state::Origin::Static,
            None,
        )
        .unwrap();
    let mut router = RouterClient::from_channel(node.channel().await);
    let err = router
        .ask(Ask::new(SB_AFC, SB_CONTEXT).timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    // Not the expert's answer (it comes after 2 s), nor tonic's CANCELLED: the scheduler's own
    // DEADLINE_EXCEEDED, sent before the caller's deadline.
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // The scheduler's slot for the call is freed with it.
    let mut pool = PoolClient::new(node.channel().await);
    let listed = pool
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.experts[0].replicas[0].in_flight, 0);
    let _ = stop_expert.send(());
    node.stop().await;
    let _ = tokio::task::spawn_blocking(move || expert.join()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_file_changes_apply_while_serving_and_bad_ones_are_refused_whole() {
    let strong = spawn_replay_expert("strong", 10.0, "strong-predictions.json", None).await;
    let cheap = spawn_replay_expert("cheap", 1.0, "cheap-predictions.json", None).await;
    let entry = |id: &str, file: &str, cost: u32, placement: String| {
        format!(
            "[[expert]]\nid = \"{id}\"\nbackend = \"replay\"\npredictions = \"FIXTURES/{file}\"\ncost = {cost}\n{placement}\n"
        )
    };
    let strong_at = |extra: &str| {
        entry(
            "strong",
            "strong-predictions.json",
            10,
            format!("address = \"{}\"\n{extra}", strong.addr),
        )
    };
    let cheap_at = |cost: u32| {
        entry(
            "cheap",
            "cheap-predictions.json",
            cost,
            format!("addresses = [\"{}\"]", cheap.addr),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &strong_at(""));
    let config = SchedulerConfig {
        policy_poll: Duration::from_millis(50),
        ..SchedulerConfig::default()
    };
    let (node, scheduler, _local) = spawn_scheduler(config, Some(&pool), 0.1).await;
    let write = |body: String| {
        let body = body.replace("FIXTURES", fixture("").to_str().unwrap());
        std::fs::write(&pool.path, body).unwrap();
    };
    let experts = || {
        let snapshot = scheduler.registry.snapshot();
        snapshot
            .experts
            .iter()
            .map(|g| {
                let limits: Vec<u32> = g.replicas.iter().map(|r| r.limit()).collect();
                (g.entry.id.clone(), limits)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(experts(), [("strong".to_string(), vec![64])]);

    // Seen by the watcher: a new expert, and a new limit for the old one.
    write(strong_at("max_in_flight = 3") + &cheap_at(1));
    eventually(Duration::from_secs(10), "the pool file reload", || async {
        experts()
            == [
                ("strong".to_string(), vec![3]),
                ("cheap".to_string(), vec![64]),
            ]
    })
    .await;
    let mut router = RouterClient::from_channel(node.channel().await);
    let ask = Ask::new(SB_AFC, SB_CONTEXT).id("sb-afc");
    let answered = router.ask(ask.clone()).await;
    assert!(answered.is_ok(), "{answered:?}");

    // Refused whole: a cost change needs a restart; a file that does not parse.
    write(strong_at("") + &cheap_at(2));
    let err = scheduler.reload_pool().unwrap_err();
    assert!(
        err.contains("expert \"cheap\": cost 1 → 2 needs a restart"),
        "{err}"
    );
    write("[[expert]\n".into());
    let err = scheduler.reload_pool().unwrap_err();
    assert!(err.contains("TOML parse error"), "{err}");
    assert_eq!(experts().len(), 2);
    assert_eq!(experts()[0].1, vec![3]);

    // Removing an expert takes its replicas out; queries still find the other one.
    // (The file watcher, polling every 50 ms, may apply it before this call does: then this
    // call finds the file unchanged.)
    write(strong_at(""));
    if let Some(changes) = scheduler.reload_pool().unwrap() {
        assert_eq!(changes.removed, ["cheap"]);
        assert_eq!(changes.updated, ["strong"]);
    }
    assert_eq!(experts(), [("strong".to_string(), vec![64])]);
    assert_eq!(router.ask(ask).await.unwrap().expert_id, "strong");
    assert!(scheduler.reload_pool().unwrap().is_none(), "unchanged file");
}

/// Raw bytes through gRPC, to send what no generated client can: invalid UTF-8 in a string.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_garbage_at_the_wire_get_a_status_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &replay_pair(Some(0.5), Some(0.9)));
    let (node, _s, _local) = spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;
    let mut grpc = tonic::client::Grpc::new(node.channel().await);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/l2d.v1.Router/Ask");
    // Field 1 (question), length 3, bytes that are not UTF-8; then bytes that are no protobuf.
    for body in [vec![0x0a, 0x03, 0xff, 0xfe, 0xfd], vec![0xff; 64]] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(tonic::Request::new(body), path.clone(), RawCodec)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert!(status.message().contains("decode"), "{status:?}");
    }
    let mut router = RouterClient::from_channel(node.channel().await);
    let ask = Ask::new(SB_AFC, SB_CONTEXT).id("sb-afc");
    assert_eq!(router.ask(ask).await.unwrap().text, "Denver Broncos");
}
