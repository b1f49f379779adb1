//! Experts backed by real model servers, started by the tests: MLServer serving a small Python
//! model over the Open Inference Protocol (`backend = "kserve"`), and llama.cpp's
//! OpenAI-compatible server (`llama-cpp-python`) serving a tiny random llama model the test
//! writes with `gguf` (`backend = "openai"`).
//!
//! Needs a Python with `tests/servers/requirements.txt`: `L2D_SERVERS_PYTHON=/path/to/python`.
//! `.ci/run` installs them into `.venv-servers` and sets `L2D_REQUIRE_SERVERS=1`, so CI fails
//! rather than skips.

mod common;

use common::*;
use l2d::pb::{self, expert_client::ExpertClient};
use l2d::pool_file::PoolFile;
use l2d::{Ask, RouterClient};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn python() -> Option<PathBuf> {
    match std::env::var("L2D_SERVERS_PYTHON") {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            assert!(
                std::env::var("L2D_REQUIRE_SERVERS").is_err(),
                "L2D_REQUIRE_SERVERS is set but L2D_SERVERS_PYTHON is not"
            );
            eprintln!(
                "skipped: set L2D_SERVERS_PYTHON to a python with tests/servers/requirements.txt"
            );
            None
        }
    }
}

fn servers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers")
}

