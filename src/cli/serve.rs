//! `l2d up`, `l2d scheduler`, `l2d expert`: the nodes' flags, checked and turned into their
//! configurations, and the nodes run until a stop signal.

use super::tls_args::{ServerTlsArgs, client_tls};
use crate::cluster;
use crate::core::capability::Capabilities;
use crate::core::decision::DecisionParams;
use crate::core::replica_health::HealthParams;
use crate::core::service_time::ServiceTime;
use crate::expert::{self, ExpertNode, Registration};
use crate::grpc::server::{ServerLimits, shutdown_signal};
use crate::pool_file::{BackendSpec, ExpertSpec, Placement, PoolFile, check_expert_id};
use crate::scheduler::ReplicaPolicy;
use crate::scheduler::admission::AdmissionLimits;
use crate::scheduler::{self, Scheduler, SchedulerConfig};
use crate::squad::DatasetCache;
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

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
    #[arg(long, default_value_t = ReplicaPolicy::default().max_in_flight)]
    pub max_in_flight: u32,
    /// Accuracy points one second of expected waiting is worth (queueing and service, from
    /// each replica's latency, calls in flight and slot limit): 0 ignores time until a
    /// replica saturates or the deadline is near.
    #[arg(long, default_value_t = DecisionParams::default().wait_price * 100.0, allow_negative_numbers = true)]
    pub wait_price: f64,
    /// Queries the scheduler works on at once; beyond it they wait (see --max-queue-time).
    #[arg(long, default_value_t = AdmissionLimits::default().max_in_flight)]
    pub max_queries: usize,
    /// Longest a query waits for one of the --max-queries slots before RESOURCE_EXHAUSTED
    /// (with a retry hint); never past its own deadline.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub max_queue_time: Duration,
    /// Queries that may wait at once; more are refused at once.
    #[arg(long, default_value_t = AdmissionLimits::default().max_queued)]
    pub max_queued: usize,
    /// Consecutive failed calls that eject a replica (exponential backoff from 1 s to 30 s).
    #[arg(long, default_value_t = HealthParams::default().consecutive_failures)]
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
    #[arg(long, default_value_t = SchedulerConfig::default().register_rate)]
    pub register_rate: f64,
    /// Experts the pool may hold; registrations beyond it get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = ReplicaPolicy::default().max_experts)]
    pub max_experts: usize,
    /// Replicas the pool may hold; registrations beyond it get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = ReplicaPolicy::default().max_replicas)]
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

impl DispatchArgs {
    pub(super) fn apply(&self, config: &mut SchedulerConfig) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_in_flight > 0, "--max-in-flight must be at least 1");
        anyhow::ensure!(
            self.wait_price.is_finite() && self.wait_price >= 0.0,
            "--wait-price must be a finite number >= 0 (accuracy points per second), got {}",
            self.wait_price
        );
        anyhow::ensure!(self.eject_after > 0, "--eject-after must be at least 1");
        anyhow::ensure!(self.max_queries > 0, "--max-queries must be at least 1");
        config.admission = AdmissionLimits {
            max_in_flight: self.max_queries,
            max_queue_time: self.max_queue_time,
            max_queued: self.max_queued,
        };
        anyhow::ensure!(
            !self.dns_interval.is_zero(),
            "--dns-interval must be longer than 0s"
        );
        config.replicas.max_in_flight = self.max_in_flight;
        config.replicas.health.consecutive_failures = self.eject_after;
        // Accuracy points to the score's units (a wrong answer costs 1).
        config.wait_price = self.wait_price / 100.0;
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
    pub(super) fn gate(&self) -> anyhow::Result<crate::scheduler::access::Gate> {
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
    pub(super) fn limits(&self) -> anyhow::Result<ServerLimits> {
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
    /// Export traces (a span per request and per expert call) over OTLP/gRPC to this
    /// receiver, e.g. http://otel-collector:4317. Without it no span is made; a caller's W3C
    /// trace context still goes to the experts.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Append one JSON line per decision to this file (no query text).
    #[arg(long)]
    pub decision_log: Option<PathBuf>,
    /// Rotate the decision log before it passes this many MiB (LOG becomes LOG.N, numbered in
    /// the order rotated).
    #[arg(long, default_value_t = 64)]
    pub decision_log_max_mib: u64,
    /// Rotated decision logs kept (the newest this many).
    #[arg(long, default_value_t = 4)]
    pub decision_log_keep: u32,
    /// When the decision log is flushed to disk: always (each line), never (rotation and
    /// shutdown only) or an interval. Each line reaches the operating system when written.
    #[arg(long, default_value = "1s")]
    pub decision_log_fsync: crate::scheduler::decision_log::Sync,
    /// Also log each decision's question, context and the answers seen before it, so that
    /// another policy can be evaluated from the log alone (`l2d eval --from-log` without
    /// --labels).
    #[arg(long, requires = "decision_log")]
    pub decision_log_queries: bool,
    /// Requests whose outcome may be reported (Router.ReportOutcome): the last this many…
    #[arg(long, default_value_t = 100_000)]
    pub outcome_window: usize,
    /// …for at most this long.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub outcome_ttl: Duration,
    /// A policy file to try beside the one in force: it decides --candidate-share of the
    /// requests, and scores every other one in shadow (no call, no change to the answer),
    /// with agreement and estimated cost exported. Reloaded when it changes.
    #[arg(long)]
    pub candidate_policy: Option<PathBuf>,
    /// The share of requests the candidate decides, in [0, 1]; 0 (the default) is shadow only.
    #[arg(
        long,
        default_value_t = 0.0,
        requires = "candidate_policy",
        allow_negative_numbers = true
    )]
    pub candidate_share: f64,
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
    /// scheduler reads), instead of --backend/--predictions/--data/--cost. The model-server
    /// backends (openai, kserve) are described only there.
    #[arg(long, conflicts_with_all = ["backend", "predictions", "data", "cost"])]
    pub pool: Option<PathBuf>,
    /// replay (recorded answers), lexical or typed (live readers); openai and kserve need
    /// --pool.
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
    /// Median time an answer takes (a stand-in for a model's compute; lognormal up to
    /// --service-time-p99). Without --pool only: a pool file's `service_time` otherwise.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "pool")]
    pub service_time: Option<Duration>,
    /// 99th percentile of the service time (default: the median, a fixed time).
    #[arg(long, value_parser = humantime::parse_duration, requires = "service_time")]
    pub service_time_p99: Option<Duration>,
    /// Longest context this expert takes, in characters: a longer one gets OUT_OF_RANGE, and the
    /// scheduler (which reads it from Describe and the registration) does not send it one.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_context_chars: Option<u32>,
    /// Longest context this expert takes, in tokens as l2d counts them (words, numbers and
    /// punctuation marks).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_context_tokens: Option<u32>,
    /// Languages it answers in, as BCP 47 tags (e.g. `en,de`); queries that state another
    /// language are not sent to it. Default: any.
    #[arg(long, value_delimiter = ',')]
    pub languages: Vec<String>,
    /// After SIGTERM (and leaving the pool): report NOT_SERVING, keep serving this long, drain.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (calls by status code, latency, in
    /// flight, queued).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
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

