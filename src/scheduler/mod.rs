//! The scheduler node: the registry of experts and replicas, the active policy, and the
//! `Router` and `Pool` services.
//!
//! The request path ([`dispatch`]) snapshots the registry, asks the policy for scores, calls the
//! pure [`crate::core::decision::decide`], and walks the plan over gRPC. Membership changes go
//! through [`Registry`]; a background task reaps expired leases.

pub mod access;
pub mod admission;
pub mod candidate;
pub mod contexts;
pub mod decision_log;
pub mod discovery;
pub mod dispatch;
pub mod pool_reload;
mod pool_service;
pub mod registry;

pub use registry::{Registry, RegistryError, ReplicaPolicy};

use registry::lock;

use crate::core::cost_target::{CostTarget, CostWindow, Move};
use crate::core::decision::DecisionParams;
use crate::core::learned::{LearnedPolicy, PolicyFile, digest};
use crate::core::policy::Policy;
use crate::core::query::QueryLimits;
use crate::grpc::pb::{pool_server::PoolServer, router_server::RouterServer};
use crate::grpc::server;
use anyhow::Context;
use arc_swap::ArcSwap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Knobs of the scheduler, with documented defaults.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub limits: QueryLimits,
    /// Leases, outlier ejection, PeakEWMA, and the default per-replica concurrency limit.
    pub replicas: ReplicaPolicy,
    /// Price of a second of expected completion time, in cost units (see
    /// [`crate::core::decision`]).
    pub wait_price: f64,
    /// How often static and DNS replicas get a `grpc.health.v1` check (zero: never).
    pub health_interval: Duration,
    /// How often DNS names of the pool file are resolved again.
    pub dns_interval: Duration,
    /// Attempts per request (first try, retry on another replica, fallbacks), in total.
    pub max_attempts: usize,
    /// Attempts on distinct replicas of one expert before falling back to the next expert.
    pub tries_per_expert: usize,
    /// How often expired leases are removed (they are masked from decisions at once anyway).
    pub reap_interval: Duration,
    /// How often the policy file is checked for changes.
    pub policy_poll: Duration,
    /// Keep the mean cost per query near this, moving along the policy bank.
    pub target_cost: Option<f64>,
    /// Queries per cost window (realised-cost reporting and the cost target).
    pub target_window: usize,
    /// ε of ε-greedy exploration (0: always the policy's choice).
    pub explore: f64,
    /// Seed of the exploration draws.
    pub explore_seed: u64,
    /// Export traces over OTLP/gRPC to this receiver (`http://collector:4317`); `None`: no
    /// spans (a caller's trace context still goes to the experts).
    pub otlp_endpoint: Option<String>,
    /// Append one JSON line per decision here.
    pub decision_log: Option<PathBuf>,
    /// Its rotation and flushing to disk.
    pub decision_log_options: decision_log::LogOptions,
    /// Log each decision's query and the answers seen before it (for evaluating other policies
    /// from the log alone).
    pub decision_log_queries: bool,
    /// Requests whose outcome may be reported (`Router.ReportOutcome`): the last this many...
    pub outcome_window: usize,
    /// ... for at most this long.
    pub outcome_ttl: Duration,
    /// After a stop signal: report NOT_SERVING, keep serving this long, then drain.
    pub drain_delay: Duration,
    /// Longest wait for one expert call before the attempt counts as failed (a hung replica)
    /// and the plan moves on, within the caller's deadline.
    pub try_timeout: Duration,
    /// TLS on the scheduler's listeners (mutual TLS with a client CA), re-read when its files
    /// change.
    pub tls: Option<Arc<crate::grpc::tls::ServerTls>>,
    /// TLS for the scheduler's calls to experts.
    pub expert_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Who may call what (see [`access`]); registration on and both sets open by default.
    pub gate: Arc<access::Gate>,
    /// Serve the registration calls with no pool credential on a non-loopback address (the
    /// scheduler refuses to start so otherwise).
    pub insecure_pool: bool,
    /// Addresses replicas may register with (default: loopback only).
    pub register_allow: crate::core::allow_list::AllowList,
    /// Registrations per second one credential may make on average (bursts of twice that).
    pub register_rate: f64,
    /// Connection, stream, header and time limits of the listeners.
    pub server_limits: crate::grpc::server::ServerLimits,
    /// Queries worked on at once, and how long and how many may wait (see [`admission`]).
    pub admission: admission::AdmissionLimits,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let decision = DecisionParams::default();
        Self {
            limits: QueryLimits::default(),
            replicas: ReplicaPolicy::default(),
            wait_price: decision.wait_price,
            health_interval: Duration::from_secs(5),
            dns_interval: Duration::from_secs(5),
            max_attempts: decision.max_attempts,
            tries_per_expert: decision.tries_per_expert,
            reap_interval: Duration::from_millis(100),
            policy_poll: Duration::from_secs(2),
            target_cost: None,
            target_window: 200,
            explore: 0.0,
            explore_seed: 0x5eed,
            otlp_endpoint: None,
            decision_log: None,
            decision_log_options: decision_log::LogOptions::default(),
            decision_log_queries: false,
            outcome_window: 100_000,
            outcome_ttl: Duration::from_secs(24 * 3600),
            drain_delay: Duration::ZERO,
            try_timeout: Duration::from_secs(10),
            tls: None,
            expert_tls: None,
            gate: Arc::new(access::Gate {
                registration: true,
                ..access::Gate::default()
            }),
            insecure_pool: false,
            register_allow: crate::core::allow_list::AllowList::loopback(),
            register_rate: 20.0,
            server_limits: crate::grpc::server::ServerLimits::default(),
            admission: admission::AdmissionLimits::default(),
        }
    }
}

