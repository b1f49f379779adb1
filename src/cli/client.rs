//! `l2d ask`, `l2d pool status`, `l2d load`: commands that call a scheduler.

use super::tls_args::ClientArgs;
use crate::defaults::default_data_path;
use crate::grpc::pb::{self, pool_client::PoolClient, replica_state::Origin};
use crate::grpc::status::code_name;
use crate::squad::Dataset;
use crate::{Ask, RouterClient};
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct AskArgs {
    /// The scheduler, host:port.
    #[arg(long)]
    pub router: String,
    /// The question (or take it from --data by --id).
    #[arg(long)]
    pub question: Option<String>,
    /// The context passage.
    #[arg(long, conflicts_with = "context_file")]
    pub context: Option<String>,
    /// Read the context passage from a file.
    #[arg(long)]
    pub context_file: Option<PathBuf>,
    /// Query id (replay experts answer by id).
    #[arg(long)]
    pub id: Option<String>,
    /// A SQuAD file to take the question and context of --id from.
    #[arg(long, requires = "id")]
    pub data: Option<PathBuf>,
    /// Maximum cost for this query.
    #[arg(long, allow_negative_numbers = true)]
    pub budget: Option<f64>,
    /// The query's language, a BCP 47 tag (e.g. `en`): experts that declare other languages
    /// are not asked.
    #[arg(long)]
    pub language: Option<String>,
    /// Deadline of the call.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the full response as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct OutcomeArgs {
    /// The scheduler, host:port.
    #[arg(long)]
    pub router: String,
    /// The request id an answer carried (`l2d ask --json`: request_id).
    #[arg(long)]
    pub request_id: String,
    /// The answer's reward, in [0, 1].
    #[arg(long, allow_negative_numbers = true, required_unless_present = "gold")]
    pub reward: Option<f64>,
    /// A gold answer (repeat for several): the reward is the answer's exact match against them.
    #[arg(long, conflicts_with = "reward")]
    pub gold: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The scheduler to load (Router.Ask), host:port. With --rps-steps, several may be
    /// compared in one run: NAME=HOST:PORT,NAME=HOST:PORT,...
    #[arg(long, required_unless_present = "expert", conflicts_with = "expert")]
    pub router: Option<String>,
    /// Load an expert worker directly (Expert.Answer) instead.
    #[arg(long)]
    pub expert: Option<String>,
    /// The SQuAD-format data set to replay (default: data/squad-v1.1/dev.json).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Closed loop: concurrent workers. Open loop: the most calls in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Open loop: send this many requests per second, whatever the replies do.
    #[arg(long)]
    pub rps: Option<f64>,
    /// Measured run time, after the warm-up.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// A step test: open loop at each of these rates in turn (e.g. 50,100,200,400,800), each
    /// for --step-duration after its own warm-up, against every --router; prints a table.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["rps", "duration", "limit", "expert"])]
    pub rps_steps: Vec<f64>,
    /// How long each step of --rps-steps is measured.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub step_duration: Duration,
    /// With --rps-steps: also write the steps as an SVG plot here.
    #[arg(long, requires = "rps_steps")]
    pub svg: Option<PathBuf>,
    /// Time sent but not counted, at the start.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// gRPC connections (HTTP/2) to spread the calls over (at least one per 100 in flight).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// At most this many calls (warm-up included).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Deadline of each call.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Report this process's resident memory at the start and the end (e.g. the scheduler's pid).
    #[arg(long)]
    pub watch_pid: Option<u32>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(super) async fn ask(args: AskArgs) -> anyhow::Result<()> {
    let (mut question, mut context) = (args.question, args.context);
    if let Some(path) = &args.context_file {
        context = Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read context file {}", path.display()))?,
        );
    }
    if let (Some(path), Some(id)) = (&args.data, &args.id) {
        let dataset = Dataset::load(path)?;
        let (_, paragraph, q) = dataset
            .questions()
            .find(|(_, _, q)| &q.id == id)
            .with_context(|| format!("no question with id {id:?} in {}", path.display()))?;
        question.get_or_insert_with(|| q.question.clone());
        context.get_or_insert_with(|| paragraph.context.clone());
    }
    let question = question.context("--question is required (or --data with --id)")?;
    let context =
        context.context("--context or --context-file is required (or --data with --id)")?;
    let mut client =
        RouterClient::connect_with(&args.router, args.client.tls()?, args.client.token()?)
            .await
            .with_context(|| format!("cannot connect to the scheduler at {}", args.router))?;
    let mut request = Ask::new(question, context).timeout(args.timeout);
    if let Some(id) = args.id {
        request = request.id(id);
    }
    if let Some(budget) = args.budget {
        request = request.budget(budget);
    }
    if let Some(language) = args.language {
        request = request.language(language);
    }
    let answer = client
        .ask(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", code_name(s.code()), s.message()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let text = if answer.text.is_empty() {
        "(no answer)"
    } else {
        answer.text.as_str()
    };
    println!("answer:  {text}");
    println!("expert:  {} at {}", answer.expert_id, answer.replica);
    println!("cost:    {}", answer.cost);
    if let Some(decision) = &answer.decision {
        println!("why:     {}", decision.reason);
        for f in &decision.fallbacks {
            println!(
                "fell back from {} at {}: {}: {}",
                f.expert_id, f.replica, f.code, f.message
            );
        }
    }
    Ok(())
}

