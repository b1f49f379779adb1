//! The `Router` service: validate, score, decide, forward, fall back, account.
//!
//! No lock is held across an `.await`: the request works on an `Arc` snapshot of the pool and
//! per-replica atomics. Cancelling the client call drops this future, which drops the in-flight
//! expert call (cancelling it) and its in-flight guard.

use super::candidate::{Candidate, Decider, Shadow, shadow_decision};
use super::decision_log::{LoggedDecision, LoggedQuery};
use super::registry::{ExpertGroup, PoolSnapshot};
use super::{ActivePolicy, Scheduler};
use crate::core::ask::{
    Answered, Ask, AskError, AskParams, CallResult, Chosen, ExpertView, Explanation, Finished,
    Override, Role, Step,
};
use crate::core::call::{Failure, Miss, NotSent};
use crate::core::capability::{Capabilities, QueryFit, Unfit};
use crate::core::decision::ReplicaLoad;
use crate::core::error_kind::{ErrorKind, Refusal};
use crate::core::policy::{ExpertMeta, Observed};
use crate::core::query::Query;
use crate::core::rng::uniform_pair;
use crate::grpc::convert;
use crate::grpc::deadline::{request_timeout, sendable_wait};
use crate::grpc::pb::{self, router_server::Router};
use crate::grpc::status::{code_name, code_of_miss, failure_of};
use crate::trace::RequestTrace;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::{Code, Request, Response, Status};

/// How final decisions departed from the policy's preference, and whether a probing policy
/// kept an answer it had or asked another expert (written out at scrape time).
#[derive(Debug, Default)]
pub(crate) struct DecisionCounters {
    overrides: [AtomicU64; Override::LABELS.len()],
    kept: AtomicU64,
    deferred: AtomicU64,
}