/// The policy in force and the price of compute it serves at: swapped whole on a reload, read
/// lock-free on every request. The position along the policy's bank is the scheduler's state
/// (the cost target moves it), kept here beside the policy it indexes.
pub struct ActivePolicy {
    policy: Box<dyn Policy>,
    position: AtomicUsize,
}

impl ActivePolicy {
    /// `policy`, served at `position` (clamped to its bank).
    pub fn new(policy: Box<dyn Policy>, position: usize) -> Self {
        let last = policy.lambdas().len().saturating_sub(1);
        Self {
            policy,
            position: AtomicUsize::new(position.min(last)),
        }
    }

    pub fn policy(&self) -> &dyn Policy {
        self.policy.as_ref()
    }

    pub fn identity(&self) -> &crate::core::policy::PolicyIdentity {
        self.policy.identity()
    }

    pub fn probes(&self) -> &[String] {
        self.policy.probes()
    }

    pub fn reads_context(&self) -> bool {
        self.policy.reads_context()
    }

    pub fn stages(&self) -> usize {
        self.policy.stages()
    }

    /// The policy's probe experts present in `view`, as indices into it, in the policy's order.
    pub fn probes_in(&self, view: &[crate::core::ask::ExpertView<'_>]) -> Vec<usize> {
        self.probes()
            .iter()
            .filter_map(|id| view.iter().position(|e| e.id == id))
            .collect()
    }

    /// The position along the bank (by ascending lambda) served now.
    pub fn position(&self) -> usize {
        self.position.load(AtomicOrdering::Relaxed)
    }

    /// Serves `position` from now on (clamped to the bank).
    pub fn set_position(&self, position: usize) {
        let last = self.bank_len().saturating_sub(1);
        self.position
            .store(position.min(last), AtomicOrdering::Relaxed);
    }

    pub fn bank_len(&self) -> usize {
        self.policy.lambdas().len()
    }

    /// The price of compute in force.
    pub fn lambda(&self) -> f64 {
        self.policy
            .lambdas()
            .get(self.position())
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// The policy's scores at the position in force (see [`Policy::score`]).
    pub fn score(
        &self,
        query: &crate::core::query::Query,
        observed: &[crate::core::policy::Observed<'_>],
        experts: &[crate::core::policy::ExpertMeta<'_>],
        out: &mut Vec<Option<f64>>,
    ) {
        self.policy
            .score(self.position(), query, observed, experts, out);
    }
}

/// Where the active policy came from: reloads re-read a file; a policy built in code stays.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySource {
    Fixed,
    File {
        path: PathBuf,
        /// The bank entry to serve (default: the file's own default).
        lambda: Option<f64>,
    },
}

/// Loads a policy file: `(policy, content digest)`.
pub fn load_policy_file(
    path: &Path,
    lambda: Option<f64>,
) -> anyhow::Result<(LearnedPolicy, String)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read policy file {}", path.display()))?;
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("policy file {} is not UTF-8", path.display()))?;
    let file =
        PolicyFile::parse(text).with_context(|| format!("policy file {}", path.display()))?;
    let digest = digest(&bytes);
    Ok((LearnedPolicy::new(file, lambda, &digest), digest))
}

pub struct Scheduler {
    pub registry: Arc<Registry>,
    policy: ArcSwap<ActivePolicy>,
    source: PolicySource,
    /// Digest of the policy file content now served (file sources).
    loaded_digest: Mutex<String>,
    config: SchedulerConfig,
    requests: AtomicU64,
    /// Recent charged costs, for reporting.
    recent_costs: Mutex<CostWindow>,
    target: Option<Mutex<CostTarget>>,
    decisions: Option<decision_log::DecisionLog>,
    /// With a decision log: the requests whose outcome may still be reported.
    outcomes: Option<decision_log::Outcomes>,
    /// With `otlp_endpoint`: the span exporter.
    tracing: Option<crate::trace::Tracing>,
    ask_duration: metrics::Histogram,
    decision_counters: dispatch::DecisionCounters,
    /// A candidate policy in shadow or on a share of the requests.
    pub(crate) candidate: Option<candidate::Candidate>,
    /// `Router.Ask` calls by final status code (`l2d_asks_total`, written at scrape time).
    pub(crate) asks: crate::telemetry::CodeCounts,
    /// DNS names resolved again every `dns_interval`.
    dns_targets: Mutex<Vec<discovery::DnsTarget>>,
    /// The pool file in force (reloaded when the file's digest changes).
    pool_file: Mutex<Option<crate::pool_file::PoolFile>>,
    /// Analyses of recent contexts, for policies that read the context.
    pub contexts: contexts::ContextCache,
    /// The global limit on queries in flight.
    pub(crate) admission: admission::Admission,
    /// Wakes the task that reads new replicas' `Describe` (see [`Scheduler::learn_capabilities`]).
    describe_wanted: tokio::sync::Notify,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, policy: Box<dyn Policy>) -> Self {
        Self::with_source(config, policy, PolicySource::Fixed, String::new())
    }

