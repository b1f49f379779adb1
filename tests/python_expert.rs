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

fn python() -> Option<String> {
    match std::env::var("L2D_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert!(
                std::env::var("L2D_REQUIRE_PYTHON").is_err(),
                "L2D_REQUIRE_PYTHON is set but L2D_PYTHON is not"
            );
            eprintln!(
                "skipped: set L2D_PYTHON to a python with examples/python_expert/requirements.txt"
            );
            None
        }
    }
}

#[tokio::test]
async fn a_python_expert_registers_and_answers_through_the_router() {
    let Some(python) = python() else { return };
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
