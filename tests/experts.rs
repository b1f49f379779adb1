//! The live readers and `experts-report` over the real gRPC path.

mod common;

use common::*;
use l2d::core::query::{Query, QueryLimits};
use l2d::expert::Backend;
use l2d::report::{ReportOptions, experts_report};
use std::collections::HashMap;
use std::process::Command;

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
