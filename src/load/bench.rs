//! `l2d bench`: the scheduler's overhead measured against the physical limit of one gRPC hop, in
//! one run on loopback with the same load generator:
//!
//! - (a) direct to an expert worker (`Expert.Answer`);
//! - (b) through a bare forwarding proxy started here: `Router.Ask` in, `Expert.Answer` out, the
//!   reply mapped back; no validation, no policy, no bookkeeping;
//! - (c) through the scheduler with a learned route-mode policy (trained here on the default
//!   pool's labels), its pool holding only that same expert worker: one hop per query, like (b),
//!   so the difference is the scheduler's own work (validation, featurizing, scoring, deciding,
//!   bookkeeping);
//! - (c0) as (c) with the prior policy, which reads no features: what featurizing costs;
//! - (d) the same policy over the whole default pool (five workers): one hop, spread over five
//!   upstream connections;
//! - (e) the shipped defer-mode policy over the whole pool (probes first: two or three hops).
//!
//! Each at concurrency 1 (latency) and saturated (requests/s). Everything runs in this process on
//! the same cores, load generator included; ratios from one run are what to read.

use super::{LoadOptions, Target, queries, run, tally::LoadReport};
use crate::cluster;
use crate::core::learned::{LossKind, Mode};
use crate::defaults::{default_data_path, default_policy_path, default_pool_path};
use crate::grpc::pb::{self, expert_client::ExpertClient, router_server};
use crate::pool_file::PoolFile;
use crate::scheduler::{PolicySource, Scheduler, SchedulerConfig, load_policy_file};
use crate::squad::Dataset;
use crate::train::labels::{LabelOptions, label};
use crate::train::{TrainOptions, fit::FitConfig, train};
use anyhow::Context;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub p50_us: u64,
    pub p99_us: u64,
    pub rps: f64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub name: String,
    /// Concurrency 1.
    pub latency: Phase,
    /// Saturated.
    pub saturated: Phase,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: String,
    pub command: String,
    pub duration_s: f64,
    pub saturate: usize,
    /// (c) / (b) saturated requests/s.
    pub throughput_ratio: f64,
    /// (c) − (b) at concurrency 1.
    pub added_p50_us: i64,
    pub added_p99_us: i64,
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

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn stop(r: Running) -> anyhow::Result<()> {
    let _ = r.stop.send(());
    r.task.await?
}

async fn spawn_scheduler(scheduler: Scheduler) -> anyhow::Result<(SocketAddr, Running)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(crate::scheduler::serve(
        listener,
        Arc::new(scheduler),
        async {
            let _ = rx.await;
        },
    ));
    Ok((addr, Running { stop: tx, task }))
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

async fn measure(
    name: &str,
    target: Target,
    address: &str,
    args: &BenchOptions,
    queries: &Arc<Vec<super::LoadQuery>>,
    version: crate::core::metric::MetricVersion,
) -> anyhow::Result<Measured> {
    let options = |concurrency: usize, connections: usize| LoadOptions {
        target,
        address: address.to_owned(),
        concurrency,
        rps: None,
        duration: Some(args.duration),
        warmup: Duration::from_secs(1),
        connections,
        limit: None,
        timeout: Duration::from_secs(10),
        progress: false,
        tls: None,
        token: None,
    };
    let latency = run(&options(1, 1), queries.clone(), version).await?;
    let saturated = run(&options(args.saturate, 4), queries.clone(), version).await?;
    eprintln!(
        "l2d bench: {name}: p50 {} us, p99 {} us at concurrency 1; {:.0} req/s at {}",
        latency.latency_us.p50, latency.latency_us.p99, saturated.rps, args.saturate
    );
    Ok(Measured {
        name: name.into(),
        latency: phase(&latency),
        saturated: phase(&saturated),
    })
}

