//! The `Expert` gRPC service around a [`Backend`], and the node's `serve` entry point.
//!
//! Concurrency: load counters are atomics shared with the registration task. With a concurrency
//! limit, queries beyond it wait for a slot on a semaphore (counted as the queue depth the worker
//! reports); a cancelled call leaves the queue or frees its slot when its future is dropped.

use super::registration::{self, Announcement, LoadCounters, Registration};
use super::{Backend, Local, Model};
use crate::core::capability::{Capabilities, QueryFit};
use crate::core::error_kind::{ErrorKind, Refusal};
use crate::core::query::{Query, QueryLimits};
use crate::core::service_time::ServiceTime;
use crate::grpc::pb::{self, expert_server};
use crate::grpc::server;
use crate::telemetry::{CodeCounts, LatencyHistogram, PoolSeries};
use rand_distr::{Distribution, StandardNormal};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::{Code, Request, Response, Status};

/// Adds one to a counter for as long as it lives.
struct Counted<'a>(&'a AtomicU32);

impl<'a> Counted<'a> {
    fn enter(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often a model with a readiness of its own is asked whether it is ready.
pub const READINESS_INTERVAL: Duration = Duration::from_secs(2);

/// One expert: identity, declared cost and a model.
pub struct ExpertNode {
    id: String,
    cost: f64,
    backend: Arc<dyn Model>,
    readiness_interval: Duration,
    limits: QueryLimits,
    load: Arc<LoadCounters>,
    slots: Option<(u32, Semaphore)>,
    delay: Duration,
    service_time: Option<ServiceTime>,
    drain_delay: Duration,
    fault: Fault,
    tls: Option<Arc<crate::grpc::tls::ServerTls>>,
    /// What it takes: the backend's own, tightened by what the operator declared.
    capabilities: Capabilities,
    /// `Expert.Answer` calls by final status code, and their latency from arrival.
    calls: CodeCounts,
    latency: LatencyHistogram,
    /// Where `/metrics` is served, if anywhere (taken when serving starts).
    metrics: std::sync::Mutex<Option<TcpListener>>,
}

/// A deliberate misbehaviour, for fault drills and tests (`l2d expert --fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Every answer is empty ("no answer").
    Empty,
    /// Every answer's span lies outside the context and does not match its text.
    Malformed,
}

impl ExpertNode {
    /// An expert answered by a backend computed in the worker.
    pub fn new(id: impl Into<String>, cost: f64, backend: Arc<dyn Backend>) -> Self {
        Self::for_model(id, cost, Arc::new(Local(backend)))
    }

    /// An expert answered by `model` (e.g. a model server's client).
    pub fn for_model(id: impl Into<String>, cost: f64, backend: Arc<dyn Model>) -> Self {
        Self {
            id: id.into(),
            cost,
            readiness_interval: READINESS_INTERVAL,
            limits: QueryLimits::default(),
            load: Arc::default(),
            slots: None,
            delay: Duration::ZERO,
            service_time: None,
            drain_delay: Duration::ZERO,
            fault: Fault::None,
            capabilities: backend.capabilities(),
            backend,
            tls: None,
            calls: CodeCounts::default(),
            latency: LatencyHistogram::default(),
            metrics: std::sync::Mutex::new(None),
        }
    }

    /// Asks a model with a readiness of its own this often whether it is ready (default
    /// [`READINESS_INTERVAL`]); the node's health follows.
    pub fn with_readiness_interval(mut self, every: Duration) -> Self {
        self.readiness_interval = every;
        self
    }

    /// Serves Prometheus metrics at `/metrics` on `listener` while the node serves.
    pub fn with_metrics(self, listener: Option<TcpListener>) -> Self {
        *self.metrics.lock().unwrap_or_else(|e| e.into_inner()) = listener;
        self
    }

