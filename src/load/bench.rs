//! `l2d bench`: the scheduler's overhead measured against the physical limit of one gRPC hop.
//!
//! Every server runs in its own process (`l2d bench-node ROLE`, started here and stopped when
//! the run ends), apart from this process, which is only the load generator:
//!
//! - (a) the expert workers of the default pool (one process);
//! - (b) a bare forwarding proxy: `Router.Ask` in, `Expert.Answer` out to bert-large, the reply
//!   mapped back; no validation, no policy, no bookkeeping;
//! - (c) the scheduler with a learned route-mode policy (trained here on the default pool's
//!   labels), its pool holding only that same expert: one hop per query, like (b), so the
//!   difference is the scheduler's own work (validation, featurizing, scoring, deciding,
//!   bookkeeping);
//! - (c0) as (c) with the prior policy, which reads no features: what featurizing costs;
//! - (d) the route policy over the whole default pool (five experts);
//! - (e) the shipped policy over the whole pool (defer mode: two probes asked together, then
//!   one probe's answer kept or another expert asked).
//!
//! (b) and (c) are measured in interleaved rounds (b first, then c first, …), each round at
//! concurrency 1 (latency), saturated (requests/s), and at one fixed rate that both sustain
//! (open loop, `--cpu-rate`), phase by phase: each phase runs on both servers back to back
//! before the next, so the two figures a ratio compares are taken seconds apart. The server
//! process's CPU time (user + system, from `/proc`) is taken per request of the saturated
//! phase and of the fixed-rate one: saturated, the faster
//! server also answers more requests per wake-up and per system call, so its CPU per request
//! falls for that reason alone; at one rate both serve the same stream, and the difference is
//! the work each does per request. The ratios are taken within each round and reported as their
//! median, minimum and maximum over rounds: a machine that slows down for a while moves both
//! sides of a round together. The others are measured once, for context.

use super::{LoadOptions, Target, queries, run, tally::LoadReport};
use crate::cluster;
use crate::core::learned::{LossKind, Mode};
use crate::defaults::{default_data_path, default_policy_path, default_pool_path};
use crate::grpc::pb::{self, expert_client::ExpertClient, router_server};
use crate::pool_file::PoolFile;
use crate::scheduler::registry::Origin;
use crate::scheduler::{PolicySource, Scheduler, SchedulerConfig, load_policy_file};
use crate::squad::Dataset;
use crate::train::labels::{LabelOptions, label};
use crate::train::{TrainOptions, fit::FitConfig, train};
use anyhow::Context;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The bare forwarding proxy: the physical limit of a `Router.Ask` hop.
pub struct ForwardingProxy {
    expert: ExpertClient<Channel>,
}

#[tonic::async_trait]
impl router_server::Router for ForwardingProxy {
    async fn ask(
        &self,
        request: Request<pb::AskRequest>,
    ) -> Result<Response<pb::AskResponse>, Status> {
        let timeout = crate::grpc::deadline::request_timeout(&request);
        let ask = request.into_inner();
        let mut call = Request::new(pb::AnswerRequest {
            question: ask.question,
            context: ask.context,
            id: ask.id,
        });
        if let Some(t) = timeout {
            call.set_timeout(t);
        }
        let answer = self.expert.clone().answer(call).await?.into_inner();
        Ok(Response::new(pb::AskResponse {
            text: answer.text,
            cost: answer.compute.map_or(0.0, |c| c.units),
            expert_id: answer.expert_id,
            span: answer.span,
            score: answer.score,
            ..Default::default()
        }))
    }

