//! Experts joining by registration over real gRPC on loopback: leases kept by heartbeats or
//! left to lapse, leaving on shutdown, and registration input validated.

mod common;

use common::*;
use l2d::expert::Registration;
use l2d::pb::{self, pool_client::PoolClient};
use l2d::scheduler::SchedulerConfig;
use l2d::{Ask, RouterClient};
use std::time::Duration;
use tonic::Code;

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
            capabilities: None,
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
        capabilities: None,
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
        (
            pb::RegisterRequest {
                capabilities: Some(pb::Capabilities {
                    max_context_chars: Some(0),
                    ..pb::Capabilities::default()
                }),
                ..request("x", "127.0.0.1:1", 1.0)
            },
            Code::InvalidArgument,
            "capabilities: max_context_chars must be positive when set",
        ),
        (
            pb::RegisterRequest {
                capabilities: Some(pb::Capabilities {
                    languages: vec!["en".into(), "e n".into()],
                    ..pb::Capabilities::default()
                }),
                ..request("x", "127.0.0.1:1", 1.0)
            },
            Code::InvalidArgument,
            "capabilities: languages: \"e n\" is not a language tag (e.g. \"en\", \"de-CH\")",
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
