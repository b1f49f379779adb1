//! The figures the documentation quotes are the ones the shipped policies produce: the
//! evaluation reports in docs/eval are regenerated from the shipped policy files and compared
//! byte for byte, and `l2d demo`'s live row (the answers `Router.Ask` returned) equals its
//! offline evaluation of the same policy when waiting is not priced.

mod common;

use common::process::{l2d_ok, repo};
use std::path::{Path, PathBuf};

fn l2d(args: &[&str]) -> String {
    String::from_utf8(l2d_ok(args).stdout).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_evaluation_reports_are_what_the_shipped_policies_produce() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.jsonl");
    let labels_arg = labels.to_str().unwrap();
    // As docs/eval/README.md reproduces them.
    l2d(&[
        "label",
        "--data",
        "data/squad-v1.1/dev.json",
        "--experts",
        "lr,match-lstm,rnet-plus,slqa-plus,bert-large",
        "--out",
        labels_arg,
    ]);
    for (policy, report) in [
        ("policies/squad-v1.1-cascade.json", "cascade"),
        ("policies/squad-v1.1-defer.json", "defer"),
    ] {
        let json: PathBuf = dir.path().join(format!("{report}.json"));
        let md: PathBuf = dir.path().join(format!("{report}.md"));
        l2d(&[
            "eval",
            "--labels",
            labels_arg,
            "--policy",
            policy,
            "--json",
            json.to_str().unwrap(),
            "--md",
            md.to_str().unwrap(),
        ]);
        let docs = repo().join("docs/eval");
        assert!(
            read(&md) == read(&docs.join(format!("{report}.md"))),
            "docs/eval/{report}.md is not what {policy} produces: regenerate it (docs/eval/README.md)"
        );
        let produced: serde_json::Value = serde_json::from_str(&read(&json)).unwrap();
        let shipped: serde_json::Value =
            serde_json::from_str(&read(&docs.join(format!("{report}.json")))).unwrap();
        assert!(
            produced == shipped,
            "docs/eval/{report}.json is not what {policy} produces: regenerate it"
        );
    }
}

/// The numbers of a `l2d demo` row (EM, F1, mean cost, % of best) and its shares.
fn row<'a>(table: &'a str, name: &str) -> (&'a str, Vec<f64>, String) {
    let line = table
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row {name:?} in:\n{table}"));
    let rest = line[name.len()..].trim_start();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let numbers = fields[..4]
        .iter()
        .map(|f| f.trim_end_matches('%').parse().unwrap())
        .collect();
    (line, numbers, fields[4..].join(" "))
}

#[test]
fn the_demo_serves_the_decisions_the_offline_evaluation_computes() {
    // Waiting not priced: what is left is the decision itself, live against offline.
    let table = l2d(&["demo", "--wait-price", "0"]);
    let (_, live, live_shares) = row(&table, "learned policy (live)");
    let (offline_line, offline, offline_shares) =
        row(&table, "learned policy (offline evaluation)");
    assert_eq!(live, offline, "{table}");
    assert_eq!(live_shares, offline_shares, "{table}");
    // The README quotes the same offline row.
    let readme = read(&repo().join("README.md"));
    assert!(
        readme.lines().any(|l| l == offline_line),
        "README.md does not quote the demo's offline row:\n{offline_line}"
    );
}
