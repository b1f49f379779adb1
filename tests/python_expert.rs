//! The Python expert example (`examples/python_expert`, grpcio) joins a Rust scheduler by
//! registration and answers through `Router.Ask`: the contract works across ecosystems.
//!
//! Needs a Python with the example's requirements: `L2D_PYTHON=/path/to/python`. `.ci/run`
//! installs them into `.venv` and sets `L2D_REQUIRE_PYTHON=1`, so CI fails rather than skips.

mod common;

use common::*;
use l2d::pb::{self, pool_client::PoolClient};
use l2d::scheduler::SchedulerConfig;
use l2d::{Ask, RouterClient};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn a_python_expert_registers_and_answers_through_the_router() {
    let Some(python) = example_python() else {
        return;
    };
    let (node, _scheduler, _local) = spawn_scheduler(SchedulerConfig::default(), None, 0.1).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python_expert/expert.py"
    );
    let mut child = Command::new(&python)
        .args([
            script,
            "--listen",
            "127.0.0.1:0",
            "--id",
            "py-rule",
            "--cost",
            "0.5",
        ])
        .args(["--register", &node.addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the python expert");
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });

    let mut pool = PoolClient::new(node.channel().await);
    eventually(
        Duration::from_secs(30),
        "the python expert to register",
        || {
            let mut pool = pool.clone();
            async move {
                let listed = pool
                    .list_pool(pb::ListPoolRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                listed.experts.iter().any(|e| e.expert_id == "py-rule")
            }
        },
    )
    .await;

    let mut router = RouterClient::from_channel(node.channel().await);
    let context =
        "Super Bowl 50 was played in 2016. The Denver Broncos defeated the Carolina Panthers.";
    let answer = router
        .ask(Ask::new(
            "Which team defeated the Carolina Panthers?",
            context,
        ))
        .await
        .unwrap();
    assert_eq!(answer.expert_id, "py-rule");
    assert_eq!(answer.cost, 0.5);
    assert_eq!(answer.text, "Denver Broncos");
    let span = answer.span.unwrap();
    let chars: Vec<char> = context.chars().collect();
    assert_eq!(
        chars[span.start as usize..span.end as usize]
            .iter()
            .collect::<String>(),
        "Denver Broncos"
    );

    // SIGTERM: the Python worker leaves the pool before it stops.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Wait off the runtime: the scheduler in this process must answer the deregistration.
    let (exited, lines) =
        tokio::task::spawn_blocking(move || (child.wait().unwrap(), log.join().unwrap()))
            .await
            .unwrap();
    assert!(
        exited.success(),
        "python expert failed:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.contains("left the pool")),
        "{}",
        lines.join("\n")
    );
    let listed = pool
        .list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.experts.is_empty(), "{listed:?}");
    node.stop().await;
}

/// `examples/python_client/conformance.py` (grpcio, grpcio-health-checking, grpcio-reflection)
/// checks a scheduler's health service, reflection, and `Router.Ask`'s documented status codes,
/// with and without deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_finds_the_documented_contract() {
    let Some(python) = example_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &replay_pair(Some(0.5), Some(0.9)));
    let (node, _scheduler, _local) =
        spawn_scheduler(SchedulerConfig::default(), Some(&pool), 0.1).await;

    // A second scheduler whose only expert takes an hour.
    let backend = l2d::expert::replay::ReplayBackend::load(
        &fixture("strong-predictions.json"),
        Some(mini_squad()),
        10.0,
    )
    .unwrap();
    let slow = l2d::expert::ExpertNode::new("strong", 10.0, std::sync::Arc::new(backend))
        .with_delay(Duration::from_secs(3600));
    let slow_expert = spawn_node(move |listener, stopped| {
        l2d::expert::serve(listener, slow, None, async {
            let _ = stopped.await;
        })
    })
    .await;
    let (slow_node, slow_scheduler, _none) =
        spawn_scheduler(SchedulerConfig::default(), None, 0.1).await;
    slow_scheduler
        .registry
        .declare_expert("strong", 10.0, "replay");
    slow_scheduler
        .registry
        .add_fixed_replica(
            "strong",
            &slow_expert.addr.to_string(),
            l2d::scheduler::registry::Origin::Static,
            None,
        )
        .unwrap();

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python_client/conformance.py"
    );
    let router = node.addr.to_string();
    let slow_router = slow_node.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args([script, "--router", &router, "--slow-router", &slow_router])
            .output()
            .expect("run the python client")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("conformance: every check passed"),
        "{stdout}"
    );
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 15,
        "{stdout}"
    );
}
