//! The `l2d` command line: argument definitions and the commands' bodies. `main.rs` only parses
//! and reports errors.

use crate::cluster;
use crate::defaults::{default_data_path, default_policy_path, default_pool_path};
use crate::expert::{self, ExpertNode, Registration};
use crate::grpc::pb::{self, pool_client::PoolClient, replica_state::Origin};
use crate::grpc::server::{ServerLimits, shutdown_signal};
use crate::grpc::status::code_name;
use crate::pool_file::{BackendSpec, ExpertSpec, Placement, PoolFile, check_expert_id};
use crate::scheduler::{self, Scheduler, SchedulerConfig};
use crate::squad::{Dataset, DatasetCache};
use crate::{Ask, RouterClient};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

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
    /// Run every expert of a pool over a data set through gRPC: EM, F1, latency, cost.
    ExpertsReport(ExpertsReportArgs),
    /// Label a data set: run every expert of a pool on every question, through gRPC.
    Label(LabelArgs),
    /// Train the rejector bank (Learning-to-Defer surrogate) from labels.
    Train(TrainArgs),
    /// Evaluate a policy on its test articles beside the baselines.
    Eval(EvalArgs),
    /// Load-test a scheduler (or an expert) by replaying a SQuAD-format data set.
    Load(LoadArgs),
    /// Measure the scheduler against a bare forwarding proxy and a direct expert, in one run.
    Bench(BenchArgs),
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

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Pool file (default: pools/squad-v1.1.toml).
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// Policy file (default: policies/squad-v1.1.json).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The data set whose test articles are asked (default: data/squad-v1.1/dev.json).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Ask only the first N test questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Calls in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// ε-greedy exploration in the scheduler (see `l2d scheduler --explore`).
    #[arg(long, default_value_t = 0.0)]
    pub explore: f64,
    /// Write the scheduler's decision log here.
    #[arg(long)]
    pub decision_log: Option<PathBuf>,
    /// Live cost target (see `l2d scheduler --target-cost`).
    #[arg(long)]
    pub target_cost: Option<f64>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address the scheduler listens on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Pool file (default: pools/squad-v1.1.toml).
    #[arg(long)]
    pub pool: Option<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub dispatch: DispatchArgs,
}