pub(super) async fn outcome(args: OutcomeArgs) -> anyhow::Result<()> {
    let mut client =
        RouterClient::connect_with(&args.router, args.client.tls()?, args.client.token()?)
            .await
            .with_context(|| format!("cannot connect to the scheduler at {}", args.router))?;
    let recorded = client
        .report_outcome(&args.request_id, args.reward, args.gold)
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", code_name(s.code()), s.message()))?;
    match recorded.f1 {
        Some(f1) => println!("recorded reward {} (F1 {f1:.3})", recorded.reward),
        None => println!("recorded reward {}", recorded.reward),
    }
    Ok(())
}

pub(super) async fn load(args: LoadArgs) -> anyhow::Result<()> {
    use crate::load::{LoadOptions, Target, queries, rss_kib, run};
    use std::io::IsTerminal;
    let data = args.data.clone().unwrap_or_else(default_data_path);
    let dataset = Dataset::load(&data)?;
    if !args.rps_steps.is_empty() {
        return load_steps(args, &dataset).await;
    }
    if args
        .router
        .as_deref()
        .is_some_and(|r| r.contains(',') || r.contains('='))
    {
        bail!("--router: several schedulers (or a name) are for a step test, with --rps-steps");
    }
    let (target, address) = match (args.router, args.expert) {
        (Some(r), _) => (Target::Router, r),
        (None, Some(e)) => (Target::Expert, e),
        (None, None) => bail!("give --router or --expert"),
    };
    let options = LoadOptions {
        target,
        address,
        concurrency: args.concurrency,
        rps: args.rps,
        duration: args.duration,
        warmup: args.warmup,
        connections: args.connections,
        limit: args.limit,
        timeout: args.timeout,
        progress: std::io::stderr().is_terminal(),
        tls: args.client.tls()?,
        token: args.client.token()?,
    };
    let rss_start = args.watch_pid.and_then(rss_kib);
    let report = run(
        &options,
        Arc::new(queries(&dataset)),
        dataset.metric_version(),
    )
    .await?;
    let rss_end = args.watch_pid.and_then(rss_kib);
    print!("{}", report.to_text());
    if let (Some(pid), Some(a), Some(b)) = (args.watch_pid, rss_start, rss_end) {
        println!("RSS of pid {pid}: {a} KiB at the start, {b} KiB at the end");
    }
    if let Some(path) = &args.json {
        let mut json = serde_json::to_value(&report)?;
        if let (Some(a), Some(b)) = (rss_start, rss_end) {
            json["rss_kib"] = serde_json::json!({ "start": a, "end": b });
        }
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `l2d load --rps-steps`: every step against every scheduler given.
async fn load_steps(args: LoadArgs, dataset: &Dataset) -> anyhow::Result<()> {
    use crate::load::steps::{parse_steps, parse_targets, run_steps};
    use crate::load::{LoadOptions, Target, queries};
    use std::io::IsTerminal;
    let targets = parse_targets(args.router.as_deref().unwrap_or_default())?;
    let steps = parse_steps(&args.rps_steps)?;
    anyhow::ensure!(
        !args.step_duration.is_zero(),
        "--step-duration must be longer than 0s"
    );
    // Open loop: calls in flight reach the rate × the time each takes, up to the deadline.
    let top = steps.iter().copied().fold(0.0, f64::max);
    let needed = (top * args.timeout.as_secs_f64()).ceil();
    if (args.concurrency as f64) < needed {
        eprintln!(
            "l2d: warning: --concurrency {} caps the calls in flight below {top} q/s × {} = \
             {needed:.0}: at the higher steps the generator, not the scheduler, may be the limit",
            args.concurrency,
            humantime::format_duration(args.timeout)
        );
    }
    let base = LoadOptions {
        target: Target::Router,
        address: String::new(),
        concurrency: args.concurrency,
        rps: None,
        duration: None,
        warmup: args.warmup,
        connections: args.connections,
        limit: None,
        timeout: args.timeout,
        progress: std::io::stderr().is_terminal(),
        tls: args.client.tls()?,
        token: args.client.token()?,
    };
    let report = run_steps(
        &base,
        &targets,
        &steps,
        args.step_duration,
        Arc::new(queries(dataset)),
        dataset.metric_version(),
    )
    .await?;
    print!("{}", report.to_markdown());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report.to_svg())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub(super) async fn pool_status(
    router: &str,
    json: bool,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let channel = crate::grpc::tls::endpoint(router, client.tls()?.as_ref())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the scheduler at {router}"))?;
    let pool = PoolClient::new(channel)
        .list_pool(pb::ListPoolRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", code_name(s.code()), s.message()))?
        .into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&pool)?);
        return Ok(());
    }
    print!("{}", pool_table(&pool));
    Ok(())
}

