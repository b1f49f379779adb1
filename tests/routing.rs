//! The scheduler's routing over real gRPC on loopback: an ask forwarded and its decision
//! explained, budgets, bad asks, fallbacks to another replica, deadlines, and the shipped default
//! pool on SQuAD dev.

mod common;

use common::*;
use l2d::pb::{self, pool_client::PoolClient};
use l2d::scheduler::SchedulerConfig;
use l2d::{Ask, RouterClient};
use std::time::Duration;
use tonic::Code;

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
            .starts_with("best policy score plus waiting (0.1500 + 0."),
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
    // The replay experts announced what they hold: neither is asked.
    assert_eq!(
        unknown.message(),
        "no expert can take this query: cheap, strong (no recording of this question)"
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
async fn the_shipped_default_pool_serves_squad_dev_with_the_prior_policy() {
    let pool = l2d::pool_file::PoolFile::load(&l2d::defaults::default_pool_path()).unwrap();
    // Five recorded systems and the live reader for questions none of them holds.
    assert_eq!(pool.experts.len(), 6);
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
            l2d::scheduler::registry::Origin::Static,
            None,
        )
        .unwrap();
    let mut router = RouterClient::from_channel(node.channel().await);
    let err = router
        .ask(Ask::new(SB_AFC, SB_CONTEXT).timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    // Not the expert's answer (it comes after 2 s), nor tonic's CANCELLED: the scheduler's own
    // DEADLINE_EXCEEDED, sent before the caller's deadline (the client's own timer would give
    // "deadline passed before the answer arrived", without the request id).
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.metadata().get("x-request-id").is_some(), "{err:?}");
    assert!(
        err.message().starts_with("deadline passed after"),
        "{err:?}"
    );
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
