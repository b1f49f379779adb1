//! TLS, mutual TLS and who may change the pool, over real gRPC on loopback with certificates
//! made in the test (rcgen): a client → scheduler → expert round trip with mutual TLS on both
//! hops, plain and certificate-less clients refused, Pool mutations refused without a token or
//! an allowed certificate (UNAUTHENTICATED / PERMISSION_DENIED), Ask protected separately;
//! credentials bound to the experts they may serve and leases to their holder, registration
//! off, the address allow-list, the registration rate, and token and certificate files re-read
//! while serving. (Resource exhaustion: tests/exhaustion.rs.)

mod common;

use common::*;
use l2d::core::policy::PriorPolicy;
use l2d::expert::ExpertNode;
use l2d::expert::replay::ReplayBackend;
use l2d::grpc::tls::{ServerTls, client_config, endpoint};
use l2d::pb::{self, pool_client::PoolClient};
use l2d::scheduler::access::{Access, Credential, Gate};
use l2d::scheduler::{Scheduler, SchedulerConfig};
use l2d::{Ask, RouterClient};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig};

/// A CA and certificates it signed, as PEM files in a temporary folder.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "l2d test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        // A CA nobody trusts, for a forged client.
        let rogue_key = KeyPair::generate().unwrap();
        let mut rogue = CertificateParams::new(Vec::<String>::new()).unwrap();
        rogue.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let rogue_issuer = Issuer::new(rogue, rogue_key);
        let issue = |name: &str, sans: &[&str], issuer: &Issuer<'_, KeyPair>| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, issuer).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.der")), cert.der()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        };
        issue("server", &["localhost", "127.0.0.1"], &issuer);
        issue("scheduler", &["l2d-scheduler"], &issuer);
        issue("expert-bert", &["expert-bert"], &issuer);
        issue("intruder", &["intruder"], &issuer);
        issue("forged", &["expert-bert"], &rogue_issuer);
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A server's TLS with the server certificate, demanding client certificates.
    fn server(&self) -> Arc<ServerTls> {
        ServerTls::load(
            &self.path("server.pem"),
            &self.path("server.key"),
            Some(&self.path("ca.pem")),
        )
        .unwrap()
    }

    /// A client's TLS trusting the CA, presenting `who`'s certificate (if any).
    fn client(&self, who: Option<&str>) -> ClientTlsConfig {
        let (cert, key) = match who {
            Some(w) => (
                self.path(&format!("{w}.pem")),
                self.path(&format!("{w}.key")),
            ),
            None => (PathBuf::new(), PathBuf::new()),
        };
        let identity = who.map(|_| (cert.as_path(), key.as_path()));
        client_config(&self.path("ca.pem"), identity, None).unwrap()
    }
}

async fn pool_client(address: &str, tls: Option<&ClientTlsConfig>) -> PoolClient<Channel> {
    PoolClient::new(endpoint(address, tls).unwrap().connect().await.unwrap())
}

fn register_request(token: Option<&str>) -> tonic::Request<pb::RegisterRequest> {
    register_at("127.0.0.1:9", token)
}

fn register_at(address: &str, token: Option<&str>) -> tonic::Request<pb::RegisterRequest> {
    let mut request = tonic::Request::new(pb::RegisterRequest {
        expert_id: "late".into(),
        address: address.into(),
        cost: 3.0,
        backend: "replay".into(),
        version: "test".into(),
        lease_ttl_ms: 0,
        max_in_flight: 0,
        capabilities: None,
    });
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    request
}

