//! The `l2d` command line: argument definitions and the commands' bodies, one module per
//! family of commands. `main.rs` only parses and reports errors.
//!
//! | module | commands |
//! | --- | --- |
//! | [`serve`] | `up`, `scheduler`, `expert`: the nodes, their flags turned into configurations |
//! | [`client`] | `ask`, `outcome`, `pool status`, `load` |
//! | [`train`] | `label`, `train`, `eval`, `score`, `experts-report` |
//! | [`tools`] | `demo`, `bench`, `simulate` |
//! | [`tls_args`] | TLS and credentials flags shared by servers and clients |

mod client;
mod serve;
mod tls_args;
mod tools;
mod train;

pub use client::*;
pub use serve::*;
pub use tls_args::*;
pub use tools::*;
pub use train::*;

use crate::defaults::{default_data_path, default_policy_path, default_pool_path};
use crate::scheduler::SchedulerConfig;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "l2d",
    version,
    about = "Learning-to-Defer scheduler for a pool of QA experts"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole system on built-in defaults: the shipped policy routes the test articles of
    /// SQuAD v1.1 through the scheduler; prints it beside the baselines.
    Demo(DemoArgs),
    /// Run a scheduler and the pool's experts in one process on loopback (the default pool:
    /// five SQuAD v1.1 systems replaying their recorded answers).
    Up(UpArgs),
    /// Run a scheduler node: serves Router and Pool; experts come from --pool or register.
    Scheduler(SchedulerArgs),
    /// Run one expert worker node.
    Expert(ExpertArgs),
    /// Ask a scheduler one question.
    Ask(AskArgs),
    /// Report how good an answer was (Router.ReportOutcome): a reward, or gold answers; the
    /// scheduler appends it to its decision log beside the request's decision.
    Outcome(OutcomeArgs),
    /// Check a node's gRPC health (`grpc.health.v1.Health/Check`), as a kubelet gRPC probe
    /// does: exits 0 when SERVING, 1 otherwise.
    Health(HealthArgs),
    /// Run every expert of a pool over a data set through gRPC: EM, F1, latency, cost.
    ExpertsReport(ExpertsReportArgs),
    /// Label a data set: run every expert of a pool on every question, through gRPC.
    Label(LabelArgs),
    /// Train the rejector bank (Learning-to-Defer surrogate) from labels; with no --mode, the
    /// recommended policy (mode, probes or stages, and lambda chosen on validation articles).
    Train(TrainArgs),
    /// Cross-validate the whole procedure by article: per fold, choices on validation articles,
    /// figures on test articles, beside the baselines.
    Cv(CvArgs),
    /// Evaluate a policy on its test articles beside the baselines.
    Eval(EvalArgs),
    /// Load-test a scheduler (or an expert) by replaying a SQuAD-format data set.
    Load(LoadArgs),
    /// Measure the scheduler against a bare forwarding proxy and a direct expert, each server in
    /// its own process, in interleaved rounds.
    Bench(BenchArgs),
    /// One server of `l2d bench` (started by it).
    #[command(hide = true)]
    BenchNode(BenchNodeArgs),
    /// Simulate the decision on large pools (copies of the labelled experts) on simulated time.
    Simulate(SimulateArgs),
    /// Score a predictions file against a SQuAD v1.1/v2.0 file with the official metric.
    Score(ScoreArgs),
    /// Inspect a scheduler's pool.
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Show every expert and replica the scheduler knows, with live state.
    Status {
        /// The scheduler, host:port.
        #[arg(long)]
        router: String,
        /// Print the response as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => {
            use std::io::IsTerminal;
            let pool = args.pool.unwrap_or_else(default_pool_path);
            let policy = args.policy.unwrap_or_else(default_policy_path);
            let data = args.data.unwrap_or_else(default_data_path);
            anyhow::ensure!(
                (0.0..=1.0).contains(&args.explore),
                "--explore must be in [0, 1], got {}",
                args.explore
            );
            let options = crate::demo::DemoOptions {
                concurrency: args.concurrency,
                progress: std::io::stderr().is_terminal(),
                limit: args.limit,
                scheduler: SchedulerConfig {
                    explore: args.explore,
                    decision_log: args.decision_log,
                    target_cost: args.target_cost,
                    ..SchedulerConfig::default()
                },
            };
            let mut options = options;
            if let Some(points) = args.wait_price {
                anyhow::ensure!(
                    points.is_finite() && points >= 0.0,
                    "--wait-price must be a finite number of accuracy points per second, at least 0, got {points}"
                );
                // Accuracy points per second, in score units (a point is 0.01).
                options.scheduler.wait_price = points / 100.0;
            }
            let result = crate::demo::demo(&pool, &policy, &data, &options).await?;
            print!("{}", crate::demo::demo_table(&result));
            Ok(())
        }
        Command::Up(mut args) => {
            let pool = args.pool.unwrap_or_else(default_pool_path);
            if args.policy.policy.is_none() && !args.policy.prior {
                args.policy.policy = Some(default_policy_path());
            }
            let mut config = SchedulerConfig::default();
            args.dispatch.apply(&mut config)?;
            run_scheduler(
                args.listen,
                Some(pool),
                args.policy,
                config,
                &args.dispatch,
                true,
            )
            .await
        }
        Command::Scheduler(args) => {
            let mut config = SchedulerConfig::default();
            config.replicas.leases.default_ttl = config.replicas.leases.grant(Some(args.lease_ttl));
            args.dispatch.apply(&mut config)?;
            run_scheduler(
                args.listen,
                args.pool,
                args.policy,
                config,
                &args.dispatch,
                false,
            )
            .await
        }
        Command::Expert(args) => run_expert(args).await,
        Command::Ask(args) => ask(args).await,
        Command::Outcome(args) => outcome(args).await,
        Command::Score(args) => score(args),
        Command::Load(args) => load(args).await,
        Command::Simulate(args) => simulate(args).await,
        Command::Bench(args) => {
            crate::load::bench::bench_command(crate::load::bench::BenchOptions {
                duration: args.duration,
                saturate: args.saturate,
                cpu_rate: args.cpu_rate,
                rounds: args.rounds as usize,
                json: args.json,
                write: args.write,
            })
            .await
        }
        Command::BenchNode(args) => crate::load::bench::bench_node(args.role()?).await,
        Command::ExpertsReport(args) => experts_report(args).await,
        Command::Label(args) => label(args).await,
        Command::Train(args) => train(args),
        Command::Health(args) => health(&args).await,
        Command::Cv(args) => cv(args),
        Command::Eval(args) => eval(args),
        Command::Pool {
            command:
                PoolCommand::Status {
                    router,
                    json,
                    client,
                },
        } => pool_status(&router, json, &client).await,
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The node, host:port (plaintext, as kubelet probes speak).
    #[arg(long)]
    pub address: String,
    /// The service to ask about; empty (the default) for the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

async fn health(args: &HealthArgs) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.address))
        .map_err(|e| anyhow::anyhow!("--address {}: {e}", args.address))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", args.address))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "{}: {}",
                crate::grpc::status::code_name(s.code()),
                s.message()
            )
        })?;
    let status = ServingStatus::try_from(reply.into_inner().status)
        .map_or_else(|_| "UNKNOWN".to_owned(), |s| s.as_str_name().to_owned());
    let what = if args.service.is_empty() {
        "(server)"
    } else {
        &args.service
    };
    println!("{what}: {status}");
    anyhow::ensure!(
        status == "SERVING",
        "{what} is {status} at {}",
        args.address
    );
    Ok(())
}