/// A model server process, stopped (SIGTERM, then SIGKILL) when dropped. It runs in a folder
/// of its own with a clean environment (both servers read settings from environment
/// variables and from files in their working folder).
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn command(program: &Path, dir: &tempfile::TempDir) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// MLServer serving `tests/servers/mlserver_qa` (model `qa`) on `port` (gRPC).
    fn mlserver(python: &Path, port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Self::command(&python.with_file_name("mlserver"), &dir)
            .args(["start", servers_dir().join("mlserver_qa").to_str().unwrap()])
            .env("MLSERVER_GRPC_PORT", port.to_string())
            .env("MLSERVER_HTTP_PORT", common::free_port().to_string())
            .stderr(Stdio::null())
            .spawn()
            .expect("start MLServer");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// llama.cpp's OpenAI-compatible server on 127.0.0.1:0, serving a tiny random llama model
    /// (written by `tests/servers/tiny_llama.py`) as `tiny`, one thread, a 512-token window.
    fn llama(python: &Path, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny.gguf");
        let status = Command::new(python)
            .arg(servers_dir().join("tiny_llama.py"))
            .arg(&model)
            .status()
            .unwrap();
        assert!(status.success(), "tiny_llama.py failed");
        let mut child = Self::command(python, &dir)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&model)
            .args([
                "--model_alias",
                "tiny",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ])
            .args([
                "--n_ctx",
                "512",
                "--n_threads",
                "1",
                "--n_threads_batch",
                "1",
            ])
            .args(["--verbose", "False"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start llama_cpp.server");
        // Uvicorn names the port it bound on stderr once the model is loaded.
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
        let port = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                let (_, rest) = line.split_once("Uvicorn running on http://127.0.0.1:")?;
                rest.split(' ').next()?.parse::<u16>().ok()
            })
            .expect("llama_cpp.server to report its port");
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pool file in `dir` with the given experts.
fn pool(dir: &Path, body: &str) -> PoolFile {
    let path = dir.join("pool.toml");
    std::fs::write(&path, body).unwrap();
    PoolFile::load(&path).unwrap()
}

/// The worker of `spec` (the pool's first expert) on loopback, as `l2d expert --pool` runs it,
/// asking its model server whether it is ready every 100 ms.
async fn spawn_worker(pool: &PoolFile) -> Node {
    let spec = pool.experts[0].clone();
    let model = l2d::cluster::build_model(&spec, &Default::default()).unwrap();
    let node = l2d::expert::ExpertNode::for_model(spec.id, spec.cost, model)
        .with_max_concurrency(spec.max_in_flight.unwrap_or(0))
        .with_readiness_interval(Duration::from_millis(100));
    spawn_node(move |listener, stopped| {
        l2d::expert::serve(listener, node, None, async {
            let _ = stopped.await;
        })
    })
    .await
}

async fn health(node: &Node) -> Option<ServingStatus> {
    let mut client = HealthClient::new(node.channel().await);
    let reply = client
        .check(HealthCheckRequest {
            service: "l2d.v1.Expert".into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

async fn wait_health(node: &Node, wanted: ServingStatus, what: &str) {
    eventually(Duration::from_secs(60), what, || async {
        health(node).await == Some(wanted)
    })
    .await;
}

/// `Expert.Answer` on a worker.
async fn answer(
    node: &Node,
    question: &str,
    context: &str,
) -> Result<pb::AnswerResponse, tonic::Status> {
    let mut client = ExpertClient::new(node.channel().await);
    client
        .answer(answer_request(question, context, None))
        .await
        .map(tonic::Response::into_inner)
}

/// `Expert.Answer` called on the pool's first expert in process, with a deadline: the status
/// is the worker's own (over the wire, a client gives up at the deadline before the worker's
/// status can arrive).
async fn answer_within(
    pool: &PoolFile,
    question: &str,
    context: &str,
    deadline: Duration,
) -> Result<pb::AnswerResponse, tonic::Status> {
    use l2d::pb::expert_server::Expert;
    let spec = pool.experts[0].clone();
    let model = l2d::cluster::build_model(&spec, &Default::default()).unwrap();
    let node = std::sync::Arc::new(l2d::expert::ExpertNode::for_model(
        spec.id, spec.cost, model,
    ));
    let mut request = tonic::Request::new(answer_request(question, context, None));
    request.set_timeout(deadline);
    node.answer(request).await.map(tonic::Response::into_inner)
}

/// The backend a worker describes and the concurrency limit it announces.
async fn announced(client: &mut ExpertClient<tonic::transport::Channel>) -> (String, u32) {
    let described = client
        .describe(pb::DescribeRequest {})
        .await
        .unwrap()
        .into_inner();
    (described.backend, described.max_concurrency)
}

/// The text of `context` at the code-point span of `reply`.
fn text_at(context: &str, reply: &pb::AnswerResponse) -> String {
    let span = reply.span.as_ref().expect("a span");
    context
        .chars()
        .skip(span.start as usize)
        .take((span.end - span.start) as usize)
        .collect()
}

fn kserve_entry(id: &str, port: u16, model: &str, extra: &str) -> String {
    format!(
        "[[expert]]\nid = \"{id}\"\nbackend = \"kserve\"\nurl = \"http://127.0.0.1:{port}\"\nmodel = \"{model}\"\ncost = 3\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kserve_expert_answers_through_mlserver_and_maps_its_failures() {
    let Some(python) = python() else { return };
    let port = common::free_port();
    let _mlserver = Server::mlserver(&python, port);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(
        dir.path(),
        &kserve_entry("reader", port, "qa", "max_in_flight = 2"),
    );
    let worker = spawn_worker(&pool).await;
    wait_health(
        &worker,
        ServingStatus::Serving,
        "MLServer's model to be ready",
    )
    .await;

    // The model's answer and span, as the context's own text.
    let context = "Zürich is in Switzerland. It is large.";
    let reply = answer(&worker, "Where is Zürich?", context).await.unwrap();
    assert_eq!(reply.text, "Zürich is in Switzerland");
    assert_eq!(text_at(context, &reply), reply.text);
    assert_eq!(reply.compute.unwrap().units, 3.0);
    // An empty answer is "no answer".
    let empty = answer(&worker, "empty:", context).await.unwrap();
    assert_eq!((empty.text.as_str(), empty.span), ("", None));

    // The model's error is INTERNAL with the server's message.
    let failed = answer(&worker, "fail:boom", context).await.unwrap_err();
    assert_eq!(failed.code(), Code::Internal, "{failed:?}");
    assert!(
        failed.message().contains("injected failure: boom"),
        "{failed:?}"
    );

    // The caller's deadline bounds the call to the server.
    let late = answer_within(&pool, "sleep:5", context, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(late.message().contains("caller's deadline"), "{late:?}");
    // The backend's own timeout, with the caller's time left: UNAVAILABLE (another replica or
    // expert may answer), not the end of the query.
    let hasty = pool_in(
        &dir,
        &kserve_entry("hasty", port, "qa", "timeout = \"200ms\""),
    );
    let hasty = answer_within(&hasty, "sleep:5", context, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(hasty.code(), Code::Unavailable, "{hasty:?}");
    assert!(
        hasty.message().contains("backend's timeout (200 ms)"),
        "{hasty:?}"
    );

    // The pool's max_in_flight is the worker's limit and what it announces: two at the model
    // server, the others queued at the worker.
    let mut client = ExpertClient::new(worker.channel().await);
    assert_eq!(announced(&mut client).await, ("kserve".into(), 2));
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let worker = worker.addr;
            tokio::spawn(async move {
                let mut client = ExpertClient::connect(format!("http://{worker}"))
                    .await
                    .unwrap();
                client
                    .answer(answer_request("sleep:1.5", "One. Two.", None))
                    .await
                    .map(|r| r.into_inner().text)
            })
        })
        .collect();
    eventually(
        Duration::from_secs(20),
        "two calls in flight, two queued",
        || {
            let mut client = client.clone();
            async move {
                let d = client
                    .describe(pb::DescribeRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                assert!(d.in_flight <= 2, "{d:?}");
                (d.in_flight, d.queue_depth) == (2, 2)
            }
        },
    )
    .await;
    for call in slow {
        assert_eq!(call.await.unwrap().unwrap(), "One");
    }

    // A model the server does not have: the worker is not ready, and a call is INTERNAL with
    // the server's message.
    let missing = pool_in(&dir, &kserve_entry("missing", port, "nope", ""));
    let worker = spawn_worker(&missing).await;
    wait_health(
        &worker,
        ServingStatus::NotServing,
        "an unknown model to be not ready",
    )
    .await;
    let refused = answer(&worker, "Where?", context).await.unwrap_err();
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    assert!(refused.message().contains("nope"), "{refused:?}");
}

/// A second pool file beside the first.
fn pool_in(dir: &tempfile::TempDir, body: &str) -> PoolFile {
    let sub = dir.path().join(format!("{}", body.len()));
    std::fs::create_dir_all(&sub).unwrap();
    pool(&sub, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kserve_workers_health_follows_the_model_server() {
    let Some(python) = python() else { return };
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path(), &kserve_entry("reader", port, "qa", ""));
    // Nothing listens yet: not serving, and a call is UNAVAILABLE.
    let worker = spawn_worker(&pool).await;
    assert_eq!(health(&worker).await, Some(ServingStatus::NotServing));
    let down = answer(&worker, "Where?", "Here. There.").await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");

    let mut mlserver = Server::mlserver(&python, port);
    wait_health(
        &worker,
        ServingStatus::Serving,
        "the worker to follow the server up",
    )
    .await;
    assert_eq!(
        answer(&worker, "Where?", "Here. There.")
            .await
            .unwrap()
            .text,
        "Here"
    );
    mlserver.stop();
    wait_health(
        &worker,
        ServingStatus::NotServing,
        "the worker to follow the server down",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_model_servers_is_served_and_labelled_unchanged() {
    let Some(python) = python() else { return };
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    // The kserve expert beside a recorded one, as a team would mix them.
    let body = format!(
        "{}{}",
        kserve_entry("reader", port, "qa", "accuracy = 0.9"),
        replay_pair(Some(0.6), Some(0.5)).replace("FIXTURES", fixture("").to_str().unwrap())
    );
    let pool = pool(dir.path(), &body);
    let config = l2d::scheduler::SchedulerConfig {
        health_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let (node, scheduler, local) = spawn_scheduler(config, Some(&pool), 0.0).await;
    let mut router = RouterClient::connect(&node.uri()).await.unwrap();
    // While the model server is down, the worker says NOT_SERVING and the scheduler's health
    // check takes it out of rotation: the policy's favourite is not even tried.
    eventually(
        Duration::from_secs(20),
        "the reader's replica to be out of rotation",
        || {
            let snapshot = scheduler.registry.snapshot();
            let reader = snapshot
                .experts
                .iter()
                .find(|g| g.entry.id == "reader")
                .map(|g| g.replicas.iter().all(|r| r.is_draining()));
            async move { reader == Some(true) }
        },
    )
    .await;
    let reply = router.ask(Ask::new(SB_AFC, SB_CONTEXT)).await.unwrap();
    let decision = reply.decision.unwrap();
    assert_ne!(reply.expert_id, "reader");
    let reader = decision
        .scores
        .iter()
        .find(|s| s.expert_id == "reader")
        .unwrap();
    assert!(!reader.eligible, "{reader:?}");
    assert!(
        decision.fallbacks.iter().all(|f| f.expert_id != "reader"),
        "{:?}",
        decision.fallbacks
    );
    // Once it is ready, the scheduler's health check finds it so, and it answers.
    let _mlserver = Server::mlserver(&python, port);
    let mut from_reader = None;
    for _ in 0..600 {
        match router.ask(Ask::new(SB_AFC, SB_CONTEXT)).await {
            Ok(reply) if reply.expert_id == "reader" => {
                from_reader = Some(reply);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let reply = from_reader.expect("an answer from the model server within a minute");
    assert_eq!(reply.text, "Super Bowl 50 was an American football game");

    // `l2d label` on the same pool: every expert's answer to every question, the model
    // server's included.
    let labels = dir.path().join("labels.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_l2d"))
        .args(["label", "--pool"])
        .arg(&pool.path)
        .args(["--data"])
        .arg(fixture("mini-squad.json"))
        .arg("--out")
        .arg(&labels)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&labels).unwrap();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["experts"][0]["id"], "reader", "{header}");
    let sb: serde_json::Value = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["id"] == "sb-afc")
        .unwrap();
    assert_eq!(
        sb["experts"][0]["answer"], "Super Bowl 50 was an American football game",
        "{sb}"
    );
    // `l2d experts-report` too: every question answered by the model server, none failed.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_l2d"))
        .args(["experts-report", "--json", "--pool"])
        .arg(&pool.path)
        .arg("--data")
        .arg(fixture("mini-squad.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reader = &reports[0];
    assert_eq!(
        (&reader["expert_id"], &reader["backend"]),
        (&"reader".into(), &"kserve".into())
    );
    assert!(reader["questions"].as_u64().unwrap() > 0, "{reader}");
    assert_eq!(reader["errors"], serde_json::json!({}), "{reader}");
    local.shutdown().await.unwrap();
}

fn openai_entry(id: &str, port: u16, extra: &str) -> String {
    format!(
        "[[expert]]\nid = \"{id}\"\nbackend = \"openai\"\nurl = \"http://127.0.0.1:{port}/v1\"\nmodel = \"tiny\"\nmax_tokens = 8\ncost = 50\n{extra}\n"
    )
}

/// Contexts the tiny model's words (Bob, went, home, the…) can land in, and one that cannot.
const CONTEXTS: &[(&str, &str)] = &[
    ("Who went home?", "Bob went home. The cat is a pet."),
    (
        "What is the cat?",
        "The cat is a pet, and Bob is the owner.",
    ),
    ("When?", "In 1990, during winter."),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_expert_answers_through_llama_cpp_aligned_or_not_at_all() {
    let Some(python) = python() else { return };
    let mut llama = Server::llama(&python, &[]);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(
        dir.path(),
        &openai_entry("llm", llama.port, "max_in_flight = 1"),
    );
    let worker = spawn_worker(&pool).await;
    wait_health(
        &worker,
        ServingStatus::Serving,
        "llama.cpp's server to list the model",
    )
    .await;

    // The output is gibberish: whatever comes back is a span of the context (its own text at
    // the span) or an explicit no-answer, and the tokens are the compute spent.
    for (question, context) in CONTEXTS {
        let reply = answer(&worker, question, context).await.unwrap();
        if reply.text.is_empty() {
            assert_eq!(reply.span, None, "{reply:?}");
        } else {
            assert_eq!(text_at(context, &reply), reply.text, "{reply:?}");
        }
        assert!(reply.compute.unwrap().units > 8.0, "{reply:?}");
    }

    // One call at a time, as announced; the others wait at the worker and are all answered.
    let mut client = ExpertClient::new(worker.channel().await);
    assert_eq!(announced(&mut client).await, ("openai".into(), 1));
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let (question, context) = CONTEXTS[i % CONTEXTS.len()];
                client.answer(answer_request(question, context, None)).await
            })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().is_ok());
    }

    // A context beyond the model's window: the server's 400 is INTERNAL with its message.
    let long = "Bob went home. ".repeat(200);
    let refused = answer(&worker, "Who?", &long).await.unwrap_err();
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    assert!(
        refused.message().contains("HTTP 400") && refused.message().contains("context length"),
        "{refused:?}"
    );

    // The caller's deadline, and the pool's timeout, each bound a call.
    // (A long completion: 300 tokens take the tiny model over a hundred milliseconds.)
    let long = openai_entry("long", llama.port, "").replace("max_tokens = 8", "max_tokens = 300");
    let long = pool_in(&dir, &long);
    let late = answer_within(&long, "Who?", CONTEXTS[1].1, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(late.message().contains("caller's deadline"), "{late:?}");
    let hasty = pool_in(
        &dir,
        &openai_entry("hasty", llama.port, "timeout = \"1ms\""),
    );
    let hasty = spawn_worker(&hasty).await;
    let late = answer(&hasty, "Who?", CONTEXTS[1].1).await.unwrap_err();
    assert_eq!(late.code(), Code::Unavailable, "{late:?}");
    assert!(
        late.message().contains("backend's timeout (1 ms)"),
        "{late:?}"
    );

    // A model the server does not list: not ready.
    let other = pool_in(
        &dir,
        &openai_entry("other", llama.port, "").replace("\"tiny\"", "\"gpt-4\""),
    );
    let other = spawn_worker(&other).await;
    wait_health(
        &other,
        ServingStatus::NotServing,
        "an unlisted model to be not ready",
    )
    .await;

    // The server gone: UNAVAILABLE, and the worker stops serving.
    llama.stop();
    let down = answer(&worker, "Who?", CONTEXTS[0].1).await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    wait_health(
        &worker,
        ServingStatus::NotServing,
        "the worker to follow the server down",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_comes_from_the_named_variable_and_is_never_printed() {
    let Some(python) = python() else { return };
    const KEY: &str = "l2d-test-key-4f1c";
    let llama = Server::llama(&python, &["--api_key", KEY]);
    let dir = tempfile::tempdir().unwrap();
    let body = openai_entry("llm", llama.port, "api_key_env = \"L2D_TEST_LLM_KEY\"");
    std::fs::write(dir.path().join("pool.toml"), &body).unwrap();
    let pool = dir.path().join("pool.toml");
    // `l2d expert --pool`, as a deployment runs it, with the key in its environment (right,
    // then wrong).
    let run = |key: &str| {
        common::process::Proc::spawn_with(
            env!("CARGO_BIN_EXE_l2d"),
            &[
                "expert",
                "--pool",
                pool.to_str().unwrap(),
                "--id",
                "llm",
                "--listen",
                "127.0.0.1:0",
            ],
            &[("L2D_TEST_LLM_KEY", key), ("RUST_LOG", "debug")],
        )
    };
    let mut worker = run(KEY);
    let address = worker.address_in("expert serving");
    let mut client = ExpertClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let (question, context) = CONTEXTS[0];
    let mut answered = None;
    for _ in 0..300 {
        match client.answer(answer_request(question, context, None)).await {
            Ok(reply) => {
                answered = Some(reply.into_inner());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(answered.is_some(), "no answer with the right key");
    let mut wrong = run("not-the-key");
    let address = wrong.address_in("expert serving");
    let mut client = ExpertClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let refused = client
        .answer(answer_request(question, context, None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    assert!(refused.message().contains("HTTP 401"), "{refused:?}");
    for proc in [&worker, &wrong] {
        proc.signal("TERM");
    }
    for (proc, key) in [(&mut worker, KEY), (&mut wrong, "not-the-key")] {
        let log = proc.all_lines().join("\n");
        assert!(log.contains("expert serving"), "{log}");
        assert!(!log.contains(key), "the key was printed:\n{log}");
    }
}