    /// A scheduler whose policy was loaded from `source` (content `digest`), so it can reload.
    pub fn with_source(
        config: SchedulerConfig,
        policy: Box<dyn Policy>,
        source: PolicySource,
        digest: String,
    ) -> Self {
        // Metric handles made before the recorder exists would be no-ops.
        crate::telemetry::install();
        let target = config
            .target_cost
            .map(|t| Mutex::new(CostTarget::new(t, config.target_window, 0.05)));
        Self {
            ask_duration: metrics::histogram!("l2d_ask_duration_seconds"),
            decision_counters: Default::default(),
            candidate: None,
            asks: Default::default(),
            dns_targets: Mutex::new(Vec::new()),
            pool_file: Mutex::new(None),
            contexts: contexts::ContextCache::default(),
            admission: admission::Admission::new(config.admission),
            registry: Arc::new(
                Registry::new(config.replicas).with_client_tls(config.expert_tls.clone()),
            ),
            policy: ArcSwap::from_pointee({
                crate::logs::set_policy_id(&policy.identity().id);
                let position = policy.default_position();
                ActivePolicy::new(policy, position)
            }),
            source,
            loaded_digest: Mutex::new(digest),
            recent_costs: Mutex::new(CostWindow::new(config.target_window)),
            target,
            decisions: None,
            outcomes: None,
            tracing: None,
            config,
            requests: AtomicU64::new(0),
            describe_wanted: tokio::sync::Notify::new(),
        }
    }

    /// Opens the configured decision log (call once, before serving).
    pub fn open_decision_log(&mut self) -> anyhow::Result<()> {
        if let Some(path) = &self.config.decision_log {
            let log = decision_log::DecisionLog::open_with(path, self.config.decision_log_options)
                .with_context(|| format!("cannot open the decision log {}", path.display()))?;
            self.decisions = Some(log);
            self.outcomes = Some(decision_log::Outcomes::new(
                self.config.outcome_window,
                self.config.outcome_ttl,
            ));
        }
        Ok(())
    }

    /// Starts exporting traces when the configuration names a receiver (call once, within the
    /// tokio runtime, before serving).
    pub fn start_tracing(&mut self) -> anyhow::Result<()> {
        if let Some(endpoint) = &self.config.otlp_endpoint {
            self.tracing = Some(crate::trace::Tracing::otlp(endpoint, "l2d-scheduler")?);
        }
        Ok(())
    }

    /// The span exporter, when traces are exported.
    pub(crate) fn tracing(&self) -> Option<&crate::trace::Tracing> {
        self.tracing.as_ref()
    }

    /// Exports the last spans (at shutdown, after the last request; blocks).
    pub fn close_tracing(&self) {
        if let Some(tracing) = &self.tracing {
            tracing.shutdown();
        }
    }

    /// Flushes the decision log to disk (at shutdown, after the last request).
    pub fn close_decision_log(&self) {
        if let Some(log) = &self.decisions {
            log.close();
        }
    }

    /// Tries `candidate` beside the policy in force (see [`candidate`]).
    pub fn with_candidate(mut self, candidate: candidate::Candidate) -> Self {
        self.candidate = Some(candidate);
        self
    }

