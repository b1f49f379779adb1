//! Request ids: the client's, or a fresh one that two scheduler processes never share, go with
//! every expert call as `x-request-id` metadata.

mod common;

use common::process::Proc;
use common::*;
use l2d::pb;
use l2d::scheduler::SchedulerConfig;
use l2d::{Ask, RouterClient};
use tonic::Request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_goes_with_the_expert_call() {
    let (expert, seen) = spawn_recording_expert().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(
        dir.path(),
        &format!(
            "[[expert]]\nid = \"recording\"\nbackend = \"typed\"\naddress = \"{}\"\ncost = 1\n",
            expert.addr
        ),
    );
    let (node, _scheduler, local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;

    let mut raw = pb::router_client::RouterClient::new(node.channel().await);
    let mut request = Request::new(pb::AskRequest {
        question: "Who won?".into(),
        context: "Denver won.".into(),
        ..pb::AskRequest::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "trace-7f3a".parse().unwrap());
    raw.ask(request).await.unwrap();

    let mut router = RouterClient::from_channel(node.channel().await);
    let fresh = router
        .ask(Ask::new("Who won?", "Denver won."))
        .await
        .unwrap()
        .request_id;
    let (prefix, number) = fresh.split_once('-').unwrap();
    assert_eq!(prefix.len(), 16, "{fresh}");
    assert!(u64::from_str_radix(prefix, 16).is_ok() && u64::from_str_radix(number, 16).is_ok());
    assert_eq!(*seen.ids.lock().unwrap(), ["trace-7f3a".to_owned(), fresh]);

    node.stop().await;
    local.shutdown().await.unwrap();
    expert.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_processes_give_different_fresh_ids() {
    let mut fresh = Vec::new();
    for _ in 0..2 {
        let mut up = Proc::spawn(&["up", "--listen", "127.0.0.1:0"]);
        let router = up.address_in("scheduler serving");
        let mut client = RouterClient::connect(&router).await.unwrap();
        let answer = client
            .ask(Ask::new("Who won?", "The Broncos won."))
            .await
            .unwrap();
        fresh.push(answer.request_id);
    }
    // The same request number in both processes, and still two ids.
    assert_eq!(
        fresh[0].split_once('-').unwrap().1,
        fresh[1].split_once('-').unwrap().1
    );
    assert_ne!(fresh[0], fresh[1]);
}