/// Dispatch knobs shared by `l2d up` and `l2d scheduler`.
#[derive(Debug, Args)]
pub struct DispatchArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9464); off when unset.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Calls in flight per replica unless the pool file or the replica says otherwise; beyond
    /// it the replica is saturated and work goes elsewhere (or RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 64)]
    pub max_in_flight: u32,
    /// Weight of the load term in the decision (0 ignores load until saturation).
    #[arg(long, default_value_t = 0.02)]
    pub load_weight: f64,
    /// Consecutive failed calls that eject a replica (exponential backoff from 1 s to 30 s).
    #[arg(long, default_value_t = 5)]
    pub eject_after: u32,
    /// How often static and DNS replicas get a gRPC health check (0s: never).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// How often the pool file's DNS names are resolved again.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub dns_interval: Duration,
    /// After SIGTERM: report NOT_SERVING on health, keep serving this long, then drain.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,
    /// Longest wait for one expert call before trying elsewhere (a hung replica), within the
    /// caller's deadline.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub try_timeout: Duration,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// CA of the experts' certificates: call experts over TLS.
    #[arg(long)]
    pub expert_tls_ca: Option<PathBuf>,
    /// Certificate and key to present to experts (mutual TLS).
    #[arg(long, requires = "expert_tls_key", requires = "expert_tls_ca")]
    pub expert_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "expert_tls_cert")]
    pub expert_tls_key: Option<PathBuf>,
    /// Name expected in the experts' certificates (default: the host dialled).
    #[arg(long, requires = "expert_tls_ca")]
    pub expert_tls_domain: Option<String>,
    /// Pool mutations (Register, Heartbeat, Deregister, ReloadPolicy) need this bearer token
    /// (read from the file, re-read when it changes) or an allowed client certificate. It may
    /// serve any expert; see --pool-credentials for one credential per expert.
    #[arg(long)]
    pub pool_token_file: Option<PathBuf>,
    /// Client-certificate identities (common name or DNS/URI SAN) allowed to change the pool.
    #[arg(long, value_delimiter = ',')]
    pub pool_identities: Vec<String>,
    /// A TOML file of pool credentials, each a token file or a certificate identity with the
    /// expert ids it may serve (see docs/deploy.md, "Registration, when it is on").
    #[arg(long)]
    pub pool_credentials: Option<PathBuf>,
    /// Router.Ask needs this bearer token (read from the file) or an allowed client certificate.
    #[arg(long)]
    pub router_token_file: Option<PathBuf>,
    /// Client-certificate identities allowed to call Router.Ask.
    #[arg(long, value_delimiter = ',')]
    pub router_identities: Vec<String>,
    /// Whether experts may join with Pool.Register ("off" where the pool file places every
    /// expert, e.g. by DNS in Kubernetes).
    #[arg(long, value_enum, default_value = "on")]
    pub registration: Switch,
    /// Serve Pool.Register without any pool credential on a non-loopback address (refused
    /// otherwise): anyone who reaches the port can then join the pool as any expert.
    #[arg(long)]
    pub insecure_pool: bool,
    /// Networks (CIDR) and DNS suffixes replicas may register at, comma-separated
    /// (default: loopback only), e.g. 10.42.0.0/16,l2d.svc.cluster.local.
    #[arg(long, value_delimiter = ',')]
    pub register_allow: Vec<String>,
    /// Registrations per second one credential may make on average (bursts of twice that).
    #[arg(long, default_value_t = 20.0)]
    pub register_rate: f64,
    /// Experts the pool may hold; registrations beyond it get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64)]
    pub max_experts: usize,
    /// Replicas the pool may hold; registrations beyond it get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 1024)]
    pub max_replicas: usize,
    /// Serve the Pool service on this address instead of the Router's (so a network policy can
    /// tell the two apart).
    #[arg(long)]
    pub pool_listen: Option<SocketAddr>,
    /// Also serve grpc.health.v1 alone, in plain HTTP/2, here (probes that cannot speak TLS).
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub server_limits: ServerLimitArgs,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Limits of a node's gRPC listener (see RELIABILITY.md, security).
#[derive(Debug, Args)]
pub struct ServerLimitArgs {
    /// Connections open at once; one more is closed on accept.
    #[arg(long, default_value_t = ServerLimits::default().max_connections)]
    pub max_connections: usize,
    /// Calls open at once on one connection (HTTP/2 max concurrent streams).
    #[arg(long, default_value_t = ServerLimits::default().max_concurrent_streams)]
    pub max_concurrent_streams: u32,
    /// Calls in service at once over all connections; one more gets RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = ServerLimits::default().max_calls_in_service)]
    pub max_calls_in_service: usize,
    /// Longest a call may take on this node, body included (a shorter grpc-timeout wins).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

impl ServerLimitArgs {
    fn limits(&self) -> anyhow::Result<ServerLimits> {
        anyhow::ensure!(
            self.max_connections > 0,
            "--max-connections must be at least 1"
        );
        anyhow::ensure!(
            self.max_concurrent_streams > 0,
            "--max-concurrent-streams must be at least 1"
        );
        anyhow::ensure!(
            self.max_calls_in_service > 0,
            "--max-calls-in-service must be at least 1"
        );
        anyhow::ensure!(
            !self.request_timeout.is_zero(),
            "--request-timeout must be longer than 0s"
        );
        Ok(ServerLimits {
            max_connections: self.max_connections,
            max_concurrent_streams: self.max_concurrent_streams,
            max_calls_in_service: self.max_calls_in_service,
            request_timeout: self.request_timeout,
            ..ServerLimits::default()
        })
    }
}

/// TLS on a node's gRPC listener.
#[derive(Debug, Args)]
pub struct ServerTlsArgs {
    /// PEM certificate (chain) for this node's listener: serve TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Demand client certificates signed by this CA (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    fn config(&self) -> anyhow::Result<Option<Arc<crate::grpc::tls::ServerTls>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::grpc::tls::ServerTls::load(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?)),
            _ => Ok(None),
        }
    }
}

/// TLS of a client: the server's CA, a client identity, the expected name.
fn client_tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    domain: Option<&str>,
) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    let Some(ca) = ca else {
        return Ok(None);
    };
    Ok(Some(crate::grpc::tls::client_config(
        ca,
        cert.zip(key),
        domain,
    )?))
}

/// TLS and credentials of a command that calls a scheduler.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// CA of the scheduler's certificate: connect over TLS.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Certificate and key to present (mutual TLS).
    #[arg(long, requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name expected in the scheduler's certificate (default: the host dialled).
    #[arg(long, requires = "tls_ca")]
    pub tls_domain: Option<String>,
    /// Send `authorization: Bearer TOKEN` with the token in this file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl ClientArgs {
    fn tls(&self) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
        client_tls(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_domain.as_deref(),
        )
    }

    fn token(&self) -> anyhow::Result<Option<String>> {
        self.token_file
            .as_deref()
            .map(crate::scheduler::access::read_token)
            .transpose()
    }
}

