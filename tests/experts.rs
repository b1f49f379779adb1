//! The live readers and `experts-report` over the real gRPC path.

mod common;

use common::*;
use l2d::core::query::{Query, QueryLimits};
use l2d::expert::Backend;
use l2d::report::{ReportOptions, experts_report};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

/// The replay pair plus the two live readers (`typed` with two in-process replicas).
fn mixed_pool() -> String {
    replay_pair(None, None)
        + "[[expert]]\nid = \"lexical\"\nbackend = \"lexical\"\ncost = 0.25\n\n\
           [[expert]]\nid = \"typed\"\nbackend = \"typed\"\ncost = 0.5\nreplicas = 2\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_measures_every_expert_with_the_official_metric() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &mixed_pool());
    let dataset = mini_squad();
    let options = ReportOptions {
        limit: None,
        concurrency: 2,
        progress: false,
    };
    let reports = experts_report(&pool, &dataset, &options).await.unwrap();
    let ids: Vec<&str> = reports.iter().map(|r| r.expert_id.as_str()).collect();
    assert_eq!(ids, ["cheap", "strong", "lexical", "typed"]);

    // cheap: right on sb-date and wa-river; "Carolina Panthers" for sb-afc is wrong;
    // "Santa Clara" against "Santa Clara, California" is F1 0.8; no recording for wa-sea.
    let cheap = &reports[0];
    assert_eq!(cheap.questions, 5);
    assert!((cheap.em - 40.0).abs() < 1e-9, "{}", cheap.em);
    assert!((cheap.f1 - 100.0 * 2.8 / 5.0).abs() < 1e-9, "{}", cheap.f1);
    assert_eq!(cheap.errors.get("NOT_FOUND"), Some(&1));
    assert_eq!(cheap.mean_compute_units, 1.0);
    // strong: everything right but "260 kilometres" against "roughly 260 kilometres" (F1 0.8).
    let strong = &reports[1];
    assert!((strong.em - 80.0).abs() < 1e-9, "{}", strong.em);
    assert!((strong.f1 - 96.0).abs() < 1e-9, "{}", strong.f1);
    assert!(strong.errors.is_empty());

    for live in &reports[2..] {
        assert_eq!(live.questions, 5, "{}", live.expert_id);
        assert!(live.errors.is_empty(), "{:?}", live.errors);
        assert!(
            live.mean_compute_units > 0.0,
            "{} reports no compute",
            live.expert_id
        );
        assert!(live.p99_latency_us >= 1);
    }
    // Through gRPC, the live readers score exactly what the same readers score in-process.
    for (report, reader) in reports[2..].iter().zip([
        Box::new(l2d::expert::lexical::LexicalReader::default()) as Box<dyn Backend>,
        Box::new(l2d::expert::typed::TypedReader::default()),
    ]) {
        let predictions: HashMap<String, String> = dataset
            .questions()
            .map(|(_, p, q)| {
                let query = Query::new(
                    q.question.clone(),
                    p.context.clone(),
                    None,
                    &QueryLimits::default(),
                )
                .unwrap();
                (q.id.clone(), reader.answer(&query).unwrap().text)
            })
            .collect();
        let local = dataset.evaluate(&predictions);
        assert_eq!(
            (report.em, report.f1),
            (local.exact_match, local.f1),
            "{}",
            report.expert_id
        );
    }
}

