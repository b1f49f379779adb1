//! Prometheus metrics: the process-wide recorder, the names l2d exports, and the `/metrics`
//! HTTP endpoint.
//!
//! Two kinds of series. Process-wide ones (Ask outcomes and latency, cost, reloads) go through
//! the `metrics` recorder. Series labelled by expert or replica are *not* registered with it:
//! their counters are atomics on the registry's entries, written out at scrape time from the
//! pool as it is then ([`PoolSeries`]). An expert or replica that leaves takes its series
//! with it, so the number of series follows the live pool (bounded by `--max-experts` and
//! `--max-replicas`) however many come and go, and no client-supplied string outlives its
//! replica as a label. Labels carry expert ids, replica addresses and status codes only:
//! never query text.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `l2d_asks_total` | counter | `code` |
//! | `l2d_admission_shed_total` | counter | `reason` (`queue_full`, `queue_timeout`, `deadline`) |
//! | `l2d_admission_in_flight` | gauge | queries being worked on |
//! | `l2d_admission_queued` | gauge | queries waiting for a slot |
//! | `l2d_ask_duration_seconds` | histogram | |
//! | `l2d_decisions_total` | counter | `expert` (first choice) |
//! | `l2d_fallbacks_total` | counter | `expert`, `code` (the failed call) |
//! | `l2d_expert_calls_total` | counter | `expert`, `replica`, `code` |
//! | `l2d_expert_call_duration_seconds` | histogram | `expert`, `replica` |
//! | `l2d_replica_in_flight` | gauge | `expert`, `replica` |
//! | `l2d_replica_rtt_seconds` | gauge | `expert`, `replica` (PeakEWMA) |
//! | `l2d_replica_ejected` | gauge | `expert`, `replica` (1 while ejected) |
//! | `l2d_replica_ejections_total` | counter | `expert`, `replica` |
//! | `l2d_replica_draining` | gauge | `expert`, `replica` (1 while it says NOT_SERVING) |
//! | `l2d_answers_total` | counter | `expert` (answered calls, probes included) |
//! | `l2d_served_total` | counter | `expert` (queries answered with its answer) |
//! | `l2d_probe_calls_total` | counter | `expert` (calls as a probe or cascade stage) |
//! | `l2d_exclusions_total` | counter | `expert`, `reason` (why a final decision excluded it) |
//! | `l2d_decision_overrides_total` | counter | `reason` (why the expert that answered is not the one the policy's scores preferred: `capability`, `budget`, `unavailable`, `load`, `deadline`, `exploration`, `fallback`) |
//! | `l2d_defer_outcomes_total` | counter | `outcome` (a probing policy's answer: `kept` from an expert already asked, or `deferred` to another) |
//! | `l2d_expert_available_replicas` | gauge | `expert` |
//! | `l2d_build_info` | gauge (1) | `version` |
//! | `l2d_policy_info` | gauge (1) | `policy_id`, `kind` |
//! | `l2d_cost_charged_units_total` | counter | `expert` (cost charged, declared cost units) |
//! | `l2d_replica_max_in_flight` | gauge | `expert`, `replica` (the scheduler's limit for it) |
//! | `l2d_cost_realized` | gauge | mean cost per query over the recent window |
//! | `l2d_cost_target` | gauge | the live cost target, when set |
//! | `l2d_policy_lambda` | gauge | the price of compute in force |
//! | `l2d_policy_reloads_total` | counter | `result` (`ok`, `error`; both from the start) |
//! | `l2d_config_last_reload_success` | gauge (1 or 0) | `file` (`policy`, `pool`, `credential`) |
//! | `l2d_config_last_reload_success_timestamp_seconds` | gauge | `file` |
//! | `l2d_pool_reloads_total` | counter | `result` (`ok`, `error`) |
//! | `l2d_candidate_policy_reloads_total` | counter | `result` (`ok`, `error`), with a candidate |
//! | `l2d_policy_asks_total` | counter | `policy_id`, `role` (`serving`, `candidate`), `code` |
//! | `l2d_policy_cost_charged_units_total` | counter | `policy_id`, `role` |
//! | `l2d_shadow_decisions_total` | counter | `policy_id`, `outcome` (`agree`, `disagree`, `unobserved`) |
//! | `l2d_shadow_cost_units_total`, `l2d_shadow_serving_cost_units_total` | counter | `policy_id` |
//! | `l2d_credential_reloads_total` | counter | `result` (`ok`, `error`) |//!
//! An expert worker (`l2d expert --metrics-listen`) exports its own, labelled by its expert id:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `l2d_worker_requests_total` | counter | `expert`, `code` |
//! | `l2d_worker_request_duration_seconds` | histogram | `expert` |
//! | `l2d_worker_in_flight`, `l2d_worker_queued`, `l2d_worker_max_concurrency` | gauge | `expert` |
//! | `l2d_build_info` | gauge (1) | `version` |

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tonic::Code;

use crate::grpc::status::code_name;