impl DispatchArgs {
    fn apply(&self, config: &mut SchedulerConfig) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_in_flight > 0, "--max-in-flight must be at least 1");
        anyhow::ensure!(
            self.load_weight.is_finite() && self.load_weight >= 0.0,
            "--load-weight must be a finite number >= 0, got {}",
            self.load_weight
        );
        anyhow::ensure!(self.eject_after > 0, "--eject-after must be at least 1");
        anyhow::ensure!(
            !self.dns_interval.is_zero(),
            "--dns-interval must be longer than 0s"
        );
        config.replicas.max_in_flight = self.max_in_flight;
        config.replicas.health.consecutive_failures = self.eject_after;
        config.load_weight = self.load_weight;
        config.health_interval = self.health_interval;
        config.dns_interval = self.dns_interval;
        config.drain_delay = self.drain_delay;
        anyhow::ensure!(
            !self.try_timeout.is_zero(),
            "--try-timeout must be longer than 0s"
        );
        config.try_timeout = self.try_timeout;
        config.tls = self.tls.config()?;
        config.expert_tls = client_tls(
            self.expert_tls_ca.as_deref(),
            self.expert_tls_cert.as_deref(),
            self.expert_tls_key.as_deref(),
            self.expert_tls_domain.as_deref(),
        )?;
        config.gate = Arc::new(self.gate()?);
        config.insecure_pool = self.insecure_pool;
        if !self.register_allow.is_empty() {
            config.register_allow = crate::core::allow_list::AllowList::parse(
                self.register_allow.iter().map(String::as_str),
            )
            .map_err(|e| anyhow::anyhow!("--register-allow: {e}"))?;
        }
        anyhow::ensure!(
            self.register_rate.is_finite() && self.register_rate > 0.0,
            "--register-rate must be a positive number, got {}",
            self.register_rate
        );
        config.register_rate = self.register_rate;
        anyhow::ensure!(self.max_experts > 0, "--max-experts must be at least 1");
        anyhow::ensure!(self.max_replicas > 0, "--max-replicas must be at least 1");
        config.replicas.max_experts = self.max_experts;
        config.replicas.max_replicas = self.max_replicas;
        config.server_limits = self.server_limits.limits()?;
        Ok(())
    }

    /// The credentials of both surfaces, from the token files, identities and the credentials
    /// file.
    fn gate(&self) -> anyhow::Result<crate::scheduler::access::Gate> {
        use crate::scheduler::access::{Access, Credential, Gate, load_credentials};
        let mut pool = Vec::new();
        if let Some(path) = &self.pool_token_file {
            pool.push(Credential::token_file("pool-token", path)?);
        }
        pool.extend(
            self.pool_identities
                .iter()
                .map(|id| Credential::certificate(id)),
        );
        if let Some(path) = &self.pool_credentials {
            for credential in load_credentials(path)? {
                anyhow::ensure!(
                    pool.iter().all(|c: &Credential| c.name != credential.name),
                    "--pool-credentials: the name {:?} is also given by another flag",
                    credential.name
                );
                pool.push(credential);
            }
        }
        let mut router = Vec::new();
        if let Some(path) = &self.router_token_file {
            router.push(Credential::token_file("router-token", path)?);
        }
        router.extend(
            self.router_identities
                .iter()
                .map(|id| Credential::certificate(id)),
        );
        Ok(Gate {
            pool: Access::new(pool),
            router: Access::new(router),
            registration: self.registration == Switch::On,
        })
    }
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Address to listen on, e.g. 0.0.0.0:50051.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Pool file: experts to declare, spawn in-process, or reach at static addresses.
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// Lease TTL granted to registering experts that ask for none.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub dispatch: DispatchArgs,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// A learned policy file (from `l2d train`), reloaded when it changes.
    #[arg(long, conflicts_with = "prior")]
    pub policy: Option<PathBuf>,
    /// Serve the prior policy (the pool file's declared accuracies) instead of a learned one.
    #[arg(long)]
    pub prior: bool,
    /// Price of compute in accuracy units: an expert is worth its price over a cheaper one when it
    /// raises P(correct) by more than lambda x (cost difference / max cost). With a learned
    /// policy, selects the nearest entry of its bank.
    #[arg(long, allow_negative_numbers = true)]
    pub lambda: Option<f64>,
    /// Keep the mean cost per query near this by moving along the learned policy's bank.
    #[arg(long, allow_negative_numbers = true)]
    pub target_cost: Option<f64>,
    /// ε-greedy exploration: the share of queries sent to a uniformly drawn eligible expert
    /// (logged with its propensity, for off-policy evaluation).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub explore: f64,
    /// Append one JSON line per decision to this file (no query text).
    #[arg(long)]
    pub decision_log: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Serve recorded answers from a predictions file.
    Replay,
    /// The sliding-window reader of the SQuAD paper (live, microseconds).
    Lexical,
    /// BM25 sentence ranking plus answer-type rules (live, microseconds).
    Typed,
}

