//! `l2d load`: a load generator for `Router.Ask` (or, for the benchmark's baseline, an expert's
//! `Expert.Answer`), replaying a SQuAD-format data set.
//!
//! Closed loop (`concurrency` workers, each sending its next query when the last one returns) or
//! open loop (`rps`: query `i` is due at `start + i / rps` whatever happened before; latency is
//! measured from that intended send time, so a stalled server shows up in the percentiles
//! instead of hiding behind fewer requests: no coordinated omission). Calls that start during the
//! warm-up are sent but not counted. Accounting lives in [`tally`], pure.

pub mod bench;
pub mod simulate;
pub mod steps;
pub mod tally;

use crate::core::metric::{MetricVersion, score};
use crate::grpc::pb::{self, expert_client::ExpertClient, router_client::RouterClient};
use crate::grpc::status::code_name;
use crate::report::progress_bar;
use crate::squad::Dataset;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally::{Answered, Failed, LoadReport, Outcome, Tally};
use tokio::time::Instant;
use tonic::transport::Channel;

/// Which service the generator calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Router,
    Expert,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub target: Target,
    pub address: String,
    /// Closed loop: workers. Open loop: the most calls in flight.
    pub concurrency: usize,
    /// Open loop at this many requests per second.
    pub rps: Option<f64>,
    /// Measured run time after the warm-up (none: until `limit`).
    pub duration: Option<Duration>,
    pub warmup: Duration,
    pub connections: usize,
    /// At most this many calls, warm-up included.
    pub limit: Option<u64>,
    pub timeout: Duration,
    pub progress: bool,
    /// TLS to the target (mutual TLS with a client identity).
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Bearer token sent with every call.
    pub token: Option<String>,
}

/// One query to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadQuery {
    pub id: String,
    pub question: String,
    pub context: String,
    pub references: Vec<String>,
}

/// The queries of a data set, in file order.
pub fn queries(dataset: &Dataset) -> Vec<LoadQuery> {
    dataset
        .questions()
        .map(|(_, p, q)| LoadQuery {
            id: q.id.clone(),
            question: q.question.clone(),
            context: p.context.clone(),
            references: q.answers.iter().map(|a| a.text.clone()).collect(),
        })
        .collect()
}

/// When query `i` of an open-loop run is due, after the start.
pub fn intended_offset(i: u64, rps: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rps)
}

#[derive(Clone)]
enum Client {
    /// With the `authorization` value to send, if any.
    Router(
        RouterClient<Channel>,
        Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ),
    Expert(ExpertClient<Channel>),
}

impl Client {
    async fn call(
        &mut self,
        q: &LoadQuery,
        timeout: Duration,
    ) -> Result<(String, f64, String), Failed> {
        let fail = |s: tonic::Status| {
            let s = crate::grpc::status::client_deadline(s);
            Failed {
                code: code_name(s.code()),
                message: s.message().to_owned(),
            }
        };
        match self {
            Client::Router(c, token) => {
                let mut r = tonic::Request::new(pb::AskRequest {
                    question: q.question.clone(),
                    context: q.context.clone(),
                    id: Some(q.id.clone()),
                    budget: None,
                    language: None,
                });
                r.set_timeout(timeout);
                if let Some(token) = token {
                    r.metadata_mut().insert("authorization", token.clone());
                }
                let a = c.ask(r).await.map_err(fail)?.into_inner();
                Ok((a.expert_id, a.cost, a.text))
            }
            Client::Expert(c) => {
                let mut r = tonic::Request::new(pb::AnswerRequest {
                    question: q.question.clone(),
                    context: q.context.clone(),
                    id: Some(q.id.clone()),
                });
                r.set_timeout(timeout);
                let a = c.answer(r).await.map_err(fail)?.into_inner();
                let units = a.compute.map_or(0.0, |c| c.units);
                Ok((a.expert_id, units, a.text))
            }
        }
    }
}

/// Calls in flight one connection carries at most: l2d servers accept 128 concurrent streams
/// per connection by default; more calls than that on one connection would wait in the client.
const CALLS_PER_CONNECTION: usize = 100;

/// `--connections`, or more when the calls in flight would exceed [`CALLS_PER_CONNECTION`] each.
fn connection_count(connections: usize, concurrency: usize) -> usize {
    connections
        .max(concurrency.div_ceil(CALLS_PER_CONNECTION))
        .max(1)
}

async fn connect(options: &LoadOptions) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::new();
    for _ in 0..connection_count(options.connections, options.concurrency) {
        let channel = crate::grpc::tls::endpoint(&options.address, options.tls.as_ref())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", options.address))?;
        clients.push(match options.target {
            Target::Router => Client::Router(
                RouterClient::new(channel),
                options
                    .token
                    .as_ref()
                    .map(|t| format!("Bearer {t}").parse())
                    .transpose()
                    .map_err(|_| anyhow::anyhow!("the token must be visible ASCII"))?,
            ),
            Target::Expert => Client::Expert(ExpertClient::new(channel)),
        });
    }
    Ok(clients)
}

fn outcome(
    q: &LoadQuery,
    version: MetricVersion,
    result: Result<(String, f64, String), Failed>,
    latency: Duration,
) -> Outcome {
    Outcome {
        latency,
        result: result.map(|(expert_id, cost, text)| {
            let references: Vec<&str> = q.references.iter().map(String::as_str).collect();
            let scored = !references.is_empty() || version == MetricVersion::V2;
            Answered {
                expert_id,
                cost,
                score: scored.then(|| {
                    let s = score(&text, &references, version);
                    (s.exact, s.f1)
                }),
            }
        }),
    }
}

