//! Distributed traces across the scheduler and a Python expert, received by a real OTLP/gRPC
//! receiver (`tests/otel/receiver.py`, built on the official `opentelemetry-proto` definitions):
//! the caller's W3C trace context is the parent of the scheduler's request span, each expert
//! call is a child span of that, and the Python expert (`examples/python_expert`, OpenTelemetry
//! SDK) continues the trace under the call's span.
//!
//! Needs a Python with the example's requirements and requirements-tracing.txt: `L2D_PYTHON`.
//! `.ci/run` installs them and sets `L2D_REQUIRE_PYTHON=1`, so CI fails rather than skips.

mod common;

use common::example_python;
use common::process::Proc;
use l2d::pb;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn terminate(child: &mut Killed) {
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.0.wait().unwrap().success());
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const QUESTION: &str = "Which team defeated the Carolina Panthers?";

#[test]
fn a_trace_runs_from_the_caller_through_the_scheduler_into_a_python_expert() {
    let Some(python) = example_python() else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");

    // The receiver: its port, then one JSON line per span.
    let mut receiver = Killed(
        Command::new(&python)
            .args([&format!("{root}/tests/otel/receiver.py")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the receiver"),
    );
    let (tx, spans) = mpsc::channel::<String>();
    let stdout = receiver.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = spans.recv_timeout(Duration::from_secs(30)).unwrap();
    let port = first
        .strip_prefix("listening ")
        .expect("the receiver's port");
    let endpoint = format!("http://127.0.0.1:{port}");

    let mut scheduler = Proc::spawn(&[
        "scheduler",
        "--listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        &endpoint,
    ]);
    let router = scheduler.address_in("scheduler serving");
    let mut expert = Killed(
        Command::new(&python)
            .args([
                &format!("{root}/examples/python_expert/expert.py"),
                "--listen",
                "127.0.0.1:0",
                "--id",
                "py-rule",
                "--register",
                &router,
                "--otlp-endpoint",
                &endpoint,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the python expert"),
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime.block_on(async {
        let mut client = pb::router_client::RouterClient::connect(format!("http://{router}"))
            .await
            .unwrap();
        let ask = || {
            let mut request = tonic::Request::new(pb::AskRequest {
                question: QUESTION.into(),
                context: "The Denver Broncos defeated the Carolina Panthers.".into(),
                ..Default::default()
            });
            request.metadata_mut().insert(
                "traceparent",
                format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
                    .parse()
                    .unwrap(),
            );
            request
        };
        // Until the expert has joined the pool (a hang guard, not a timing assertion).
        for _ in 0..300 {
            match client.ask(ask()).await {
                Ok(answer) => return answer.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("{status:?}"),
            }
        }
        panic!("the python expert never joined the pool");
    });
    assert_eq!(answer.expert_id, "py-rule");
    // Both flush their spans when they stop.
    terminate(&mut expert);
    scheduler.signal("TERM");
    assert!(scheduler.exit_success());

    // The asks made before the expert joined have spans too (UNAVAILABLE): read until the
    // answered request's three spans are in.
    let mut received: Vec<Value> = Vec::new();
    let find = |received: &[Value], service: &str, name: &str, parent: Option<&Value>| {
        received
            .iter()
            .find(|s| {
                s["service"] == service
                    && s["name"] == name
                    && parent.is_none_or(|p| s["span_id"] == *p)
            })
            .cloned()
    };
    let (request, call, python_span) = loop {
        let python_span = find(&received, "py-rule", "l2d.v1.Expert/Answer", None);
        let call = python_span.as_ref().and_then(|p| {
            find(
                &received,
                "l2d-scheduler",
                "l2d.v1.Expert/Answer",
                Some(&p["parent_span_id"]),
            )
        });
        let request = call.as_ref().and_then(|c| {
            find(
                &received,
                "l2d-scheduler",
                "l2d.v1.Router/Ask",
                Some(&c["parent_span_id"]),
            )
        });
        if let (Some(r), Some(c), Some(p)) = (request, call, python_span) {
            break (r, c, p);
        }
        let line = spans
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}: spans so far {received:#?}"));
        received.push(serde_json::from_str(&line).unwrap());
    };
    let (request, call, python_span) = (&request, &call, &python_span);
    // One trace, the caller's: caller -> request -> call -> the expert's own span.
    for span in [request, call, python_span] {
        assert_eq!(span["trace_id"], CALLER_TRACE, "{received:#?}");
    }
    assert_eq!(request["parent_span_id"], CALLER_SPAN);
    assert_eq!(call["parent_span_id"], request["span_id"]);
    assert_eq!(python_span["parent_span_id"], call["span_id"]);
    // Server, client, server; the call names its expert, replica, attempt and status.
    assert_eq!(
        (&request["kind"], &call["kind"], &python_span["kind"]),
        (&Value::from(2), &Value::from(3), &Value::from(2))
    );
    let attributes = &call["attributes"];
    assert_eq!(attributes["l2d.expert"], "py-rule");
    assert_eq!(attributes["l2d.attempt"], 1);
    assert_eq!(attributes["rpc.grpc.status_code"], 0);
    assert!(
        attributes["l2d.replica"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(request["attributes"]["l2d.answered_by"], "py-rule");
    // Never the query's text.
    for span in &received {
        assert!(!span.to_string().contains("Carolina"), "{span}");
    }
}