pub(super) async fn run_scheduler(
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
    config.otlp_endpoint = policy.otlp_endpoint.clone();
    anyhow::ensure!(
        policy.decision_log_max_mib > 0,
        "--decision-log-max-mib must be at least 1"
    );
    config.decision_log_queries = policy.decision_log_queries;
    config.outcome_window = policy.outcome_window;
    config.outcome_ttl = policy.outcome_ttl;
    config.decision_log_options = crate::scheduler::decision_log::LogOptions {
        max_bytes: policy.decision_log_max_mib.saturating_mul(1024 * 1024),
        keep: policy.decision_log_keep,
        sync: policy.decision_log_fsync,
    };
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
    let mut scheduler = match &policy.candidate_policy {
        Some(path) => scheduler.with_candidate(
            crate::scheduler::candidate::Candidate::load(
                path.clone(),
                None,
                policy.candidate_share,
            )
            .context("--candidate-policy")?,
        ),
        None => scheduler,
    };
    scheduler.open_decision_log()?;
    scheduler.start_tracing()?;
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
    if banner && !crate::logs::json_chosen() {
        let active = scheduler.policy();
        eprintln!(
            "l2d: scheduler on {address} with {} experts ({} in-process replicas); policy {} at lambda {}",
            pool.experts.len(),
            local.addresses.len(),
            active.identity().id,
            active.lambda()
        );
        // The default pool replays SQuAD v1.1 dev: one of its questions by id. Another pool's
        // questions are its own.
        if pool_path.as_deref() == Some(crate::defaults::default_pool_path().as_path()) {
            eprintln!(
                "l2d: try  l2d ask --router {address} --data data/squad-v1.1/dev.json --id 56be4db0acb8001400a502ec"
            );
        } else {
            eprintln!(
                "l2d: try  l2d ask --router {address} --question QUESTION --context CONTEXT \
                 (or --data FILE --id ID)"
            );
        }
        eprintln!("l2d: stop with Ctrl-C");
    }
    let listeners = scheduler::Listeners {
        router: listener,
        pool: pool_listener,
        health: health_listener,
    };
    let log_owner = scheduler.clone();
    let served = scheduler::serve_on(listeners, scheduler, shutdown_signal()).await;
    log_owner.close_decision_log();
    let tracing_owner = log_owner.clone();
    let _ = tokio::task::spawn_blocking(move || tracing_owner.close_tracing()).await;
    let _ = metrics_stop.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    local.shutdown().await?;
    served
}