/// Latency buckets (seconds): 100 µs to 10 s, about three per decade.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
/// `None` if another recorder was installed first (metrics then go there).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the latency buckets are not empty");
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "l2d_ask_duration_seconds",
        metrics::Unit::Seconds,
        "Router.Ask latency, from arrival to answer or error"
    );
    describe_gauge!(
        "l2d_cost_realized",
        "Mean cost charged per answered query over the recent window"
    );
    describe_gauge!("l2d_cost_target", "The live cost target, when one is set");
    describe_gauge!(
        "l2d_policy_lambda",
        "The price of compute of the policy in force"
    );
    describe_counter!(
        "l2d_admission_shed_total",
        "Router.Ask calls refused before any expert call: queue_full, queue_timeout \
         (RESOURCE_EXHAUSTED) or deadline (DEADLINE_EXCEEDED while waiting)"
    );
    describe_gauge!(
        "l2d_admission_in_flight",
        "Router.Ask calls being worked on (at most --max-queries)"
    );
    describe_gauge!(
        "l2d_admission_queued",
        "Router.Ask calls waiting for one of the --max-queries slots"
    );
    describe_counter!("l2d_policy_reloads_total", "Policy file reloads, by result");
    describe_gauge!(
        "l2d_config_last_reload_success",
        "1 when the file's last reload (or the start-up read) succeeded, 0 while it is refused"
    );
    describe_gauge!(
        "l2d_config_last_reload_success_timestamp_seconds",
        metrics::Unit::Seconds,
        "Unix time of the file's last successful reload (or start-up read)"
    );
    describe_counter!("l2d_pool_reloads_total", "Pool file reloads, by result");
    describe_counter!(
        "l2d_credential_reloads_total",
        "Token file reloads, by result"
    );
}