    pub fn candidate(&self) -> Option<&candidate::Candidate> {
        self.candidate.as_ref()
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn policy(&self) -> Arc<ActivePolicy> {
        self.policy.load_full()
    }

    /// Replaces the active policy, served at its default position; requests already deciding
    /// keep the one they loaded.
    pub fn set_policy(&self, policy: Box<dyn Policy>) {
        let position = policy.default_position();
        self.activate(policy, position);
    }

    /// Serves `policy` at `position` from now on (and names it on every log line).
    fn activate(&self, policy: Box<dyn Policy>, position: usize) {
        crate::logs::set_policy_id(&policy.identity().id);
        self.policy
            .store(Arc::new(ActivePolicy::new(policy, position)));
    }

    /// Re-reads the policy file. `Ok(true)` when a new policy is now active, `Ok(false)` when the
    /// file is unchanged; on error the old policy stays active.
    pub fn reload_policy(&self) -> Result<bool, String> {
        let PolicySource::File { path, lambda } = &self.source else {
            return Err("the scheduler serves no policy file (start it with --policy FILE)".into());
        };
        let (policy, digest) = load_policy_file(path, *lambda).map_err(|e| format!("{e:#}"))?;
        let mut loaded = lock(&self.loaded_digest);
        if *loaded == digest {
            return Ok(false);
        }
        // Keep the live cost target's position in the new bank when it has the same length.
        let old = self.policy();
        let position = if self.target.is_some() && old.bank_len() == policy.lambdas().len() {
            old.position()
        } else {
            policy.default_position()
        };
        tracing::info!(policy = %policy.identity().id, path = %path.display(), "policy loaded");
        self.activate(Box::new(policy), position);
        *loaded = digest;
        Ok(true)
    }

    /// Accounts one answered query's cost; with a cost target, may move along the bank.
    pub fn record_cost(&self, cost: f64) {
        lock(&self.recent_costs).push(cost);
        if let Some(target) = &self.target {
            let policy = self.policy();
            let (position, len) = (policy.position(), policy.bank_len());
            let step = lock(target).record(cost, position, len);
            let next = match step {
                Some(Move::Cheaper) => position + 1,
                Some(Move::Dearer) => position.saturating_sub(1),
                None => return,
            };
            policy.set_position(next);
            tracing::info!(
                lambda = policy.lambda(),
                "cost target: moved along the policy bank"
            );
        }
    }

    /// Mean cost per answered query over the recent window.
    pub fn realized_cost(&self) -> f64 {
        lock(&self.recent_costs).mean()
    }

    pub fn target_cost(&self) -> Option<f64> {
        self.config.target_cost
    }

    /// Resolves `target` again every `dns_interval` while serving.
    pub fn add_dns_target(&self, target: discovery::DnsTarget) {
        self.set_dns_target(&target.expert_id.clone(), Some(target));
    }

    /// Replaces (or, with `None`, forgets) the DNS name of `expert_id`.
    pub fn set_dns_target(&self, expert_id: &str, target: Option<discovery::DnsTarget>) {
        let mut targets = lock(&self.dns_targets);
        targets.retain(|t| t.expert_id != expert_id);
        targets.extend(target);
    }

    /// Remembers the pool file the registry was built from, so changes to it are applied while
    /// serving (`pool.path` empty: nothing to watch).
    pub fn set_pool_file(&self, pool: crate::pool_file::PoolFile) {
        if !pool.path.as_os_str().is_empty() {
            *lock(&self.pool_file) = Some(pool);
        }
    }

    /// Re-reads the pool file: `Ok(None)` when unchanged, `Ok(Some(changes))` when applied; on
    /// error (unreadable, invalid, or a change that needs a restart) the pool stays as it was.
    pub fn reload_pool(&self) -> Result<Option<pool_reload::Changes>, String> {
        let mut current = lock(&self.pool_file);
        let Some(old) = current.as_ref() else {
            return Ok(None);
        };
        let bytes = std::fs::read(&old.path)
            .map_err(|e| format!("cannot read pool file {}: {e}", old.path.display()))?;
        if digest(&bytes) == old.digest {
            return Ok(None);
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("pool file {} is not UTF-8", old.path.display()))?;
        let new = crate::pool_file::PoolFile::parse(&text, &old.path).map_err(|e| e.to_string())?;
        pool_reload::check(old, &new)
            .map_err(|e| format!("pool file {}: {e}", old.path.display()))?;
        let changes = pool_reload::apply(self, old, &new)?;
        *current = Some(new);
        Ok(Some(changes))
    }

    /// Publishes the state gauges (realised cost, lambda) and returns the series written at
    /// scrape time (calls by status, the pool's experts and replicas).
    pub fn publish_metrics(&self) -> String {
        metrics::gauge!("l2d_cost_realized").set(self.realized_cost());
        if let Some(target) = self.target_cost() {
            metrics::gauge!("l2d_cost_target").set(target);
        }
        metrics::gauge!("l2d_policy_lambda").set(self.policy().lambda());
        metrics::gauge!("l2d_admission_in_flight").set(self.admission.in_flight() as f64);
        metrics::gauge!("l2d_admission_queued").set(self.admission.queued() as f64);
        let mut out = crate::telemetry::PoolSeries::new();
        out.codes("l2d_asks_total", &[], &self.asks);
        out.sample(
            "l2d_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        let policy = self.policy();
        let identity = policy.identity();
        out.sample(
            "l2d_policy_info",
            &[("policy_id", &identity.id), ("kind", &identity.kind)],
            1.0,
        );
        self.decision_counters.write(&mut out);
        if let Some(candidate) = &self.candidate {
            candidate.write(&mut out);
        }
        self.registry.write_metrics(&mut out, Instant::now());
        out.render()
    }
}

/// The gRPC services a scheduler serves, as named in `grpc.health.v1` (besides "", the server).
pub const SERVICES: &[&str] = &["l2d.v1.Router", "l2d.v1.Pool"];

/// Where a scheduler serves: `Router` (and `Pool`, unless it has its own listener), and a
/// plain health-only listener for probes, if any.
pub struct Listeners {
    pub router: TcpListener,
    pub pool: Option<TcpListener>,
    pub health: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(router: TcpListener) -> Self {
        Self {
            router,
            pool: None,
            health: None,
        }
    }
}

/// Refuses an open membership surface on a non-loopback address: with registration on and no
/// pool credential, anyone who reaches the port could join the pool under any expert's id and
/// receive (and answer) its queries. `--insecure-pool` lets it start, with a warning.
fn check_exposure(
    config: &SchedulerConfig,
    pool_address: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let gate = &config.gate;
    if gate.registration && gate.pool.is_open() && !pool_address.ip().is_loopback() {
        anyhow::ensure!(
            config.insecure_pool,
            "refusing to serve Pool.Register without credentials on {pool_address}: anyone \
             reaching it could join the pool as any expert. Give --pool-token-file, \
             --pool-identities or --pool-credentials, turn registration off \
             (--registration off), listen on loopback, or accept the risk with --insecure-pool"
        );
        tracing::warn!(
            address = %pool_address,
            "INSECURE: Pool.Register is open to anyone who reaches this address (--insecure-pool)"
        );
    }
    let tokens = gate.pool.has_tokens() || gate.router.has_tokens();
    if tokens && config.tls.is_none() && !pool_address.ip().is_loopback() {
        tracing::warn!(
            address = %pool_address,
            "bearer tokens are accepted over plaintext on a non-loopback address: anyone on the \
             path can read them; serve TLS (--tls-cert, --tls-key)"
        );
    }
    Ok(())
}

/// Serves `Router` and `Pool` on `listener` until `shutdown` completes, reaping expired leases
/// in the background.
pub async fn serve(
    listener: TcpListener,
    scheduler: Arc<Scheduler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_on(listener.into(), scheduler, shutdown).await
}

/// Serves on `listeners` until `shutdown` completes: the Router (and Pool) with the
/// configuration's TLS, credentials and limits; reaps expired leases, re-resolves DNS, checks
/// replicas' health and re-reads the policy, pool, token and certificate files in the
/// background.
pub async fn serve_on(
    listeners: Listeners,
    scheduler: Arc<Scheduler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = &scheduler.config;
    let pool_address = listeners
        .pool
        .as_ref()
        .unwrap_or(&listeners.router)
        .local_addr()?;
    check_exposure(config, pool_address)?;
    let (reporter, routes, health_only) = server::standard_routes()?;
    let router = RouterServer::new(dispatch::RouterService::new(scheduler.clone()))
        .max_decoding_message_size(crate::grpc::query_message_bytes(&config.limits))
        .max_encoding_message_size(crate::grpc::answer_message_bytes(&config.limits));
    let pool = PoolServer::new(pool_service::PoolService::new(scheduler.clone()))
        .max_decoding_message_size(crate::grpc::POOL_REQUEST_BYTES)
        .max_encoding_message_size(crate::grpc::MAX_MESSAGE_BYTES);
    let options = server::ServeOptions {
        drain_delay: config.drain_delay,
        tls: config.tls.clone(),
        limits: config.server_limits,
        authorize: Some(config.gate.clone()),
        budget: Some(server::Budget::new(&config.server_limits)),
        readiness: None,
    };
    let mut tasks = vec![
        tokio::spawn(reap_leases(scheduler.clone())),
        tokio::spawn(resolve_dns(scheduler.clone())),
        tokio::spawn(check_health(scheduler.clone())),
        tokio::spawn(describe_joiners(scheduler.clone())),
        tokio::spawn(crate::telemetry::upkeep(Duration::from_secs(5))),
        tokio::spawn(watch_file(
            scheduler.clone(),
            "l2d_credential_reloads_total",
            |s| s.config.gate.refresh().map(|changed| changed.then_some(())),
            |_| tracing::info!("token file changed; the new token is in force"),
            "token file reload failed; the previous token stays",
        )),
    ];
    if let Some(tls) = &config.tls {
        tasks.push(tokio::spawn(server::watch_tls(
            tls.clone(),
            config.policy_poll,
        )));
    }
    if scheduler.source != PolicySource::Fixed {
        tasks.push(tokio::spawn(watch_file(
            scheduler.clone(),
            "l2d_policy_reloads_total",
            |s| s.reload_policy().map(|changed| changed.then_some(())),
            |_| {},
            "policy reload failed; the previous policy stays active",
        )));
    }
    if scheduler.candidate.is_some() {
        tasks.push(tokio::spawn(watch_file(
            scheduler.clone(),
            "l2d_candidate_policy_reloads_total",
            |s| {
                s.candidate
                    .as_ref()
                    .map_or(Ok(None), candidate::Candidate::reload)
            },
            |id| tracing::info!(candidate = %id, "candidate policy loaded"),
            "candidate policy reload failed; the previous candidate stays",
        )));
    }
    if lock(&scheduler.pool_file).is_some() {
        tasks.push(tokio::spawn(watch_file(
            scheduler.clone(),
            "l2d_pool_reloads_total",
            Scheduler::reload_pool,
            |changes| {
                tracing::info!(
                    added = ?changes.added,
                    removed = ?changes.removed,
                    updated = ?changes.updated,
                    "pool file reloaded"
                )
            },
            "pool file reload failed; the pool stays as it was",
        )));
    }
    tracing::info!(
        address = %listeners.router.local_addr()?,
        pool_address = %pool_address,
        registration = config.gate.registration,
        tls = config.tls.is_some(),
        policy = %scheduler.policy().identity().id,
        candidate = scheduler
            .candidate
            .as_ref()
            .map_or_else(String::new, |c| c.policy().identity().id.clone()),
        candidate_share = scheduler.candidate.as_ref().map_or(0.0, |c| c.share()),
        experts = scheduler.registry.snapshot().experts.len(),
        "scheduler serving"
    );
    // Every listener stops when the main one has drained.
    let (stopped, stop) = tokio::sync::watch::channel(false);
    let stopping = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let mut side = Vec::new();
    let routes = match listeners.pool {
        None => routes.add_service(pool),
        Some(listener) => {
            let pool_routes = tonic::service::Routes::new(pool);
            let options = options.clone();
            let stop = stopping();
            side.push(tokio::spawn(async move {
                server::serve_routes(listener, pool_routes, stop, &options).await
            }));
            routes
        }
    };
    if let Some(listener) = listeners.health {
        let options = options.clone();
        let stop = stopping();
        side.push(tokio::spawn(async move {
            server::serve_health(listener, health_only, stop, &options).await
        }));
    }
    let result = server::serve(
        listeners.router,
        routes.add_service(router),
        reporter,
        SERVICES,
        shutdown,
        &options,
    )
    .await;
    let _ = stopped.send(true);
    for task in side {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %format!("{e:#}"), "a side listener failed");
        }
    }
    for task in tasks {
        task.abort();
    }
    result
}