    /// The node's series in the Prometheus text format (see [`crate::telemetry`]).
    pub fn publish_metrics(&self) -> String {
        let mut out = PoolSeries::new();
        let expert = [("expert", self.id.as_str())];
        out.codes("l2d_worker_requests_total", &expert, &self.calls);
        out.histogram(
            "l2d_worker_request_duration_seconds",
            &expert,
            &self.latency,
        );
        let gauge = |n: &AtomicU32| f64::from(n.load(Ordering::Relaxed));
        out.sample("l2d_worker_in_flight", &expert, gauge(&self.load.in_flight));
        out.sample("l2d_worker_queued", &expert, gauge(&self.load.queued));
        out.sample(
            "l2d_worker_max_concurrency",
            &expert,
            f64::from(self.max_concurrency()),
        );
        out.sample(
            "l2d_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        out.render()
    }

    /// Declares limits on top of the backend's own: the tighter context limit of the two, and
    /// these languages when any are given. A query over the context limits gets OUT_OF_RANGE
    /// without reaching the backend.
    pub fn with_capabilities(mut self, declared: &Capabilities) -> Self {
        self.capabilities = self.capabilities.tightened_by(declared);
        self
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Serves over TLS (mutual TLS when the configuration has a client CA).
    pub fn with_tls(mut self, tls: Option<Arc<crate::grpc::tls::ServerTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Misbehaves on purpose (fault drills and tests).
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// After a stop signal (and leaving the pool): report NOT_SERVING, keep serving this long,
    /// then drain.
    pub fn with_drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// Answers at most `limit` queries at once; the others wait in a queue (reported as the
    /// queue depth). 0: no limit.
    pub fn with_max_concurrency(mut self, limit: u32) -> Self {
        self.slots = (limit > 0).then(|| (limit, Semaphore::new(limit as usize)));
        self
    }

    /// Adds `delay` to every answer (a stand-in for a slow model in drills and tests).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Takes a service time drawn from `time` for every answer (on top of any `delay`): a
    /// stand-in for a model's compute, slept without holding a thread.
    pub fn with_service_time(mut self, time: Option<ServiceTime>) -> Self {
        self.service_time = time;
        self
    }

    /// What the node tells the scheduler when it registers.
    pub fn announcement(&self) -> Announcement {
        Announcement {
            expert_id: self.id.clone(),
            cost: self.cost,
            backend: self.backend_kind().to_owned(),
            max_in_flight: self.max_concurrency(),
            capabilities: self.capabilities.clone(),
        }
    }

    /// The concurrency limit, 0 for none.
    pub fn max_concurrency(&self) -> u32 {
        self.slots.as_ref().map_or(0, |(limit, _)| *limit)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn cost(&self) -> f64 {
        self.cost
    }

    pub fn backend_kind(&self) -> &'static str {
        self.backend.kind()
    }

    pub fn load(&self) -> &Arc<LoadCounters> {
        &self.load
    }
}

#[tonic::async_trait]
impl expert_server::Expert for Arc<ExpertNode> {
    async fn answer(
        &self,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<pb::AnswerResponse>, Status> {
        let arrived = Instant::now();
        // Counted when the call ends; a call the client cancels counts as CANCELLED.
        let mut ending = Ending {
            node: self,
            arrived,
            code: Code::Cancelled,
        };
        let reply = self.answer_query(arrived, request).await;
        ending.code = reply.as_ref().map_or_else(Status::code, |_| Code::Ok);
        reply
    }

    async fn describe(
        &self,
        _request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        Ok(Response::new(pb::DescribeResponse {
            expert_id: self.id.clone(),
            backend: self.backend.kind().into(),
            cost: self.cost,
            version: env!("CARGO_PKG_VERSION").into(),
            detail: self.backend.detail(),
            in_flight: self.load.in_flight.load(Ordering::Relaxed),
            queue_depth: self.load.queued.load(Ordering::Relaxed),
            max_concurrency: self.max_concurrency(),
            capabilities: Some(crate::grpc::convert::capabilities_to_pb(
                &self.capabilities,
                true,
            )),
        }))
    }
}

/// Counts one `Expert.Answer` call when dropped, with the code it ended with.
struct Ending<'a> {
    node: &'a ExpertNode,
    arrived: Instant,
    code: Code,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        self.node.calls.increment(self.code);
        self.node.latency.record(self.arrived.elapsed());
    }
}

impl ExpertNode {
    async fn answer_query(
        &self,
        arrived: Instant,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<pb::AnswerResponse>, Status> {
        // The caller's deadline, measured from arrival (the queue for a slot counts).
        let deadline = crate::grpc::deadline::request_timeout(&request).map(|t| arrived + t);
        let (metadata, _, msg) = request.into_parts();
        // The scheduler's request id, for this expert's log lines about the call.
        let request_id = metadata
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let query = Query::new(msg.question, msg.context, msg.id, &self.limits)?;
        // A context over the declared limits never reaches the backend.
        let fit = QueryFit::new(query.question(), query.context(), query.id(), None);
        if let Err(why) = self.capabilities.context_limits().admits(&fit) {
            tracing::debug!(expert = %self.id, request_id, %query, %why, "query beyond the declared limits");
            return Err(crate::grpc::status::status_of(&why));
        }
        let _slot = match &self.slots {
            None => None,
            Some((_, semaphore)) => {
                let _queued = Counted::enter(&self.load.queued);
                Some(semaphore.acquire().await.map_err(|_| {
                    Refusal::new(ErrorKind::Unavailable, "the expert is shutting down")
                })?)
            }
        };
        let _in_flight = Counted::enter(&self.load.in_flight);
        let started = Instant::now();
        let mut sleep = self.delay;
        if let Some(time) = &self.service_time {
            sleep += time.at(StandardNormal.sample(&mut rand::rng()));
        }
        if !sleep.is_zero() {
            tokio::time::sleep(sleep).await;
        }
        let time_left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let answer = match time_left {
            Some(left) if left.is_zero() => Err(super::BackendError::DeadlineExceeded(
                "the deadline passed before the model was asked".into(),
            )),
            _ => self.backend.answer(&query, time_left).await,
        };
        let micros = started.elapsed().as_micros() as u64;
        let answer = answer.inspect_err(|e| {
            tracing::debug!(expert = %self.id, request_id, %query, error = %e, "no answer");
        })?;
        self.load.answered_total.fetch_add(1, Ordering::Relaxed);
        let (text, span) = match self.fault {
            Fault::None => (answer.text, answer.span),
            Fault::Empty => (String::new(), None),
            Fault::Malformed => (answer.text, Some((u32::MAX - 1, u32::MAX))),
        };
        Ok(Response::new(pb::AnswerResponse {
            text,
            span: span.map(|(start, end)| pb::Span { start, end }),
            score: answer.score,
            compute: Some(pb::Compute {
                units: answer.compute_units,
                micros,
            }),
            expert_id: self.id.clone(),
        }))
    }
}

/// The gRPC service an expert serves, as named in `grpc.health.v1` (besides "", the server).
pub const SERVICES: &[&str] = &["l2d.v1.Expert"];

/// Serves `node` on `listener` until `shutdown` completes. With a [`Registration`], the node
/// joins the scheduler's pool, keeps its lease, and leaves the pool before draining.
pub async fn serve(
    listener: TcpListener,
    node: ExpertNode,
    registration: Option<Registration>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let node = Arc::new(node);
    let (reporter, routes, _) = server::standard_routes()?;
    let routes = routes.add_service(
        expert_server::ExpertServer::new(node.clone())
            .max_decoding_message_size(crate::grpc::query_message_bytes(&node.limits))
            .max_encoding_message_size(crate::grpc::answer_message_bytes(&node.limits)),
    );
    tracing::info!(
        expert = %node.id,
        backend = node.backend.kind(),
        cost = node.cost,
        address = %listener.local_addr()?,
        detail = %node.backend.detail(),
        "expert serving"
    );
    let shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match registration {
        None => Box::pin(shutdown),
        Some(registration) => {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(registration::keep_lease(
                registration,
                node.announcement(),
                node.load.clone(),
                stopped,
            ));
            Box::pin(async move {
                shutdown.await;
                // Leave the pool first, so the scheduler stops sending, then drain.
                let _ = stop.send(());
                let _ = task.await;
            })
        }
    };
    let metrics = node
        .metrics
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = metrics.map(|listener| {
        let node = node.clone();
        tokio::spawn(crate::telemetry::serve_metrics(
            listener,
            move || node.publish_metrics(),
            async {
                let _ = metrics_stopped.await;
            },
        ))
    });
    // Metrics are served until the gRPC server has drained.
    let shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(shutdown);
    let result = serve_node(listener, &node, routes, reporter, shutdown).await;
    let _ = metrics_stop.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    result
}

async fn serve_node(
    listener: TcpListener,
    node: &ExpertNode,
    routes: tonic::service::Routes,
    reporter: tonic_health::server::HealthReporter,
    shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
) -> anyhow::Result<()> {
    // A model server's worker starts not serving, until its first check (at once) says ready.
    let (readiness, checker) = if node.backend.has_readiness() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let checker = tokio::spawn(follow_readiness(
            node.backend.clone(),
            node.id.clone(),
            node.load.clone(),
            node.readiness_interval,
            tx,
        ));
        (Some(rx), Some(checker))
    } else {
        (None, None)
    };
    let options = server::ServeOptions {
        drain_delay: node.drain_delay,
        tls: node.tls.clone(),
        readiness,
        ..server::ServeOptions::default()
    };
    let tls_watcher = node
        .tls
        .clone()
        .map(|tls| tokio::spawn(server::watch_tls(tls, Duration::from_secs(2))));
    let result = server::serve(listener, routes, reporter, SERVICES, shutdown, &options).await;
    for task in [tls_watcher, checker].into_iter().flatten() {
        task.abort();
    }
    result
}

/// Asks `model` now and every `every` whether it is ready, and publishes changes on `ready`. A model
/// that answered since the last look is ready without being asked: a busy server may be slow
/// to answer a readiness call (llama.cpp's serves it after the completions in progress).
async fn follow_readiness(
    model: Arc<dyn Model>,
    id: String,
    load: Arc<LoadCounters>,
    every: Duration,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let answered = || load.answered_total.load(Ordering::Relaxed);
    let mut seen = answered();
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(every).await;
        }
        let now = match answered() {
            n if n != seen => {
                seen = n;
                Ok(())
            }
            _ => model.readiness().await,
        };
        let changed = ready.send_if_modified(|was| {
            let changed = *was != now.is_ok();
            *was = now.is_ok();
            changed
        });
        if changed || first {
            match &now {
                Ok(()) => tracing::info!(expert = %id, "model ready: serving"),
                Err(why) => tracing::warn!(expert = %id, %why, "model not ready: not serving"),
            }
        }
        first = false;
    }
}