#[derive(Debug, Args)]
pub struct ExpertArgs {
    /// Address to listen on, e.g. 127.0.0.1:50061 (port 0 picks a free one).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Expert id (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub id: String,
    /// Take the backend, files and cost of expert --id from this pool file (the one the
    /// scheduler reads), instead of --backend/--predictions/--data/--cost.
    #[arg(long, conflicts_with_all = ["backend", "predictions", "data", "cost"])]
    pub pool: Option<PathBuf>,
    /// replay (recorded answers), lexical or typed (live readers).
    #[arg(long, value_enum, required_unless_present = "pool")]
    pub backend: Option<BackendKind>,
    /// Recorded answers, {question id: answer text} (replay backend).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// The SQuAD file the recordings belong to: resolves queries sent without an id.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Declared relative cost of one call (> 0).
    #[arg(long, allow_negative_numbers = true, required_unless_present = "pool")]
    pub cost: Option<f64>,
    /// Join this scheduler's pool (host:port) with a lease kept alive by heartbeats.
    #[arg(long)]
    pub register: Option<String>,
    /// Address the scheduler should dial to reach this worker (default: the bound address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Lease TTL to ask for (default: the scheduler's).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// Answer at most this many queries at once; others queue (reported as the queue depth).
    /// Announced to the scheduler, which then sends no more. 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub max_concurrency: u32,
    /// Add this latency to every answer (to stand in for a slower model in drills and tests).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// After SIGTERM (and leaving the pool): report NOT_SERVING, keep serving this long, drain.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,
    /// Misbehave on purpose, for fault drills: `empty` answers nothing, `malformed` returns
    /// spans outside the context.
    #[arg(long, value_enum, default_value = "none")]
    pub fault: FaultKind,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// CA of the scheduler's certificate: register over TLS.
    #[arg(long, requires = "register")]
    pub scheduler_tls_ca: Option<PathBuf>,
    /// Certificate and key to present to the scheduler (mutual TLS).
    #[arg(long, requires = "scheduler_tls_key", requires = "scheduler_tls_ca")]
    pub scheduler_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "scheduler_tls_cert")]
    pub scheduler_tls_key: Option<PathBuf>,
    /// Name expected in the scheduler's certificate (default: the host dialled).
    #[arg(long, requires = "scheduler_tls_ca")]
    pub scheduler_tls_domain: Option<String>,
    /// Bearer token for the scheduler's Pool calls, read from this file.
    #[arg(long, requires = "register")]
    pub pool_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultKind {
    None,
    Empty,
    Malformed,
}

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
pub struct ExpertsReportArgs {
    /// Pool file (default: pools/squad-v1.1-live.toml, the default pool plus the live readers).
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// The SQuAD-format data set to ask.
    #[arg(long)]
    pub data: PathBuf,
    /// Ask only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Calls in flight per expert.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Print the reports as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Pool file (default: pools/squad-v1.1.toml).
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// The SQuAD-format data set (v1.1 or v2.0).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the labels (JSON Lines).
    #[arg(long)]
    pub out: PathBuf,
    /// Label only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Calls in flight per expert.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Decide from the query alone, before any expert runs.
    Route,
    /// Run the probe experts first; their answers are features; keep one or defer.
    Defer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LossArg {
    Em,
    F1,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[arg(long)]
    pub labels: PathBuf,
    /// Price(s) of compute, comma-separated: one rejector per value, all in one policy file.
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        default_value = "0,0.01,0.02,0.03,0.05,0.075,0.1,0.15,0.2,0.3,0.5"
    )]
    pub lambda: Vec<f64>,
    /// The lambda served by default (default: the first of --lambda).
    #[arg(long)]
    pub default_lambda: Option<f64>,
    #[arg(long, value_enum, default_value = "route")]
    pub mode: ModeArg,
    /// Defer mode: expert ids that always run first, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub probes: Vec<String>,
    #[arg(long, value_enum, default_value = "em")]
    pub loss: LossArg,
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the example order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seed of the train/test split by article.
    #[arg(long, default_value_t = 1)]
    pub split_seed: u64,
    /// Share of articles held out for evaluation.
    #[arg(long, default_value_t = 0.5)]
    pub test_fraction: f64,
    /// Passes over the training set.
    #[arg(long, default_value_t = 500)]
    pub epochs: usize,
    /// Adam's initial step (decayed to zero along a cosine).
    #[arg(long, default_value_t = 0.05)]
    pub learning_rate: f64,
    /// L2 penalty on the weights of the question features.
    #[arg(long, default_value_t = 1.0)]
    pub l2: f64,
    /// L2 penalty on the hashed question n-gram weights (default: --l2).
    #[arg(long)]
    pub l2_hashed: Option<f64>,
    /// Defer mode: L2 penalty on the weights of the probe-answer features.
    #[arg(long, default_value_t = 0.01)]
    pub l2_probe: f64,
    /// Examples per Adam step (0: the whole training set).
    #[arg(long, default_value_t = 0)]
    pub batch_size: usize,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub labels: PathBuf,
    #[arg(long)]
    pub policy: PathBuf,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as Markdown here.
    #[arg(long)]
    pub md: Option<PathBuf>,
    /// Write the EM-against-cost plot (SVG) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Estimate the policy's EM from a scheduler's decision log instead (off-policy, IPS).
    #[arg(long)]
    pub from_log: Option<PathBuf>,
    /// The hand-written cascade baseline: first,second,fallback expert ids.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "match-lstm,rnet-plus,bert-large"
    )]
    pub cascade: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The scheduler to load (Router.Ask), host:port.
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

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds of each measured phase.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Calls in flight for the saturated phase.
    #[arg(long, default_value_t = 32)]
    pub saturate: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Rewrite the benchmark section of this Markdown file (e.g. BENCHMARKS.md).
    #[arg(long)]
    pub write: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Labels to draw accuracies and questions from (default: label the default pool on SQuAD
    /// v1.1 dev first, about 1 s).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Pool sizes (experts), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5,50,500")]
    pub experts: Vec<usize>,
    /// Replicas per expert.
    #[arg(long, default_value_t = 20)]
    pub replicas: usize,
    /// Queries per pool size.
    #[arg(long, default_value_t = 20_000)]
    pub queries: usize,
    /// Price of compute of the prior policy used.
    #[arg(long, default_value_t = 0.1)]
    pub lambda: f64,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The SQuAD-format data set (v1.1 or v2.0).
    #[arg(long)]
    pub data: PathBuf,
    /// Predictions: a JSON object {question id: answer text}.
    #[arg(long)]
    pub predictions: PathBuf,
    /// Print one JSON object (exact_match, f1, total, missing; HasAns/NoAns on v2.0).
    #[arg(long)]
    pub json: bool,
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
                    // The demo measures the policy's allocation against the offline evaluation:
                    // no load term (its in-process replicas never near their limits anyway).
                    load_weight: 0.0,
                    ..SchedulerConfig::default()
                },
            };
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
        Command::Score(args) => score(args),
        Command::Load(args) => load(args).await,
        Command::Simulate(args) => simulate(args).await,
        Command::Bench(args) => {
            crate::load::bench::bench_command(crate::load::bench::BenchOptions {
                duration: args.duration,
                saturate: args.saturate,
                json: args.json,
                write: args.write,
            })
            .await
        }
        Command::ExpertsReport(args) => experts_report(args).await,
        Command::Label(args) => label(args).await,
        Command::Train(args) => train(args),
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