/// A periodic tick that waits out a missed tick instead of bursting to catch up.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Re-reads a file the scheduler serves from (the policy, the pool) every `policy_poll`:
/// polling also sees Kubernetes ConfigMap updates, made by swapping a symlink. `reload` returns
/// what changed, `None` when the file did not, or why it refused the file; a refusal is logged
/// once per distinct reason with `refused`, and every outcome is counted in `metric`
/// (`result="ok"` for an applied change, `result="error"` for a refusal).
async fn watch_file<T: Send + 'static>(
    scheduler: Arc<Scheduler>,
    metric: &'static str,
    reload: fn(&Scheduler) -> Result<Option<T>, String>,
    applied: fn(&T),
    refused: &'static str,
) {
    // "l2d_policy_reloads_total" → "policy": the file label of the health gauges.
    let file = metric
        .trim_start_matches("l2d_")
        .trim_end_matches("_reloads_total");
    // Both results exist from the start (an alert on errors needs the zero), and the file in
    // force was read at start-up.
    metrics::counter!(metric, "result" => "ok").absolute(0);
    metrics::counter!(metric, "result" => "error").absolute(0);
    let reloaded = |ok: bool| {
        metrics::gauge!("l2d_config_last_reload_success", "file" => file).set(f64::from(ok));
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            metrics::gauge!("l2d_config_last_reload_success_timestamp_seconds", "file" => file)
                .set(now.as_secs_f64());
        }
    };
    reloaded(true);
    let mut tick = ticker(scheduler.config.policy_poll);
    let mut last_error = String::new();
    loop {
        tick.tick().await;
        let s = scheduler.clone();
        match tokio::task::spawn_blocking(move || reload(&s)).await {
            Ok(Ok(Some(change))) => {
                metrics::counter!(metric, "result" => "ok").increment(1);
                reloaded(true);
                applied(&change);
                last_error.clear();
            }
            // Back to the content in force: nothing to apply, and nothing refused any more.
            Ok(Ok(None)) if !last_error.is_empty() => {
                metrics::gauge!("l2d_config_last_reload_success", "file" => file).set(1.0);
                last_error.clear();
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                reloaded(false);
                if e != last_error {
                    metrics::counter!(metric, "result" => "error").increment(1);
                    tracing::error!(error = %e, "{refused}");
                    last_error = e;
                }
            }
            Err(_) => {}
        }
    }
}