    async fn report_outcome(
        &self,
        _request: Request<pb::ReportOutcomeRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        Err(Status::unimplemented(
            "the bare forwarding proxy keeps no decisions",
        ))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Phase {
    pub p50_us: u64,
    pub p99_us: u64,
    pub rps: f64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Measured {
    pub name: String,
    /// Concurrency 1.
    pub latency: Phase,
    /// Saturated.
    pub saturated: Phase,
    /// CPU time (user + system) of the server's process per request of the saturated phase,
    /// microseconds.
    pub cpu_us_per_request: f64,
    /// At the fixed rate.
    pub at_rate: Phase,
    /// CPU time of the server's process per request of the fixed-rate phase, microseconds.
    pub cpu_us_per_request_at_rate: f64,
}

/// One round of (b) against (c).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Round {
    /// Which went first.
    pub proxy_first: bool,
    pub proxy: Measured,
    pub scheduler: Measured,
    pub throughput_ratio: f64,
    pub added_p50_us: i64,
    pub added_p99_us: i64,
    pub cpu_per_request_ratio: f64,
    pub cpu_per_request_ratio_at_rate: f64,
}

/// The median, least and greatest of one ratio over the rounds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: String,
    pub command: String,
    pub duration_s: f64,
    pub saturate: usize,
    /// (c) / (b) saturated requests/s, median over rounds.
    pub throughput_ratio: f64,
    pub throughput_ratio_min: f64,
    pub throughput_ratio_max: f64,
    /// (c) − (b) at concurrency 1, median over rounds.
    pub added_p50_us: i64,
    pub added_p50_us_min: i64,
    pub added_p50_us_max: i64,
    pub added_p99_us: i64,
    pub added_p99_us_min: i64,
    pub added_p99_us_max: i64,
    /// (c) / (b) server CPU time per request, saturated, median over rounds.
    pub cpu_per_request_ratio: f64,
    pub cpu_per_request_ratio_min: f64,
    pub cpu_per_request_ratio_max: f64,
    /// The open-loop rate of the fixed-rate phase, requests/s.
    pub cpu_rate: f64,
    /// (c) / (b) server CPU time per request at `cpu_rate`, median over rounds.
    pub cpu_per_request_ratio_at_rate: f64,
    pub cpu_per_request_ratio_at_rate_min: f64,
    pub cpu_per_request_ratio_at_rate_max: f64,
    pub rounds: Vec<Round>,
    /// Every target; (b) and (c) as their median round.
    pub targets: Vec<Measured>,
}

fn phase(r: &LoadReport) -> Phase {
    Phase {
        p50_us: r.latency_us.p50,
        p99_us: r.latency_us.p99,
        rps: r.rps,
        errors: r.errors,
    }
}

/// A server of the benchmark in its own process. It prints what it serves on standard output,
/// `ready` when it serves, and stops when its standard input closes (so it never outlives this
/// process).
struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `(name, address)`: `listening` for a proxy or a scheduler, the expert ids for experts.
    addresses: Vec<(String, SocketAddr)>,
}

impl Node {
    fn spawn(args: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the l2d binary to start nodes")?;
        let mut child = Command::new(exe)
            .arg("bench-node")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a bench node")?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .context("no stdout from the bench node")?;
        let mut addresses = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if line == "ready" {
                return Ok(Self {
                    child,
                    stdin,
                    addresses,
                });
            }
            let mut words = line.split_whitespace();
            if let (Some(name), Some(address)) = (words.next(), words.next()) {
                addresses.push((name.to_owned(), address.parse()?));
            }
        }
        let status = child.wait()?;
        anyhow::bail!("bench node {args:?} exited before it was ready ({status})")
    }

    fn address(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.addresses
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .with_context(|| format!("the bench node serves no {name}"))
    }

    /// CPU time the process has used so far (user + system, all its threads).
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        cpu_time(&stat, clock_ticks_per_second())
    }

    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        for _ in 0..100 {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User plus system time from the text of `/proc/PID/stat` (fields 14 and 15, in clock ticks;
/// the command name in field 2 may hold spaces and parentheses, so fields are counted from its
/// closing parenthesis).
fn cpu_time(stat: &str, ticks_per_second: f64) -> anyhow::Result<Duration> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat line")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc stat line")?
            .parse::<u64>()? as f64)
    };
    // After the name: field 3 is index 0, so utime (14) is 11 and stime (15) is 12.
    Ok(Duration::from_secs_f64(
        (tick(11)? + tick(12)?) / ticks_per_second,
    ))
}

struct Bench<'a> {
    args: &'a BenchOptions,
    queries: Arc<Vec<super::LoadQuery>>,
    version: crate::core::metric::MetricVersion,
}