async fn run_scheduler(
    listen: SocketAddr,
    pool_path: Option<PathBuf>,
    policy: PolicyArgs,
    config: SchedulerConfig,
    dispatch: &DispatchArgs,
    banner: bool,
) -> anyhow::Result<()> {
    let (metrics_listen, pool_listen, health_listen) = (
        dispatch.metrics_listen,
        dispatch.pool_listen,
        dispatch.health_listen,
    );
    let pool = match &pool_path {
        Some(path) => PoolFile::load(path)?,
        None => PoolFile {
            path: PathBuf::new(),
            experts: Vec::new(),
            digest: String::new(),
        },
    };
    let mut config = config;
    anyhow::ensure!(
        (0.0..=1.0).contains(&policy.explore),
        "--explore must be in [0, 1], got {}",
        policy.explore
    );
    config.explore = policy.explore;
    config.decision_log = policy.decision_log.clone();
    if let Some(target) = policy.target_cost {
        anyhow::ensure!(
            target.is_finite() && target > 0.0,
            "--target-cost must be a positive finite number, got {target}"
        );
        anyhow::ensure!(
            policy.policy.is_some(),
            "--target-cost needs a learned policy bank (--policy FILE)"
        );
        config.target_cost = Some(target);
    }
    let scheduler = match &policy.policy {
        Some(path) => {
            let (learned, digest) = crate::scheduler::load_policy_file(path, policy.lambda)?;
            let known: Vec<&str> = pool.experts.iter().map(|e| e.id.as_str()).collect();
            for agent in &learned.file().experts {
                if !pool.experts.is_empty() && !known.contains(&agent.id.as_str()) {
                    tracing::warn!(expert = %agent.id, "the policy knows an expert the pool file does not declare; it must register");
                }
            }
            let source = crate::scheduler::PolicySource::File {
                path: path.clone(),
                lambda: policy.lambda,
            };
            Scheduler::with_source(config, Box::new(learned), source, digest)
        }
        None => Scheduler::new(
            config,
            Box::new(cluster::prior_policy(&pool, policy.lambda)?),
        ),
    };
    let mut scheduler = scheduler;
    scheduler.open_decision_log()?;
    let scheduler = Arc::new(scheduler);
    let bind = |address: SocketAddr, what: &'static str| async move {
        TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}{what}"))
    };
    let listener = bind(listen, "").await?;
    let pool_listener = match pool_listen {
        Some(address) => Some(bind(address, " for Pool").await?),
        None => None,
    };
    let health_listener = match health_listen {
        Some(address) => Some(bind(address, " for health checks").await?),
        None => None,
    };
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?,
        ),
        None => None,
    };
    let local = cluster::start_pool(&pool, &scheduler).await?;
    let address = listener.local_addr()?;
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = metrics_listener.map(|listener| {
        let s = scheduler.clone();
        tokio::spawn(crate::telemetry::serve_metrics(
            listener,
            move || s.publish_metrics(),
            async {
                let _ = metrics_stopped.await;
            },
        ))
    });
    if banner {
        let active = scheduler.policy();
        eprintln!(
            "l2d: scheduler on {address} with {} experts ({} in-process replicas); policy {} at lambda {}",
            pool.experts.len(),
            local.addresses.len(),
            active.identity().id,
            active.lambda()
        );
        eprintln!(
            "l2d: try  l2d ask --router {address} --data data/squad-v1.1/dev.json --id 56be4db0acb8001400a502ec"
        );
        eprintln!("l2d: stop with Ctrl-C");
    }
    let listeners = scheduler::Listeners {
        router: listener,
        pool: pool_listener,
        health: health_listener,
    };
    let served = scheduler::serve_on(listeners, scheduler, shutdown_signal()).await;
    let _ = metrics_stop.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    local.shutdown().await?;
    served
}

