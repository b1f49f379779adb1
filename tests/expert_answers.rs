//! The `Expert` service over real gRPC on loopback: a replay expert answers from its
//! recordings, by id and by text, and refuses bad or unknown queries with clear statuses.

mod common;

use common::*;
use l2d::pb::{self, expert_client::ExpertClient};
use tonic::Code;

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
