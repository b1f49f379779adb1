//! Clusters of `l2d` processes for the tests over real processes: replay experts over the mini
//! fixture, a scheduler on a pool file, a load loop that collects every outcome, a scrape of
//! `/metrics`.

use super::fixture;
use super::process::Proc;
use l2d::pb;
use l2d::squad::Dataset;
use l2d::{Ask, RouterClient};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// An `l2d expert` replaying the strong (cost 10) or cheap (cost 1) fixture recordings.
pub fn expert(id: &str, extra: &[&str]) -> (Proc, String) {
    let (predictions, cost) = match id {
        "strong" => ("strong-predictions.json", "10"),
        _ => ("cheap-predictions.json", "1"),
    };
    let predictions = fixture(predictions);
    let data = fixture("mini-squad.json");
    let mut args = vec![
        "expert",
        "--listen",
        "127.0.0.1:0",
        "--id",
        id,
        "--backend",
        "replay",
        "--predictions",
        predictions.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--cost",
        cost,
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&args);
    let address = proc.address_in("expert serving");
    (proc, address)
}

/// Pool-file text placing `id` (replay, prior accuracy) on `placement` lines.
pub fn pool_entry(id: &str, accuracy: f64, placement: &str) -> String {
    let (predictions, cost) = match id {
        "strong" => ("strong-predictions.json", 10),
        _ => ("cheap-predictions.json", 1),
    };
    format!(
        "[[expert]]\nid = \"{id}\"\nbackend = \"replay\"\npredictions = \"{}\"\ncost = {cost}\naccuracy = {accuracy}\n{placement}\n",
        fixture(predictions).display()
    )
}

pub fn addresses(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|a| format!("\"{a}\"")).collect();
    format!("addresses = [{}]", quoted.join(", "))
}

/// A scheduler process on the pool `body` (prior policy), with metrics on a free port.
pub fn scheduler(dir: &Path, body: &str, extra: &[&str]) -> (Proc, String, String) {
    scheduler_of(super::process::L2D, dir, body, extra)
}

/// [`scheduler`] with another build of l2d, `bin`.
pub fn scheduler_of(bin: &str, dir: &Path, body: &str, extra: &[&str]) -> (Proc, String, String) {
    let path = dir.join("pool.toml");
    std::fs::write(&path, body).unwrap();
    let mut args = vec![
        "scheduler",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        path.to_str().unwrap(),
        "--prior",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn_bin(bin, &args);
    let metrics = proc.address_in("metrics serving");
    let router = proc.address_in("scheduler serving");
    (proc, router, metrics)
}

/// The fixture's questions (the strong recordings answer all of them).
pub fn questions() -> Vec<(String, String, String)> {
    let data = Dataset::load(&fixture("mini-squad.json")).unwrap();
    data.questions()
        .map(|(_, p, q)| (q.id.clone(), q.question.clone(), p.context.clone()))
        .collect()
}

/// The fixture's questions the cheap recordings answer too.
pub fn questions_both_answer() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(fixture("cheap-predictions.json")).unwrap();
    let cheap: HashMap<String, String> = serde_json::from_str(&text).unwrap();
    questions()
        .into_iter()
        .filter(|(id, _, _)| cheap.contains_key(id))
        .collect()
}

/// Sends `total` asks from `concurrency` tasks, calling `midway` once after `trigger` answers.
/// Returns every outcome.
/// The message of a request that got neither an answer nor a status in time.
pub const LOST: &str = "lost: no answer and no status within the deadline and 5 s more";

/// How long past its deadline a request may go without an answer or a status before it counts
/// as lost (RELIABILITY.md).
pub const LOST_MARGIN: Duration = Duration::from_secs(5);

