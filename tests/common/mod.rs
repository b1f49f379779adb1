//! Shared helpers for the end-to-end tests: real servers on `127.0.0.1:0`, stopped cleanly.

#![allow(dead_code)]

pub mod cluster;
pub mod process;

use l2d::core::policy::PriorPolicy;
use l2d::expert::replay::ReplayBackend;
use l2d::expert::{ExpertNode, Registration};
use l2d::pool_file::PoolFile;
use l2d::scheduler::{Scheduler, SchedulerConfig};
use l2d::squad::Dataset;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn mini_squad() -> Arc<Dataset> {
    Arc::new(Dataset::load(&fixture("mini-squad.json")).unwrap())
}

/// A node serving on loopback until [`Node::stop`] (or drop, which stops without waiting).
pub struct Node {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Node {
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.uri())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Stops the node gracefully and waits until it has drained.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn spawn_node<F>(run: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F) -> Node
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(listener, stopped));
    Node {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A replay expert over the mini SQuAD fixture.
pub async fn spawn_replay_expert(
    id: &str,
    cost: f64,
    predictions: &str,
    registration: Option<Registration>,
) -> Node {
    let backend = ReplayBackend::load(&fixture(predictions), Some(mini_squad()), cost).unwrap();
    let node = ExpertNode::new(id, cost, Arc::new(backend));
    spawn_node(move |listener, stopped| {
        l2d::expert::serve(listener, node, registration, async {
            let _ = stopped.await;
        })
    })
    .await
}

/// A scheduler with the prior policy from `accuracy` at `lambda`, and the experts of `pool`.
pub async fn spawn_scheduler(
    config: SchedulerConfig,
    pool: Option<&PoolFile>,
    lambda: f64,
) -> (Node, Arc<Scheduler>, l2d::cluster::LocalExperts) {
    let policy = match pool {
        Some(pool) => l2d::cluster::prior_policy(pool, Some(lambda)).unwrap(),
        None => PriorPolicy::new(lambda, []).unwrap(),
    };
    serve_scheduler(Scheduler::new(config, Box::new(policy)), pool).await
}

/// A scheduler serving the policy file at `policy_path` (as `l2d up --policy` does, its bank's
/// default lambda), and the experts of `pool`.
pub async fn spawn_policy_scheduler(
    config: SchedulerConfig,
    pool: &PoolFile,
    policy_path: &Path,
) -> (Node, Arc<Scheduler>, l2d::cluster::LocalExperts) {
    let (learned, digest) = l2d::scheduler::load_policy_file(policy_path, None).unwrap();
    let source = l2d::scheduler::PolicySource::File {
        path: policy_path.to_owned(),
        lambda: None,
    };
    let scheduler = Scheduler::with_source(config, Box::new(learned), source, digest);
    serve_scheduler(scheduler, Some(pool)).await
}

/// Like [`spawn_policy_scheduler`], with `candidate` deciding `share` of the requests and the
/// rest in shadow.
pub async fn spawn_scheduler_with_candidate(
    config: SchedulerConfig,
    pool: &PoolFile,
    policy_path: &Path,
    candidate: &Path,
    share: f64,
) -> (Node, Arc<Scheduler>, l2d::cluster::LocalExperts) {
    let (learned, digest) = l2d::scheduler::load_policy_file(policy_path, None).unwrap();
    let source = l2d::scheduler::PolicySource::File {
        path: policy_path.to_owned(),
        lambda: None,
    };
    let candidate =
        l2d::scheduler::candidate::Candidate::load(candidate.to_owned(), None, share).unwrap();
    let scheduler =
        Scheduler::with_source(config, Box::new(learned), source, digest).with_candidate(candidate);
    serve_scheduler(scheduler, Some(pool)).await
}

/// Opens its decision log (if configured), starts `pool`'s experts in `scheduler` and serves
/// it on loopback.
async fn serve_scheduler(
    mut scheduler: Scheduler,
    pool: Option<&PoolFile>,
) -> (Node, Arc<Scheduler>, l2d::cluster::LocalExperts) {
    scheduler.open_decision_log().unwrap();
    let scheduler = Arc::new(scheduler);
    let local = match pool {
        Some(pool) => l2d::cluster::start_pool(pool, &scheduler).await.unwrap(),
        None => Default::default(),
    };
    let s = scheduler.clone();
    let node = spawn_node(move |listener, stopped| {
        l2d::scheduler::serve(listener, s, async {
            let _ = stopped.await;
        })
    })
    .await;
    (node, scheduler, local)
}

/// Pool-file text for two in-process replay experts over the mini fixture: `cheap` (cost 1) and
/// `strong` (cost 10), with the given prior accuracies.
pub fn replay_pair(cheap_accuracy: Option<f64>, strong_accuracy: Option<f64>) -> String {
    let expert = |id: &str, file: &str, cost: u32, accuracy: Option<f64>| {
        let accuracy = accuracy
            .map(|a| format!("accuracy = {a}\n"))
            .unwrap_or_default();
        format!(
            "[[expert]]\nid = \"{id}\"\nbackend = \"replay\"\npredictions = \"FIXTURES/{file}\"\n\
             data = \"FIXTURES/mini-squad.json\"\ncost = {cost}\n{accuracy}\n"
        )
    };
    expert("cheap", "cheap-predictions.json", 1, cheap_accuracy)
        + &expert("strong", "strong-predictions.json", 10, strong_accuracy)
}

/// A free loopback port (bound, then released for the process that will use it: servers that
/// cannot report the port they bound for port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A pool file written into `dir`, with paths to the fixtures.
pub fn pool_file(dir: &Path, body: &str) -> PoolFile {
    let body = body.replace("FIXTURES", fixture("").to_str().unwrap());
    let path = dir.join("pool.toml");
    std::fs::write(&path, body).unwrap();
    PoolFile::load(&path).unwrap()
}

/// Polls `check` every 20 ms until it holds; panics after `limit` (a hang guard, not a timing
/// assertion: the conditions waited for happen within a few lease TTLs).
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Super Bowl 50 passage of the mini fixture, and its AFC question (id `sb-afc`).
pub const SB_CONTEXT: &str = "Super Bowl 50 was an American football game. The American Football Conference (AFC) champion Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers 24-10 to earn their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.";
pub const SB_AFC: &str = "Which NFL team represented the AFC at Super Bowl 50?";

pub fn answer_request(question: &str, context: &str, id: Option<&str>) -> l2d::pb::AnswerRequest {
    l2d::pb::AnswerRequest {
        question: question.into(),
        context: context.into(),
        id: id.map(Into::into),
    }
}

/// Two in-process replay experts: `cheap` (cost 1, prior 0.6) and `strong` (cost 10, prior 0.95).
pub fn two_experts() -> String {
    replay_pair(Some(0.6), Some(0.95))
}

/// An expert with no `Describe` (UNIMPLEMENTED, as a minimal adapter may be): it answers with
/// the context's first word and keeps the request ids it was sent and the `Describe` calls.
#[derive(Clone, Default)]
pub struct Recording {
    pub ids: Arc<std::sync::Mutex<Vec<String>>>,
    pub describes: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl l2d::pb::expert_server::Expert for Recording {
    async fn answer(
        &self,
        request: tonic::Request<l2d::pb::AnswerRequest>,
    ) -> Result<tonic::Response<l2d::pb::AnswerResponse>, tonic::Status> {
        let id = request
            .metadata()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        self.ids.lock().unwrap().push(id);
        let context = request.into_inner().context;
        Ok(tonic::Response::new(l2d::pb::AnswerResponse {
            text: context.split_whitespace().next().unwrap_or("").to_owned(),
            expert_id: "recording".into(),
            ..l2d::pb::AnswerResponse::default()
        }))
    }

    async fn describe(
        &self,
        _request: tonic::Request<l2d::pb::DescribeRequest>,
    ) -> Result<tonic::Response<l2d::pb::DescribeResponse>, tonic::Status> {
        self.describes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(tonic::Status::unimplemented("no Describe here"))
    }
}

/// A [`Recording`] expert on loopback, serving `grpc.health.v1` as SERVING for the Expert
/// interface (static replicas are health-checked).
pub async fn spawn_recording_expert() -> (Node, Recording) {
    let seen = Recording::default();
    let service = seen.clone();
    let node = spawn_node(move |listener, stopped| async move {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("l2d.v1.Expert", tonic_health::ServingStatus::Serving)
            .await;
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(l2d::pb::expert_server::ExpertServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await?;
        Ok(())
    })
    .await;
    (node, seen)
}

/// One series' value in a Prometheus text scrape (`name{labels}` as written), 0 if absent.
pub fn series_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The Python with the examples' requirements (`L2D_PYTHON`), or `None` to skip: unless
/// `L2D_REQUIRE_PYTHON` is set, as in CI, where a missing one fails the test.
pub fn example_python() -> Option<String> {
    match std::env::var("L2D_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert!(
                std::env::var("L2D_REQUIRE_PYTHON").is_err(),
                "L2D_REQUIRE_PYTHON is set but L2D_PYTHON is not"
            );
            eprintln!(
                "skipped: set L2D_PYTHON to a python with the examples' requirements \
                 (examples/python_expert, examples/python_client)"
            );
            None
        }
    }
}
