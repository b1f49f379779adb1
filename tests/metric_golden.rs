//! Golden tests: the official metric reproduces the published SQuAD v1.1 dev numbers of the
//! five systems shipped in `data/`, to one decimal (their leaderboard figures), and agrees with
//! the official v1.1 evaluation script to 1e-9 (reference values computed with that script on
//! the same files).

use l2d::squad::{Dataset, load_predictions};
use std::path::Path;
use std::process::Command;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/squad-v1.1");

/// (file, published EM, published F1, official script EM, official script F1)
const SYSTEMS: &[(&str, f64, f64, f64, f64)] = &[
    (
        "logistic-regression.json",
        40.1,
        51.0,
        40.14191106906339,
        50.98153647324461,
    ),
    (
        "match-lstm-ensemble.json",
        67.6,
        76.8,
        67.63481551561021,
        76.75556184979695,
    ),
    (
        "slqa-plus-ensemble.json",
        81.9,
        88.4,
        81.94891201513718,
        88.38386312172166,
    ),
    (
        "rnet-plus-ensemble.json",
        82.5,
        88.5,
        82.46925260170293,
        88.47785965423249,
    ),
    (
        "bert-large-ensemble.json",
        86.2,
        92.2,
        86.20624408703878,
        92.19557978351145,
    ),
];

#[test]
fn the_metric_reproduces_the_published_numbers_of_all_five_systems() {
    let dataset = Dataset::load(&Path::new(DATA).join("dev.json")).unwrap();
    for &(file, em, f1, script_em, script_f1) in SYSTEMS {
        let predictions =
            load_predictions(&Path::new(DATA).join("predictions").join(file)).unwrap();
        let e = dataset.evaluate(&predictions);
        assert_eq!(e.total, 10_570, "{file}");
        assert_eq!(
            format!("{:.1}", e.exact_match),
            format!("{em:.1}"),
            "{file} EM"
        );
        assert_eq!(format!("{:.1}", e.f1), format!("{f1:.1}"), "{file} F1");
        assert!(
            (e.exact_match - script_em).abs() < 1e-9,
            "{file}: {} vs {script_em}",
            e.exact_match
        );
        assert!(
            (e.f1 - script_f1).abs() < 1e-9,
            "{file}: {} vs {script_f1}",
            e.f1
        );
        let expected_missing = if file == "logistic-regression.json" {
            13
        } else {
            0
        };
        assert_eq!(e.missing, expected_missing, "{file}");
    }
}

#[test]
fn l2d_score_prints_the_figures_as_json_and_as_text() {
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_l2d"));
        cmd.args(["score", "--data", &format!("{DATA}/dev.json")])
            .args([
                "--predictions",
                &format!("{DATA}/predictions/logistic-regression.json"),
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
    let json: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    assert_eq!(json["total"], 10_570);
    assert_eq!(json["missing"], 13);
    assert!((json["exact_match"].as_f64().unwrap() - 40.14191106906339).abs() < 1e-9);
    assert!((json["f1"].as_f64().unwrap() - 50.98153647324461).abs() < 1e-9);
    let text = run(false);
    assert!(
        text.starts_with("exact_match 40.14  f1 50.98  total 10570"),
        "{text}"
    );
    assert!(
        text.contains("13 of 10570 questions have no prediction and score 0"),
        "{text}"
    );
}

#[test]
fn l2d_score_reads_v2_files_and_reports_the_splits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("v2.json");
    std::fs::write(
        &data,
        r#"{"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "Denver won.", "qas": [
            {"id": "a", "question": "Who won?", "answers": [{"text": "Denver", "answer_start": 0}]},
            {"id": "b", "question": "Who lost?", "answers": [], "is_impossible": true},
            {"id": "c", "question": "Who cheered?", "answers": [], "is_impossible": true}]}]}]}"#,
    )
    .unwrap();
    let predictions = dir.path().join("p.json");
    std::fs::write(&predictions, r#"{"a": "Denver", "b": "", "c": "Denver"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_l2d"))
        .args(["score", "--json", "--data", data.to_str().unwrap()])
        .args(["--predictions", predictions.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((json["exact_match"].as_f64().unwrap() - 200.0 / 3.0).abs() < 1e-9);
    assert_eq!(json["HasAns"]["exact"], 100.0);
    assert_eq!(json["NoAns"]["exact"], 50.0);
    assert_eq!(json["NoAns"]["total"], 2);

    // A malformed data file: the error names the file and the place, exit code 1.
    std::fs::write(&data, r#"{"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q", "answers": [{"text": 3}]}]}]}]}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_l2d"))
        .args(["score", "--data", data.to_str().unwrap()])
        .args(["--predictions", predictions.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "v2.json: at article 0, paragraph 0, question 0, answer 0, field text: invalid type"
        ),
        "{err}"
    );
}