impl DecisionCounters {
    fn record(&self, explanation: &Explanation, served: Option<&Answered<pb::AnswerResponse>>) {
        let Some(decision) = &explanation.decision else {
            return;
        };
        if let Some(why) = decision.override_reason(served.map(|a| a.expert)) {
            self.overrides[why.index()].fetch_add(1, Ordering::Relaxed);
        }
        // Only a policy that has an answer in hand before deciding can keep one.
        if let Some(answered) = served
            && explanation.probes.iter().any(|p| p.text.is_some())
        {
            let count = if answered.kept_probe {
                &self.kept
            } else {
                &self.deferred
            };
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every series, zeros included (a rate needs the series before its first increment).
    pub(crate) fn write(&self, out: &mut crate::telemetry::PoolSeries) {
        for (reason, n) in Override::LABELS.iter().zip(&self.overrides) {
            let n = n.load(Ordering::Relaxed) as f64;
            out.sample("l2d_decision_overrides_total", &[("reason", reason)], n);
        }
        for (outcome, n) in [("kept", &self.kept), ("deferred", &self.deferred)] {
            let n = n.load(Ordering::Relaxed) as f64;
            out.sample("l2d_defer_outcomes_total", &[("outcome", outcome)], n);
        }
    }
}

pub struct RouterService {
    scheduler: Arc<Scheduler>,
}

impl RouterService {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self { scheduler }
    }
}

/// Time kept back from the caller's deadline so the scheduler answers DEADLINE_EXCEEDED itself
/// before the server's own timeout layer cancels the call (tonic answers that with CANCELLED).
fn deadline_margin(total: Duration) -> Duration {
    (total / 10).min(Duration::from_millis(20))
}

/// Calls `group`'s replica `replica` with the remaining deadline, holding one of its slots for
/// the duration, and records the outcome on the replica (PeakEWMA, errors, ejection, metrics).
async fn call_replica(
    group: &ExpertGroup,
    replica: usize,
    query: &Query,
    (deadline, try_timeout): (Option<Instant>, Duration),
    (request_id, trace, attempt): (&str, &RequestTrace, u32),
) -> CallResult<pb::AnswerResponse> {
    let replica = &group.replicas[replica];
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    if remaining.is_some_and(|r| r.is_zero()) {
        return CallResult::Missed(Miss::NotSent(NotSent::DeadlinePassed));
    }
    let Some(_slot) = replica.try_begin_call() else {
        return CallResult::Missed(Miss::NotSent(NotSent::ReplicaFull));
    };
    let mut call = Request::new(pb::AnswerRequest {
        question: query.question().to_owned(),
        context: query.context().to_owned(),
        id: query.id().map(str::to_owned),
    });
    // The caller's deadline, or the try timeout if it comes first (a hung replica must not hold
    // the request: the plan moves on to another replica).
    // Rounded down to what the `grpc-timeout` header says exactly (whole milliseconds): tonic's
    // client runs a timer on that header too, which then ends with this wait, not before it.
    let wait = sendable_wait(remaining.map_or(try_timeout, |r| r.min(try_timeout)));
    let caller_limited = remaining.is_some_and(|r| r <= try_timeout);
    call.metadata_mut().insert(
        &*crate::grpc::deadline::GRPC_TIMEOUT,
        crate::grpc::deadline::grpc_timeout_value(wait),
    );
    // The request's id goes with every expert call, for the expert's logs.
    if let Some(value) = request_id_value(request_id) {
        call.metadata_mut().insert(&*REQUEST_ID_KEY, value);
    }
    let span = trace.call(
        &group.entry.id,
        &replica.address,
        attempt,
        call.metadata_mut(),
    );
    let mut client = replica.client.clone();
    let started = Instant::now();
    // tonic's client enforces the grpc-timeout it sends too (CANCELLED "Timeout expired"), racing
    // the local timer: any failure once the wait is over is the wait's.
    let (result, upstream) = match tokio::time::timeout(wait, client.answer(call)).await {
        Ok(Ok(answer)) => (check_answer(answer.into_inner(), query), None),
        Ok(Err(status)) if started.elapsed() < wait => (
            Err(failure_of(status.code())),
            Some((code_name(status.code()), status.message().to_owned())),
        ),
        _ if caller_limited => (Err(Failure::DeadlinePassed), None),
        _ => (
            Err(Failure::TryTimedOut {
                millis: try_timeout.as_millis() as u64,
            }),
            None,
        ),
    };
    let now = Instant::now();
    let ending = result.as_ref().map(|_| ()).map_err(|f| *f);
    span.end(ending.map_or_else(|f| code_of_miss(Miss::Failed(f)), |()| Code::Ok));
    if let Err(failure) = ending {
        // One line per failed call, with the request's id; what the replica itself
        // said is logged, never returned: echoing it to callers would let anyone who can ask
        // read what hosts behind registered addresses say (connection errors, banners).
        let (code, message) = upstream.unwrap_or_else(|| {
            let code = code_name(code_of_miss(Miss::Failed(failure)));
            (code, failure.to_string())
        });
        tracing::info!(
            request_id,
            expert = %group.entry.id,
            replica = %replica.address,
            code,
            message,
            "expert call failed"
        );
    }
    if let Some(length) = replica.record_call(ending, now - started, now) {
        tracing::warn!(
            request_id,
            expert = %group.entry.id,
            replica = %replica.address,
            failure = %ending.unwrap_err(),
            ejected_ms = length.as_millis() as u64,
            "replica ejected after consecutive failures"
        );
    }
    match result {
        Ok(answer) => CallResult::Answered(answer),
        Err(failure) => CallResult::Missed(Miss::Failed(failure)),
    }
}

/// The expert calls of one request in flight: one, or a few (probes asked together, a hedge),
/// each polled in turn when the request's task wakes. Lighter than a `FuturesUnordered`, whose
/// queue of ready tasks and per-call waker pay off only with many futures.
struct InFlight<F: Future> {
    calls: Vec<Pin<Box<F>>>,
}

impl<F: Future> Default for InFlight<F> {
    fn default() -> Self {
        Self { calls: Vec::new() }
    }
}

impl<F: Future> InFlight<F> {
    fn push(&mut self, call: F) {
        self.calls.push(Box::pin(call));
    }