pub(super) async fn run_expert(args: ExpertArgs) -> anyhow::Result<()> {
    check_expert_id(&args.id).map_err(|m| anyhow::anyhow!("--id: {m}"))?;
    crate::logs::set_expert(&args.id);
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
    let model = cluster::build_model(&spec, &DatasetCache::default())?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let metrics = match args.metrics_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} for metrics"))?,
        ),
        None => None,
    };
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
    // Without --max-concurrency, the pool file's max_in_flight is also the worker's own limit.
    let max_concurrency = match args.max_concurrency {
        0 => spec.max_in_flight.unwrap_or(0),
        n => n,
    };
    let declared = Capabilities {
        max_context_chars: args.max_context_chars,
        max_context_tokens: args.max_context_tokens,
        languages: Capabilities::parse_languages(&args.languages)
            .map_err(|m| anyhow::anyhow!("--languages: {m}"))?,
        holds: None,
    };
    let node = ExpertNode::for_model(spec.id, spec.cost, model)
        .with_capabilities(&spec.capabilities.tightened_by(&declared))
        .with_max_concurrency(max_concurrency)
        .with_delay(args.delay)
        .with_service_time(spec.service_time)
        .with_drain_delay(args.drain_delay)
        .with_metrics(metrics)
        .with_tls(args.tls.config()?)
        .with_fault(match args.fault {
            FaultKind::None => expert::Fault::None,
            FaultKind::Empty => expert::Fault::Empty,
            FaultKind::Malformed => expert::Fault::Malformed,
        });
    expert::serve(listener, node, registration, shutdown_signal()).await
}

/// An expert described by `l2d expert` flags.
pub(super) fn expert_spec_from_flags(args: &ExpertArgs) -> anyhow::Result<ExpertSpec> {
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
        service_time: args
            .service_time
            .map(|median| ServiceTime::new(median, args.service_time_p99))
            .transpose()
            .context("--service-time")?,
        capabilities: Capabilities::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        dispatch: DispatchArgs,
    }

    /// The configuration `l2d scheduler` would run with these flags.
    fn config(flags: &[&str]) -> anyhow::Result<SchedulerConfig> {
        let parsed = Flags::try_parse_from(std::iter::once("l2d").chain(flags.iter().copied()))?;
        let mut config = SchedulerConfig::default();
        parsed.dispatch.apply(&mut config)?;
        Ok(config)
    }

    #[test]
    fn no_flags_give_the_configuration_defaults() {
        let from_flags = config(&[]).unwrap();
        let default = SchedulerConfig::default();
        assert_eq!(from_flags.replicas, default.replicas);
        assert_eq!(from_flags.wait_price, default.wait_price);
        assert_eq!(from_flags.health_interval, default.health_interval);
        assert_eq!(from_flags.dns_interval, default.dns_interval);
        assert_eq!(from_flags.drain_delay, default.drain_delay);
        assert_eq!(from_flags.try_timeout, default.try_timeout);
        assert_eq!(from_flags.register_rate, default.register_rate);
        assert_eq!(from_flags.register_allow, default.register_allow);
        assert_eq!(from_flags.server_limits, default.server_limits);
        assert!(from_flags.gate.registration && from_flags.gate.pool.is_open());
        assert!(!from_flags.insecure_pool && from_flags.tls.is_none());
    }

    #[test]
    fn flags_reach_the_configuration() {
        let c = config(&[
            "--max-in-flight",
            "8",
            "--registration",
            "off",
            "--register-allow",
            "10.0.0.0/8,l2d.svc",
            "--max-calls-in-service",
            "32",
            "--request-timeout",
            "5s",
        ])
        .unwrap();
        assert_eq!(c.replicas.max_in_flight, 8);
        assert!(!c.gate.registration);
        assert!(c.register_allow.allows("10.1.2.3:1") && c.register_allow.allows("a.l2d.svc:1"));
        assert_eq!(c.server_limits.max_calls_in_service, 32);
        assert_eq!(c.server_limits.request_timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_flags_are_refused_with_the_flag_named() {
        for (flags, says) in [
            (&["--max-in-flight", "0"][..], "--max-in-flight"),
            (&["--wait-price=-1"], "--wait-price"),
            (&["--eject-after", "0"], "--eject-after"),
            (&["--dns-interval", "0s"], "--dns-interval"),
            (&["--try-timeout", "0s"], "--try-timeout"),
            (&["--register-allow", "10.0.0.0/33"], "--register-allow"),
            (&["--register-rate", "0"], "--register-rate"),
            (&["--max-experts", "0"], "--max-experts"),
            (&["--max-connections", "0"], "--max-connections"),
            (&["--max-calls-in-service", "0"], "--max-calls-in-service"),
            (
                &["--pool-token-file", "/nonexistent/token"],
                "cannot read the token file",
            ),
        ] {
            let err = format!("{:#}", config(flags).unwrap_err());
            assert!(err.contains(says), "{flags:?}: {err}");
        }
    }
}