async fn run_expert(args: ExpertArgs) -> anyhow::Result<()> {
    check_expert_id(&args.id).map_err(|m| anyhow::anyhow!("--id: {m}"))?;
    let spec = match &args.pool {
        Some(path) => {
            let pool = PoolFile::load(path)?;
            let known: Vec<&str> = pool.experts.iter().map(|e| e.id.as_str()).collect();
            pool.experts
                .iter()
                .find(|e| e.id == args.id)
                .cloned()
                .with_context(|| {
                    format!(
                        "pool file {} has no expert {:?} (it has: {})",
                        path.display(),
                        args.id,
                        known.join(", ")
                    )
                })?
        }
        None => expert_spec_from_flags(&args)?,
    };
    let backend = cluster::build_backend(&spec, &DatasetCache::default())?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let scheduler_tls = client_tls(
        args.scheduler_tls_ca.as_deref(),
        args.scheduler_tls_cert.as_deref(),
        args.scheduler_tls_key.as_deref(),
        args.scheduler_tls_domain.as_deref(),
    )?;
    let token = args
        .pool_token_file
        .as_deref()
        .map(crate::scheduler::access::read_token)
        .transpose()?;
    let registration = args.register.map(|scheduler| Registration {
        scheduler,
        advertise: args.advertise.unwrap_or_else(|| bound.to_string()),
        lease_ttl: args.lease_ttl,
        tls: scheduler_tls,
        token,
    });
    let node = ExpertNode::new(spec.id, spec.cost, backend)
        .with_max_concurrency(args.max_concurrency)
        .with_delay(args.delay)
        .with_drain_delay(args.drain_delay)
        .with_tls(args.tls.config()?)
        .with_fault(match args.fault {
            FaultKind::None => expert::Fault::None,
            FaultKind::Empty => expert::Fault::Empty,
            FaultKind::Malformed => expert::Fault::Malformed,
        });
    expert::serve(listener, node, registration, shutdown_signal()).await
}