impl Bench<'_> {
    /// Closed loop at `concurrency`, or open loop at `rps` with at most `concurrency` calls in
    /// flight.
    fn options(
        &self,
        target: Target,
        address: SocketAddr,
        concurrency: usize,
        rps: Option<f64>,
    ) -> LoadOptions {
        LoadOptions {
            target,
            address: address.to_string(),
            concurrency,
            rps,
            duration: Some(self.args.duration),
            warmup: Duration::ZERO,
            // One connection per 8 calls in flight, as a fleet of clients would open.
            connections: concurrency.div_ceil(8),
            limit: None,
            timeout: Duration::from_secs(10),
            progress: false,
            tls: None,
            token: None,
        }
    }

    /// One run after a warm-up of its own, with the server's CPU time over the measured part.
    async fn phase(
        &self,
        node: &Node,
        target: Target,
        address: SocketAddr,
        (concurrency, rps): (usize, Option<f64>),
    ) -> anyhow::Result<(LoadReport, f64)> {
        let mut warm = self.options(target, address, concurrency, rps);
        warm.duration = Some(Duration::from_secs(1));
        run(&warm, self.queries.clone(), self.version).await?;
        let before = node.cpu()?;
        let report = run(
            &self.options(target, address, concurrency, rps),
            self.queries.clone(),
            self.version,
        )
        .await?;
        let cpu = node.cpu()?.saturating_sub(before);
        let us_per_request = cpu.as_secs_f64() * 1e6 / report.count.max(1) as f64;
        Ok((report, us_per_request))
    }

    /// The three phases every server is measured in, as (calls in flight, open-loop rate):
    /// one call in flight, saturated, and open loop at `--cpu-rate`.
    fn phases(&self) -> [(usize, Option<f64>); 3] {
        // Room for the calls a stall of a few milliseconds leaves in flight at this rate.
        let in_flight = (self.args.cpu_rate / 100.0).ceil().max(8.0) as usize;
        [
            (1, None),
            (self.args.saturate, None),
            (in_flight, Some(self.args.cpu_rate)),
        ]
    }

    /// Measures `servers` (name, node, target, address) phase by phase: each phase runs on
    /// every server in turn, in the order given, before the next phase starts
    /// ([`interleaved`]), so the figures a ratio compares are taken seconds apart, not a whole
    /// server's measurement apart.
    async fn measure(
        &self,
        servers: &[(&str, &Node, Target, SocketAddr)],
    ) -> anyhow::Result<Vec<Measured>> {
        let phases = self.phases();
        let mut taken: Vec<Vec<(LoadReport, f64)>> = vec![Vec::new(); servers.len()];
        for (kind, server) in interleaved(phases.len(), servers.len()) {
            let (_, node, target, address) = servers[server];
            taken[server].push(self.phase(node, target, address, phases[kind]).await?);
        }
        servers
            .iter()
            .zip(taken)
            .map(|(&(name, ..), taken)| {
                let [
                    (latency, _),
                    (saturated, cpu_us_per_request),
                    (at_rate, cpu_us_per_request_at_rate),
                ] = <[(LoadReport, f64); 3]>::try_from(taken)
                    .map_err(|_| anyhow::anyhow!("three phases per server"))?;
                eprintln!(
                    "l2d bench: {name}: p50 {} us, p99 {} us at concurrency 1; {:.0} req/s at {}, \
                     {cpu_us_per_request:.1} us of server CPU per request; \
                     {cpu_us_per_request_at_rate:.1} us at {:.0} req/s",
                    latency.latency_us.p50,
                    latency.latency_us.p99,
                    saturated.rps,
                    self.args.saturate,
                    at_rate.rps
                );
                Ok(Measured {
                    name: name.into(),
                    latency: phase(&latency),
                    saturated: phase(&saturated),
                    cpu_us_per_request,
                    at_rate: phase(&at_rate),
                    cpu_us_per_request_at_rate,
                })
            })
            .collect()
    }
}

/// The order of a round's measurements, as (phase, server): phase by phase, each on every
/// server in turn.
fn interleaved(phases: usize, servers: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..phases).flat_map(move |kind| (0..servers).map(move |server| (kind, server)))
}

/// The highest `--cpu-rate`: beyond it the open-loop phase would keep more than a thousand
/// calls in flight, far past what one server on this kind of machine answers.
const MAX_CPU_RATE: f64 = 100_000.0;

const PROXY: &str = "(b) bare forwarding proxy";
const SCHEDULER: &str = "(c) scheduler, learned route policy, that expert only";