/// A scheduler over one TLS replay expert ("strong"), both demanding client certificates.
async fn tls_cluster(pki: &Pki, config: SchedulerConfig) -> (Node, Node, Arc<Scheduler>) {
    let backend = ReplayBackend::load(
        &fixture("strong-predictions.json"),
        Some(mini_squad()),
        10.0,
    )
    .unwrap();
    let node = ExpertNode::new("strong", 10.0, Arc::new(backend)).with_tls(Some(pki.server()));
    let expert = spawn_node(move |listener, stopped| {
        l2d::expert::serve(listener, node, None, async {
            let _ = stopped.await;
        })
    })
    .await;
    let scheduler = Arc::new(Scheduler::new(
        config,
        Box::new(PriorPolicy::new(0.1, [("strong".to_string(), 0.9)]).unwrap()),
    ));
    scheduler.registry.declare_expert("strong", 10.0, "replay");
    scheduler
        .registry
        .add_fixed_replica(
            "strong",
            &expert.addr.to_string(),
            l2d::scheduler::registry::Origin::Static,
            None,
        )
        .unwrap();
    let s = scheduler.clone();
    let node = spawn_node(move |listener, stopped| {
        l2d::scheduler::serve(listener, s, async {
            let _ = stopped.await;
        })
    })
    .await;
    (node, expert, scheduler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_end_to_end_and_pool_mutations_need_an_allowed_identity_or_the_token() {
    let pki = Pki::new();
    let config = SchedulerConfig {
        tls: Some(pki.server()),
        expert_tls: Some(pki.client(Some("scheduler"))),
        gate: Arc::new(Gate {
            pool: Access::new(vec![
                Credential::token("pool-token", "s3cret"),
                Credential::certificate("expert-bert"),
            ]),
            registration: true,
            ..Gate::default()
        }),
        ..SchedulerConfig::default()
    };
    let (scheduler, expert, _) = tls_cluster(&pki, config).await;
    let address = scheduler.addr.to_string();

    // Client → scheduler → expert, mutual TLS on both hops.
    let mut router = RouterClient::connect_with(&address, Some(pki.client(Some("intruder"))), None)
        .await
        .unwrap();
    let answer = router
        .ask(
            Ask::new(
                "Which NFL team represented the AFC at Super Bowl 50?",
                "ctx",
            )
            .id("sb-afc"),
        )
        .await
        .unwrap();
    assert_eq!(answer.expert_id, "strong");
    assert_eq!(answer.text, "Denver Broncos");

    // Refused before any call: plain HTTP/2, TLS without a client certificate, a certificate
    // from another CA; and the expert refuses a client without the scheduler's certificate.
    assert!(
        RouterClient::connect(&address).await.is_err() || {
            let mut plain = RouterClient::connect(&address).await.unwrap();
            plain.ask(Ask::new("q", "c")).await.is_err()
        }
    );
    for tls in [pki.client(None), pki.client(Some("forged"))] {
        let refused = match RouterClient::connect_with(&address, Some(tls), None).await {
            Err(_) => true,
            Ok(mut c) => c.ask(Ask::new("q", "c").id("sb-afc")).await.is_err(),
        };
        assert!(refused);
    }
    let direct = endpoint(&expert.addr.to_string(), Some(&pki.client(None)))
        .unwrap()
        .connect()
        .await;
    let refused = match direct {
        Err(_) => true,
        Ok(channel) => l2d::pb::expert_client::ExpertClient::new(channel)
            .describe(pb::DescribeRequest {})
            .await
            .is_err(),
    };
    assert!(
        refused,
        "the expert answered a client without a certificate"
    );

    // Pool mutations: an allowed certificate, or the token; reading stays open.
    let intruder_tls = pki.client(Some("intruder"));
    let mut intruder = pool_client(&address, Some(&intruder_tls)).await;
    let denied = intruder.register(register_request(None)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("intruder"), "{denied:?}");
    let wrong = intruder
        .register(register_request(Some("guess")))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    let reload = intruder
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .unwrap_err();
    assert_eq!(reload.code(), Code::PermissionDenied);
    intruder
        .register(register_request(Some("s3cret")))
        .await
        .unwrap();
    intruder.list_pool(pb::ListPoolRequest {}).await.unwrap();
    let bert_tls = pki.client(Some("expert-bert"));
    let mut bert = pool_client(&address, Some(&bert_tls)).await;
    let granted = bert
        .register(register_at("127.0.0.1:10", None))
        .await
        .unwrap()
        .into_inner();
    bert.deregister(pb::DeregisterRequest {
        lease_id: granted.lease_id,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_pool_and_ask_separately_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &replay_pair(Some(0.5), Some(0.9)));
    let config = SchedulerConfig {
        gate: Arc::new(Gate {
            pool: Access::new(vec![Credential::token("pool", "pool-token")]),
            router: Access::new(vec![Credential::token("client", "ask-token")]),
            registration: true,
        }),
        ..SchedulerConfig::default()
    };
    let (node, _, _local) = spawn_scheduler(config, Some(&pool), 0.1).await;
    let address = node.addr.to_string();
    let mut pools = pool_client(&address, None).await;
    let missing = pools.register(register_request(None)).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().contains("needs credentials"),
        "{missing:?}"
    );
    // The Ask token does not open the Pool.
    let other = pools
        .register(register_request(Some("ask-token")))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::Unauthenticated);
    for (beat, code) in [
        (None, Code::Unauthenticated),
        (Some("pool-token"), Code::NotFound),
    ] {
        let mut request = tonic::Request::new(pb::HeartbeatRequest {
            lease_id: "lease-unknown".into(),
            load: None,
        });
        if let Some(t) = beat {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        assert_eq!(pools.heartbeat(request).await.unwrap_err().code(), code);
    }
    pools
        .register(register_request(Some("pool-token")))
        .await
        .unwrap();

    let ask = Ask::new(
        "Which NFL team represented the AFC at Super Bowl 50?",
        "ctx",
    )
    .id("sb-afc");
    let mut open = RouterClient::connect(&address).await.unwrap();
    assert_eq!(
        open.ask(ask.clone()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut with_token = RouterClient::connect_with(&address, None, Some("ask-token".into()))
        .await
        .unwrap();
    assert_eq!(with_token.ask(ask).await.unwrap().text, "Denver Broncos");
}

#[test]
fn certificate_identities_are_read_from_the_common_name_and_the_san() {
    let pki = Pki::new();
    let der = std::fs::read(pki.path("expert-bert.der")).unwrap();
    let mut ids = l2d::grpc::tls::certificate_identities(&der);
    ids.sort();
    assert_eq!(ids, ["expert-bert", "expert-bert"]);
    assert!(l2d::grpc::tls::certificate_identities(b"not a certificate").is_empty());
}

/// A Register call for `expert_id` at `address`, with a bearer token.
fn join(expert_id: &str, address: &str, token: &str) -> tonic::Request<pb::RegisterRequest> {
    let mut request = register_at(address, Some(token));
    request.get_mut().expert_id = expert_id.into();
    request
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A scheduler with no experts and the given gate, plus a Pool client to it.
async fn pool_scheduler(config: SchedulerConfig) -> (Node, PoolClient<tonic::transport::Channel>) {
    let (node, _, _) = spawn_scheduler(config, None, 0.1).await;
    let pool = PoolClient::new(node.channel().await);
    (node, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_serves_only_its_experts_and_a_lease_answers_only_to_its_holder() {
    let config = SchedulerConfig {
        gate: Arc::new(Gate {
            pool: Access::new(vec![
                Credential::token("bert-workers", "b").for_experts(&["bert"]),
                Credential::token("lr-workers", "l").for_experts(&["lr"]),
            ]),
            registration: true,
            ..Gate::default()
        }),
        ..SchedulerConfig::default()
    };
    let (node, mut pool) = pool_scheduler(config).await;

    // The lr credential cannot register as bert (answer poisoning).
    let squat = pool.register(join("bert", "127.0.0.1:7001", "l")).await;
    assert_eq!(squat.unwrap_err().code(), Code::PermissionDenied);
    let lease = pool
        .register(join("bert", "127.0.0.1:7001", "b"))
        .await
        .unwrap()
        .into_inner()
        .lease_id;

    // Another holder can neither renew nor end it, nor take its address.
    let beat = pool
        .heartbeat(with_token(
            pb::HeartbeatRequest {
                lease_id: lease.clone(),
                load: None,
            },
            "l",
        ))
        .await;
    assert_eq!(beat.unwrap_err().code(), Code::PermissionDenied);
    let end = pool
        .deregister(with_token(
            pb::DeregisterRequest {
                lease_id: lease.clone(),
            },
            "l",
        ))
        .await;
    assert_eq!(end.unwrap_err().code(), Code::PermissionDenied);
    let taken = pool.register(join("lr", "127.0.0.1:7001", "l")).await;
    let taken = taken.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");

    // Nobody sees lease ids.
    let listed = pool
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    let replica = &listed.experts[0].replicas[0];
    assert_eq!(
        (replica.address.as_str(), replica.lease_id.as_str()),
        ("127.0.0.1:7001", "")
    );

    // The holder ends its lease; the expert leaves with it, its id free again at another cost.
    pool.deregister(with_token(pb::DeregisterRequest { lease_id: lease }, "b"))
        .await
        .unwrap();
    let listed = pool
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.experts.is_empty(), "{listed:?}");
    let mut again = join("bert", "127.0.0.1:7002", "b");
    again.get_mut().cost = 50.0;
    pool.register(again).await.unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_off_refuses_membership_but_serves_reads() {
    let config = SchedulerConfig {
        gate: Arc::new(Gate::default()),
        ..SchedulerConfig::default()
    };
    let (node, mut pool) = pool_scheduler(config).await;
    let refused = pool.register(register_request(None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    assert!(refused.message().contains("registration is off"));
    let beat = pool
        .heartbeat(pb::HeartbeatRequest {
            lease_id: "lease-x".into(),
            load: None,
        })
        .await;
    assert_eq!(beat.unwrap_err().code(), Code::Unimplemented);
    pool.list_pool(pb::ListPoolRequest {}).await.unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_addresses_must_be_on_the_allow_list() {
    let (node, mut pool) = pool_scheduler(SchedulerConfig::default()).await;
    // Loopback only by default: the scheduler cannot be pointed at the cluster's network.
    for outside in [
        "10.0.0.7:6379",
        "kube-dns.kube-system.svc:53",
        "[fd00::1]:80",
    ] {
        let refused = pool.register(register_at(outside, None)).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{outside}");
        assert!(refused.message().contains("allow-list"), "{refused:?}");
    }
    pool.register(register_at("localhost:7003", None))
        .await
        .unwrap();
    node.stop().await;

    let config = SchedulerConfig {
        register_allow: l2d::core::allow_list::AllowList::parse(["10.0.0.0/8", "l2d.svc"]).unwrap(),
        ..SchedulerConfig::default()
    };
    let (node, mut pool) = pool_scheduler(config).await;
    pool.register(register_at("10.0.0.7:50051", None))
        .await
        .unwrap();
    let mut named = register_at("bert-0.l2d.svc:50051", None);
    named.get_mut().expert_id = "named".into();
    pool.register(named).await.unwrap();
    let refused = pool.register(register_at("127.0.0.1:7004", None)).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_rate_limited_per_credential() {
    let config = SchedulerConfig {
        gate: Arc::new(Gate {
            pool: Access::new(vec![
                Credential::token("a", "a"),
                Credential::token("b", "b"),
            ]),
            registration: true,
            ..Gate::default()
        }),
        register_rate: 1.0,
        ..SchedulerConfig::default()
    };
    let (node, mut pool) = pool_scheduler(config).await;
    // A burst of two, then RESOURCE_EXHAUSTED with a hint of when to retry.
    for port in [7101, 7102] {
        pool.register(join("x", &format!("127.0.0.1:{port}"), "a"))
            .await
            .unwrap();
    }
    let limited = pool
        .register(join("x", "127.0.0.1:7103", "a"))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    let hint = l2d::grpc::status::retry_after(&limited).expect("a retry hint");
    assert!(
        hint > Duration::ZERO && hint <= Duration::from_secs(1),
        "{hint:?}"
    );
    // Another credential has its own budget.
    pool.register(join("x", "127.0.0.1:7104", "b"))
        .await
        .unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_is_capped_in_experts_and_replicas() {
    let mut config = SchedulerConfig::default();
    config.replicas.max_experts = 2;
    config.replicas.max_replicas = 3;
    let (node, mut pool) = pool_scheduler(config).await;
    let register = |id: &str, port: u16| {
        let mut r = register_at(&format!("127.0.0.1:{port}"), None);
        r.get_mut().expert_id = id.into();
        r
    };
    pool.register(register("a", 7201)).await.unwrap();
    pool.register(register("b", 7202)).await.unwrap();
    let third = pool.register(register("c", 7203)).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    pool.register(register("a", 7204)).await.unwrap();
    let fourth = pool.register(register("a", 7205)).await.unwrap_err();
    assert_eq!(fourth.code(), Code::ResourceExhausted, "{fourth:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_files_are_re_read_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "first").unwrap();
    let config = SchedulerConfig {
        gate: Arc::new(Gate {
            pool: Access::new(vec![Credential::token_file("ops", &path).unwrap()]),
            registration: true,
            ..Gate::default()
        }),
        policy_poll: Duration::from_millis(50),
        ..SchedulerConfig::default()
    };
    let (node, mut pool) = pool_scheduler(config).await;
    pool.register(register_at("127.0.0.1:7301", Some("first")))
        .await
        .unwrap();
    std::fs::write(&path, "second\n").unwrap();
    let channel = node.channel().await;
    eventually(Duration::from_secs(10), "the new token", || {
        let mut pool = PoolClient::new(channel.clone());
        async move {
            pool.register(register_at("127.0.0.1:7302", Some("second")))
                .await
                .is_ok()
        }
    })
    .await;
    let old = pool
        .register(register_at("127.0.0.1:7303", Some("first")))
        .await;
    assert_eq!(old.unwrap_err().code(), Code::Unauthenticated);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_re_read_while_serving() {
    // The scheduler starts with PKI one's certificate; PKI two's files are written over it.
    let (one, two) = (Pki::new(), Pki::new());
    let dir = tempfile::tempdir().unwrap();
    let install = |pki: &Pki| {
        for name in ["server.pem", "server.key", "ca.pem"] {
            std::fs::copy(pki.path(name), dir.path().join(name)).unwrap();
        }
    };
    install(&one);
    let tls = ServerTls::load(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        Some(&dir.path().join("ca.pem")),
    )
    .unwrap();
    let config = SchedulerConfig {
        tls: Some(tls),
        policy_poll: Duration::from_millis(50),
        ..SchedulerConfig::default()
    };
    let (node, _, _) = spawn_scheduler(config, None, 0.1).await;
    let address = node.addr.to_string();
    let reaches = |pki: &Pki| {
        let tls = pki.client(Some("scheduler"));
        let address = address.clone();
        async move {
            let Ok(channel) = endpoint(&address, Some(&tls)).unwrap().connect().await else {
                return false;
            };
            PoolClient::new(channel)
                .list_pool(pb::ListPoolRequest {})
                .await
                .is_ok()
        }
    };
    assert!(reaches(&one).await);
    assert!(!reaches(&two).await, "a client of another CA got through");
    install(&two);
    eventually(Duration::from_secs(10), "the new certificate", || {
        reaches(&two)
    })
    .await;
    assert!(!reaches(&one).await, "the old certificate is still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_plain_health_listen_on_their_own_ports_beside_tls() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let pki = Pki::new();
    let config = SchedulerConfig {
        tls: Some(pki.server()),
        ..SchedulerConfig::default()
    };
    let scheduler = Arc::new(Scheduler::new(
        config,
        Box::new(PriorPolicy::new(0.1, []).unwrap()),
    ));
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let (router, pool, health) = (
        bind().await.unwrap(),
        bind().await.unwrap(),
        bind().await.unwrap(),
    );
    let address = |l: &tokio::net::TcpListener| l.local_addr().unwrap().to_string();
    let (router_at, pool_at, health_at) = (address(&router), address(&pool), address(&health));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listeners = l2d::scheduler::Listeners {
        router,
        pool: Some(pool),
        health: Some(health),
    };
    let served = tokio::spawn(l2d::scheduler::serve_on(listeners, scheduler, async {
        let _ = stopped.await;
    }));
    let tls = pki.client(Some("scheduler"));

    // The probe's port: plain HTTP/2, health only, the Router's state.
    let plain = endpoint(&health_at, None).unwrap().connect().await.unwrap();
    let status = HealthClient::new(plain.clone())
        .check(HealthCheckRequest {
            service: "l2d.v1.Router".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
    let other = PoolClient::new(plain)
        .list_pool(pb::ListPoolRequest {})
        .await;
    assert_eq!(other.unwrap_err().code(), Code::Unimplemented);

    // Pool on its own port (TLS), not on the Router's.
    pool_client(&pool_at, Some(&tls))
        .await
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap();
    let on_router = pool_client(&router_at, Some(&tls))
        .await
        .list_pool(pb::ListPoolRequest {})
        .await;
    assert_eq!(on_router.unwrap_err().code(), Code::Unimplemented);
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}