/// An expert described by `l2d expert` flags.
fn expert_spec_from_flags(args: &ExpertArgs) -> anyhow::Result<ExpertSpec> {
    let cost = args.cost.context("--cost is required without --pool")?;
    if !(cost.is_finite() && cost > 0.0) {
        bail!("--cost must be a positive finite number, got {cost}");
    }
    let backend = match args
        .backend
        .context("--backend is required without --pool")?
    {
        BackendKind::Replay => BackendSpec::Replay {
            predictions: args
                .predictions
                .clone()
                .context("--predictions is required with --backend replay")?,
            data: args.data.clone(),
        },
        BackendKind::Lexical | BackendKind::Typed
            if args.predictions.is_some() || args.data.is_some() =>
        {
            bail!(
                "--predictions and --data are for --backend replay; live readers compute their answers"
            )
        }
        BackendKind::Lexical => BackendSpec::Lexical,
        BackendKind::Typed => BackendSpec::Typed,
    };
    Ok(ExpertSpec {
        id: args.id.clone(),
        cost,
        accuracy: None,
        backend,
        placement: Placement::InProcess { replicas: 1 },
        max_in_flight: None,
    })
}

async fn ask(args: AskArgs) -> anyhow::Result<()> {
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

async fn experts_report(args: ExpertsReportArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let pool_path = args
        .pool
        .unwrap_or_else(|| default_pool_path().with_file_name("squad-v1.1-live.toml"));
    let pool = PoolFile::load(&pool_path)?;
    let dataset = Dataset::load(&args.data)?;
    let options = crate::report::ReportOptions {
        limit: args.limit,
        concurrency: args.concurrency,
        progress: std::io::stderr().is_terminal(),
    };
    let reports = crate::report::experts_report(&pool, &dataset, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", crate::report::report_table(&reports));
    }
    Ok(())
}

async fn label(args: LabelArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let pool = PoolFile::load(&args.pool.unwrap_or_else(default_pool_path))?;
    let dataset = Dataset::load(&args.data)?;
    let options = crate::train::labels::LabelOptions {
        concurrency: args.concurrency,
        limit: args.limit,
        progress: std::io::stderr().is_terminal(),
        articles: None,
    };
    let started = std::time::Instant::now();
    let labels =
        crate::train::labels::label(&pool, &dataset, &args.data.display().to_string(), &options)
            .await?;
    labels.write(&args.out)?;
    eprintln!(
        "l2d: labelled {} questions with {} experts in {:.1}s -> {}",
        labels.records.len(),
        labels.header.experts.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    use crate::core::learned::{LossKind, Mode};
    let labels = crate::train::labels::Labels::read(&args.labels)?;
    let options = crate::train::TrainOptions {
        lambdas: args.lambda,
        default_lambda: args.default_lambda,
        mode: match args.mode {
            ModeArg::Route => Mode::Route,
            ModeArg::Defer => Mode::Defer,
        },
        probes: args.probes,
        loss: match args.loss {
            LossArg::Em => LossKind::Em,
            LossArg::F1 => LossKind::F1,
        },
        split_seed: args.split_seed,
        test_fraction: args.test_fraction,
        fit: crate::train::fit::FitConfig {
            epochs: args.epochs,
            learning_rate: args.learning_rate,
            l2: args.l2,
            l2_hashed: args.l2_hashed.unwrap_or(args.l2),
            l2_probe: args.l2_probe,
            // Set by train() from the featurizer's layout.
            probe_features_from: usize::MAX,
            batch_size: if args.batch_size == 0 {
                usize::MAX
            } else {
                args.batch_size
            },
            seed: args.seed,
        },
    };
    let started = std::time::Instant::now();
    let policy = crate::train::train(&labels, &options)?;
    std::fs::write(&args.out, serde_json::to_string(&policy)?)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "l2d: trained {} rejector(s) on {} questions of {} train articles in {:.1}s -> {}",
        policy.bank.len(),
        policy.training.examples,
        policy.split.train_articles.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let labels = crate::train::labels::Labels::read(&args.labels)?;
    let text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("cannot read policy file {}", args.policy.display()))?;
    let policy = crate::core::learned::PolicyFile::parse(&text)
        .with_context(|| format!("policy file {}", args.policy.display()))?;
    if let Some(log_path) = &args.from_log {
        let log = crate::train::offpolicy::read_log(log_path)?;
        let report = crate::train::offpolicy::evaluate_from_log(&log, &labels, &policy)?;
        let json = serde_json::to_string_pretty(&report)?;
        if let Some(path) = &args.json {
            std::fs::write(path, &json)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        println!("{json}");
        return Ok(());
    }
    let cascade: [String; 3] = args
        .cascade
        .try_into()
        .map_err(|_| anyhow::anyhow!("--cascade takes three expert ids: first,second,fallback"))?;
    let report = crate::train::eval::evaluate(
        &labels,
        &policy,
        &crate::train::eval::EvalOptions { cascade },
    )?;
    let markdown = crate::train::eval::to_markdown(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.md {
        std::fs::write(path, &markdown)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, crate::train::plot::svg(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    print!("{markdown}");
    Ok(())
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    use crate::load::{LoadOptions, Target, queries, rss_kib, run};
    use std::io::IsTerminal;
    let data = args.data.unwrap_or_else(default_data_path);
    let dataset = Dataset::load(&data)?;
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

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use crate::load::simulate::{simulate, table};
    let labels = match &args.labels {
        Some(path) => crate::train::labels::Labels::read(path)?,
        None => {
            let pool = PoolFile::load(&default_pool_path())?;
            let data = default_data_path();
            let dataset = Dataset::load(&data)?;
            let options = crate::train::labels::LabelOptions {
                concurrency: 8,
                limit: None,
                progress: false,
                articles: None,
            };
            crate::train::labels::label(&pool, &dataset, "dev", &options).await?
        }
    };
    let unit = Duration::from_micros(10);
    let interval = Duration::from_micros(20);
    let mut rows = Vec::new();
    for &experts in &args.experts {
        rows.push(simulate(
            &labels,
            experts,
            args.replicas,
            args.queries,
            unit,
            interval,
            args.lambda,
        )?);
    }
    print!("{}", table(&rows, unit, interval));
    Ok(())
}

fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let dataset = Dataset::load(&args.data)?;
    let predictions = crate::squad::load_predictions(&args.predictions)?;
    let evaluation = dataset.evaluate(&predictions);
    if args.json {
        println!("{}", serde_json::to_string(&evaluation)?);
        return Ok(());
    }
    println!(
        "exact_match {:.2}  f1 {:.2}  total {}",
        evaluation.exact_match, evaluation.f1, evaluation.total
    );
    for (name, split) in [("HasAns", evaluation.has_ans), ("NoAns", evaluation.no_ans)] {
        if let Some(split) = split {
            println!(
                "{name:<11} {:.2}  f1 {:.2}  total {}",
                split.exact, split.f1, split.total
            );
        }
    }
    if evaluation.missing > 0 {
        println!(
            "{} of {} questions have no prediction and score 0",
            evaluation.missing, evaluation.total
        );
    }
    Ok(())
}

async fn pool_status(router: &str, json: bool, client: &ClientArgs) -> anyhow::Result<()> {
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

/// The pool as a text table: one line per replica (or per expert without one).
pub fn pool_table(pool: &pb::ListPoolResponse) -> String {
    const HEADER: [&str; 11] = [
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
    ];
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|h| h.to_string()).collect()];
    for e in &pool.experts {
        if e.replicas.is_empty() {
            let mut row = vec![e.expert_id.clone(), e.cost.to_string(), "(none)".into()];
            row.resize(HEADER.len(), "-".into());
            rows.push(row);
        }
        for r in &e.replicas {
            let origin = match Origin::try_from(r.origin) {
                Ok(Origin::Static) => "static",
                Ok(Origin::InProcess) => "in-process",
                Ok(Origin::Registered) => "registered",
                Ok(Origin::Dns) => "dns",
                _ => "?",
            };
            let state = if r.ejected_ms > 0 {
                format!("ejected {:.1}s", r.ejected_ms as f64 / 1000.0)
            } else if !r.lease_id.is_empty() {
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
