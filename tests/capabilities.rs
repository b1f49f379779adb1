//! What experts can take, over real gRPC on loopback: a replay expert announces the questions it
//! holds and is not asked others; a context over an expert's declared limit never reaches it;
//! a refusal from an expert that declares nothing is not charged and not counted as a failure;
//! and the shipped default pool answers a question of your own with its live reader.

mod common;

use common::*;
use l2d::core::capability::Capabilities;
use l2d::core::query::Query;
use l2d::expert::{Backend, BackendAnswer, BackendError, ExpertNode, Registration};
use l2d::pb::{self, expert_client::ExpertClient, pool_client::PoolClient};
use l2d::scheduler::SchedulerConfig;
use l2d::{Ask, RouterClient};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::Code;

/// A backend that counts the queries that reach it, and answers with the context's first word
/// (or, as `refusing`, says it has no answer, as a replay expert without a recording does).
#[derive(Default)]
struct Counting {
    calls: AtomicUsize,
    refusing: bool,
}

impl Backend for Counting {
    fn kind(&self) -> &'static str {
        "counting"
    }

    fn detail(&self) -> String {
        "counts its calls".into()
    }

    fn answer(&self, query: &Query) -> Result<BackendAnswer, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.refusing {
            return Err(BackendError::NoAnswer("nothing recorded".into()));
        }
        let word = query.context().split_whitespace().next().unwrap_or("");
        Ok(BackendAnswer {
            text: word.to_owned(),
            span: l2d::expert::find_span(query.context(), word),
            score: None,
            compute_units: 1.0,
        })
    }
}

async fn serve_counting(node: ExpertNode, registration: Option<Registration>) -> Node {
    spawn_node(move |listener, stopped| {
        l2d::expert::serve(listener, node, registration, async {
            let _ = stopped.await;
        })
    })
    .await
}