#[test]
fn experts_report_prints_a_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    pool_file(dir.path(), &mixed_pool());
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_l2d"));
        cmd.args([
            "experts-report",
            "--pool",
            dir.path().join("pool.toml").to_str().unwrap(),
        ])
        .args([
            "--data",
            fixture("mini-squad.json").to_str().unwrap(),
            "--limit",
            "3",
        ]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(false);
    assert!(table.starts_with("EXPERT"), "{table}");
    assert_eq!(table.lines().count(), 5, "{table}");
    let json: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let reports = json.as_array().unwrap();
    assert_eq!(reports.len(), 4);
    for key in [
        "expert_id",
        "backend",
        "cost",
        "em",
        "f1",
        "questions",
        "mean_latency_us",
        "p99_latency_us",
    ] {
        assert!(reports[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(reports[0]["questions"], 3);
    assert_eq!(reports[2]["backend"], "lexical");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_its_own_metrics_by_status_code() {
    use l2d::core::capability::Capabilities;
    use l2d::expert::ExpertNode;
    use l2d::expert::replay::ReplayBackend;
    let backend =
        ReplayBackend::load(&fixture("cheap-predictions.json"), Some(mini_squad()), 1.0).unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_at = metrics.local_addr().unwrap().to_string();
    let node = ExpertNode::new("cheap", 1.0, std::sync::Arc::new(backend))
        .with_capabilities(&Capabilities {
            max_context_chars: Some(400),
            ..Capabilities::default()
        })
        .with_max_concurrency(3)
        .with_delay(Duration::from_millis(200))
        .with_metrics(Some(metrics));
    let served = spawn_node(move |listener, stopped| {
        l2d::expert::serve(listener, node, None, async {
            let _ = stopped.await;
        })
    })
    .await;
    let mut client =
        l2d::pb::expert_client::ExpertClient::connect(format!("http://{}", served.addr))
            .await
            .unwrap();
    // Answered; no recording (NOT_FOUND); a context over the declared limit (OUT_OF_RANGE); a
    // call its caller gave up on (CANCELLED).
    client
        .answer(answer_request(SB_AFC, SB_CONTEXT, Some("sb-afc")))
        .await
        .unwrap();
    let missing = client
        .answer(answer_request("Where?", SB_CONTEXT, Some("no-such-id")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let long = client
        .answer(answer_request(SB_AFC, &SB_CONTEXT.repeat(2), None))
        .await
        .unwrap_err();
    assert_eq!(long.code(), tonic::Code::OutOfRange);
    let mut impatient = tonic::Request::new(answer_request(SB_AFC, SB_CONTEXT, Some("sb-afc")));
    impatient.set_timeout(Duration::from_millis(20));
    assert!(client.answer(impatient).await.is_err());

    let scrape = || {
        let at = metrics_at.clone();
        async move {
            tokio::task::spawn_blocking(move || common::cluster::scrape(&at))
                .await
                .unwrap()
        }
    };
    let code = |text: &str, code: &str| {
        series_value(
            text,
            &format!("l2d_worker_requests_total{{expert=\"cheap\",code=\"{code}\"}}"),
        )
    };
    // The cancelled call is counted once the worker has dropped it.
    eventually(
        Duration::from_secs(10),
        "the cancelled call counted",
        || async { code(&scrape().await, "CANCELLED") == 1.0 },
    )
    .await;
    let text = scrape().await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(code(&text, "OK"), 1.0, "{text}");
    assert_eq!(code(&text, "NOT_FOUND"), 1.0, "{text}");
    assert_eq!(code(&text, "OUT_OF_RANGE"), 1.0, "{text}");
    assert_eq!(
        series_value(
            &text,
            "l2d_worker_request_duration_seconds_count{expert=\"cheap\"}"
        ),
        4.0
    );
    // Latency is measured from arrival: the answered call alone slept the 200 ms delay.
    assert!(
        series_value(
            &text,
            "l2d_worker_request_duration_seconds_sum{expert=\"cheap\"}"
        ) >= 0.2,
        "{text}"
    );
    assert_eq!(
        series_value(&text, "l2d_worker_max_concurrency{expert=\"cheap\"}"),
        3.0
    );
    assert_eq!(
        series_value(&text, "l2d_worker_in_flight{expert=\"cheap\"}"),
        0.0
    );
    assert!(
        text.contains(&format!(
            "l2d_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    // Never the query text.
    assert!(
        !text.contains("Super Bowl") && !text.contains("AFC"),
        "{text}"
    );
}