async fn reap_leases(scheduler: Arc<Scheduler>) {
    let mut tick = ticker(scheduler.config.reap_interval);
    loop {
        tick.tick().await;
        for (expert, address) in scheduler.registry.reap_expired(Instant::now()) {
            tracing::warn!(%expert, %address, "lease expired; replica removed from the pool");
        }
    }
}

/// Resolves the pool file's DNS names again every `dns_interval`: new addresses join, vanished
/// ones leave. A failed resolution keeps the replicas known so far.
async fn resolve_dns(scheduler: Arc<Scheduler>) {
    let mut tick = ticker(scheduler.config.dns_interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let targets = lock(&scheduler.dns_targets).clone();
        for target in targets {
            match target.sync(&scheduler.registry).await {
                Ok((0, 0)) => {}
                Ok((added, removed)) => {
                    scheduler.describe_soon();
                    tracing::info!(
                        expert = %target.expert_id,
                        name = %target.name,
                        added,
                        removed,
                        "DNS replicas changed"
                    )
                }
                Err(e) => tracing::warn!(
                    expert = %target.expert_id,
                    name = %target.name,
                    error = %format!("{e:#}"),
                    "DNS resolution failed; keeping the replicas known so far"
                ),
            }
        }
    }
}

impl Scheduler {
    /// Reads `Expert.Describe` of every replica not described yet, for what it takes (its
    /// context limits, languages, recorded questions), a few at a time. With `retry`, also the
    /// ones whose earlier attempt failed (the health checker's rounds); without, only replicas
    /// never asked (a replica that joined). For one without `Describe`, what it declared when it
    /// registered stands.
    pub async fn learn_capabilities(&self, retry: bool) {
        const AT_ONCE: usize = 16;
        let snapshot = self.registry.snapshot();
        let pending: Vec<&Arc<registry::Replica>> = snapshot
            .experts
            .iter()
            .flat_map(|g| g.replicas.iter())
            .filter(|r| r.claim_description(retry))
            .collect();
        use futures_util::StreamExt;
        futures_util::stream::iter(pending)
            .for_each_concurrent(AT_ONCE, |r| describe_replica(r))
            .await;
    }