pub async fn bench(args: &BenchOptions) -> anyhow::Result<BenchReport> {
    let pool = PoolFile::load(&default_pool_path())?;
    let data = default_data_path();
    let dataset = Dataset::load(&data)?;
    let version = dataset.metric_version();
    let queries = Arc::new(queries(&dataset));

    // A route-mode policy for the one-hop comparison, trained here (about 2 s).
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
            probes: vec![],
            loss: LossKind::Em,
            split_seed: 1,
            test_fraction: 0.5,
            fit: FitConfig::default(),
        },
    )?;
    let route_digest = "bench-route".to_string();

    // (a) one expert worker.
    let local = cluster::spawn_local_experts(&pool).await?;
    let bert = local
        .addresses
        .iter()
        .find(|(id, _)| id == "bert-large")
        .map(|(_, a)| *a)
        .context("the default pool has no bert-large")?;
    // (b) the bare proxy in front of it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{bert}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = proxy_listener.local_addr()?;
    let (proxy_stop, proxy_stopped) = oneshot::channel::<()>();
    let proxy = ForwardingProxy {
        expert: ExpertClient::new(channel),
    };
    let proxy_task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(router_server::RouterServer::new(proxy))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(proxy_listener)
                    .with_nodelay(Some(true)),
                async {
                    let _ = proxy_stopped.await;
                },
            )
            .await
            .map_err(anyhow::Error::from)
    });
    // (c) and (d): schedulers over the same in-process experts.
    let with_experts =
        |policy: Box<dyn crate::core::policy::Policy>, only: Option<&str>, digest: String| {
            let scheduler = Scheduler::with_source(
                SchedulerConfig::default(),
                policy,
                PolicySource::Fixed,
                digest,
            );
            for spec in pool
                .experts
                .iter()
                .filter(|s| only.is_none_or(|o| o == s.id))
            {
                scheduler
                    .registry
                    .declare_expert(&spec.id, spec.cost, spec.backend.kind());
                for a in cluster::expert_addresses(spec, &local) {
                    let _ = scheduler.registry.add_fixed_replica(
                        &spec.id,
                        &a.to_string(),
                        crate::scheduler::registry::Origin::InProcess,
                        None,
                    );
                }
            }
            scheduler
        };
    let prior = crate::cluster::prior_policy(&pool, None)?;
    let (prior_addr, prior_running) = spawn_scheduler(with_experts(
        Box::new(prior),
        Some("bert-large"),
        String::new(),
    ))
    .await?;
    let one_hop = crate::core::learned::LearnedPolicy::new(route.clone(), None, &route_digest);
    let (one_addr, one_running) = spawn_scheduler(with_experts(
        Box::new(one_hop),
        Some("bert-large"),
        route_digest.clone(),
    ))
    .await?;
    let route_policy = crate::core::learned::LearnedPolicy::new(route, None, &route_digest);
    let (route_addr, route_running) =
        spawn_scheduler(with_experts(Box::new(route_policy), None, route_digest)).await?;
    let (defer, digest) = load_policy_file(&default_policy_path(), None)?;
    let (defer_addr, defer_running) =
        spawn_scheduler(with_experts(Box::new(defer), None, digest)).await?;

    let runs = [
        ("(a) direct to the expert", Target::Expert, bert),
        ("(b) bare forwarding proxy", Target::Router, proxy_addr),
        (
            "(c) scheduler, learned route policy, that expert only",
            Target::Router,
            one_addr,
        ),
        (
            "(c0) scheduler, prior policy (no features), that expert only",
            Target::Router,
            prior_addr,
        ),
        (
            "(d) scheduler, learned route policy, 5-expert pool",
            Target::Router,
            route_addr,
        ),
        (
            "(e) scheduler, shipped defer policy, 5-expert pool",
            Target::Router,
            defer_addr,
        ),
    ];
    let mut targets = Vec::with_capacity(runs.len());
    for (name, target, address) in runs {
        targets.push(measure(name, target, &address.to_string(), args, &queries, version).await?);
    }

    stop(one_running).await?;
    stop(prior_running).await?;
    stop(route_running).await?;
    stop(defer_running).await?;
    let _ = proxy_stop.send(());
    proxy_task.await??;
    local.shutdown().await?;

    let (b, c) = (&targets[1], &targets[2]);
    Ok(BenchReport {
        machine: machine(),
        command: format!(
            "l2d bench --duration {} --saturate {}",
            humantime::format_duration(args.duration),
            args.saturate
        ),
        duration_s: args.duration.as_secs_f64(),
        saturate: args.saturate,
        throughput_ratio: c.saturated.rps / b.saturated.rps.max(f64::MIN_POSITIVE),
        added_p50_us: c.latency.p50_us as i64 - b.latency.p50_us as i64,
        added_p99_us: c.latency.p99_us as i64 - b.latency.p99_us as i64,
        targets,
    })
}

/// The report as the Markdown section `l2d bench --write` maintains.
pub fn markdown(r: &BenchReport) -> String {
    let mut out = format!(
        "{BEGIN}\n## Scheduler overhead against one bare gRPC hop (`l2d bench`)\n\nMachine: {}. Command: `{}` \
         (load generator, experts, proxy and schedulers in one process on loopback; each phase {} s after 1 s warm-up).\n\n\
         | target | p50 µs (conc. 1) | p99 µs (conc. 1) | req/s (conc. {}) | errors |\n| --- | --- | --- | --- | --- |\n",
        r.machine, r.command, r.duration_s, r.saturate
    );
    for t in &r.targets {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} |\n",
            t.name,
            t.latency.p50_us,
            t.latency.p99_us,
            t.saturated.rps,
            t.latency.errors + t.saturated.errors
        ));
    }
    out.push_str(&format!(
        "\n(c) against (b): throughput ratio **{:.3}** (target ≥ 0.90), added p50 **{} µs** (target ≤ 30), added p99 **{} µs**.\n{END}\n",
        r.throughput_ratio, r.added_p50_us, r.added_p99_us
    ));
    out
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
    /// Write the figures as JSON here.
    pub json: Option<std::path::PathBuf>,
    /// Rewrite the benchmark section of this Markdown file.
    pub write: Option<std::path::PathBuf>,
}

pub async fn bench_command(args: BenchOptions) -> anyhow::Result<()> {
    let report = bench(&args).await?;
    let section = markdown(&report);
    print!("{section}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.write {
        let text = if Path::new(path).exists() {
            std::fs::read_to_string(path)?
        } else {
            String::new()
        };
        std::fs::write(path, replace_section(&text, &section))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
