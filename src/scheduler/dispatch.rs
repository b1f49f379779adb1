//! The `Router` service: validate, score, decide, forward, fall back, account.
//!
//! No lock is held across an `.await`: the request works on an `Arc` snapshot of the pool and
//! per-replica atomics. Cancelling the client call drops this future, which drops the in-flight
//! expert call (cancelling it) and its in-flight guard.

use super::Scheduler;
use super::decision_log::LoggedDecision;
use super::registry::{ExpertGroup, PoolSnapshot};
use crate::core::decision::{
    Candidate, DecisionParams, Plan, ReplicaLoad, decide, explore, retry_after,
};
use crate::core::policy::ExpertMeta;
use crate::core::query::Query;
use crate::core::rng::uniform_pair;
use crate::grpc::deadline::request_timeout;
use crate::grpc::pb::{self, router_server::Router};
use crate::grpc::status::{code_name, resource_exhausted, worth_another_try};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

pub struct RouterService {
    scheduler: Arc<Scheduler>,
}

impl RouterService {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self { scheduler }
    }
}

/// A budget, when set, must be a positive finite number of cost units.
fn check_budget(budget: Option<f64>) -> Result<Option<f64>, Status> {
    match budget {
        Some(b) if !(b.is_finite() && b > 0.0) => Err(Status::invalid_argument(format!(
            "budget must be a positive finite number, got {b}"
        ))),
        other => Ok(other),
    }
}

/// Time kept back from the caller's deadline so the scheduler answers DEADLINE_EXCEEDED itself
/// before the server's own timeout layer cancels the call (tonic answers that with CANCELLED).
fn deadline_margin(total: Duration) -> Duration {
    (total / 10).min(Duration::from_millis(20))
}

/// What one expert call produced.
struct CallOutcome {
    result: Result<pb::AnswerResponse, Status>,
    replica: String,
    /// The call was never sent: the replica's slots were all taken when we got to it.
    not_sent: bool,
}

/// Status of a call skipped because its replica was at its concurrency limit.
const REPLICA_FULL: &str = "replica at its concurrency limit; not sent";

/// Calls `group`'s replica `replica` with the remaining deadline, holding one of its slots for
/// the duration, and records the outcome on the replica (PeakEWMA, errors, ejection, metrics).
async fn call_replica(
    group: &ExpertGroup,
    replica: usize,
    query: &Query,
    deadline: Option<Instant>,
    try_timeout: Duration,
) -> CallOutcome {
    let replica = &group.replicas[replica];
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let outcome = |result, not_sent| CallOutcome {
        result,
        replica: replica.address.clone(),
        not_sent,
    };
    if remaining.is_some_and(|r| r.is_zero()) {
        return outcome(Err(Status::deadline_exceeded("deadline passed")), true);
    }
    let Some(_slot) = replica.try_begin_call() else {
        return outcome(Err(Status::resource_exhausted(REPLICA_FULL)), true);
    };
    let mut call = Request::new(pb::AnswerRequest {
        question: query.question().to_owned(),
        context: query.context().to_owned(),
        id: query.id().map(str::to_owned),
    });
    // The caller's deadline, or the try timeout if it comes first (a hung replica must not hold
    // the request: the plan moves on to another replica).
    let wait = remaining.map_or(try_timeout, |r| r.min(try_timeout));
    let caller_limited = remaining.is_some_and(|r| r <= try_timeout);
    call.set_timeout(wait);
    let mut client = replica.client.clone();
    let started = Instant::now();
    // tonic's client enforces the grpc-timeout it sends too (CANCELLED "Timeout expired"), racing
    // the local timer: any failure once the wait is over is the wait's.
    let (result, upstream_message) = match tokio::time::timeout(wait, client.answer(call)).await {
        Ok(Ok(answer)) => (check_answer(answer.into_inner(), query), None),
        Ok(Err(status)) if started.elapsed() < wait => {
            let said = in_our_words(status.code());
            (Err(said), Some(status.message().to_owned()))
        }
        _ if caller_limited => (Err(Status::deadline_exceeded("deadline passed")), None),
        _ => (
            Err(Status::unavailable(format!(
                "no answer within the try timeout of {} ms",
                try_timeout.as_millis()
            ))),
            None,
        ),
    };
    let now = Instant::now();
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    if let Err(status) = &result {
        // One line per failed call (the request id is on the span); what the replica itself
        // said is logged, never returned.
        tracing::info!(
            expert = %group.entry.id,
            replica = %replica.address,
            code = code_name(code),
            message = upstream_message.as_deref().unwrap_or(status.message()),
            "expert call failed"
        );
    }
    if let Some(length) = replica.record_call(code, now - started, now) {
        tracing::warn!(
            expert = %group.entry.id,
            replica = %replica.address,
            code = code_name(code),
            ejected_ms = length.as_millis() as u64,
            "replica ejected after consecutive failures"
        );
    }
    outcome(result, false)
}