pub async fn bench(args: &BenchOptions) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(
        (1.0..=MAX_CPU_RATE).contains(&args.cpu_rate),
        "--cpu-rate must be between 1 and {MAX_CPU_RATE} requests per second"
    );
    let pool_path = default_pool_path();
    let pool = PoolFile::load(&pool_path)?;
    let dataset = Dataset::load(&default_data_path())?;
    let bench = Bench {
        args,
        queries: Arc::new(queries(&dataset)),
        version: dataset.metric_version(),
    };

    // A route-mode policy for the one-hop comparison, trained here (about 2 s) and written where
    // the scheduler nodes read it.
    let labels = label(
        &pool,
        &dataset,
        "dev",
        &LabelOptions {
            concurrency: 8,
            limit: None,
            progress: false,
            articles: None,
        },
    )
    .await?;
    let route = train(
        &labels,
        &TrainOptions {
            lambdas: vec![0.05],
            default_lambda: None,
            mode: Mode::Route,
            stages: 0,
            probes: vec![],
            loss: LossKind::Em,
            split_seed: 1,
            test_fraction: 0.5,
            fit: FitConfig::default(),
        },
    )?;
    let dir = tempfile::tempdir()?;
    let route_path = dir.path().join("route.json");
    std::fs::write(&route_path, serde_json::to_string(&route)?)?;
    let route_path = route_path.to_string_lossy().into_owned();
    let shipped_path = default_policy_path().to_string_lossy().into_owned();

    let experts = Node::spawn(&["experts"])?;
    let bert = experts.address("bert-large")?;
    let all: Vec<String> = experts
        .addresses
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect();
    let all = all.join(",");
    let only_bert = format!("bert-large={bert}");
    let proxy = Node::spawn(&["proxy", "--upstream", &bert.to_string()])?;
    let scheduler = Node::spawn(&[
        "scheduler",
        "--experts",
        &only_bert,
        "--policy",
        &route_path,
    ])?;
    let listening = |n: &Node| n.address("listening");

    let mut rounds = Vec::with_capacity(args.rounds);
    for r in 0..args.rounds {
        let proxy_first = r % 2 == 0;
        let b = (PROXY, &proxy, Target::Router, listening(&proxy)?);
        let c = (
            SCHEDULER,
            &scheduler,
            Target::Router,
            listening(&scheduler)?,
        );
        let order = if proxy_first { [b, c] } else { [c, b] };
        let mut measured = bench.measure(&order).await?;
        if !proxy_first {
            measured.reverse();
        }
        let scheduler = measured.pop().context("two measured")?;
        let proxy = measured.pop().context("two measured")?;
        rounds.push(round(proxy_first, proxy, scheduler));
    }
    proxy.stop()?;
    scheduler.stop()?;

    // The others, once each, for context.
    let mut context = bench
        .measure(&[("(a) direct to the expert", &experts, Target::Expert, bert)])
        .await?;
    let others = [
        (
            "(c0) scheduler, prior policy (no features), that expert only",
            only_bert.as_str(),
            None,
        ),
        (
            "(d) scheduler, learned route policy, 5-expert pool",
            all.as_str(),
            Some(route_path.as_str()),
        ),
        (
            "(e) scheduler, shipped policy, 5-expert pool",
            all.as_str(),
            Some(shipped_path.as_str()),
        ),
    ];
    for (name, pool_arg, policy) in others {
        let mut node_args = vec!["scheduler", "--experts", pool_arg];
        if let Some(p) = policy {
            node_args.extend(["--policy", p]);
        }
        let node = Node::spawn(&node_args)?;
        context.extend(
            bench
                .measure(&[(name, &node, Target::Router, listening(&node)?)])
                .await?,
        );
        node.stop()?;
    }
    experts.stop()?;
    Ok(report(args, rounds, context))
}