    /// Asks the background task to read the `Describe` of replicas that just joined.
    pub fn describe_soon(&self) {
        self.describe_wanted.notify_one();
    }
}

/// Reads the capabilities of replicas that joined, when woken ([`Scheduler::describe_soon`]):
/// one task, however many registrations arrive.
async fn describe_joiners(scheduler: Arc<Scheduler>) {
    loop {
        scheduler.describe_wanted.notified().await;
        scheduler.learn_capabilities(false).await;
    }
}

/// One replica's `Describe`, into its capabilities.
async fn describe_replica(replica: &registry::Replica) {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let mut client = replica.client.clone();
    let mut request = tonic::Request::new(crate::grpc::pb::DescribeRequest {});
    request.set_timeout(TIMEOUT);
    let reply = match tokio::time::timeout(TIMEOUT, client.describe(request)).await {
        Ok(Ok(reply)) => reply.into_inner(),
        // No Describe: what it declared when it registered (if anything) stands.
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            replica.mark_described();
            return;
        }
        Ok(Err(status)) => {
            tracing::debug!(expert = %replica.expert_id, replica = %replica.address,
                code = ?status.code(), "Describe failed; asking again later");
            replica.description_failed();
            return;
        }
        Err(_) => {
            replica.description_failed();
            return;
        }
    };
    match crate::grpc::convert::capabilities_from_pb(reply.capabilities.unwrap_or_default()) {
        Ok(capabilities) => {
            if !capabilities.is_unlimited() {
                tracing::info!(
                    expert = %replica.expert_id,
                    replica = %replica.address,
                    held = capabilities.holds.as_ref().map(|h| h.len()),
                    max_context_chars = capabilities.max_context_chars,
                    max_context_tokens = capabilities.max_context_tokens,
                    languages = ?capabilities.languages,
                    "replica capabilities"
                );
            }
            replica.set_capabilities(capabilities, true);
        }
        Err(e) => {
            tracing::warn!(expert = %replica.expert_id, replica = %replica.address, error = %e,
                "replica's Describe declares capabilities that are not valid; ignoring them");
            replica.mark_described();
        }
    }
}