/// A failure the replica (or the connection to it) reported, in the scheduler's own words: the
/// code is kept, the upstream's message goes to the log only. Echoing it to callers would let
/// anyone who can ask read what hosts behind registered addresses say (connection errors, banners).
fn in_our_words(code: Code) -> Status {
    let said = match code {
        Code::NotFound => "the expert has no answer to this query",
        Code::Unavailable => "the replica could not be reached",
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            "the expert refused the query"
        }
        Code::ResourceExhausted => "the replica is overloaded",
        Code::DeadlineExceeded | Code::Cancelled => "the call ran out of time",
        _ => "the expert failed",
    };
    Status::new(code, said)
}

/// An answer whose span does not lie in the context is a broken expert, not an answer.
fn check_answer(answer: pb::AnswerResponse, query: &Query) -> Result<pb::AnswerResponse, Status> {
    if let Some(span) = &answer.span {
        // The context holds `span.end` characters if its character `span.end − 1` exists: walk
        // no further than the span (a full count would walk every context on every answer).
        let fits = span.end == 0 || query.context().chars().nth(span.end as usize - 1).is_some();
        if span.start > span.end || !fits {
            let chars = query.context().chars().count();
            return Err(Status::internal(format!(
                "malformed answer: span [{}, {}) outside the context of {chars} characters",
                span.start, span.end
            )));
        }
    }
    Ok(answer)
}

/// A probe's answer: the call made (with retries on other replicas), and its cost.
struct ProbeResult {
    answer: Option<pb::AnswerResponse>,
    call: pb::ProbeCall,
    fallbacks: Vec<pb::Fallback>,
    charged: f64,
}

/// Runs probe expert `group` (defer mode): its least-loaded available replica, retried on
/// another one on failure.
async fn run_probe(
    group: &ExpertGroup,
    query: &Query,
    deadline: Option<Instant>,
    tries: usize,
    seed: u64,
    try_timeout: Duration,
) -> ProbeResult {
    let now = Instant::now();
    let loads: Vec<ReplicaLoad> = group.loads(now);
    let single = [Candidate {
        cost: group.entry.cost,
        expected_cost: None,
        replicas: &loads,
    }];
    let params = DecisionParams {
        budget: None,
        max_attempts: tries,
        tries_per_expert: tries,
        seed,
        ..DecisionParams::default()
    };
    let mut fallbacks = Vec::new();
    let mut charged = 0.0;
    let attempts = decide(&single, &params)
        .map(|p| p.attempts)
        .unwrap_or_default();
    for attempt in attempts {
        let out = call_replica(group, attempt.replica, query, deadline, try_timeout).await;
        match out.result {
            Ok(answer) => {
                charged += group.entry.cost;
                group.entry.record_answer(group.entry.cost);
                return ProbeResult {
                    call: pb::ProbeCall {
                        expert_id: group.entry.id.clone(),
                        replica: out.replica,
                        text: answer.text.clone(),
                        code: "OK".into(),
                    },
                    answer: Some(answer),
                    fallbacks,
                    charged,
                };
            }
            Err(status) => {
                if charges_compute(status.code()) {
                    charged += group.entry.cost;
                    group.entry.charge(group.entry.cost);
                }
                fallbacks.push(fallback(group, &out.replica, &status));
                if !worth_another_try(status.code()) {
                    break;
                }
            }
        }
    }
    let code = fallbacks
        .last()
        .map_or("UNAVAILABLE".to_string(), |f| f.code.clone());
    ProbeResult {
        answer: None,
        call: pb::ProbeCall {
            expert_id: group.entry.id.clone(),
            replica: fallbacks
                .last()
                .map(|f| f.replica.clone())
                .unwrap_or_default(),
            text: String::new(),
            code,
        },
        fallbacks,
        charged,
    }
}