fn round(proxy_first: bool, proxy: Measured, scheduler: Measured) -> Round {
    Round {
        proxy_first,
        throughput_ratio: scheduler.saturated.rps / proxy.saturated.rps.max(f64::MIN_POSITIVE),
        added_p50_us: scheduler.latency.p50_us as i64 - proxy.latency.p50_us as i64,
        added_p99_us: scheduler.latency.p99_us as i64 - proxy.latency.p99_us as i64,
        cpu_per_request_ratio: scheduler.cpu_us_per_request
            / proxy.cpu_us_per_request.max(f64::MIN_POSITIVE),
        cpu_per_request_ratio_at_rate: scheduler.cpu_us_per_request_at_rate
            / proxy.cpu_us_per_request_at_rate.max(f64::MIN_POSITIVE),
        proxy,
        scheduler,
    }
}

/// The report: each ratio's spread over the rounds; (b) and (c) as the round of median
/// throughput ratio, then the context targets.
fn report(args: &BenchOptions, rounds: Vec<Round>, context: Vec<Measured>) -> BenchReport {
    let spread = |f: &dyn Fn(&Round) -> f64| {
        Spread::of(rounds.iter().map(f)).unwrap_or(Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        })
    };
    let throughput = spread(&|r| r.throughput_ratio);
    let p50 = spread(&|r| r.added_p50_us as f64);
    let p99 = spread(&|r| r.added_p99_us as f64);
    let cpu = spread(&|r| r.cpu_per_request_ratio);
    let cpu_at_rate = spread(&|r| r.cpu_per_request_ratio_at_rate);
    let mut by_throughput: Vec<&Round> = rounds.iter().collect();
    by_throughput.sort_by(|a, b| a.throughput_ratio.total_cmp(&b.throughput_ratio));
    let mut targets = Vec::new();
    if let Some(median) = by_throughput.get(by_throughput.len() / 2) {
        targets.push(median.proxy.clone());
        targets.push(median.scheduler.clone());
    }
    targets.extend(context);
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    BenchReport {
        machine: machine(),
        command: format!(
            "l2d bench --duration {} --saturate {} --cpu-rate {} --rounds {}",
            humantime::format_duration(args.duration),
            args.saturate,
            args.cpu_rate,
            args.rounds
        ),
        duration_s: args.duration.as_secs_f64(),
        saturate: args.saturate,
        throughput_ratio: throughput.median,
        throughput_ratio_min: throughput.min,
        throughput_ratio_max: throughput.max,
        added_p50_us: p50.median.round() as i64,
        added_p50_us_min: p50.min as i64,
        added_p50_us_max: p50.max as i64,
        added_p99_us: p99.median.round() as i64,
        added_p99_us_min: p99.min as i64,
        added_p99_us_max: p99.max as i64,
        cpu_per_request_ratio: cpu.median,
        cpu_per_request_ratio_min: cpu.min,
        cpu_per_request_ratio_max: cpu.max,
        cpu_rate: args.cpu_rate,
        cpu_per_request_ratio_at_rate: cpu_at_rate.median,
        cpu_per_request_ratio_at_rate_min: cpu_at_rate.min,
        cpu_per_request_ratio_at_rate_max: cpu_at_rate.max,
        rounds,
        targets,
    }
}

/// The summary line of one run, as the section's table of runs lists it.
fn run_row(r: &BenchReport, when: &str) -> String {
    format!(
        "| {when} | {:.3} ({:.3}–{:.3}) | {:.2} ({:.2}–{:.2}) | {:.2} ({:.2}–{:.2}) at {} | {} ({} to {}) | {} ({} to {}) |",
        r.throughput_ratio,
        r.throughput_ratio_min,
        r.throughput_ratio_max,
        r.cpu_per_request_ratio,
        r.cpu_per_request_ratio_min,
        r.cpu_per_request_ratio_max,
        r.cpu_per_request_ratio_at_rate,
        r.cpu_per_request_ratio_at_rate_min,
        r.cpu_per_request_ratio_at_rate_max,
        r.cpu_rate,
        r.added_p50_us,
        r.added_p50_us_min,
        r.added_p50_us_max,
        r.added_p99_us,
        r.added_p99_us_min,
        r.added_p99_us_max
    )
}

const RUNS_HEADER: &str = "| run | throughput ratio (c)/(b) | CPU per request ratio, saturated | CPU per request ratio at a fixed rate (req/s) | added p50 µs | added p99 µs |";

