//! What every node serves and how it takes changes and bad bytes, over real gRPC on loopback:
//! health and reflection, pool-file reloads while serving, and invalid UTF-8 or garbage at the
//! wire.

mod common;

use common::*;
use l2d::scheduler::SchedulerConfig;
use l2d::{Ask, RouterClient};
use std::time::Duration;
use tonic::Code;

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
    let default = l2d::scheduler::ReplicaPolicy::default().max_in_flight;
    assert_eq!(experts(), [("strong".to_string(), vec![default])]);

    // Seen by the watcher: a new expert, and a new limit for the old one.
    write(strong_at("max_in_flight = 3") + &cheap_at(1));
    eventually(Duration::from_secs(10), "the pool file reload", || async {
        experts()
            == [
                ("strong".to_string(), vec![3]),
                ("cheap".to_string(), vec![default]),
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
    let default = l2d::scheduler::ReplicaPolicy::default().max_in_flight;
    assert_eq!(experts(), [("strong".to_string(), vec![default])]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_resource_exhausted_on_every_server() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &replay_pair(None, None));
    let (node, _scheduler, _local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;
    let expert = spawn_replay_expert("cheap", 1.0, "cheap-predictions.json", None).await;
    // 6 MB: over the query-sized limit of both (and tonic's own 4 MiB default).
    let huge = "x".repeat(6 << 20);
    let mut router = l2d::pb::router_client::RouterClient::new(node.channel().await);
    let refused = router
        .ask(l2d::pb::AskRequest {
            question: "Who?".into(),
            context: huge.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let mut worker = l2d::pb::expert_client::ExpertClient::new(expert.channel().await);
    let refused_by_expert = worker
        .answer(answer_request("Who?", &huge, None))
        .await
        .unwrap_err();
    for status in [&refused, &refused_by_expert] {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().starts_with("the request message of 6291")
                && status.message().contains("over this server's limit of"),
            "{status:?}"
        );
    }
    // Both keep serving.
    let mut client = RouterClient::from_channel(node.channel().await);
    client
        .ask(Ask::new(SB_AFC, SB_CONTEXT).id("sb-afc"))
        .await
        .unwrap();
    worker
        .answer(answer_request(SB_AFC, SB_CONTEXT, Some("sb-afc")))
        .await
        .unwrap();
}