async fn list(admin: &mut PoolClient<tonic::transport::Channel>) -> pb::ListPoolResponse {
    admin
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn replica<'a>(pool: &'a pb::ListPoolResponse, expert: &str) -> &'a pb::ReplicaState {
    &pool
        .experts
        .iter()
        .find(|e| e.expert_id == expert)
        .unwrap()
        .replicas[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_pool_answers_a_new_question_with_its_live_reader_and_no_replay_call() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pool = l2d::pool_file::PoolFile::load(&root.join("pools/squad-v1.1.toml")).unwrap();
    // Waiting unpriced: every decision on a dev question is the policy's own (at these
    // microseconds, the price of waiting may tip a near-tie to a probe's answer, a "load"
    // override).
    let config = SchedulerConfig {
        wait_price: 0.0,
        ..SchedulerConfig::default()
    };
    let (node, scheduler, local) =
        spawn_policy_scheduler(config, &pool, &root.join("policies/squad-v1.1-defer.json")).await;
    let mut router = RouterClient::from_channel(node.channel().await);
    let mut admin = PoolClient::new(node.channel().await);

    // A question of your own: no recording holds it.
    let own = router
        .ask(Ask::new(
            "Who won Super Bowl 50?",
            "The Denver Broncos defeated the Carolina Panthers 24–10 to win Super Bowl 50.",
        ))
        .await
        .unwrap();
    assert_eq!(own.expert_id, "typed");
    assert!(!own.text.is_empty());
    assert_eq!(own.cost, 0.5);
    let decision = own.decision.unwrap();
    assert_eq!(
        decision.reason,
        "no policy score; the only eligible expert; excluded: lr, match-lstm, rnet-plus, \
         slqa-plus, bert-large (no recording of this question)"
    );
    // The defer policy's probes hold no recording of it either: listed, never sent.
    assert_eq!(decision.probes.len(), 2, "{:?}", decision.probes);
    assert!(
        decision
            .probes
            .iter()
            .all(|p| p.replica.is_empty() && p.code == "FAILED_PRECONDITION"),
        "{:?}",
        decision.probes
    );
    assert!(decision.fallbacks.is_empty(), "{:?}", decision.fallbacks);
    let excluded: Vec<(&str, &str)> = decision
        .scores
        .iter()
        .filter(|s| !s.eligible)
        .map(|s| (s.expert_id.as_str(), s.excluded_because.as_str()))
        .collect();
    assert_eq!(excluded.len(), 5, "{excluded:?}");
    assert!(
        excluded
            .iter()
            .all(|(_, why)| *why == "no recording of this question")
    );
    let listed = list(&mut admin).await;
    for expert in listed.experts.iter().filter(|e| e.expert_id != "typed") {
        let r = &expert.replicas[0];
        assert_eq!(
            (r.answered_total, r.failed_total, r.refused_total),
            (0, 0, 0),
            "{} was called",
            expert.expert_id
        );
        assert_eq!(
            r.capabilities
                .as_ref()
                .unwrap()
                .holds
                .as_ref()
                .unwrap()
                .count,
            if expert.expert_id == "lr" {
                10_585
            } else {
                10_570
            },
            "{}",
            expert.expert_id
        );
    }

    // A budget below the probes' prices: they cannot take the question, so it does not matter.
    let cheap = router
        .ask(
            Ask::new(
                "Who won Super Bowl 50?",
                "The Denver Broncos defeated the Carolina Panthers 24–10 to win Super Bowl 50.",
            )
            .budget(1.0),
        )
        .await
        .unwrap();
    assert_eq!((cheap.expert_id.as_str(), cheap.cost), ("typed", 0.5));

    // A dev question is still the recordings' to answer, by id or by its text (white space
    // aside); the live reader, which the policy does not score, ranks last.
    let dataset = l2d::squad::Dataset::load(&root.join("data/squad-v1.1/dev.json")).unwrap();
    let (_, paragraph, question) = dataset
        .questions()
        .find(|(_, _, q)| q.id == "56be4db0acb8001400a502ec")
        .unwrap();
    for ask in [
        Ask::new(question.question.clone(), paragraph.context.clone()).id(question.id.clone()),
        Ask::new(
            format!("  {}", question.question),
            paragraph.context.replace(' ', "  "),
        ),
    ] {
        let answer = router.ask(ask).await.unwrap();
        assert_ne!(answer.expert_id, "typed");
        let scores = answer.decision.unwrap().scores;
        assert!(scores.iter().all(|s| s.eligible), "{scores:?}");
        assert_eq!(scores.last().unwrap().expert_id, "typed");
    }

    // The metrics tell who answered (four queries) apart from who was called (the probes of
    // the two dev questions, too), and why experts were left out.
    let text = scheduler.publish_metrics();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let experts = [
        "lr",
        "match-lstm",
        "rnet-plus",
        "slqa-plus",
        "bert-large",
        "typed",
    ];
    let total = |family: &str| -> f64 {
        experts
            .iter()
            .map(|e| value(&format!("{family}{{expert=\"{e}\"}}")))
            .sum()
    };
    assert_eq!(total("l2d_served_total"), 4.0);
    assert_eq!(value("l2d_served_total{expert=\"typed\"}"), 2.0);
    assert_eq!(value("l2d_probe_calls_total{expert=\"match-lstm\"}"), 2.0);
    assert_eq!(value("l2d_probe_calls_total{expert=\"rnet-plus\"}"), 2.0);
    assert_eq!(value("l2d_probe_calls_total{expert=\"typed\"}"), 0.0);
    // Answered calls count the four probe answers besides typed's two: more than were served.
    assert!(total("l2d_answers_total") >= 6.0, "{text}");
    for expert in &experts[..5] {
        assert_eq!(
            value(&format!(
                "l2d_exclusions_total{{expert=\"{expert}\",reason=\"no_recording\"}}"
            )),
            2.0
        );
    }
    assert_eq!(
        value("l2d_expert_available_replicas{expert=\"typed\"}"),
        1.0
    );
    // The policy's scores preferred a recorded system for the two questions of our own: an
    // override for capability. The dev questions went where the policy wanted, each either
    // kept from a probe or deferred; the questions no probe answered are neither.
    assert_eq!(
        value("l2d_decision_overrides_total{reason=\"capability\"}"),
        2.0
    );
    let overrides: f64 = text
        .lines()
        .filter(|l| l.starts_with("l2d_decision_overrides_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(overrides, 2.0, "{text}");
    assert_eq!(
        value("l2d_defer_outcomes_total{outcome=\"kept\"}")
            + value("l2d_defer_outcomes_total{outcome=\"deferred\"}"),
        2.0
    );
    let identity = scheduler.policy().identity().clone();
    assert_eq!(
        value(&format!(
            "l2d_policy_info{{policy_id=\"{}\",kind=\"{}\"}}",
            identity.id, identity.kind
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "l2d_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );

    node.stop().await;
    local.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_over_an_experts_declared_limit_never_reaches_it() {
    let short = Arc::new(Counting::default());
    let limits = Capabilities {
        max_context_chars: Some(60),
        languages: vec!["en".into()],
        ..Capabilities::default()
    };
    let worker = serve_counting(
        ExpertNode::new("short", 1.0, short.clone()).with_capabilities(&limits),
        None,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // `short` is the better expert by its prior; `lexical` takes anything.
    let pool = pool_file(
        dir.path(),
        &format!(
            "[[expert]]\nid = \"short\"\nbackend = \"typed\"\naddress = \"{}\"\ncost = 1\n\
             accuracy = 0.9\n\n[[expert]]\nid = \"lexical\"\nbackend = \"lexical\"\ncost = 1\n\
             accuracy = 0.1\n",
            worker.addr
        ),
    );
    let (node, _scheduler, local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;
    let mut router = RouterClient::from_channel(node.channel().await);

    let fits = router
        .ask(Ask::new("Who won?", "Denver won the game in 2016."))
        .await
        .unwrap();
    assert_eq!(fits.expert_id, "short");
    assert_eq!(short.calls.load(Ordering::SeqCst), 1);

    let long_context = "Denver won the game in 2016, at Levi's Stadium, in Santa Clara.";
    let long = router
        .ask(Ask::new("Who won?", long_context))
        .await
        .unwrap();
    assert_eq!(long.expert_id, "lexical");
    let reason = long.decision.unwrap().reason;
    assert!(
        reason.ends_with("excluded: short (context of 63 characters over its limit of 60)"),
        "{reason}"
    );
    let other_language = router
        .ask(Ask::new("Wer gewann?", "Denver gewann.").language("de-CH"))
        .await
        .unwrap();
    assert_eq!(other_language.expert_id, "lexical");
    assert!(
        other_language
            .decision
            .unwrap()
            .reason
            .ends_with("short (the query's language is not among its languages)"),
    );
    let english = router
        .ask(Ask::new("Who won?", "Denver won.").language("en-GB"))
        .await
        .unwrap();
    assert_eq!(english.expert_id, "short");
    assert_eq!(short.calls.load(Ordering::SeqCst), 2);
    let bad = router
        .ask(Ask::new("Who won?", "Denver won.").language(" "))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // The worker holds its own door: sent directly, the long context is refused unread.
    let mut direct = ExpertClient::new(worker.channel().await);
    let refused = direct
        .answer(answer_request("Who won?", long_context, None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange);
    assert_eq!(
        refused.message(),
        "context of 63 characters over its limit of 60"
    );
    assert_eq!(short.calls.load(Ordering::SeqCst), 2);

    node.stop().await;
    local.shutdown().await.unwrap();
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_from_an_expert_that_declares_nothing_is_not_charged_nor_a_failure() {
    let refusing = Arc::new(Counting {
        refusing: true,
        ..Counting::default()
    });
    let worker = serve_counting(ExpertNode::new("blind", 1.0, refusing.clone()), None).await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(
        dir.path(),
        &format!(
            "[[expert]]\nid = \"blind\"\nbackend = \"typed\"\naddress = \"{}\"\ncost = 3\n\
             accuracy = 0.9\n\n[[expert]]\nid = \"lexical\"\n\
             backend = \"lexical\"\ncost = 1\naccuracy = 0.1\n",
            worker.addr
        ),
    );
    let (node, _scheduler, local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;
    let mut router = RouterClient::from_channel(node.channel().await);
    let mut admin = PoolClient::new(node.channel().await);

    // It declares nothing, so it is asked as before; its NOT_FOUND moves the query on.
    for _ in 0..8 {
        let answer = router
            .ask(Ask::new("Who won?", "Denver won."))
            .await
            .unwrap();
        assert_eq!(answer.expert_id, "lexical");
        assert_eq!(answer.cost, 1.0, "the refusal is not charged");
        let fallbacks = answer.decision.unwrap().fallbacks;
        assert_eq!(fallbacks.len(), 1);
        assert_eq!(fallbacks[0].code, "NOT_FOUND");
        assert!(fallbacks[0].refused);
    }
    assert_eq!(refusing.calls.load(Ordering::SeqCst), 8);
    let listed = list(&mut admin).await;
    let blind = replica(&listed, "blind");
    assert_eq!(
        (
            blind.answered_total,
            blind.failed_total,
            blind.refused_total
        ),
        (0, 0, 8)
    );
    assert_eq!(blind.ejected_ms, 0, "refusals never eject");
    let expert = listed
        .experts
        .iter()
        .find(|e| e.expert_id == "blind")
        .unwrap();
    assert_eq!(expert.cost_charged_total, 0.0);

    node.stop().await;
    local.shutdown().await.unwrap();
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_replay_expert_is_read_for_what_it_holds_and_not_asked_the_rest() {
    let (node, _scheduler, _local) = spawn_scheduler(SchedulerConfig::default(), None, 0.1).await;
    let registration = Registration {
        scheduler: node.addr.to_string(),
        advertise: String::new(),
        lease_ttl: None,
        tls: None,
        token: None,
    };
    // The advertised address must be the worker's own: bind first, then tell it.
    let expert = spawn_node(move |listener, stopped| {
        let registration = Registration {
            advertise: listener.local_addr().unwrap().to_string(),
            ..registration
        };
        let backend = l2d::expert::replay::ReplayBackend::load(
            &fixture("cheap-predictions.json"),
            Some(mini_squad()),
            1.0,
        )
        .unwrap();
        let node = ExpertNode::new("cheap", 1.0, Arc::new(backend));
        l2d::expert::serve(listener, node, Some(registration), async {
            let _ = stopped.await;
        })
    })
    .await;
    let mut admin = PoolClient::new(node.channel().await);
    eventually(Duration::from_secs(10), "the replica's holdings", || {
        let mut admin = admin.clone();
        async move {
            let listed = list(&mut admin).await;
            listed.experts.iter().any(|e| {
                e.replicas.iter().any(|r| {
                    r.capabilities
                        .as_ref()
                        .and_then(|c| c.holds.as_ref())
                        .is_some_and(|h| h.count > 0)
                })
            })
        }
    })
    .await;
    let mut router = RouterClient::from_channel(node.channel().await);
    let held = router
        .ask(Ask::new(SB_AFC, SB_CONTEXT).id("sb-afc"))
        .await
        .unwrap();
    assert_eq!(held.expert_id, "cheap");
    let unknown = router
        .ask(Ask::new(SB_AFC, SB_CONTEXT).id("no-such-id"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        unknown.message(),
        "no expert can take this query: cheap (no recording of this question)"
    );
    let listed = list(&mut admin).await;
    let r = replica(&listed, "cheap");
    assert_eq!(
        (r.answered_total, r.failed_total, r.refused_total),
        (1, 0, 0)
    );
    node.stop().await;
    expert.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_announced_at_registration_stand_for_an_expert_without_describe() {
    let (expert, seen) = spawn_recording_expert().await;
    let (node, _scheduler, _local) = spawn_scheduler(SchedulerConfig::default(), None, 0.1).await;
    let mut admin = PoolClient::new(node.channel().await);
    admin
        .register(pb::RegisterRequest {
            expert_id: "recording".into(),
            address: expert.addr.to_string(),
            cost: 1.0,
            backend: "adapter".into(),
            version: "test".into(),
            lease_ttl_ms: 60_000,
            max_in_flight: 0,
            capabilities: Some(pb::Capabilities {
                max_context_chars: Some(20),
                ..pb::Capabilities::default()
            }),
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the scheduler's Describe call",
        || {
            let seen = seen.clone();
            async move { seen.describes.load(Ordering::SeqCst) > 0 }
        },
    )
    .await;
    let mut router = RouterClient::from_channel(node.channel().await);
    let short = router
        .ask(Ask::new("Who won?", "Denver won."))
        .await
        .unwrap();
    assert_eq!(short.expert_id, "recording");
    let long = router
        .ask(Ask::new("Who won?", "Denver won the game in 2016."))
        .await
        .unwrap_err();
    assert_eq!(long.code(), Code::FailedPrecondition);
    assert_eq!(
        long.message(),
        "no expert can take this query: recording (context of 28 characters over its limit of 20)"
    );
    assert_eq!(seen.ids.lock().unwrap().len(), 1);
    node.stop().await;
    expert.stop().await;
}