/// The report as the Markdown section `l2d bench --write` maintains. `previous` is the section
/// it replaces, whose latest run is kept in the table of runs.
pub fn markdown(r: &BenchReport, previous: Option<&str>) -> String {
    let mut out = format!(
        "{BEGIN}\n## Scheduler overhead against one bare gRPC hop (`l2d bench`)\n\nMachine: {}. Command: `{}`: \
         every server in its own process, the load generator in another, on loopback; (b) and (c) in {} interleaved rounds, \
         each phase on both back to back (medians, with the least and greatest in parentheses), the others once; each phase {} s after a 1 s warm-up; \
         CPU is the server process's user + system time per request, of the saturated phase and of a phase at {} requests/s \
         (open loop), which both servers sustain: saturated, the faster server answers more requests per wake-up and per \
         system call, which lowers its CPU per request by itself; at one rate both serve the same stream.\n\n",
        r.machine,
        r.command,
        r.rounds.len(),
        r.duration_s,
        r.cpu_rate
    );
    out.push_str(RUNS_HEADER);
    out.push_str("\n| --- | --- | --- | --- | --- | --- |\n");
    out.push_str(&run_row(r, "this run"));
    out.push('\n');
    let earlier = previous.and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("| this run |"))?;
        let cells_of = |l: &str| -> Vec<String> {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        };
        let mut cells = cells_of(line);
        cells[0] = "the run before".into();
        let columns = cells_of(RUNS_HEADER).len();
        // A run measured before the fixed-rate phase existed lacks that one figure; a row
        // of any other shape (edited by hand) is left out rather than misaligned.
        if cells.len() + 1 == columns {
            cells.insert(3, "not measured".into());
        }
        (cells.len() == columns).then(|| format!("| {} |", cells.join(" | ")))
    });
    if let Some(line) = earlier {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!(
        "\nTargets: throughput ratio ≥ 0.90, CPU per request ratio (saturated) ≤ 1.25, added p50 ≤ 30 µs.\n\n\
         | target | p50 µs (conc. 1) | p99 µs (conc. 1) | req/s (conc. {}) | server CPU µs per request, saturated | server CPU µs per request at {} req/s | errors |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        r.saturate, r.cpu_rate
    ));
    for t in &r.targets {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {} |\n",
            t.name,
            t.latency.p50_us,
            t.latency.p99_us,
            t.saturated.rps,
            t.cpu_us_per_request,
            t.cpu_us_per_request_at_rate,
            t.latency.errors + t.saturated.errors + t.at_rate.errors
        ));
    }
    // A server that fell behind the fixed rate served another stream than the others: said.
    for t in r
        .targets
        .iter()
        .filter(|t| t.at_rate.rps < 0.95 * r.cpu_rate)
    {
        out.push_str(&format!(
            "\n{} reached only {:.0} of the {} requests/s of the fixed-rate phase: its CPU per \
             request there is not comparable.\n",
            t.name, t.at_rate.rps, r.cpu_rate
        ));
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// The current bench section of `text`, if it has one.
fn section(text: &str) -> Option<&str> {
    match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if a < b => Some(&text[a..b]),
        _ => None,
    }
}

/// The machine, for the report: CPU model, cores, memory.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem} memory")
}

const BEGIN: &str = "<!-- l2d bench: begin -->";
const END: &str = "<!-- l2d bench: end -->";

/// Replaces the bench section of `text` (or appends one).
pub fn replace_section(text: &str, section: &str) -> String {
    match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if a < b => format!(
            "{}{}{}",
            &text[..a],
            section.trim_end(),
            &text[b + END.len()..]
        ),
        _ => format!("{}\n{}", text.trim_end(), section),
    }
}

/// What `l2d bench` runs and where it writes.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Each measured phase.
    pub duration: Duration,
    /// Calls in flight for the saturated phase.
    pub saturate: usize,
    /// Requests per second of the fixed-rate phase.
    pub cpu_rate: f64,
    /// Rounds of (b) against (c).
    pub rounds: usize,
    /// Write the figures as JSON here.
    pub json: Option<PathBuf>,
    /// Rewrite the benchmark section of this Markdown file.
    pub write: Option<PathBuf>,
}

