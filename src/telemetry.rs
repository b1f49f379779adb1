//! Prometheus metrics: the process-wide recorder, the names l2d exports, and the `/metrics`
//! HTTP endpoint.
//!
//! Hot-path counters are registered once per replica or expert and kept as handles (an atomic
//! add per call); gauges that describe state (ejections, PeakEWMA, realised cost) are refreshed
//! from the registry when Prometheus scrapes. Labels carry expert ids, replica addresses and
//! status codes only: never query text.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `l2d_asks_total` | counter | `code` |
//! | `l2d_ask_duration_seconds` | histogram | |
//! | `l2d_decisions_total` | counter | `expert` (first choice) |
//! | `l2d_fallbacks_total` | counter | `expert`, `code` (the failed call) |
//! | `l2d_expert_calls_total` | counter | `expert`, `replica`, `code` |
//! | `l2d_expert_call_duration_seconds` | histogram | `expert`, `replica` |
//! | `l2d_replica_in_flight` | gauge | `expert`, `replica` |
//! | `l2d_replica_rtt_seconds` | gauge | `expert`, `replica` (PeakEWMA) |
//! | `l2d_replica_ejected` | gauge | `expert`, `replica` (1 while ejected) |
//! | `l2d_replica_ejections_total` | counter | `expert`, `replica` |
//! | `l2d_answers_total` | counter | `expert` |
//! | `l2d_cost_charged_units` | gauge | `expert` (cumulative cost charged) |
//! | `l2d_cost_realized` | gauge | mean cost per query over the recent window |
//! | `l2d_cost_target` | gauge | the live cost target, when set |
//! | `l2d_policy_lambda` | gauge | the price of compute in force |
//! | `l2d_policy_reloads_total` | counter | `result` (`ok`, `error`) |
//! | `l2d_pool_reloads_total` | counter | `result` (`ok`, `error`) |

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
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
    describe_counter!("l2d_asks_total", "Router.Ask calls by final status code");
    describe_histogram!(
        "l2d_ask_duration_seconds",
        metrics::Unit::Seconds,
        "Router.Ask latency, from arrival to answer or error"
    );
    describe_counter!(
        "l2d_decisions_total",
        "Queries whose first choice was this expert"
    );
    describe_counter!(
        "l2d_fallbacks_total",
        "Expert calls that failed and moved the query on (retry or fallback)"
    );
    describe_counter!(
        "l2d_expert_calls_total",
        "Calls to expert replicas by status code"
    );
    describe_histogram!(
        "l2d_expert_call_duration_seconds",
        metrics::Unit::Seconds,
        "Latency of calls to expert replicas"
    );
    describe_gauge!(
        "l2d_replica_in_flight",
        "Calls in flight from this scheduler to the replica"
    );
    describe_gauge!(
        "l2d_replica_rtt_seconds",
        metrics::Unit::Seconds,
        "PeakEWMA latency estimate of the replica"
    );
    describe_gauge!(
        "l2d_replica_ejected",
        "1 while the replica is ejected as an outlier or failed its health check"
    );
    describe_counter!(
        "l2d_replica_ejections_total",
        "Times the replica was ejected"
    );
    describe_counter!("l2d_answers_total", "Answers returned, by expert");
    describe_gauge!(
        "l2d_cost_charged_units",
        "Cumulative cost charged for calls to the expert (declared cost units)"
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
    describe_counter!("l2d_policy_reloads_total", "Policy file reloads, by result");
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

/// The metric handles of one replica.
#[derive(Debug)]
pub struct ReplicaMetrics {
    expert: String,
    replica: String,
    ok: Counter,
    pub latency: Histogram,
    pub in_flight: Gauge,
    pub ejections: Counter,
}

impl ReplicaMetrics {
    pub fn new(expert: &str, replica: &str) -> Self {
        let labels = [
            ("expert", expert.to_owned()),
            ("replica", replica.to_owned()),
        ];
        Self {
            expert: expert.to_owned(),
            replica: replica.to_owned(),
            ok: metrics::counter!("l2d_expert_calls_total", "expert" => expert.to_owned(), "replica" => replica.to_owned(), "code" => "OK"),
            latency: metrics::histogram!("l2d_expert_call_duration_seconds", &labels),
            in_flight: metrics::gauge!("l2d_replica_in_flight", &labels),
            ejections: metrics::counter!("l2d_replica_ejections_total", &labels),
        }
    }

    pub fn record(&self, code: Code, latency: Duration) {
        self.latency.record(latency.as_secs_f64());
        if code == Code::Ok {
            self.ok.increment(1);
        } else {
            metrics::counter!(
                "l2d_expert_calls_total",
                "expert" => self.expert.clone(),
                "replica" => self.replica.clone(),
                "code" => code_name(code)
            )
            .increment(1);
        }
    }

    /// State gauges, refreshed at scrape time.
    pub fn publish_state(&self, rtt_seconds: f64, ejected: bool) {
        let labels = [
            ("expert", self.expert.clone()),
            ("replica", self.replica.clone()),
        ];
        metrics::gauge!("l2d_replica_rtt_seconds", &labels).set(rtt_seconds);
        metrics::gauge!("l2d_replica_ejected", &labels).set(if ejected { 1.0 } else { 0.0 });
    }
}

/// The metric handles of one expert.
#[derive(Debug)]
pub struct ExpertMetrics {
    pub decisions: Counter,
    pub answers: Counter,
    pub cost_charged: Gauge,
}

impl ExpertMetrics {
    pub fn new(expert: &str) -> Self {
        let label = [("expert", expert.to_owned())];
        Self {
            decisions: metrics::counter!("l2d_decisions_total", &label),
            answers: metrics::counter!("l2d_answers_total", &label),
            cost_charged: metrics::gauge!("l2d_cost_charged_units", &label),
        }
    }
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `shutdown` completes.
/// `refresh` runs before each render, to publish state gauges.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    refresh: impl Fn() + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::routing::get;
    let refresh = std::sync::Arc::new(refresh);
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let refresh = refresh.clone();
            async move {
                refresh();
                let body = install().map(|h| h.render()).unwrap_or_default();
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