/// What a replica takes, in a few words: "any", or its limits ("≤ 4000 chars, en, 10570 held").
fn takes(capabilities: Option<&pb::Capabilities>) -> String {
    let Some(c) = capabilities else {
        return "any".into();
    };
    let mut parts = Vec::new();
    if let Some(n) = c.max_context_chars {
        parts.push(format!("≤ {n} chars"));
    }
    if let Some(n) = c.max_context_tokens {
        parts.push(format!("≤ {n} tokens"));
    }
    if !c.languages.is_empty() {
        parts.push(c.languages.join("/"));
    }
    if let Some(h) = &c.holds {
        parts.push(format!("{} held", h.count));
    }
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(", ")
    }
}

/// The pool as a text table: one line per replica (or per expert without one).
pub fn pool_table(pool: &pb::ListPoolResponse) -> String {
    const HEADER: [&str; 13] = [
        "EXPERT",
        "COST",
        "REPLICA",
        "ORIGIN",
        "STATE",
        "IN-FLIGHT",
        "QUEUE",
        "RTT",
        "ERRORS",
        "ANSWERED",
        "FAILED",
        "REFUSED",
        "TAKES",
    ];
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|h| h.to_string()).collect()];
    for e in &pool.experts {
        if e.replicas.is_empty() {
            let mut row = vec![e.expert_id.clone(), e.cost.to_string(), "(none)".into()];
            row.resize(HEADER.len(), "-".into());
            rows.push(row);
        }
        for r in &e.replicas {
            let origin = Origin::try_from(r.origin);
            let leased = origin == Ok(Origin::Registered);
            let origin = match origin {
                Ok(Origin::Static) => "static",
                Ok(Origin::InProcess) => "in-process",
                Ok(Origin::Registered) => "registered",
                Ok(Origin::Dns) => "dns",
                _ => "?",
            };
            let state = if r.ejected_ms > 0 {
                format!("ejected {:.1}s", r.ejected_ms as f64 / 1000.0)
            } else if leased {
                // ListPool never shows lease ids; a registered replica holds a lease.
                format!("lease {:.1}s", r.lease_remaining_ms as f64 / 1000.0)
            } else {
                "ready".into()
            };
            let queue = r
                .reported
                .map_or("-".to_string(), |l| l.queue_depth.to_string());
            rows.push(vec![
                e.expert_id.clone(),
                e.cost.to_string(),
                r.address.clone(),
                origin.into(),
                state,
                format!("{}/{}", r.in_flight, r.max_in_flight),
                queue,
                format!("{:.2}ms", r.rtt_ms),
                format!("{:.0}%", r.error_rate * 100.0),
                r.answered_total.to_string(),
                r.failed_total.to_string(),
                r.refused_total.to_string(),
                takes(r.capabilities.as_ref()),
            ]);
        }
    }
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    if let Some(policy) = &pool.policy {
        out.push_str(&format!("policy: {} ({})\n", policy.id, policy.kind));
    }
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_replica_takes_is_summed_up_in_a_few_words() {
        assert_eq!(takes(None), "any");
        assert_eq!(takes(Some(&pb::Capabilities::default())), "any");
        let declared = pb::Capabilities {
            max_context_chars: Some(4000),
            max_context_tokens: Some(900),
            languages: vec!["en".into(), "de".into()],
            holds: Some(pb::Holdings {
                count: 10570,
                ..pb::Holdings::default()
            }),
        };
        assert_eq!(
            takes(Some(&declared)),
            "≤ 4000 chars, ≤ 900 tokens, en/de, 10570 held"
        );
    }

    #[test]
    fn a_registered_replica_shows_its_lease_and_an_ejected_one_its_ejection() {
        let replica = |origin: Origin, lease_ms: u64, ejected_ms: u64| pb::ReplicaState {
            address: "127.0.0.1:1".into(),
            origin: origin as i32,
            lease_remaining_ms: lease_ms,
            ejected_ms,
            ..pb::ReplicaState::default()
        };
        let pool = pb::ListPoolResponse {
            experts: vec![pb::ExpertState {
                expert_id: "bert".into(),
                cost: 100.0,
                replicas: vec![
                    replica(Origin::Registered, 2500, 0),
                    replica(Origin::Static, 0, 0),
                    replica(Origin::Registered, 2500, 1200),
                ],
                ..pb::ExpertState::default()
            }],
            ..pb::ListPoolResponse::default()
        };
        let table = pool_table(&pool);
        let states: Vec<&str> = table
            .lines()
            .skip(1)
            .map(|l| {
                l.split("  ")
                    .filter(|c| !c.trim().is_empty())
                    .nth(4)
                    .unwrap()
                    .trim()
            })
            .collect();
        assert_eq!(states, ["lease 2.5s", "ready", "ejected 1.2s"], "{table}");
    }
}