/// Drains histogram buffers now and then, so memory stays flat when nobody scrapes.
pub async fn upkeep(every: Duration) {
    let Some(handle) = install() else { return };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Every gRPC status code, in code order (the index of a code in [`CodeCounts`]).
const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// A counter per gRPC status code.
#[derive(Debug, Default)]
pub struct CodeCounts([AtomicU64; 17]);

impl CodeCounts {
    pub fn increment(&self, code: Code) {
        let i = CODES.iter().position(|c| *c == code).unwrap_or(2);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every count back to zero.
    pub fn reset(&self) {
        for n in &self.0 {
            n.store(0, Ordering::Relaxed);
        }
    }

    /// (code name, count) of the codes seen at least once.
    fn seen(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CODES.iter().zip(&self.0).filter_map(|(code, n)| {
            let n = n.load(Ordering::Relaxed);
            (n > 0).then(|| (code_name(*code), n))
        })
    }
}

/// A latency histogram over [`LATENCY_BUCKETS`], lock-free.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|le| seconds <= *le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Writes series in the Prometheus text format, each family's `HELP` and `TYPE` once, for
/// whatever set of experts and replicas exists at scrape time.
pub struct PoolSeries {
    families: Vec<(&'static str, &'static str, &'static str, String)>,
}

/// One series' labels, as `name="value"` pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Default for PoolSeries {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolSeries {
    pub fn new() -> Self {
        let family = |name, kind, help| (name, kind, help, String::new());
        Self {
            families: vec![
                family(
                    "l2d_asks_total",
                    "counter",
                    "Router.Ask calls by final status code",
                ),
                family(
                    "l2d_decisions_total",
                    "counter",
                    "Queries whose first choice was this expert",
                ),
                family(
                    "l2d_answers_total",
                    "counter",
                    "Answers returned, by expert",
                ),
                family(
                    "l2d_served_total",
                    "counter",
                    "Queries answered with this expert's answer",
                ),
                family(
                    "l2d_probe_calls_total",
                    "counter",
                    "Calls sent to the expert as a probe or a cascade stage",
                ),
                family(
                    "l2d_exclusions_total",
                    "counter",
                    "Final decisions that excluded the expert, by reason",
                ),
                family(
                    "l2d_decision_overrides_total",
                    "counter",
                    "Answers from another expert than the one the policy's scores preferred, by why",
                ),
                family(
                    "l2d_defer_outcomes_total",
                    "counter",
                    "Answers of a policy that asks before deciding: kept (an answer already seen) \
                     or deferred (another expert asked)",
                ),
                family(
                    "l2d_expert_available_replicas",
                    "gauge",
                    "Replicas of the expert that may receive traffic (lease held, not ejected)",
                ),
                family(
                    "l2d_build_info",
                    "gauge",
                    "Always 1; the l2d version serving",
                ),
                family(
                    "l2d_policy_info",
                    "gauge",
                    "Always 1; the allocation policy in force",
                ),
                family(
                    "l2d_cost_charged_units_total",
                    "counter",
                    "Cost charged for calls to the expert (declared cost units)",
                ),
                family(
                    "l2d_fallbacks_total",
                    "counter",
                    "Expert calls that failed and moved the query on (retry or fallback)",
                ),
                family(
                    "l2d_expert_calls_total",
                    "counter",
                    "Calls to expert replicas by status code",
                ),
                family(
                    "l2d_expert_call_duration_seconds",
                    "histogram",
                    "Latency of calls to expert replicas",
                ),
                family(
                    "l2d_replica_in_flight",
                    "gauge",
                    "Calls in flight from this scheduler to the replica",
                ),
                family(
                    "l2d_replica_max_in_flight",
                    "gauge",
                    "Calls this scheduler may have in flight to the replica at once",
                ),
                family(
                    "l2d_replica_rtt_seconds",
                    "gauge",
                    "PeakEWMA latency estimate of the replica",
                ),
                family(
                    "l2d_replica_ejected",
                    "gauge",
                    "1 while the replica is ejected as an outlier or failed its health check",
                ),
                family(
                    "l2d_replica_ejections_total",
                    "counter",
                    "Times the replica was ejected",
                ),
                family(
                    "l2d_replica_draining",
                    "gauge",
                    "1 while the replica's health check says NOT_SERVING (shutting down): no \
                     calls, no ejection",
                ),
                // A candidate policy (`--candidate-policy`).
                family(
                    "l2d_policy_asks_total",
                    "counter",
                    "Router.Ask calls decided by each policy (role: serving or candidate), by \
                     status code",
                ),
                family(
                    "l2d_policy_cost_charged_units_total",
                    "counter",
                    "Cost charged on the requests each policy decided (declared cost units)",
                ),
                family(
                    "l2d_shadow_decisions_total",
                    "counter",
                    "The candidate's decisions on requests it did not decide: agree or disagree \
                     with the expert that answered, or unobserved (it needed an answer the \
                     request never saw)",
                ),
                family(
                    "l2d_shadow_cost_units_total",
                    "counter",
                    "What the candidate's shadow decisions would have cost (declared prices)",
                ),
                family(
                    "l2d_shadow_serving_cost_units_total",
                    "counter",
                    "What the policy in force charged on the same requests",
                ),
                // An expert worker's own (`l2d expert --metrics-listen`).
                family(
                    "l2d_worker_requests_total",
                    "counter",
                    "Expert.Answer calls the worker ended, by status code (CANCELLED: the caller \
                     gave up)",
                ),
                family(
                    "l2d_worker_request_duration_seconds",
                    "histogram",
                    "Expert.Answer latency at the worker, from arrival (queueing included)",
                ),
                family(
                    "l2d_worker_in_flight",
                    "gauge",
                    "Queries the worker is answering now",
                ),
                family(
                    "l2d_worker_queued",
                    "gauge",
                    "Queries waiting for one of the worker's --max-concurrency slots",
                ),
                family(
                    "l2d_worker_max_concurrency",
                    "gauge",
                    "The worker's concurrency limit (0: none)",
                ),
            ],
        }
    }

    fn body(&mut self, name: &str) -> &mut String {
        let family = self
            .families
            .iter_mut()
            .find(|f| f.0 == name)
            .unwrap_or_else(|| panic!("{name} is not a pool series"));
        &mut family.3
    }

    /// One sample of `name` (a family listed in [`PoolSeries::new`]).
    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        let body = self.body(name);
        write_sample(body, name, "", labels, None, value);
    }

    /// One sample per status code seen, with a `code` label after `labels`.
    pub fn codes(&mut self, name: &str, labels: Labels<'_>, counts: &CodeCounts) {
        for (code, n) in counts.seen() {
            let body = self.body(name);
            write_sample(body, name, "", labels, Some(("code", code)), n as f64);
        }
    }

    /// A histogram's buckets, sum and count; nothing before its first observation.
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, h: &LatencyHistogram) {
        if h.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let body = self.body(name);
        let mut cumulative = 0;
        for (le, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            write_sample(
                body,
                name,
                "_bucket",
                labels,
                Some(("le", &le.to_string())),
                cumulative as f64,
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        write_sample(
            body,
            name,
            "_bucket",
            labels,
            Some(("le", "+Inf")),
            count as f64,
        );
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        write_sample(body, name, "_sum", labels, None, sum);
        write_sample(body, name, "_count", labels, None, count as f64);
    }

    /// The text of every family that has a sample.
    pub fn render(self) -> String {
        let mut out = String::new();
        for (name, kind, help, body) in self.families {
            if !body.is_empty() {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
                out.push_str(&body);
                out.push('\n');
            }
        }
        out
    }
}

fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: Labels<'_>,
    extra: Option<(&str, &str)>,
    value: f64,
) {
    use std::fmt::Write;
    out.push_str(name);
    out.push_str(suffix);
    let mut all = labels.iter().copied().chain(extra).peekable();
    if all.peek().is_some() {
        out.push('{');
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `shutdown` completes.
/// `refresh` runs before each render, publishes state gauges and returns series rendered
/// outside the recorder (the pool's), appended to the recorder's.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    refresh: impl Fn() -> String + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::routing::get;
    let refresh = std::sync::Arc::new(refresh);
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let refresh = refresh.clone();
            async move {
                let pool = refresh();
                let mut body = install().map(|h| h.render()).unwrap_or_default();
                body.push_str(&pool);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    tracing::info!(address = %listener.local_addr()?, "metrics serving at /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