/// Runs the load and returns the report over the measured (post-warm-up) calls.
pub async fn run(
    options: &LoadOptions,
    queries: Arc<Vec<LoadQuery>>,
    version: MetricVersion,
) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(!queries.is_empty(), "the data set has no questions to send");
    anyhow::ensure!(
        options.duration.is_some() || options.limit.is_some(),
        "give --duration or --limit, or the run never ends"
    );
    if let Some(rps) = options.rps {
        anyhow::ensure!(
            rps.is_finite() && rps > 0.0,
            "--rps must be a positive number, got {rps}"
        );
    }
    let clients = connect(options).await?;
    let bar = match options.limit {
        Some(limit) => progress_bar(options.progress, limit, "requests"),
        None if options.progress => {
            // A run bounded by time: count, no length.
            let spinner = indicatif::ProgressBar::new_spinner();
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{spinner} {pos} requests {per_sec}")
            {
                spinner.set_style(style);
            }
            spinner.enable_steady_tick(Duration::from_millis(200));
            spinner
        }
        None => indicatif::ProgressBar::hidden(),
    };
    let start = Instant::now();
    let measured_from = start + options.warmup;
    let end = options.duration.map(|d| measured_from + d);
    let sent = Arc::new(AtomicU64::new(0));
    let over = |sent: &AtomicU64, now: Instant| {
        end.is_some_and(|e| now >= e)
            || options
                .limit
                .is_some_and(|l| sent.load(Ordering::Relaxed) >= l)
    };
    let tally = match options.rps {
        None => {
            let mut workers = Vec::new();
            for w in 0..options.concurrency.max(1) {
                let mut client = clients[w % clients.len()].clone();
                let (queries, sent, bar, timeout, limit) = (
                    queries.clone(),
                    sent.clone(),
                    bar.clone(),
                    options.timeout,
                    options.limit,
                );
                workers.push(tokio::spawn(async move {
                    let mut tally = Tally::with_deadline(timeout);
                    loop {
                        let now = Instant::now();
                        if end.is_some_and(|e| now >= e) {
                            break;
                        }
                        let i = sent.fetch_add(1, Ordering::Relaxed);
                        if limit.is_some_and(|l| i >= l) {
                            break;
                        }
                        let q = &queries[(i % queries.len() as u64) as usize];
                        let result = client.call(q, timeout).await;
                        if now >= measured_from {
                            tally.record(&outcome(q, version, result, now.elapsed()));
                        }
                        bar.inc(1);
                    }
                    tally
                }));
            }
            let mut total = Tally::with_deadline(options.timeout);
            for w in workers {
                total.merge(&w.await?);
            }
            total
        }
        Some(rps) => {
            let tally = Arc::new(Mutex::new(Tally::with_deadline(options.timeout)));
            let in_flight = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
            let mut tasks = tokio::task::JoinSet::new();
            let mut i: u64 = 0;
            loop {
                let intended = start + intended_offset(i, rps);
                if over(&sent, intended) {
                    break;
                }
                tokio::time::sleep_until(intended).await;
                // Waiting for a slot counts against the query's latency: it was due at `intended`.
                let permit = in_flight.clone().acquire_owned().await?;
                sent.fetch_add(1, Ordering::Relaxed);
                let mut client = clients[(i as usize) % clients.len()].clone();
                let (queries, tally, bar, timeout) =
                    (queries.clone(), tally.clone(), bar.clone(), options.timeout);
                tasks.spawn(async move {
                    let q = &queries[(i % queries.len() as u64) as usize];
                    let result = client.call(q, timeout).await;
                    drop(permit);
                    if intended >= measured_from {
                        let o = outcome(q, version, result, intended.elapsed());
                        tally.lock().unwrap_or_else(|e| e.into_inner()).record(&o);
                    }
                    bar.inc(1);
                });
                while tasks.try_join_next().is_some() {}
                i += 1;
            }
            while tasks.join_next().await.is_some() {}
            Arc::try_unwrap(tally)
                .map_err(|_| anyhow::anyhow!("load tasks still hold the tally"))?
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
        }
    };
    bar.finish_and_clear();
    let elapsed = Instant::now().saturating_duration_since(measured_from);
    Ok(tally.report(elapsed))
}

/// Resident set size of a process, from /proc (Linux), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_calls_in_flight_than_a_connection_carries_get_more_connections() {
        assert_eq!(connection_count(1, 8), 1);
        assert_eq!(connection_count(1, 100), 1);
        assert_eq!(connection_count(1, 256), 3);
        assert_eq!(connection_count(4, 32), 4);
        assert_eq!(connection_count(0, 0), 1);
    }

    #[test]
    fn open_loop_queries_are_due_at_even_intervals() {
        assert_eq!(intended_offset(0, 200.0), Duration::ZERO);
        assert_eq!(intended_offset(1, 200.0), Duration::from_millis(5));
        assert_eq!(intended_offset(1000, 200.0), Duration::from_secs(5));
        // The schedule does not drift: query i is due at i / rps, not at the sum of rounded gaps.
        assert_eq!(intended_offset(3, 3.0), Duration::from_secs(1));
    }

    #[test]
    fn rss_of_this_process_is_readable() {
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