/// Asks every replica `grpc.health.v1.Health/Check("l2d.v1.Expert")` every `health_interval`:
/// one that says NOT_SERVING (draining, or its model server is not ready) is out of rotation
/// without an ejection; a static or DNS replica whose check fails is ejected (with the ejection
/// backoff); either until a check passes. For a registered replica (alive while it heartbeats;
/// a minimal adapter may serve no health) and an in-process one (which shares our fate), only
/// NOT_SERVING counts.
async fn check_health(scheduler: Arc<Scheduler>) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let every = scheduler.config.health_interval;
    if every.is_zero() {
        return;
    }
    let timeout = every.min(Duration::from_secs(1));
    let mut tick = ticker(every);
    loop {
        tick.tick().await;
        scheduler.learn_capabilities(true).await;
        let snapshot = scheduler.registry.snapshot();
        let checks = snapshot.experts.iter().flat_map(|g| g.replicas.iter());
        let checks = checks.map(|replica| async move {
            let mut client = HealthClient::new(replica.channel.clone());
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: "l2d.v1.Expert".into(),
            });
            request.set_timeout(timeout);
            let check = match tokio::time::timeout(timeout, client.check(request)).await {
                Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => {
                    registry::HealthCheck::Serving
                }
                Ok(Ok(r)) if r.get_ref().status == ServingStatus::NotServing as i32 => {
                    registry::HealthCheck::NotServing
                }
                _ if matches!(
                    replica.origin,
                    registry::Origin::Registered | registry::Origin::InProcess
                ) =>
                {
                    return;
                }
                _ => registry::HealthCheck::Failed,
            };
            let was_draining = replica.is_draining();
            if check == registry::HealthCheck::NotServing && !was_draining {
                tracing::info!(
                    expert = %replica.expert_id,
                    replica = %replica.address,
                    "replica is draining (NOT_SERVING); no more calls to it"
                );
            }
            if let Some(length) = replica.record_health_check(check, Instant::now()) {
                tracing::warn!(
                    expert = %replica.expert_id,
                    replica = %replica.address,
                    ejected_ms = length.as_millis() as u64,
                    "health check failed; replica ejected"
                );
            }
        });
        futures_util::future::join_all(checks).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use access::{Access, Credential, Gate};

    #[test]
    fn an_open_pool_is_refused_off_loopback_unless_told_otherwise() {
        let anywhere: std::net::SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let loopback: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let open = SchedulerConfig::default();
        let err = check_exposure(&open, anywhere).unwrap_err().to_string();
        assert!(err.contains("--insecure-pool"), "{err}");
        assert!(check_exposure(&open, loopback).is_ok());
        let insecure = SchedulerConfig {
            insecure_pool: true,
            ..SchedulerConfig::default()
        };
        assert!(check_exposure(&insecure, anywhere).is_ok());
        let off = SchedulerConfig {
            gate: Arc::new(Gate::default()),
            ..SchedulerConfig::default()
        };
        assert!(check_exposure(&off, anywhere).is_ok());
        let guarded = SchedulerConfig {
            gate: Arc::new(Gate {
                pool: Access::new(vec![Credential::token("ops", "t")]),
                registration: true,
                ..Gate::default()
            }),
            ..SchedulerConfig::default()
        };
        assert!(check_exposure(&guarded, anywhere).is_ok());
    }
}