pub async fn bench_command(args: BenchOptions) -> anyhow::Result<()> {
    let report = bench(&args).await?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let existing = match &args.write {
        Some(path) if Path::new(path).exists() => std::fs::read_to_string(path)?,
        _ => String::new(),
    };
    let text = markdown(&report, section(&existing));
    print!("{text}");
    if let Some(path) = &args.write {
        std::fs::write(path, replace_section(&existing, &text))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// A bench node's role (`l2d bench-node`).
#[derive(Debug, Clone)]
pub enum NodeRole {
    /// The default pool's experts.
    Experts,
    /// The bare forwarding proxy in front of `upstream`.
    Proxy { upstream: SocketAddr },
    /// A scheduler over `experts` (`(id, address)`), with the policy file, or the prior policy.
    Scheduler {
        experts: Vec<(String, SocketAddr)>,
        policy: Option<PathBuf>,
    },
}

/// Runs one node of the benchmark: serves, prints what it serves and `ready`, and stops when
/// standard input closes.
pub async fn bench_node(role: NodeRole) -> anyhow::Result<()> {
    let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    let closed = async {
        let _ = closed.await;
    };
    let announce = |lines: &[(String, SocketAddr)]| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        for (name, address) in lines {
            writeln!(out, "{name} {address}")?;
        }
        writeln!(out, "ready")?;
        out.flush()?;
        Ok(())
    };
    match role {
        NodeRole::Experts => {
            let pool = PoolFile::load(&default_pool_path())?;
            let local = cluster::spawn_local_experts(&pool).await?;
            announce(&local.addresses)?;
            closed.await;
            local.shutdown().await
        }
        NodeRole::Proxy { upstream } => {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{upstream}"))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            announce(&[("listening".into(), listener.local_addr()?)])?;
            let proxy = ForwardingProxy {
                expert: ExpertClient::new(channel),
            };
            tonic::transport::Server::builder()
                .add_service(router_server::RouterServer::new(proxy))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    closed,
                )
                .await?;
            Ok(())
        }
        NodeRole::Scheduler { experts, policy } => {
            let pool = PoolFile::load(&default_pool_path())?;
            let (policy, digest): (Box<dyn crate::core::policy::Policy>, String) = match policy {
                Some(path) => {
                    let (p, digest) = load_policy_file(&path, None)?;
                    (Box::new(p), digest)
                }
                None => (Box::new(cluster::prior_policy(&pool, None)?), String::new()),
            };
            let scheduler = Scheduler::with_source(
                SchedulerConfig::default(),
                policy,
                PolicySource::Fixed,
                digest,
            );
            for (id, address) in &experts {
                let spec = pool
                    .experts
                    .iter()
                    .find(|s| &s.id == id)
                    .with_context(|| format!("the default pool has no expert {id}"))?;
                scheduler
                    .registry
                    .declare_expert(&spec.id, spec.cost, spec.backend.kind());
                scheduler.registry.add_fixed_replica(
                    &spec.id,
                    &address.to_string(),
                    Origin::Static,
                    None,
                )?;
            }
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            announce(&[("listening".into(), listener.local_addr()?)])?;
            crate::scheduler::serve(listener, Arc::new(scheduler), closed).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_runs_each_phase_on_every_server_before_the_next_phase() {
        let order: Vec<(usize, usize)> = interleaved(3, 2).collect();
        assert_eq!(order, [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]);
        let alone: Vec<(usize, usize)> = interleaved(3, 1).collect();
        assert_eq!(alone, [(0, 0), (1, 0), (2, 0)]);
    }

    #[test]
    fn the_section_is_replaced_in_place_or_appended() {
        let section = format!("{BEGIN}\nnew\n{END}\n");
        let text = format!("# B\n\nbefore\n{BEGIN}\nold\n{END}\nafter\n");
        assert_eq!(
            replace_section(&text, &section),
            format!("# B\n\nbefore\n{BEGIN}\nnew\n{END}\nafter\n")
        );
        assert_eq!(
            replace_section("# B\n", &section),
            format!("# B\n{section}")
        );
    }

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        // A command name with a space and a parenthesis; utime 250 and stime 50 ticks.
        let stat = "4242 (l2d (x) y) S 1 4242 4242 0 -1 4194304 900 0 0 0 250 50 0 0 20 0 9 0 \
                    1000 0 0";
        assert_eq!(cpu_time(stat, 100.0).unwrap(), Duration::from_secs(3));
        assert!(cpu_time("4242 (l2d) S 1", 100.0).is_err());
        assert!(cpu_time("no name here", 100.0).is_err());
    }

    #[test]
    fn spreads_are_medians_with_their_extremes() {
        let s = Spread::of([0.9, 0.7, 1.1, f64::NAN, 0.5]).unwrap();
        assert_eq!((s.median, s.min, s.max), (0.8, 0.5, 1.1));
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([2.0]).unwrap().median, 2.0);
        assert_eq!(Spread::of([]), None);
    }

    fn measured(name: &str, rps: f64, p50: u64, cpu: f64) -> Measured {
        let phase = Phase {
            p50_us: p50,
            p99_us: p50 * 2,
            rps,
            errors: 0,
        };
        Measured {
            name: name.into(),
            latency: phase.clone(),
            saturated: phase.clone(),
            cpu_us_per_request: cpu,
            at_rate: phase,
            // More per request than saturated, where batching helps.
            cpu_us_per_request_at_rate: cpu * 3.0,
        }
    }

    #[test]
    fn ratios_are_taken_within_rounds_and_the_run_before_is_kept() {
        let options = BenchOptions {
            duration: Duration::from_secs(1),
            saturate: 8,
            cpu_rate: 500.0,
            rounds: 3,
            json: None,
            write: None,
        };
        // The machine slows down in the second round: both sides together.
        let rounds = vec![
            round(
                true,
                measured(PROXY, 1000.0, 100, 10.0),
                measured(SCHEDULER, 900.0, 120, 12.0),
            ),
            round(
                false,
                measured(PROXY, 500.0, 200, 20.0),
                measured(SCHEDULER, 400.0, 260, 26.0),
            ),
            round(
                true,
                measured(PROXY, 1000.0, 100, 10.0),
                measured(SCHEDULER, 950.0, 110, 11.0),
            ),
        ];
        let r = report(
            &options,
            rounds,
            vec![measured("(a) direct", 2000.0, 50, 5.0)],
        );
        assert_eq!(r.throughput_ratio, 0.9);
        assert_eq!(
            (r.throughput_ratio_min, r.throughput_ratio_max),
            (0.8, 0.95)
        );
        assert_eq!(
            (r.added_p50_us, r.added_p50_us_min, r.added_p50_us_max),
            (20, 10, 60)
        );
        assert!((r.cpu_per_request_ratio - 1.2).abs() < 1e-12);
        // (b) and (c) of the median round, then the context.
        let names: Vec<&str> = r.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["(a) direct", PROXY, SCHEDULER]);
        assert_eq!(r.targets[2].saturated.rps, 900.0);

        let first = markdown(&r, None);
        assert!(
            first.contains(
                "| this run | 0.900 (0.800–0.950) | 1.20 (1.10–1.30) | 1.20 (1.10–1.30) at 500 | 20 (10 to 60)"
            ),
            "{first}"
        );
        assert!(!first.contains("the run before"));
        let second = markdown(&r, section(&format!("# B\n{first}")));
        assert!(
            second.contains(
                "| the run before | 0.900 (0.800–0.950) | 1.20 (1.10–1.30) | 1.20 (1.10–1.30) at 500 |"
            ),
            "{second}"
        );
        assert_eq!(second.matches("| this run |").count(), 1);
        assert!(!first.contains("reached only"), "{first}");
        let mut short = r.clone();
        short.targets[2].at_rate.rps = 400.0;
        let short = markdown(&short, None);
        assert!(
            short.contains(&format!(
                "{SCHEDULER} reached only 400 of the 500 requests/s"
            )),
            "{short}"
        );
        // A run from before the fixed-rate phase: its row says so in that column.
        let old = "| this run | 0.728 (0.676–0.823) | 1.64 (1.37–1.79) | 68 (-16 to 129) | 91 (-61 to 196) |";
        let third = markdown(&r, Some(old));
        assert!(
            third.contains(
                "| the run before | 0.728 (0.676–0.823) | 1.64 (1.37–1.79) | not measured | 68 (-16 to 129) | 91 (-61 to 196) |"
            ),
            "{third}"
        );
        // A row of another shape is left out, not misaligned.
        let odd = markdown(&r, Some("| this run | 0.7 | 1.6 |"));
        assert!(!odd.contains("the run before"), "{odd}");
    }
}
