//! The alerting rules and the dashboard in `docs/alerts/` read only metrics a running scheduler
//! exports, and the rules do what their unit tests say (`promtool check rules`, `promtool test
//! rules`). Needs `promtool` (Debian's `prometheus` package) for the second part; skipped
//! without it unless `L2D_REQUIRE_PROMTOOL=1` (`.ci/run` sets it and installs the package).

mod common;

use common::cluster::scrape;
use common::process::Proc;
use l2d::{Ask, RouterClient};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn alerts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/alerts")
}

/// Every `l2d_…` metric name a PromQL expression reads (recording rules, `l2d:…`, excluded).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("l2d_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The queries of the rules file and of the dashboard.
fn queries() -> Vec<(String, String)> {
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(alerts().join("l2d-rules.yaml")).unwrap())
            .unwrap();
    let mut queries = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap()
                .to_owned();
            queries.push((name, rule["expr"].as_str().unwrap().to_owned()));
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(alerts().join("l2d-dashboard.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push((
                format!("panel {:?}", panel["title"].as_str().unwrap()),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_and_the_dashboard_read_metrics_the_scheduler_exports() {
    // With a cost target and a candidate policy in shadow, so their series exist too.
    let mut up = Proc::spawn(&[
        "up",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--target-cost",
        "50",
        "--candidate-policy",
        "policies/squad-v1.1-defer.json",
    ]);
    let metrics = up.address_in("metrics serving");
    let router = up.address_in("scheduler serving");
    let mut client = RouterClient::connect(&router).await.unwrap();
    // A dev question and a question of your own: every family gets its first samples.
    let dev = l2d::squad::Dataset::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("data/squad-v1.1/dev.json"),
    )
    .unwrap();
    let (_, paragraph, question) = dev.questions().next().unwrap();
    client
        .ask(Ask::new(question.question.clone(), paragraph.context.clone()).id(question.id.clone()))
        .await
        .unwrap();
    client
        .ask(Ask::new("Who won?", "The Broncos won."))
        .await
        .unwrap();
    let text = scrape(&metrics);
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(exported.contains("l2d_served_total"), "{text}");

    let queries = queries();
    assert!(queries.len() > 15, "{queries:?}");
    for (name, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty() || expr.contains("l2d:"), "{name}: {expr}");
        for metric in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| metric.strip_suffix(s))
                .filter(|base| exported.contains(*base))
                .unwrap_or(&metric);
            assert!(
                exported.contains(family),
                "{name} reads {metric}, which the scheduler does not export (it exports: {exported:?})"
            );
        }
    }
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        metric_names(
            "sum(rate(l2d_asks_total{code=\"OK\"}[5m])) / l2d:ask_errors:ratio_rate5m \
             + histogram_quantile(0.9, rate(l2d_ask_duration_seconds_bucket[1m]))"
        ),
        ["l2d_asks_total", "l2d_ask_duration_seconds_bucket"]
    );
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let required = std::env::var("L2D_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
    for args in [
        ["check", "rules", "l2d-rules.yaml"],
        ["test", "rules", "l2d-rules.test.yaml"],
    ] {
        let out = match Command::new("promtool")
            .args(args)
            .current_dir(alerts())
            .output()
        {
            Ok(out) => out,
            Err(e) if required => panic!("promtool is required (L2D_REQUIRE_PROMTOOL=1): {e}"),
            Err(e) => {
                eprintln!("skipping: no promtool ({e})");
                return;
            }
        };
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