fn fallback(group: &ExpertGroup, replica: &str, status: &Status) -> pb::Fallback {
    group.entry.record_fallback(status.code());
    pb::Fallback {
        expert_id: group.entry.id.clone(),
        replica: replica.to_owned(),
        code: code_name(status.code()).into(),
        message: status.message().into(),
    }
}

/// Every available replica of an expert is one option; a probe that already answered is one
/// option needing no call.
const ANSWERED_PROBE: [ReplicaLoad; 1] = [ReplicaLoad::idle(0.0)];
const FAILED_PROBE: [ReplicaLoad; 1] = [ReplicaLoad {
    available: false,
    ..ReplicaLoad::idle(0.0)
}];

/// The header carrying a request id, accepted from the client and always returned.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The client's request id when it sent a usable one (1–64 visible ASCII characters), else a
/// fresh one from the request counter.
fn request_id<T>(request: &Request<T>, number: u64) -> String {
    request
        .metadata()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("{number:x}"), str::to_owned)
}

fn with_request_id<T>(mut response: Response<T>, id: &str) -> Response<T> {
    if let Ok(value) = id.parse() {
        response.metadata_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

fn status_with_request_id(mut status: Status, id: &str) -> Status {
    if let Ok(value) = id.parse() {
        status.metadata_mut().insert(REQUEST_ID_HEADER, value);
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
        let span = tracing::info_span!("ask", request_id = %request_id);
        let result = self
            .answer(
                request.into_inner(),
                number,
                request_id.clone(),
                started,
                deadline,
            )
            .instrument(span)
            .await;
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        metrics::counter!("l2d_asks_total", "code" => code_name(code)).increment(1);
        self.scheduler
            .ask_duration
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(answer) => Ok(with_request_id(Response::new(answer), &request_id)),
            Err(status) => Err(status_with_request_id(status, &request_id)),
        }
    }
}

impl RouterService {
    async fn answer(
        &self,
        msg: pb::AskRequest,
        number: u64,
        request_id: String,
        started: Instant,
        deadline: Option<Instant>,
    ) -> Result<pb::AskResponse, Status> {
        let config = &self.scheduler.config;
        let query = Query::new(msg.question, msg.context, msg.id, &config.limits)?;
        let budget = check_budget(msg.budget)?;
        let snapshot = self.scheduler.registry.snapshot();
        let policy = self.scheduler.policy();
        let lambda = policy.lambda();

        // Defer mode: the probes run first (concurrently) and are always charged.
        let probe_ids = policy.probes();
        let probe_groups: Vec<Option<usize>> = probe_ids
            .iter()
            .map(|id| snapshot.experts.iter().position(|g| &g.entry.id == id))
            .collect();
        let probe_cost: f64 = probe_groups
            .iter()
            .flatten()
            .map(|&g| snapshot.experts[g].entry.cost)
            .sum();
        if let Some(b) = budget
            && !probe_ids.is_empty()
            && b < probe_cost
        {
            return Err(Status::failed_precondition(format!(
                "the budget of {b} is below the cost of the policy's probes ({}: {probe_cost})",
                probe_ids.join(", ")
            )));
        }
        let probes: Vec<Option<ProbeResult>> =
            futures_util::future::join_all(probe_groups.iter().map(|g| async {
                match g {
                    Some(g) => Some(
                        run_probe(
                            &snapshot.experts[*g],
                            &query,
                            deadline,
                            config.tries_per_expert,
                            number,
                            config.try_timeout,
                        )
                        .await,
                    ),
                    None => None,
                }
            }))
            .await;
        let mut charged: f64 = probes.iter().flatten().map(|p| p.charged).sum();
        let probe_texts: Vec<Option<&str>> = probes
            .iter()
            .map(|p| {
                p.as_ref()
                    .and_then(|p| p.answer.as_ref())
                    .map(|a| a.text.as_str())
            })
            .collect();

        let metas: Vec<ExpertMeta<'_>> = snapshot
            .experts
            .iter()
            .map(|g| ExpertMeta {
                id: &g.entry.id,
                cost: g.entry.cost,
            })
            .collect();
        let mut scores = Vec::with_capacity(metas.len());
        policy.score(&query, &probe_texts, &metas, &mut scores);
        let now = Instant::now();
        let loads: Vec<Vec<ReplicaLoad>> = snapshot.experts.iter().map(|g| g.loads(now)).collect();
        let probe_of = |i: usize| probe_groups.iter().position(|g| *g == Some(i));
        let candidates: Vec<Candidate<'_>> = snapshot
            .experts
            .iter()
            .enumerate()
            .map(|(i, g)| match probe_of(i) {
                // A probe's answer is already paid for.
                Some(k) => Candidate {
                    cost: 0.0,
                    expected_cost: scores[i],
                    replicas: if probe_texts[k].is_some() {
                        &ANSWERED_PROBE
                    } else {
                        &FAILED_PROBE
                    },
                },
                None => Candidate {
                    cost: g.entry.cost,
                    expected_cost: scores[i],
                    replicas: &loads[i],
                },
            })
            .collect();
        let params = DecisionParams {
            budget: budget.map(|b| b - probe_cost),
            max_attempts: config.max_attempts,
            tries_per_expert: config.tries_per_expert,
            seed: number,
            explore: config.explore,
            load_weight: config.load_weight,
            ..DecisionParams::default()
        };
        let mut plan = decide(&candidates, &params).inspect_err(|e| {
            tracing::info!(request_id, %query, error = %e, "no expert can take the query");
        })?;
        let greedy = plan.chosen();
        let propensity = if config.explore > 0.0 {
            let (u, v) = uniform_pair(config.explore_seed, number);
            explore(&mut plan, &candidates, &params, u, v)
        } else {
            1.0
        };
        snapshot.experts[plan.chosen()].entry.record_decision();
        let mut decision = decision_record(&snapshot, &scores, &plan, &policy.identity().id);
        if plan.chosen() != greedy {
            decision.reason = format!(
                "exploring (epsilon {}): drew {} over the policy's choice {}",
                config.explore,
                snapshot.experts[plan.chosen()].entry.id,
                snapshot.experts[greedy].entry.id
            );
        }
        let log = |answered_by: Option<&str>, cost: f64| {
            if let Some(decisions) = &self.scheduler.decisions {
                decisions.record(&LoggedDecision {
                    request_id: request_id.clone(),
                    query_id: query.id().map(str::to_owned),
                    policy_id: policy.identity().id.clone(),
                    lambda,
                    eligible: plan
                        .ranked
                        .iter()
                        .map(|&i| snapshot.experts[i].entry.id.clone())
                        .collect(),
                    scores: snapshot
                        .experts
                        .iter()
                        .zip(&scores)
                        .map(|(g, s)| (g.entry.id.clone(), *s))
                        .collect(),
                    greedy: snapshot.experts[greedy].entry.id.clone(),
                    chosen: snapshot.experts[plan.chosen()].entry.id.clone(),
                    propensity,
                    epsilon: config.explore,
                    answered_by: answered_by.map(str::to_owned),
                    cost,
                });
            }
        };
        decision.lambda = lambda;
        if probe_of(plan.chosen()).is_some() {
            decision.reason = format!("keep the probe's answer: {}", decision.reason);
        }
        for p in probes.iter().flatten() {
            decision.fallbacks.extend(p.fallbacks.iter().cloned());
            decision.probes.push(p.call.clone());
        }
        tracing::debug!(
            target: "l2d::decision",
            request_id,
            query_id = query.id().unwrap_or(""),
            chosen = %decision.chosen_expert,
            lambda,
            scores = ?decision.scores.iter().map(|s| (s.expert_id.as_str(), s.expected_cost)).collect::<Vec<_>>(),
            "decision"
        );

        let mut skipped_full = 0;
        for attempt in &plan.attempts {
            let group = &snapshot.experts[attempt.expert];
            // Keeping a probe's answer needs no call.
            if let Some(k) = probe_of(attempt.expert)
                && let Some(answer) = probes[k].as_ref().and_then(|p| p.answer.clone())
            {
                let replica = probes[k]
                    .as_ref()
                    .map(|p| p.call.replica.clone())
                    .unwrap_or_default();
                self.scheduler.record_cost(charged);
                log(Some(&group.entry.id), charged);
                return Ok(answer_response(
                    answer, group, charged, decision, request_id, replica,
                ));
            }
            let out =
                call_replica(group, attempt.replica, &query, deadline, config.try_timeout).await;
            if out.not_sent {
                // Its slots filled after the decision: no compute spent, try the next option.
                skipped_full += 1;
                decision
                    .fallbacks
                    .push(fallback(group, &out.replica, &out.result.unwrap_err()));
                continue;
            }
            match out.result {
                Ok(answer) => {
                    charged += group.entry.cost;
                    group.entry.record_answer(group.entry.cost);
                    self.scheduler.record_cost(charged);
                    log(Some(&group.entry.id), charged);
                    tracing::debug!(
                        request_id,
                        expert = %group.entry.id,
                        replica = %out.replica,
                        fallbacks = decision.fallbacks.len(),
                        micros = started.elapsed().as_micros() as u64,
                        "answered"
                    );
                    return Ok(answer_response(
                        answer,
                        group,
                        charged,
                        decision,
                        request_id,
                        out.replica,
                    ));
                }
                Err(status) => {
                    if charges_compute(status.code()) {
                        charged += group.entry.cost;
                        group.entry.charge(group.entry.cost);
                    }
                    decision
                        .fallbacks
                        .push(fallback(group, &out.replica, &status));
                    // The expert's own server enforces the deadline we forwarded and answers
                    // CANCELLED ("Timeout expired") when it fires: past our deadline, any failure
                    // is the deadline's.
                    let past_deadline =
                        deadline.is_some_and(|d| Instant::now() + Duration::from_millis(1) >= d);
                    if status.code() == Code::DeadlineExceeded || past_deadline {
                        log(None, charged);
                        return Err(deadline_exceeded(&decision));
                    }
                    if !worth_another_try(status.code()) {
                        log(None, charged);
                        return Err(status);
                    }
                }
            }
        }
        log(None, charged);
        if skipped_full == plan.attempts.len() {
            // Every option filled up between the decision and the calls: shed, with a hint.
            let latencies = plan
                .attempts
                .iter()
                .filter_map(|a| loads[a.expert].get(a.replica).map(|r| r.rtt));
            return Err(resource_exhausted(
                format!(
                    "every replica the decision chose is at its concurrency limit ({} tried)",
                    skipped_full
                ),
                Duration::from_secs_f64(retry_after(latencies)),
            ));
        }
        Err(every_attempt_failed(&decision))
    }
}

fn answer_response(
    answer: pb::AnswerResponse,
    group: &ExpertGroup,
    charged: f64,
    decision: pb::Decision,
    request_id: String,
    replica: String,
) -> pb::AskResponse {
    pb::AskResponse {
        text: answer.text,
        expert_id: group.entry.id.clone(),
        cost: charged,
        decision: Some(decision),
        request_id,
        span: answer.span,
        score: answer.score,
        compute: answer.compute,
        replica,
    }
}

/// A call the expert itself answered with an error still spent its compute; a call that never
/// reached it (UNAVAILABLE) did not.
fn charges_compute(code: Code) -> bool {
    matches!(
        code,
        Code::NotFound | Code::Internal | Code::FailedPrecondition
    )
}

fn deadline_exceeded(decision: &pb::Decision) -> Status {
    Status::deadline_exceeded(format!(
        "deadline passed after {} expert call(s)",
        decision.fallbacks.len()
    ))
}

/// All attempts failed: their common code if they agree on NOT_FOUND (e.g. every replay expert
/// lacks the id), UNAVAILABLE otherwise. The message groups the failures by what they said.
fn every_attempt_failed(decision: &pb::Decision) -> Status {
    let fallbacks = &decision.fallbacks;
    let all_not_found = !fallbacks.is_empty() && fallbacks.iter().all(|f| f.code == "NOT_FOUND");
    let code = if all_not_found {
        Code::NotFound
    } else {
        Code::Unavailable
    };
    let mut groups: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for f in fallbacks {
        match groups
            .iter_mut()
            .find(|(code, message, _)| *code == f.code && *message == f.message)
        {
            Some((_, _, experts)) => experts.push(&f.expert_id),
            None => groups.push((&f.code, &f.message, vec![&f.expert_id])),
        }
    }
    let detail: Vec<String> = groups
        .iter()
        .map(|(code, message, experts)| format!("{code} from {}: {message}", experts.join(", ")))
        .collect();
    Status::new(
        code,
        format!(
            "every expert call failed ({} tried): {}",
            fallbacks.len(),
            detail.join("; ")
        ),
    )
}

fn decision_record(
    snapshot: &PoolSnapshot,
    scores: &[Option<f64>],
    plan: &Plan,
    policy_id: &str,
) -> pb::Decision {
    let score_of = |i: usize, group: &ExpertGroup| pb::ExpertScore {
        expert_id: group.entry.id.clone(),
        expected_cost: scores[i],
        cost: group.entry.cost,
        eligible: true,
        excluded_because: String::new(),
        load: plan.load[i],
    };
    let mut records: Vec<pb::ExpertScore> = plan
        .ranked
        .iter()
        .map(|&i| score_of(i, &snapshot.experts[i]))
        .collect();
    records.extend(plan.excluded.iter().map(|&(i, why)| pb::ExpertScore {
        eligible: false,
        excluded_because: why.as_str().into(),
        ..score_of(i, &snapshot.experts[i])
    }));
    let chosen = plan.chosen();
    let eligible = plan.ranked.len();
    let load = plan.load[chosen];
    let mut reason = match scores[chosen].filter(|s| s.is_finite()) {
        Some(s) if load > 0.0 => format!(
            "best policy score plus load ({s:.4} + {load:.4}) among {eligible} eligible experts"
        ),
        Some(s) => {
            format!("best policy score ({s:.4}) among {eligible} eligible experts")
        }
        None => format!("no policy score; cheapest of {eligible} eligible experts"),
    };
    if !plan.excluded.is_empty() {
        let excluded: Vec<String> = plan
            .excluded
            .iter()
            .map(|&(i, why)| format!("{} ({})", snapshot.experts[i].entry.id, why.as_str()))
            .collect();
        reason.push_str(&format!("; excluded: {}", excluded.join(", ")));
    }
    pb::Decision {
        policy_id: policy_id.to_owned(),
        chosen_expert: snapshot.experts[chosen].entry.id.clone(),
        reason,
        scores: records,
        fallbacks: Vec::new(),
        probes: Vec::new(),
        lambda: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_must_be_positive_and_finite() {
        assert_eq!(check_budget(None).unwrap(), None);
        assert_eq!(check_budget(Some(2.5)).unwrap(), Some(2.5));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = check_budget(Some(bad)).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn failures_that_agree_on_not_found_stay_not_found() {
        let fb = |code: &str| pb::Fallback {
            expert_id: code.to_lowercase(),
            replica: "127.0.0.1:1".into(),
            code: code.into(),
            message: "m".into(),
        };
        let mut d = pb::Decision {
            fallbacks: vec![fb("NOT_FOUND"), fb("NOT_FOUND")],
            ..Default::default()
        };
        let status = every_attempt_failed(&d);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.message(),
            "every expert call failed (2 tried): NOT_FOUND from not_found, not_found: m"
        );
        d.fallbacks.push(fb("UNAVAILABLE"));
        let status = every_attempt_failed(&d);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "every expert call failed (3 tried): NOT_FOUND from not_found, not_found: m; \
             UNAVAILABLE from unavailable: m"
        );
    }
}