/// One ask, with a hang guard of its deadline plus [`LOST_MARGIN`]: a request that outlives it
/// is *lost*. Every drill's ask has a deadline.
pub async fn ask_or_lost(
    client: &mut RouterClient,
    ask: Ask,
) -> Result<pb::AskResponse, tonic::Status> {
    let deadline = ask
        .deadline()
        .expect("a drill's ask has a deadline (lost is counted from it)");
    let limit = deadline + LOST_MARGIN;
    match tokio::time::timeout(limit, client.ask(ask)).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::unknown(LOST)),
    }
}

/// What a fault drill did to its requests: sent, answered, failed by status code, lost.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub sent: usize,
    pub answered: usize,
    pub failed: std::collections::BTreeMap<String, usize>,
    pub lost: usize,
}

impl Report {
    pub fn of(scenario: &str, outcomes: &[Result<pb::AskResponse, tonic::Status>]) -> Self {
        let mut report = Report {
            scenario: scenario.into(),
            sent: outcomes.len(),
            ..Report::default()
        };
        for outcome in outcomes {
            match outcome {
                Ok(_) => report.answered += 1,
                Err(s) if s.message() == LOST => report.lost += 1,
                Err(s) => {
                    *report
                        .failed
                        .entry(l2d::grpc::status::code_name(s.code()).to_string())
                        .or_default() += 1
                }
            }
        }
        report
    }

    /// Prints the report as a Markdown table row (the test output; RELIABILITY.md collects
    /// them) and appends it to `target/tmp/reliability.md`.
    pub fn publish(&self) {
        let failed = if self.failed.is_empty() {
            "0".to_string()
        } else {
            self.failed
                .iter()
                .map(|(code, n)| format!("{n} {code}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let row = format!(
            "| {} | {} | {} | {} | {} |",
            self.scenario, self.sent, self.answered, failed, self.lost
        );
        println!("RELIABILITY {row}");
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability.md");
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{row}");
        }
    }
}

pub async fn load(
    router: &str,
    questions: Vec<(String, String, String)>,
    total: usize,
    concurrency: usize,
    trigger: usize,
    midway: impl FnOnce() + Send + 'static,
) -> Vec<Result<pb::AskResponse, tonic::Status>> {
    let questions = std::sync::Arc::new(questions);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let midway = std::sync::Arc::new(std::sync::Mutex::new(Some(midway)));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (questions, next, done, midway) = (
            questions.clone(),
            next.clone(),
            done.clone(),
            midway.clone(),
        );
        let mut client = RouterClient::connect(router).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return outcomes;
                }
                let (id, question, context) = &questions[i % questions.len()];
                let ask = Ask::new(question.as_str(), context.as_str())
                    .id(id.as_str())
                    .timeout(Duration::from_secs(10));
                outcomes.push(ask_or_lost(&mut client, ask).await);
                if done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == trigger
                    && let Some(f) = midway.lock().unwrap().take()
                {
                    f();
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

pub fn by_replica(outcomes: &[Result<pb::AskResponse, tonic::Status>]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in outcomes.iter().flatten() {
        *counts.entry(r.replica.clone()).or_default() += 1;
    }
    counts
}

pub fn failures(outcomes: &[Result<pb::AskResponse, tonic::Status>]) -> Vec<String> {
    outcomes
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|s| format!("{:?}: {}", s.code(), s.message()))
        .collect()
}

/// `GET /metrics` over a plain TCP connection.
pub fn scrape(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: l2d\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// The scheduler's pool as `Pool.ListPool` reports it.
pub async fn list_pool(router: &str) -> pb::ListPoolResponse {
    let mut pool = pb::pool_client::PoolClient::connect(format!("http://{router}"))
        .await
        .unwrap();
    pool.list_pool(pb::ListPoolRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// An expert worker's own account of itself (`Expert.Describe`: identity and live load).
pub async fn describe(expert: &str) -> pb::DescribeResponse {
    let mut client = pb::expert_client::ExpertClient::connect(format!("http://{expert}"))
        .await
        .unwrap();
    client
        .describe(pb::DescribeRequest {})
        .await
        .unwrap()
        .into_inner()
}
