//! Fault drills over real processes on loopback, bounded in time and count. Each drill runs
//! load through the fault and reports what happened to every request: sent, answered, failed
//! (by status code), lost (neither an answer nor a status: must be 0). The reports are printed
//! (`cargo test --test faults -- --nocapture`), appended to `target/tmp/reliability.md`, and
//! summarised in RELIABILITY.md.

mod common;

use common::cluster::*;
use common::process::Proc;
use l2d::pb::{self, pool_client::PoolClient};
use l2d::{Ask, RouterClient};
use std::time::Duration;

fn signal(proc: &Proc, signal: &str) {
    proc.signal(signal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_no_call() {
    let (a, addr_a) = expert("strong", &[]);
    let (_b, addr_b) = expert("strong", &[]);
    let (_c, addr_c) = expert("cheap", &[]);
    let dir = tempfile::tempdir().unwrap();
    let body = pool_entry("strong", 0.9, &addresses(&[&addr_a, &addr_b]))
        + &pool_entry("cheap", 0.5, &addresses(&[&addr_c]));
    // Health checks slowed down: the killed replica must be found out by the calls themselves.
    let (_s, router, _) = scheduler(dir.path(), &body, &["--health-interval", "60s"]);

    let pid = a.child.id();
    let outcomes = load(&router, questions(), 600, 4, 150, move || {
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    })
    .await;
    assert_eq!(outcomes.len(), 600);
    Report::of("expert replica killed (SIGKILL) under load", &outcomes).publish();
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    let counts = by_replica(&outcomes);
    assert!(counts.get(&addr_a).copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(counts.get(&addr_b).copied().unwrap_or(0) > 0, "{counts:?}");
    // The calls that hit the dead replica were retried elsewhere, and said so.
    let retried: Vec<&pb::AskResponse> = outcomes
        .iter()
        .flatten()
        .filter(|r| {
            r.decision
                .as_ref()
                .is_some_and(|d| d.fallbacks.iter().any(|f| f.replica == addr_a))
        })
        .collect();
    assert!(
        !retried.is_empty(),
        "no call recorded a fallback from the killed replica"
    );
    assert!(retried.iter().all(|r| r.replica != addr_a));
    drop(a);

    // The pool shows the dead replica's failures, and ejected it.
    let listed = list_pool(&router).await;
    let dead = listed
        .experts
        .iter()
        .flat_map(|e| &e.replicas)
        .find(|r| r.address == addr_a)
        .unwrap_or_else(|| panic!("{addr_a} not in {listed:?}"));
    assert!(dead.failed_total >= 1, "{dead:?}");
    assert!(dead.error_rate > 0.0, "{dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_is_timed_out_retried_and_ejected() {
    let (hung, addr_hung) = expert("strong", &[]);
    let (_ok, addr_ok) = expert("strong", &[]);
    let dir = tempfile::tempdir().unwrap();
    let body = pool_entry("strong", 0.9, &addresses(&[&addr_hung, &addr_ok]));
    let (_s, router, _) = scheduler(
        dir.path(),
        &body,
        &["--try-timeout", "300ms", "--health-interval", "500ms"],
    );
    // SIGSTOP: the process is alive, its socket accepts, nothing answers.
    let outcomes = load(&router, questions(), 400, 4, 100, {
        let pid = hung.child.id();
        move || {
            std::process::Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status()
                .unwrap();
        }
    })
    .await;
    Report::of("expert replica frozen (SIGSTOP) under load", &outcomes).publish();
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    let timed_out = outcomes
        .iter()
        .flatten()
        .filter(|r| {
            r.decision.as_ref().is_some_and(|d| {
                d.fallbacks
                    .iter()
                    .any(|f| f.replica == addr_hung && f.message.contains("try timeout"))
            })
        })
        .count();
    assert!(
        timed_out >= 1,
        "no call was timed out on the frozen replica"
    );
    // Its health check fails too: it is ejected, out of the rotation.
    common::eventually(
        Duration::from_secs(10),
        "the frozen replica's ejection",
        || async {
            list_pool(&router).await.experts[0]
                .replicas
                .iter()
                .any(|r| r.address == addr_hung && r.ejected_ms > 0)
        },
    )
    .await;
    signal(&hung, "CONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_fall_back_and_empty_answers_are_answers() {
    let (_bad, addr_bad) = expert("strong", &["--fault", "malformed"]);
    let (_empty, addr_empty) = expert("strong", &["--fault", "empty"]);
    let (_good, addr_good) = expert("cheap", &[]);
    let dir = tempfile::tempdir().unwrap();
    // The policy prefers the malformed expert; the good one is the fallback.
    let body = pool_entry("strong", 0.9, &addresses(&[&addr_bad]))
        + &pool_entry("cheap", 0.5, &addresses(&[&addr_good]));
    let (_s, router, _) = scheduler(dir.path(), &body, &["--eject-after", "1000"]);
    let outcomes = load(&router, questions_both_answer(), 100, 4, usize::MAX, || {}).await;
    Report::of("expert returns malformed spans", &outcomes).publish();
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    for r in outcomes.iter().flatten() {
        assert_eq!(r.expert_id, "cheap");
        let d = r.decision.as_ref().unwrap();
        assert!(
            d.fallbacks
                .iter()
                .any(|f| f.code == "INTERNAL" && f.message.contains("malformed answer")),
            "{d:?}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let body = pool_entry("strong", 0.9, &addresses(&[&addr_empty]));
    let (_s2, router, _) = scheduler(dir.path(), &body, &[]);
    let outcomes = load(&router, questions(), 100, 4, usize::MAX, || {}).await;
    Report::of("expert returns empty answers", &outcomes).publish();
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    assert!(
        outcomes
            .iter()
            .flatten()
            .all(|r| r.text.is_empty() && r.span.is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experts_register_again_with_a_restarted_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let pool_path = dir.path().join("pool.toml");
    std::fs::write(&pool_path, pool_entry("strong", 0.9, "replicas = 0")).unwrap();
    let pool = pool_path.to_str().unwrap().to_string();
    let router = format!("127.0.0.1:{}", common::free_port());
    let start = || {
        let mut s = Proc::spawn(&["scheduler", "--listen", &router, "--pool", &pool, "--prior"]);
        s.wait_for("scheduler serving");
        s
    };
    let first = start();
    let mut experts = Vec::new();
    for _ in 0..2 {
        let (mut e, _) = expert("strong", &["--register", &router, "--lease-ttl", "1s"]);
        e.wait_for("registered with scheduler");
        experts.push(e);
    }

    // Sequential asks with short deadlines through one client, across the restart.
    let questions = questions();
    let mut client = RouterClient::connect(&router).await.unwrap();
    let mut outcomes = Vec::new();
    let ask = |i: usize| {
        let (id, q, c) = &questions[i % questions.len()];
        Ask::new(q.as_str(), c.as_str())
            .id(id.as_str())
            .timeout(Duration::from_millis(500))
    };
    for i in 0..50 {
        outcomes.push(ask_or_lost(&mut client, ask(i)).await);
    }
    signal(&first, "KILL");
    drop(first);
    // While it is down: clear failures, no hang.
    for i in 0..20 {
        outcomes.push(ask_or_lost(&mut client, ask(i)).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _second = start();
    // The workers find out at their next heartbeat (NOT_FOUND or unreachable) and register
    // again; asks answer once they have.
    let mut recovered = false;
    for i in 0..400 {
        let outcome = ask_or_lost(&mut client, ask(i)).await;
        let ok = outcome.is_ok();
        outcomes.push(outcome);
        if ok {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(recovered, "the workers never joined the new scheduler");
    for i in 0..50 {
        outcomes.push(ask_or_lost(&mut client, ask(i)).await);
    }
    let report = Report::of(
        "scheduler restarted (SIGKILL), experts keep running",
        &outcomes,
    );
    report.publish();
    assert_eq!(report.lost, 0);
    // Failures only while it was down, and only the documented one: UNAVAILABLE, the
    // connection refused (the kill comes between calls, so no call is cut mid-stream).
    assert!(
        outcomes[..50].iter().all(|r| r.is_ok()),
        "failures before the kill"
    );
    assert!(report.failed.contains_key("UNAVAILABLE"), "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    // Everything after the recovery answered.
    assert!(outcomes[outcomes.len() - 50..].iter().all(|r| r.is_ok()));
    for mut e in experts {
        e.wait_for("registered with scheduler");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_policy_or_pool_file_keeps_the_old_one_serving() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/squad-v1.1.json"),
        &policy,
    )
    .unwrap();
    let pool = dir.path().join("pool.toml");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pools/squad-v1.1.toml"),
        &pool,
    )
    .unwrap();
    // The pool file's relative paths resolve from its folder: point them at the repository.
    let text = std::fs::read_to_string(&pool).unwrap().replace(
        "../data",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data")
            .to_str()
            .unwrap(),
    );
    std::fs::write(&pool, &text).unwrap();
    let mut up = Proc::spawn(&[
        "up",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        pool.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let metrics = up.address_in("metrics serving");
    let router = up.address_in("scheduler serving");
    let mut pools = PoolClient::connect(format!("http://{router}"))
        .await
        .unwrap();
    let before = pools
        .get_policy(pb::GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();

    let dev = l2d::squad::Dataset::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/squad-v1.1/dev.json"),
    )
    .unwrap();
    let dev: Vec<(String, String, String)> = dev
        .questions()
        .take(400)
        .map(|(_, p, q)| (q.id.clone(), q.question.clone(), p.context.clone()))
        .collect();

    // A truncated policy file: the scheduler polls every 2 s, refuses it, keeps the old one.
    std::fs::write(&policy, "{\"format\": \"l2d-policy/1\", \"bank\": [").unwrap();
    let outcomes = load(&router, dev.clone(), 400, 4, usize::MAX, || {}).await;
    up.wait_for("policy reload failed");
    let outcomes = [
        outcomes,
        load(&router, dev.clone(), 200, 4, usize::MAX, || {}).await,
    ]
    .concat();
    Report::of("policy file replaced by a corrupt one", &outcomes).publish();
    assert_eq!(failures(&outcomes), Vec::<String>::new());
    let after = pools
        .get_policy(pb::GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.id, before.id);

    // A pool file with an error: refused whole, the pool keeps serving.
    std::fs::write(&pool, text.replace("cost = 100", "cost = -100")).unwrap();
    up.wait_for("pool file reload failed");
    let outcomes = load(&router, dev, 400, 4, usize::MAX, || {}).await;
    Report::of("pool file with an error at reload", &outcomes).publish();
    assert_eq!(failures(&outcomes), Vec::<String>::new());

    let text = scrape(&metrics);
    for needle in [
        "l2d_policy_reloads_total{result=\"error\"} 1",
        "l2d_policy_reloads_total{result=\"ok\"} 0",
        "l2d_pool_reloads_total{result=\"error\"} 1",
        // What an alert reads: the files in force are not the files on disk.
        "l2d_config_last_reload_success{file=\"policy\"} 0",
        "l2d_config_last_reload_success{file=\"pool\"} 0",
        "l2d_config_last_reload_success_timestamp_seconds{file=\"policy\"}",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }

    // The policy file put back as it was: nothing to apply, and the alert clears.
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/squad-v1.1.json"),
        &policy,
    )
    .unwrap();
    common::eventually(
        std::time::Duration::from_secs(20),
        "the policy's reload gauge to clear",
        || {
            let metrics = metrics.clone();
            async move {
                scrape(&metrics).contains("l2d_config_last_reload_success{file=\"policy\"} 1")
            }
        },
    )
    .await;
    let text = scrape(&metrics);
    assert!(
        text.contains("l2d_config_last_reload_success{file=\"pool\"} 0"),
        "{text}"
    );
}
