//! The `l2d` binary as users run it: separate scheduler and expert processes on loopback,
//! registration across processes, the `ask` and `pool status` commands, graceful shutdown on
//! SIGTERM/SIGINT, and readable errors.

mod common;

use common::fixture;
use common::process::{L2D, Proc};
use std::process::{Command, Output};

fn l2d(args: &[&str]) -> Output {
    Command::new(L2D).args(args).output().expect("run l2d")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `l2d expert` args for the fixture's `strong` replay expert (cost 10), registering with
/// `router`.
fn strong_expert(router: &str) -> Vec<String> {
    let predictions = fixture("strong-predictions.json");
    let data = fixture("mini-squad.json");
    [
        "expert",
        "--listen",
        "127.0.0.1:0",
        "--id",
        "strong",
        "--backend",
        "replay",
        "--predictions",
        predictions.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--cost",
        "10",
        "--register",
        router,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn separate_processes_register_answer_and_shut_down_gracefully() {
    let mut scheduler = Proc::spawn(&["scheduler", "--listen", "127.0.0.1:0", "--lease-ttl", "2s"]);
    let router = scheduler.address_in("scheduler serving");

    let data = fixture("mini-squad.json");
    let mut expert = Proc::spawn(
        &strong_expert(&router)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    expert.wait_for("registered with scheduler");

    let out = l2d(&[
        "ask",
        "--router",
        &router,
        "--data",
        data.to_str().unwrap(),
        "--id",
        "sb-afc",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("answer:  Denver Broncos"), "{text}");
    assert!(text.contains("expert:  strong"), "{text}");
    assert!(text.contains("cost:    10"), "{text}");

    let out = l2d(&[
        "ask",
        "--router",
        &router,
        "--data",
        data.to_str().unwrap(),
        "--id",
        "sb-date",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["text"], "February 7, 2016");
    assert_eq!(json["expert_id"], "strong");
    assert_eq!(json["decision"]["chosen_expert"], "strong");

    let out = l2d(&["pool", "status", "--router", &router]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let row = table
        .lines()
        .find(|l| l.starts_with("strong"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("registered"), "{table}");

    // Bad input: a readable error and a failing exit code.
    let out = l2d(&[
        "ask",
        "--router",
        &router,
        "--question",
        " ",
        "--context",
        "c",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("l2d: error: INVALID_ARGUMENT: question is empty"),
        "{}",
        stderr(&out)
    );

    // SIGTERM: the worker leaves the pool and exits cleanly.
    expert.signal("TERM");
    expert.wait_for("left the pool");
    assert!(expert.exit_success());
    let out = l2d(&["pool", "status", "--router", &router]);
    assert!(
        !stdout(&out).lines().any(|l| l.starts_with("strong")),
        "{}",
        stdout(&out)
    );

    scheduler.signal("TERM");
    assert!(scheduler.exit_success());
}

#[test]
fn up_serves_the_default_pool_until_interrupted() {
    let mut up = Proc::spawn(&["up", "--listen", "127.0.0.1:0"]);
    let router = up.address_in("scheduler serving");
    // The hint asks one of the default pool's questions, as below.
    let hint = up.wait_for("l2d: try");
    assert!(hint.contains("--id 56be4db0acb8001400a502ec"), "{hint}");
    let out = l2d(&[
        "ask",
        "--router",
        &router,
        "--data",
        "data/squad-v1.1/dev.json",
        "--id",
        "56be4db0acb8001400a502ec",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("answer:  Denver Broncos"),
        "{}",
        stdout(&out)
    );
    let out = l2d(&["pool", "status", "--router", &router]);
    let table = stdout(&out);
    for id in ["lr", "match-lstm", "rnet-plus", "slqa-plus", "bert-large"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(id) && l.contains("in-process")),
            "{table}"
        );
    }
    up.signal("INT");
    assert!(up.exit_success());
}

#[test]
fn bad_configuration_is_reported_with_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool.toml");
    std::fs::write(
        &pool,
        "[[expert]]\nid = \"x\"\nbackend = \"replay\"\npredictions = \"p.json\"\ncost = 0\n",
    )
    .unwrap();
    let out = l2d(&[
        "scheduler",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        pool.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "pool file {}: expert \"x\": field `cost`: must be a positive finite number, got 0",
            pool.display()
        )),
        "{err}"
    );

    std::fs::write(
        &pool,
        "[[expert]]\nid = \"x\"\nbackend = \"replay\"\npredictions = \"missing.json\"\ncost = 1\n",
    )
    .unwrap();
    let out = l2d(&[
        "scheduler",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        pool.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("expert \"x\": cannot read predictions file") && err.contains("missing.json"),
        "{err}"
    );

    let out = l2d(&[
        "expert",
        "--listen",
        "127.0.0.1:0",
        "--id",
        "x",
        "--backend",
        "replay",
        "--cost",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--predictions is required with --backend replay"),
        "{}",
        stderr(&out)
    );

    let out = l2d(&[
        "expert",
        "--listen",
        "127.0.0.1:0",
        "--id",
        "x",
        "--backend",
        "replay",
        "--predictions",
        "p.json",
        "--cost",
        "-1",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--cost must be a positive finite number, got -1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_live_reader_process_registers_and_answers_like_the_library_reader() {
    use l2d::core::query::{Query, QueryLimits};
    use l2d::expert::Backend;

    let mut scheduler = Proc::spawn(&["scheduler", "--listen", "127.0.0.1:0"]);
    let router = scheduler.address_in("scheduler serving");
    let mut expert = Proc::spawn(&[
        "expert",
        "--listen",
        "127.0.0.1:0",
        "--id",
        "typed",
        "--backend",
        "typed",
        "--cost",
        "0.5",
        "--register",
        &router,
    ]);
    expert.wait_for("registered with scheduler");
    let question = "When was the game played?";
    let context = "The game was played on February 7, 2016, at Levi's Stadium.";
    let out = l2d(&[
        "ask",
        "--router",
        &router,
        "--question",
        question,
        "--context",
        context,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let local = l2d::expert::typed::TypedReader::default()
        .answer(&Query::new(question, context, None, &QueryLimits::default()).unwrap())
        .unwrap();
    assert_eq!(json["text"], local.text.as_str());
    assert_eq!(json["text"], "February 7, 2016");
    assert_eq!(json["expert_id"], "typed");
    assert!(json["compute"]["units"].as_f64().unwrap() > 0.0);
    expert.signal("TERM");
    assert!(expert.exit_success());
    scheduler.signal("TERM");
    assert!(scheduler.exit_success());
}

/// Every line parsed as a flat JSON object, with the fields every line carries.
fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    assert!(!lines.is_empty());
    lines
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            for field in ["timestamp", "level", "target", "message", "pod", "version"] {
                assert!(value[field].is_string(), "no {field} in {line}");
            }
            assert_eq!(value["version"], env!("CARGO_PKG_VERSION"));
            let object = value.as_object().unwrap();
            assert!(
                !object.contains_key("fields") && !object.contains_key("span"),
                "nested fields in {line}"
            );
            value
        })
        .collect()
}

#[test]
fn json_logs_are_flat_objects_on_every_line_of_scheduler_and_expert() {
    let json = [
        ("L2D_LOG_FORMAT", "json"),
        ("RUST_LOG", "debug,h2=info,tower=info,hyper=info"),
    ];
    let policy = fixture("../../policies/squad-v1.1.json");
    let mut scheduler = Proc::spawn_with(
        L2D,
        &[
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--lease-ttl",
            "2s",
            "--policy",
            policy.to_str().unwrap(),
        ],
        &json,
    );
    let serving: serde_json::Value =
        serde_json::from_str(&scheduler.wait_for("scheduler serving")).unwrap();
    let router = serving["address"].as_str().unwrap().to_owned();
    let data = fixture("mini-squad.json");
    let args = strong_expert(&router);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut expert = Proc::spawn_with(L2D, &args, &json);
    expert.wait_for("registered with scheduler");
    let out = l2d(&[
        "ask",
        "--router",
        &router,
        "--data",
        data.to_str().unwrap(),
        "--id",
        "sb-afc",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let request_id = answer["request_id"].as_str().unwrap().to_owned();
    expert.signal("TERM");
    let expert_lines = json_lines(&expert.all_lines());
    assert!(expert.exit_success());
    scheduler.signal("TERM");
    let scheduler_lines = json_lines(&scheduler.all_lines());
    assert!(scheduler.exit_success());

    // The worker names its expert on every line.
    assert!(expert_lines.iter().all(|l| l["expert"] == "strong"));
    // The scheduler names the policy in force on every line.
    let policy_id = serving["policy_id"].as_str().unwrap();
    assert!(!policy_id.is_empty());
    assert!(scheduler_lines.iter().all(|l| l["policy_id"] == policy_id));
    // The request's decision: its id (from the request's span) and the scores, an array, at the
    // top level.
    let decision = scheduler_lines
        .iter()
        .find(|l| l["message"] == "decision")
        .unwrap_or_else(|| panic!("no decision line in {scheduler_lines:?}"));
    assert_eq!(decision["request_id"], request_id.as_str());
    assert!(decision["scores"].is_array(), "{decision}");
    assert_eq!(decision["chosen"], "strong");
}

#[test]
fn a_fatal_error_is_a_json_line_when_json_logs_are_chosen() {
    let mut scheduler = Proc::spawn_with(
        L2D,
        &[
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--pool",
            "/nonexistent/pool.toml",
        ],
        &[("L2D_LOG_FORMAT", "json")],
    );
    let lines = json_lines(&scheduler.all_lines());
    assert!(!scheduler.exit_success());
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/pool.toml"),
        "{last}"
    );
}

/// Every query the scheduler answered is in its decision log after SIGTERM, across rotations,
/// with the answer it gave (lines reach the file as they are written; close flushes them to
/// disk).
#[test]
fn the_decision_log_keeps_every_answered_query_through_rotation_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let mut up = Proc::spawn(&[
        "up",
        "--listen",
        "127.0.0.1:0",
        "--decision-log",
        log.to_str().unwrap(),
        "--decision-log-max-mib",
        "1",
        // The background flush runs throughout, beside rotations and the flush at shutdown.
        "--decision-log-fsync",
        "5ms",
    ]);
    let router = up.address_in("scheduler serving");
    up.wait_for("l2d: try");
    let report = dir.path().join("load.json");
    let out = l2d(&[
        "load",
        "--router",
        &router,
        "--warmup",
        "0s",
        "--limit",
        "4000",
        "--duration",
        "120s",
        "--concurrency",
        "16",
        "--json",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    up.signal("TERM");
    assert!(up.exit_success());
    let decisions = l2d::scheduler::decision_log::read_log(&log).unwrap();
    assert_eq!(decisions.len() as u64, report["count"].as_u64().unwrap());
    assert!(
        !l2d::scheduler::decision_log::rotated_files(&log)
            .unwrap()
            .is_empty()
    );
    assert!(decisions.iter().all(|d| d.answer.is_some()));
    let ids: std::collections::HashSet<&str> =
        decisions.iter().map(|d| d.request_id.as_str()).collect();
    assert_eq!(ids.len(), decisions.len());
}