    /// The output of the first call found finished (in the order they were pushed), waiting
    /// until one is; `None` when none is in flight.
    async fn next(&mut self) -> Option<F::Output> {
        if self.calls.is_empty() {
            return None;
        }
        std::future::poll_fn(|cx| {
            for i in 0..self.calls.len() {
                if let Poll::Ready(out) = self.calls[i].as_mut().poll(cx) {
                    drop(self.calls.remove(i));
                    return Poll::Ready(Some(out));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// An answer whose span does not lie in the context is a broken expert, not an answer.
fn check_answer(answer: pb::AnswerResponse, query: &Query) -> Result<pb::AnswerResponse, Failure> {
    if let Some(span) = &answer.span {
        // The context holds `span.end` characters if its character `span.end − 1` exists: walk
        // no further than the span (a full count would walk every context on every answer).
        let fits = span.end == 0 || query.context().chars().nth(span.end as usize - 1).is_some();
        if span.start > span.end || !fits {
            return Err(Failure::Malformed {
                start: span.start,
                end: span.end,
                context_chars: query.context().chars().count(),
            });
        }
    }
    Ok(answer)
}

/// The header carrying a request id, accepted from the client and always returned.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// [`REQUEST_ID_HEADER`] parsed once (a name given as text is parsed again at each look-up).
static REQUEST_ID_KEY: LazyLock<MetadataKey<Ascii>> =
    LazyLock::new(|| MetadataKey::from_static(REQUEST_ID_HEADER));

/// The client's request id when it sent a usable one (1–64 visible ASCII characters), else a
/// fresh one: this process's random prefix and the request's number, so ids from the pods of
/// a fleet do not collide (two processes share a prefix with probability 2^-64).
fn request_id<T>(request: &Request<T>, number: u64) -> String {
    request
        .metadata()
        .get(&*REQUEST_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| fresh_request_id(number), str::to_owned)
}

/// `{prefix:016x}-{number:x}`, written without the formatting machinery (once per request).
fn fresh_request_id(number: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(33);
    let prefix = process_prefix();
    for shift in (0..16).rev() {
        id.push(char::from(HEX[(prefix >> (shift * 4)) as usize & 15]));
    }
    id.push('-');
    let digits = (64 - number.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        id.push(char::from(HEX[(number >> (shift * 4)) as usize & 15]));
    }
    id
}

/// A random number drawn once per process (from the standard library's hasher keys, which the
/// operating system's random source seeds).
fn process_prefix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PREFIX.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// The request id as a header value, marked sensitive: HPACK then sends it as a literal never
/// indexed. Every request's id is new, so adding it to the connection's table (which the
/// encoder does with other values) would only evict entries that do repeat.
fn request_id_value(id: &str) -> Option<MetadataValue<Ascii>> {
    let mut value: MetadataValue<Ascii> = id.parse().ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn with_request_id<T>(mut response: Response<T>, id: &str) -> Response<T> {
    if let Some(value) = request_id_value(id) {
        response.metadata_mut().insert(&*REQUEST_ID_KEY, value);
    }
    response
}

fn status_with_request_id(mut status: Status, id: &str) -> Status {
    if let Some(value) = request_id_value(id) {
        status.metadata_mut().insert(&*REQUEST_ID_KEY, value);
    }
    status
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn ask(
        &self,
        request: Request<pb::AskRequest>,
    ) -> Result<Response<pb::AskResponse>, Status> {
        let started = Instant::now();
        let deadline = request_timeout(&request).map(|t| started + t - deadline_margin(t));
        let number = self.scheduler.requests.fetch_add(1, Ordering::Relaxed);
        let request_id = request_id(&request, number);
        let trace = RequestTrace::start(self.scheduler.tracing(), request.metadata(), &request_id);
        // No tracing span per request: the subscriber would format its fields on every request
        // whatever is logged. The few lines a request can log name its id themselves.
        let result = async {
            let _slot = self.scheduler.admission.enter(deadline).await?;
            self.answer(
                request.into_inner(),
                number,
                (request_id.clone(), &trace),
                started,
                deadline,
            )
            .await
        }
        .await;
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        trace.end(code, result.as_ref().ok().map(|a| a.expert_id.as_str()));
        self.scheduler.asks.increment(code);
        self.scheduler
            .ask_duration
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(answer) => Ok(with_request_id(Response::new(answer), &request_id)),
            Err(status) => Err(status_with_request_id(status, &request_id)),
        }
    }

    async fn report_outcome(
        &self,
        request: Request<pb::ReportOutcomeRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        let msg = request.into_inner();
        let (Some(log), Some(outcomes)) = (&self.scheduler.decisions, &self.scheduler.outcomes)
        else {
            return Err(crate::grpc::status::status_of(&Refusal::new(
                ErrorKind::Unsatisfiable,
                "this scheduler keeps no decision log to record outcomes in (start it with \
                 --decision-log)",
            )));
        };
        let outcome = outcomes
            .report(&msg.request_id, msg.reward, &msg.gold_answers)
            .map_err(|e| crate::grpc::status::status_of(&e))?;
        log.record_outcome(&outcome);
        Ok(Response::new(pb::ReportOutcomeResponse {
            reward: outcome.reward,
            f1: outcome.f1,
        }))
    }
}

impl RouterService {
    /// Snapshot → loop { call } → publish: the algorithm is [`Ask`]'s; this drives its calls and
    /// turns its explanation into the reply, the decision log and the metrics.
    async fn answer(
        &self,
        msg: pb::AskRequest,
        number: u64,
        (request_id, trace): (String, &RequestTrace),
        started: Instant,
        deadline: Option<Instant>,
    ) -> Result<pb::AskResponse, Status> {
        let config = &self.scheduler.config;
        let query = Query::new(msg.question, msg.context, msg.id, &config.limits)?;
        let snapshot = self.scheduler.registry.snapshot();
        // The policy that decides: the one in force, or for a share of the requests the
        // candidate; the other one (if any) decides in shadow afterwards.
        let candidate = self.scheduler.candidate.as_ref();
        let decider = match candidate {
            Some(c) if c.decides(number, config.explore_seed) => Decider::Candidate,
            _ => Decider::Serving,
        };
        let (policy, shadow) = match (decider, candidate) {
            (Decider::Candidate, Some(c)) => (c.policy(), None),
            (_, c) => (self.scheduler.policy(), c.map(Candidate::policy)),
        };
        let reads_context =
            policy.reads_context() || shadow.as_ref().is_some_and(|s| s.reads_context());
        let query = if reads_context {
            let analysis = self.scheduler.contexts.analysis(query.context());
            query.with_analysis(analysis)
        } else {
            query
        };

        let language = msg
            .language
            .as_deref()
            .map(|tag| {
                Capabilities::parse_languages(&[tag.to_owned()])
                    .map_err(|e| Refusal::new(ErrorKind::InvalidInput, format!("language: {e}")))
            })
            .transpose()?;
        let mut fit = QueryFit::new(
            query.question(),
            query.context(),
            query.id(),
            language
                .as_ref()
                .and_then(|l| l.first())
                .map(String::as_str),
        );
        if let Some(analysis) = query.analysis() {
            fit = fit.with_context_tokens(analysis.token_count());
        }

        let now = Instant::now();
        let mut loads: Vec<Vec<ReplicaLoad>> =
            snapshot.experts.iter().map(|g| g.loads(now)).collect();
        let unfit: Vec<Option<Unfit>> = snapshot
            .experts
            .iter()
            .zip(loads.iter_mut())
            .map(|(g, loads)| g.fit(&fit, loads))
            .collect();
        let view: Vec<ExpertView<'_>> = snapshot
            .experts
            .iter()
            .zip(&loads)
            .zip(&unfit)
            .map(|((g, loads), unfit)| ExpertView {
                id: &g.entry.id,
                price: g.entry.cost,
                replicas: loads,
                unfit: *unfit,
            })
            .collect();
        let metas: Vec<ExpertMeta<'_>> = view
            .iter()
            .map(|e| ExpertMeta {
                id: e.id,
                cost: e.price,
            })
            .collect();
        let probes = policy.probes_in(&view);
        let params = AskParams {
            budget: msg.budget,
            deadline: deadline.map(|d| d.saturating_duration_since(started)),
            max_attempts: config.max_attempts,
            tries_per_expert: config.tries_per_expert,
            wait_price: config.wait_price,
            explore: config.explore,
            seed: number,
            draws: if config.explore > 0.0 {
                uniform_pair(config.explore_seed, number)
            } else {
                (0.0, 0.0)
            },
            stages: policy.stages(),
        };
        let scorer = |observed: &[Observed<'_>], out: &mut Vec<Option<f64>>| {
            policy.score(&query, observed, &metas, out)
        };
        let mut ask = Ask::new(&view, &probes, params, scorer)?;
        let mut running = InFlight::default();
        // Calls made to each expert so far, when spans number the attempts (no allocation
        // otherwise).
        let mut attempts: Vec<u32> = Vec::new();
        loop {
            match ask.next_step() {
                Step::Call(call) => {
                    let group = &snapshot.experts[call.expert];
                    let query = &query;
                    let request_id = request_id.as_str();
                    let attempt = if trace.exports() {
                        attempts.resize(view.len(), 0);
                        attempts[call.expert] += 1;
                        attempts[call.expert]
                    } else {
                        0
                    };
                    running.push(async move {
                        let result = call_replica(
                            group,
                            call.replica,
                            query,
                            (deadline, config.try_timeout),
                            (request_id, trace, attempt),
                        )
                        .await;
                        (call.id, result, started.elapsed())
                    });
                }
                Step::Wait => match running.next().await {
                    Some((id, result, at)) => ask.record(id, result, at),
                    None => break,
                },
                Step::Done => break,
            }
        }
        drop(running);
        let Finished {
            outcome,
            explanation,
        } = ask.finish();
        self.publish(
            &snapshot,
            &explanation,
            outcome.as_ref().ok().map(|a| a.expert),
        );
        self.scheduler
            .decision_counters
            .record(&explanation, outcome.as_ref().ok());
        let address = |e: usize, r: usize| snapshot.experts[e].replicas[r].address.clone();
        let lambda = policy.lambda();
        let logged =
            |policy: &ActivePolicy, d: &Chosen, answered_by: Option<usize>, cost| LoggedDecision {
                request_id: request_id.clone(),
                query_id: query.id().map(str::to_owned),
                policy_id: policy.identity().id.clone(),
                lambda: policy.lambda(),
                eligible: d
                    .plan
                    .ranked
                    .iter()
                    .map(|&i| view[i].id.to_owned())
                    .collect(),
                scores: view
                    .iter()
                    .zip(&d.scores)
                    .map(|(e, s)| (e.id.to_owned(), *s))
                    .collect(),
                greedy: view[d.greedy].id.to_owned(),
                chosen: view[d.chosen].id.to_owned(),
                propensity: d.propensity,
                epsilon: d.epsilon,
                answered_by: answered_by.map(|a| view[a].id.to_owned()),
                answer: None,
                reward: None,
                query: None,
                cost,
                shadow: false,
                sequence: None,
            };
        if let Some(c) = candidate {
            let code = match &outcome {
                Ok(_) => Code::Ok,
                Err(e) => Status::from(e.clone()).code(),
            };
            c.record_ask(decider, &policy.identity().id, code, explanation.charged);
        }
        if let (Some(c), Some(shadow)) = (candidate, &shadow) {
            let served = outcome
                .as_ref()
                .ok()
                .map(|a| (a.expert, a.answer.text.as_str()));
            let verdict =
                shadow_decision(shadow, &view, &metas, &query, params, &explanation, served);
            c.record_shadow(&verdict, served.map(|(e, _)| e), explanation.charged);
            if let (
                Some(decisions),
                Shadow::Decided {
                    cost,
                    decision: Some(d),
                    ..
                },
            ) = (&self.scheduler.decisions, &verdict)
            {
                decisions.record(&LoggedDecision {
                    shadow: true,
                    ..logged(shadow, d, None, *cost)
                });
            }
        }
        if let Some(d) = &explanation.decision {
            if let Some(decisions) = &self.scheduler.decisions {
                let answered = outcome.as_ref().ok();
                let answer = answered.map(|a| a.answer.text.as_str());
                let logged_query = config.decision_log_queries.then(|| LoggedQuery {
                    question: query.question().to_owned(),
                    context: query.context().to_owned(),
                    observed: explanation
                        .probes
                        .iter()
                        .filter_map(|p| Some((view[p.expert].id.to_owned(), p.text.clone()?)))
                        .collect(),
                });
                // Opened before the decision is logged, under a number the log line carries:
                // an outcome joins this decision even if the client sent the same request id
                // with another request in flight.
                let sequence = self
                    .scheduler
                    .outcomes
                    .as_ref()
                    .map(|outcomes| outcomes.expect(&request_id, answer));
                decisions.record(&LoggedDecision {
                    answer: answer.map(str::to_owned),
                    query: logged_query,
                    sequence,
                    ..logged(&policy, d, answered.map(|a| a.expert), explanation.charged)
                });
            }
            tracing::debug!(
                target: "l2d::decision",
                request_id,
                query_id = query.id().unwrap_or(""),
                chosen = view[d.chosen].id,
                lambda,
                scores = ?crate::logs::AsJson(view.iter().zip(&d.scores).map(|(e, s)| (e.id, *s)).collect::<Vec<_>>()),
                "decision"
            );
        }
        let answered = match outcome {
            Ok(answered) => answered,
            Err(error) => {
                if let AskError::Decision(e) = &error {
                    tracing::info!(request_id, %query, error = %e, "no expert can take the query");
                }
                return Err(error.into());
            }
        };
        let decision =
            convert::decision(&explanation, &view, address, &policy.identity().id, lambda);
        let replica = address(answered.expert, answered.replica);
        tracing::debug!(
            request_id,
            expert = view[answered.expert].id,
            replica,
            fallbacks = decision.fallbacks.len(),
            micros = started.elapsed().as_micros() as u64,
            "answered"
        );
        let answer = answered.answer;
        Ok(pb::AskResponse {
            text: answer.text,
            expert_id: view[answered.expert].id.to_owned(),
            cost: explanation.charged,
            decision: Some(decision),
            request_id,
            span: answer.span,
            score: answer.score,
            compute: answer.compute,
            replica,
        })
    }

    /// The request's effect on the experts' counters and the cost window, from its explanation.
    fn publish(&self, snapshot: &PoolSnapshot, explanation: &Explanation, served: Option<usize>) {
        let answered = served.is_some();
        if let Some(expert) = served {
            snapshot.experts[expert].entry.record_served();
        }
        for call in &explanation.calls {
            let entry = &snapshot.experts[call.expert].entry;
            let sent = matches!(call.end, Some(Ok(()) | Err(Miss::Failed(_))));
            if sent && matches!(call.role, Role::Probe(_)) {
                entry.record_probe_call();
            }
            match call.end {
                Some(Ok(())) => entry.record_answer(call.charged),
                Some(Err(miss)) => {
                    if call.charged > 0.0 {
                        entry.charge(call.charged);
                    }
                    entry.record_fallback(code_of_miss(miss));
                }
                None => {}
            }
        }
        if let Some(d) = &explanation.decision {
            snapshot.experts[d.chosen].entry.record_decision();
            for &(expert, why) in &d.plan.excluded {
                snapshot.experts[expert].entry.record_exclusion(why);
            }
        }
        if answered {
            self.scheduler.record_cost(explanation.charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_in_flight_are_taken_as_they_finish_not_as_they_were_made() {
        use futures_util::FutureExt;
        async fn take(answer: tokio::sync::oneshot::Receiver<&'static str>) -> &'static str {
            answer.await.unwrap()
        }
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let (second_tx, second_rx) = tokio::sync::oneshot::channel();
        let mut running = InFlight::default();
        running.push(take(first_rx));
        running.push(take(second_rx));
        second_tx.send("second").unwrap();
        assert_eq!(running.next().now_or_never(), Some(Some("second")));
        assert_eq!(
            running.next().now_or_never(),
            None,
            "the first is still out"
        );
        first_tx.send("first").unwrap();
        assert_eq!(running.next().now_or_never(), Some(Some("first")));
        assert_eq!(running.next().now_or_never(), Some(None), "none left");
    }

    #[test]
    fn request_ids_are_sent_as_never_indexed_header_values() {
        let value = request_id_value("0123456789abcdef-2a").expect("a visible ASCII id");
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "0123456789abcdef-2a");
    }

    #[test]
    fn a_fresh_request_id_is_the_prefix_and_the_number_in_hex() {
        for number in [0, 1, 9, 10, 15, 16, 255, 256, 0x1234_5678, u64::MAX] {
            assert_eq!(
                fresh_request_id(number),
                format!("{:016x}-{number:x}", process_prefix())
            );
        }
    }
}
