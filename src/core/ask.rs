//! The Ask algorithm as a state machine: which expert to call on which replica, in what order,
//! what each call costs, when to stop, and why.
//!
//! Pure: no clock, no I/O. The machine is built from a view of the pool taken once per request
//! (each expert's id, price and replica loads), the request's budget and remaining deadline, and
//! its random draws; it is given the policy as a scoring function. The shell drives it:
//!
//! ```text
//! let mut ask = Ask::new(view, probes, params, scorer)?;
//! loop {
//!     match ask.next_step() {
//!         Step::Call(call) => start `call` (concurrently with the others in flight),
//!         Step::Wait => wait for any call in flight; ask.record(id, result, time since start),
//!         Step::Done => break,
//!     }
//! }
//! let Finished { outcome, explanation } = ask.finish();
//! ```
//!
//! then derives the reply, the decision log record and the metrics from `explanation` alone.
//!
//! # The algorithm
//!
//! 1. **Probes** (defer mode): each of the policy's probe experts is called at once, all in
//!    parallel, on its best replica; a probe that fails in a way worth another try is retried on
//!    its next replica (up to `tries_per_expert`). A budget below the probes' prices is refused
//!    before anything is called.
//! 2. **Decision**: once every probe has ended, the policy scores every expert given the probes'
//!    answers; [`decide`] ranks the eligible ones (a probe that answered is a free option, one
//!    that failed is excluded) with the budget left after the probes; with ε-exploration the
//!    first expert may be drawn instead ([`explore`]), and its propensity kept.
//!
//!    A sequential policy (cascade mode, `stages > 0`) is asked again after each answer: while
//!    fewer than `stages` experts were asked, an unasked expert ranked first is called like a
//!    probe (a *stage*), and the decision is made again with its answer. Stage decisions never
//!    explore (the final decision may).
//!
//!    Every decision excludes experts over the budget left and, when others fit, experts whose
//!    expected completion is beyond the time left. A probe expected to finish after the
//!    deadline is not sent.
//! 3. **Answer**: the plan's attempts are made one at a time. Keeping a probe's answer needs no
//!    call. The first answer ends the request. A failure moves on to the next attempt, unless it
//!    cannot succeed elsewhere (a refused query) or the deadline has passed; then the best
//!    ranked answer already seen, if any, is kept rather than failing the request.
//!
//! # Charging
//!
//! A call is charged its expert's price when the expert ran: it answered, or it failed after
//! running ([`Failure::charges_compute`]). An expert that could not take the query (no
//! recording, beyond its limits) did no work and is not charged. A probe's answer kept as the
//! final one is not charged again. A call is not sent when the price of everything that could
//! still be charged, itself included, would exceed the budget: a budget is never exceeded.

use super::call::{Failure, Miss, NotSent};
use super::capability::Unfit;
use super::decision::{
    Attempt, Candidate, DecisionError, DecisionParams, Exclusion, Plan, ReplicaLoad, decide,
    expected_completion, explore, retry_after,
};
use super::policy::Observed;
use std::fmt;
use std::time::Duration;

/// One expert of the pool as the request sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertView<'a> {
    pub id: &'a str,
    /// What one call is charged.
    pub price: f64,
    /// A replica that cannot take this query is given here as unavailable.
    pub replicas: &'a [ReplicaLoad],
    /// Why the expert cannot take this query, when no replica of it can: it is not asked.
    pub unfit: Option<Unfit>,
}

/// What the machine needs of an answer: its text, which the policy reads for probes.
pub trait AnswerText {
    fn text(&self) -> &str;
}

impl AnswerText for String {
    fn text(&self) -> &str {
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AskParams {
    /// The most the request may be charged, in price units (validated positive at the edge).
    pub budget: Option<f64>,
    /// Time the request has, counted from its start; `None` for no deadline.
    pub deadline: Option<Duration>,
    pub max_attempts: usize,
    pub tries_per_expert: usize,
    pub wait_price: f64,
    /// ε of ε-greedy exploration; 0 for none.
    pub explore: f64,
    /// Random bits of this request (replica choice and tie-breaks).
    pub seed: u64,
    /// Two uniform draws in [0, 1) for exploration.
    pub draws: (f64, f64),
    /// A sequential policy's stages (see the module docs); 0 for a policy that decides once.
    pub stages: usize,
}

impl Default for AskParams {
    fn default() -> Self {
        let d = DecisionParams::default();
        Self {
            budget: None,
            deadline: None,
            max_attempts: d.max_attempts,
            tries_per_expert: d.tries_per_expert,
            wait_price: d.wait_price,
            explore: 0.0,
            seed: 0,
            draws: (0.0, 0.0),
            stages: 0,
        }
    }
}

/// What a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Running probe number `k`: an index into the probes the machine was given, then into the
    /// experts a sequential policy asked ([`Explanation::probes`]).
    Probe(usize),
    /// Trying to answer the query.
    Answer,
}

/// A call the shell is to make. `id` is how its result is reported back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub id: usize,
    pub expert: usize,
    pub replica: usize,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start this call; there may be more to start before waiting.
    Call(Call),
    /// Wait for a call in flight to end and [`Ask::record`] it.
    Wait,
    /// The request has its outcome: [`Ask::finish`].
    Done,
}

/// How a call ended, as the shell reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum CallResult<A> {
    Answered(A),
    Missed(Miss),
}

/// One call of the request (made, or planned and not sent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallRecord {
    pub expert: usize,
    pub replica: usize,
    pub role: Role,
    /// `None` while in flight; `Some(Ok(()))` when it answered.
    pub end: Option<Result<(), Miss>>,
    /// What the call was charged.
    pub charged: f64,
}

/// One probe of the request.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRecord {
    pub expert: usize,
    /// Its answer's text, when it answered.
    pub text: Option<String>,
    /// The replica of its last call, if any was planned.
    pub replica: Option<usize>,
    /// How its last call missed (`None` when it answered or no call was planned).
    pub miss: Option<Miss>,
}

/// The decision the request reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    /// The policy's score per expert of the view, after the probes.
    pub scores: Vec<Option<f64>>,
    /// Ranking, exclusions, load terms and attempts (after exploration).
    pub plan: Plan,
    /// The policy's own first choice.
    pub greedy: usize,
    /// The expert tried first.
    pub chosen: usize,
    /// Probability with which `chosen` was drawn.
    pub propensity: f64,
    pub epsilon: f64,
    /// `chosen` is a probe whose answer is kept.
    pub kept_probe: bool,
}

/// Why the expert that answered is not the one the policy's scores alone preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    /// The preferred expert cannot take the query (no recording, context, language).
    Capability,
    /// It costs more than the budget left.
    Budget,
    /// None of its replicas can be sent to: ejected, lease expired, or its probe failed.
    Unavailable,
    /// Its replicas are at their concurrency limit, or the price of waiting for them ranked
    /// another expert first.
    Load,
    /// It is not expected to answer within the deadline.
    Deadline,
    /// Exploration drew another expert.
    Exploration,
    /// It was chosen, but every call to it failed and another expert answered.
    Fallback,
}

impl Override {
    /// Every reason as a metric label, in [`Override::index`] order.
    pub const LABELS: [&'static str; 7] = [
        "capability",
        "budget",
        "unavailable",
        "load",
        "deadline",
        "exploration",
        "fallback",
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

impl Chosen {
    /// Why `served` (the expert whose answer was returned) is not the one the scores alone
    /// preferred; `None` when it is, or when nothing was served.
    pub fn override_reason(&self, served: Option<usize>) -> Option<Override> {
        let served = served?;
        let preferred = self.plan.preferred;
        if self.greedy != preferred {
            let why = self
                .plan
                .excluded
                .iter()
                .find(|&&(i, _)| i == preferred)
                .map(|&(_, why)| why);
            return Some(match why {
                Some(Exclusion::Unfit(_)) => Override::Capability,
                Some(Exclusion::OverBudget) => Override::Budget,
                Some(Exclusion::NoAvailableReplica) => Override::Unavailable,
                Some(Exclusion::TooSlow) => Override::Deadline,
                Some(Exclusion::Saturated) | None => Override::Load,
            });
        }
        if self.chosen != self.greedy {
            return Some(Override::Exploration);
        }
        (served != self.chosen).then_some(Override::Fallback)
    }
}

/// Everything the request did and why: the one source of the reply's decision, the decision log
/// and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The probes, then the experts asked at each stage of a sequential policy.
    pub probes: Vec<ProbeRecord>,
    /// A sequential policy's decisions that asked an expert, in order (the last one asked
    /// `probes[probes.len() - stages.len() + k]`).
    pub stages: Vec<Chosen>,
    /// Every call, in the order it was planned.
    pub calls: Vec<CallRecord>,
    /// `None` when the request ended before a decision.
    pub decision: Option<Chosen>,
    /// The sum of the calls' charges.
    pub charged: f64,
}

impl Explanation {
    /// The calls that did not answer, the probes' first (probe by probe), then the answer walk's.
    pub fn misses(&self) -> impl Iterator<Item = (&CallRecord, Miss)> {
        let probes = (0..self.probes.len())
            .flat_map(move |k| self.calls.iter().filter(move |c| c.role == Role::Probe(k)));
        let answers = self.calls.iter().filter(|c| c.role == Role::Answer);
        probes.chain(answers).filter_map(|c| match c.end {
            Some(Err(miss)) => Some((c, miss)),
            _ => None,
        })
    }

    /// Why the first expert was chosen, in words; for a sequential policy, each stage's choice
    /// first. Written into one string (it goes out with every answer).
    pub fn reason(&self, view: &[ExpertView<'_>]) -> String {
        use fmt::Write;
        let Some(d) = &self.decision else {
            return String::new();
        };
        let mut reason = String::with_capacity(64 * (self.stages.len() + 1));
        for (k, stage) in self.stages.iter().enumerate() {
            let _ = write!(reason, "stage {}: ask {}: ", k + 1, view[stage.chosen].id);
            why(&mut reason, stage, view);
            reason.push_str("; ");
        }
        if d.kept_probe {
            if self.stages.is_empty() {
                reason.push_str("keep the probe's answer: ");
            } else {
                let _ = write!(reason, "keep {}'s answer: ", view[d.chosen].id);
            }
        }
        why(&mut reason, d, view);
        reason
    }
}

/// Why `d` chose its first expert, in words, appended to `out`.
fn why(out: &mut String, d: &Chosen, view: &[ExpertView<'_>]) {
    use fmt::Write;
    let id = |i: usize| view[i].id;
    if d.chosen != d.greedy {
        let _ = write!(
            out,
            "exploring (epsilon {}): drew {} over the policy's choice {}",
            d.epsilon,
            id(d.chosen),
            id(d.greedy)
        );
        return;
    }
    let eligible = |out: &mut String| match d.plan.ranked.len() {
        1 => out.push_str("the only eligible expert"),
        n => {
            out.push_str(itoa::Buffer::new().format(n));
            out.push_str(" eligible experts");
        }
    };
    let load = d.plan.load[d.chosen];
    match d.scores[d.chosen].filter(|s| s.is_finite()) {
        // Waiting priced below the fourth decimal is left out of the words.
        Some(s) if load >= 0.000_05 => {
            out.push_str("best policy score plus waiting (");
            push_fixed4(out, s);
            out.push_str(" + ");
            push_fixed4(out, load);
            out.push_str(") among ");
            eligible(out);
        }
        Some(s) => {
            out.push_str("best policy score (");
            push_fixed4(out, s);
            out.push_str(") among ");
            eligible(out);
        }
        None if d.plan.ranked.len() == 1 => {
            out.push_str("no policy score; the only eligible expert");
        }
        None => {
            out.push_str("no policy score; cheapest of ");
            eligible(out);
        }
    }
    if !d.plan.excluded.is_empty() {
        let excluded = d.plan.excluded.iter().map(|&(i, why)| (why, id(i)));
        out.push_str("; excluded: ");
        out.push_str(&describe_exclusions(excluded));
    }
}

/// "a, b (why), c (other reason)": experts grouped by reason, in order of first appearance.
fn describe_exclusions<'a>(excluded: impl Iterator<Item = (Exclusion, &'a str)>) -> String {
    let mut groups: Vec<(Exclusion, Vec<&str>)> = Vec::new();
    for (why, id) in excluded {
        match groups.iter_mut().find(|(w, _)| *w == why) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((why, vec![id])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(why, ids)| format!("{} ({why})", ids.join(", ")))
        .collect();
    parts.join(", ")
}

/// Appends `x` with four decimals, as `{:.4}` writes it, without the exact float-to-decimal
/// algorithm `{:.4}` runs nor the formatting machinery (the reason is written on every
/// request). Rounds half away from zero on the scaled binary value, which can differ from
/// `{:.4}` in the last digit at exact halves.
fn push_fixed4(out: &mut String, x: f64) {
    if !x.is_finite() || x.abs() >= 1e14 {
        use fmt::Write;
        let _ = write!(out, "{x:.4}");
        return;
    }
    let scaled = (x.abs() * 1e4).round() as u64;
    if x.is_sign_negative() {
        out.push('-');
    }
    out.push_str(itoa::Buffer::new().format(scaled / 10_000));
    out.push('.');
    let fraction = scaled % 10_000;
    for unit in [1000, 100, 10, 1] {
        out.push(char::from(b'0' + (fraction / unit % 10) as u8));
    }
}

/// An answer, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered<A> {
    pub answer: A,
    pub expert: usize,
    pub replica: usize,
    /// A probe's answer kept (no call was made for it after the decision).
    pub kept_probe: bool,
}

/// Why a request ended without an answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AskError {
    #[error("budget must be a positive finite number, got {0}")]
    InvalidBudget(f64),
    #[error("the budget of {budget} is below the cost of the policy's probes ({probes}: {cost})")]
    ProbesOverBudget {
        budget: f64,
        cost: f64,
        probes: String,
    },
    #[error(transparent)]
    Decision(#[from] DecisionError),
    #[error("deadline passed after {calls} expert call(s)")]
    DeadlinePassed { calls: usize },
    /// A failure that would be the same everywhere.
    #[error("{0}")]
    Refused(Failure),
    #[error("every replica the decision chose is at its concurrency limit ({tried} tried)")]
    EveryReplicaFull {
        tried: usize,
        /// Seconds until a slot is likely free.
        retry_after: f64,
    },
    #[error(
        "every expert call failed ({tried} tried): {}",
        describe_groups(groups)
    )]
    EveryCallFailed {
        /// Every call missed for want of an answer (e.g. no replay expert has the query).
        no_answer: bool,
        tried: usize,
        /// The misses grouped by kind, with the experts that had each, in order of first
        /// appearance.
        groups: Vec<(Miss, Vec<String>)>,
    },
    #[error("no expert can take this query: {experts}")]
    NoneCanTake {
        /// Every expert lacks a recording of it (rather than, say, a long enough context window).
        not_held: bool,
        /// The experts and why, grouped by reason.
        experts: String,
    },
    #[error("the request ended before its calls did")]
    Unfinished,
}

/// The request's outcome (exactly one) and its explanation.
#[derive(Debug)]
pub struct Finished<A> {
    pub outcome: Result<Answered<A>, AskError>,
    pub explanation: Explanation,
}

struct ProbeRun<A> {
    attempts: Vec<Attempt>,
    next: usize,
    in_flight: bool,
    done: bool,
    answer: Option<A>,
}

enum Phase {
    Probing,
    Answering { next: usize },
    Done,
}

/// A relative slack on the budget comparison, so that prices summing to the budget exactly in
/// decimal (0.1 + 0.2) are not refused by binary rounding.
fn fits(total: f64, budget: Option<f64>) -> bool {
    budget.is_none_or(|b| total <= b + b.abs() * 1e-12)
}

/// The machine of one request. See the module documentation.
pub struct Ask<'v, A, S> {
    view: &'v [ExpertView<'v>],
    params: AskParams,
    scorer: S,
    probes: Vec<ProbeRun<A>>,
    probe_experts: Vec<usize>,
    explanation: Explanation,
    /// The latest time a call ended, counted from the request's start.
    elapsed: Duration,
    phase: Phase,
    in_flight: usize,
    /// Prices of the calls in flight that may yet be charged.
    reserved: f64,
    outcome: Option<Result<Answered<A>, AskError>>,
}

impl<'v, A, S> Ask<'v, A, S>
where
    A: AnswerText,
    S: FnMut(&[Observed<'_>], &mut Vec<Option<f64>>),
{
    /// A request over `view`: `probes` are indices into it (the policy's probe experts present
    /// in the pool, in the policy's order); `scorer` fills one score per expert of the view
    /// given the experts asked so far and their answers (`None` for one that failed).
    pub fn new(
        view: &'v [ExpertView<'v>],
        probes: &[usize],
        params: AskParams,
        scorer: S,
    ) -> Result<Self, AskError> {
        if let Some(b) = params.budget
            && !(b.is_finite() && b > 0.0)
        {
            return Err(AskError::InvalidBudget(b));
        }
        // The probes that could take the query: the others will not be called or charged.
        let callable: Vec<usize> = probes
            .iter()
            .copied()
            .filter(|&p| view[p].unfit.is_none())
            .collect();
        let probe_cost: f64 = callable.iter().map(|&p| view[p].price).sum();
        if let Some(budget) = params.budget
            && !callable.is_empty()
            && budget < probe_cost
        {
            let ids: Vec<&str> = callable.iter().map(|&p| view[p].id).collect();
            return Err(AskError::ProbesOverBudget {
                budget,
                cost: probe_cost,
                probes: ids.join(", "),
            });
        }
        // A probe that cannot take the query, or cannot answer in time, is not sent: the decision
        // goes on without it.
        let skipped: Vec<Option<NotSent>> = probes
            .iter()
            .map(|&p| {
                if view[p].unfit.is_some() {
                    Some(NotSent::CannotTake)
                } else if params
                    .deadline
                    .is_some_and(|d| expected_completion(view[p].replicas) > d.as_secs_f64())
                {
                    Some(NotSent::TooSlow)
                } else {
                    None
                }
            })
            .collect();
        let runs = probes
            .iter()
            .zip(&skipped)
            .map(|(&p, skip)| ProbeRun {
                attempts: if skip.is_some() {
                    Vec::new()
                } else {
                    probe_attempts(&view[p], &params)
                },
                next: 0,
                in_flight: false,
                done: false,
                answer: None,
            })
            .collect();
        let records = probes
            .iter()
            .zip(&skipped)
            .map(|(&expert, skip)| ProbeRecord {
                expert,
                text: None,
                replica: None,
                miss: skip.map(Miss::NotSent),
            })
            .collect();
        Ok(Self {
            view,
            params,
            scorer,
            probes: runs,
            probe_experts: probes.to_vec(),
            explanation: Explanation {
                probes: records,
                stages: Vec::new(),
                calls: Vec::new(),
                decision: None,
                charged: 0.0,
            },
            phase: Phase::Probing,
            elapsed: Duration::ZERO,
            in_flight: 0,
            reserved: 0.0,
            outcome: None,
        })
    }

    /// What to do next.
    pub fn next_step(&mut self) -> Step {
        loop {
            match self.phase {
                Phase::Done => return Step::Done,
                Phase::Probing => {
                    if let Some(call) = self.next_probe_call() {
                        return Step::Call(call);
                    }
                    if self.in_flight > 0 {
                        return Step::Wait;
                    }
                    self.decide();
                }
                Phase::Answering { next } => {
                    if self.in_flight > 0 {
                        return Step::Wait;
                    }
                    if let Some(call) = self.next_answer_call(next) {
                        return Step::Call(call);
                    }
                }
            }
        }
    }

    /// Reports how call `id` ended, `at` this long after the request started. A call reported
    /// twice, or one never issued, is ignored.
    pub fn record(&mut self, id: usize, result: CallResult<A>, at: Duration) {
        let Some(call) = self.explanation.calls.get(id).copied() else {
            return;
        };
        if call.end.is_some() {
            return;
        }
        self.in_flight -= 1;
        self.elapsed = self.elapsed.max(at);
        let price = self.view[call.expert].price;
        self.reserved = (self.reserved - price).max(0.0);
        let (end, answer) = match result {
            CallResult::Answered(a) => (Ok(()), Some(a)),
            CallResult::Missed(m) => (Err(m), None),
        };
        let charged = match end {
            Ok(()) => price,
            Err(m) if m.charges_compute() => price,
            Err(_) => 0.0,
        };
        self.explanation.charged += charged;
        let record = &mut self.explanation.calls[id];
        record.end = Some(end);
        record.charged = charged;
        match call.role {
            Role::Probe(k) => {
                let run = &mut self.probes[k];
                let probe = &mut self.explanation.probes[k];
                run.in_flight = false;
                probe.replica = Some(call.replica);
                match (end, answer) {
                    (Ok(()), Some(a)) => {
                        probe.text = Some(a.text().to_owned());
                        probe.miss = None;
                        run.answer = Some(a);
                        run.done = true;
                    }
                    (Err(m), _) => {
                        probe.miss = Some(m);
                        run.done |= !m.worth_another_try();
                    }
                    (Ok(()), None) => unreachable!("an answer always comes with its value"),
                }
            }
            Role::Answer => match (end, answer) {
                (Ok(()), Some(answer)) => self.finish_with(Ok(Answered {
                    answer,
                    expert: call.expert,
                    replica: call.replica,
                    kept_probe: false,
                })),
                (Err(m), _) => {
                    let past_deadline = self
                        .params
                        .deadline
                        .is_some_and(|d| at + Duration::from_millis(1) >= d);
                    let deadline = matches!(
                        m,
                        Miss::Failed(Failure::DeadlinePassed)
                            | Miss::NotSent(NotSent::DeadlinePassed)
                    );
                    if deadline || past_deadline {
                        // An answer already seen needs no time: the best one ranked is kept
                        // rather than failing the request.
                        if let Some(kept) = self.best_answer_seen() {
                            return self.finish_with(Ok(kept));
                        }
                        let calls = self.explanation.misses().count();
                        self.finish_with(Err(AskError::DeadlinePassed { calls }));
                    } else if let Miss::Failed(f) = m
                        && !f.worth_another_try()
                    {
                        self.finish_with(Err(AskError::Refused(f)));
                    }
                }
                (Ok(()), None) => unreachable!("an answer always comes with its value"),
            },
        }
    }

    /// The outcome and the explanation. Before [`Step::Done`], the outcome is
    /// [`AskError::Unfinished`].
    pub fn finish(self) -> Finished<A> {
        Finished {
            outcome: self.outcome.unwrap_or(Err(AskError::Unfinished)),
            explanation: self.explanation,
        }
    }

    /// The charge of everything charged or in flight, plus `price`, fits the budget.
    fn affordable(&self, price: f64) -> bool {
        fits(
            self.explanation.charged + self.reserved + price,
            self.params.budget,
        )
    }

    fn issue(&mut self, expert: usize, replica: usize, role: Role) -> Call {
        let id = self.explanation.calls.len();
        self.explanation.calls.push(CallRecord {
            expert,
            replica,
            role,
            end: None,
            charged: 0.0,
        });
        self.in_flight += 1;
        self.reserved += self.view[expert].price;
        Call {
            id,
            expert,
            replica,
            role,
        }
    }

    fn not_sent(&mut self, expert: usize, replica: usize, role: Role, why: NotSent) {
        self.explanation.calls.push(CallRecord {
            expert,
            replica,
            role,
            end: Some(Err(Miss::NotSent(why))),
            charged: 0.0,
        });
    }

    fn next_probe_call(&mut self) -> Option<Call> {
        for k in 0..self.probes.len() {
            let expert = self.probe_experts[k];
            if !self.probes[k].done && !self.probes[k].in_flight {
                let run = &mut self.probes[k];
                let Some(&attempt) = run.attempts.get(run.next) else {
                    run.done = true;
                    continue;
                };
                run.next += 1;
                self.explanation.probes[k].replica = Some(attempt.replica);
                if !self.affordable(self.view[expert].price) {
                    // Its other replicas cost the same: the probe ends here.
                    self.not_sent(expert, attempt.replica, Role::Probe(k), NotSent::OverBudget);
                    self.explanation.probes[k].miss = Some(Miss::NotSent(NotSent::OverBudget));
                    self.probes[k].done = true;
                    continue;
                }
                self.probes[k].in_flight = true;
                return Some(self.issue(expert, attempt.replica, Role::Probe(k)));
            }
        }
        None
    }

    /// Scores with the answers seen, plans; then asks the next stage, or explores and answers.
    fn decide(&mut self) {
        let observed: Vec<Observed<'_>> = self
            .probes
            .iter()
            .zip(&self.probe_experts)
            .map(|(p, &e)| Observed {
                expert: self.view[e].id,
                answer: p.answer.as_ref().map(AnswerText::text),
            })
            .collect();
        let mut scores = Vec::with_capacity(self.view.len());
        (self.scorer)(&observed, &mut scores);
        drop(observed);
        scores.resize(self.view.len(), None);
        const ANSWERED_PROBE: [ReplicaLoad; 1] = [ReplicaLoad::idle(0.0)];
        const FAILED_PROBE: [ReplicaLoad; 1] = [ReplicaLoad {
            available: false,
            ..ReplicaLoad::idle(0.0)
        }];
        let candidates: Vec<Candidate<'_>> = self
            .view
            .iter()
            .enumerate()
            .map(
                |(i, e)| match self.probe_experts.iter().position(|&p| p == i) {
                    // An answer seen is already paid for: a free option, or none.
                    Some(k) => Candidate {
                        cost: 0.0,
                        expected_cost: scores[i],
                        replicas: if self.probes[k].answer.is_some() {
                            &ANSWERED_PROBE
                        } else {
                            &FAILED_PROBE
                        },
                        unfit: e.unfit,
                    },
                    None => Candidate {
                        cost: e.price,
                        expected_cost: scores[i],
                        replicas: e.replicas,
                        unfit: e.unfit,
                    },
                },
            )
            .collect();
        let staging = self.explanation.stages.len() < self.params.stages;
        let params = DecisionParams {
            budget: self.params.budget.map(|b| b - self.explanation.charged),
            max_attempts: self.params.max_attempts,
            tries_per_expert: self.params.tries_per_expert,
            seed: self.params.seed,
            explore: self.params.explore,
            wait_price: self.params.wait_price,
            time_left: self
                .params
                .deadline
                .map(|d| d.saturating_sub(self.elapsed).as_secs_f64()),
            ..DecisionParams::default()
        };
        let mut plan = match decide(&candidates, &params) {
            Ok(plan) => plan,
            Err(DecisionError::NoneCanTake) => {
                let error = self.none_can_take();
                return self.finish_with(Err(error));
            }
            // Out of time, nothing else matters: a full pool would say "retry", which cannot
            // help this request.
            Err(DecisionError::Saturated { .. } | DecisionError::NoAvailableReplica { .. })
                if self.out_of_time() =>
            {
                let calls = self.explanation.misses().count();
                return self.finish_with(Err(AskError::DeadlinePassed { calls }));
            }
            Err(e) => return self.finish_with(Err(e.into())),
        };
        let greedy = plan.chosen();
        if staging && !self.probe_experts.contains(&greedy) {
            // Ask it, then decide again with its answer.
            self.probe_experts.push(greedy);
            self.probes.push(ProbeRun {
                attempts: probe_attempts(&self.view[greedy], &self.params),
                next: 0,
                in_flight: false,
                done: false,
                answer: None,
            });
            self.explanation.probes.push(ProbeRecord {
                expert: greedy,
                text: None,
                replica: None,
                miss: None,
            });
            self.explanation.stages.push(Chosen {
                scores,
                greedy,
                chosen: greedy,
                propensity: 1.0,
                epsilon: 0.0,
                kept_probe: false,
                plan,
            });
            return;
        }
        let propensity = if params.explore > 0.0 {
            let (u, v) = self.params.draws;
            explore(&mut plan, &candidates, &params, u, v)
        } else {
            1.0
        };
        let chosen = plan.chosen();
        self.explanation.decision = Some(Chosen {
            scores,
            greedy,
            chosen,
            propensity,
            epsilon: params.explore,
            kept_probe: self.probe_experts.contains(&chosen),
            plan,
        });
        self.phase = Phase::Answering { next: 0 };
    }

    /// The answer seen (a probe's or a stage's) the decision ranked best, taken out.
    fn best_answer_seen(&mut self) -> Option<Answered<A>> {
        let ranked = &self.explanation.decision.as_ref()?.plan.ranked;
        let (k, expert) = ranked.iter().find_map(|&e| {
            let k = self.probe_experts.iter().position(|&p| p == e)?;
            self.probes[k].answer.is_some().then_some((k, e))
        })?;
        Some(Answered {
            answer: self.probes[k].answer.take()?,
            expert,
            replica: self.explanation.probes[k].replica.unwrap_or(0),
            kept_probe: true,
        })
    }

    fn next_answer_call(&mut self, next: usize) -> Option<Call> {
        let Some(decision) = &self.explanation.decision else {
            self.finish_with(Err(AskError::Unfinished));
            return None;
        };
        let Some(&attempt) = decision.plan.attempts.get(next) else {
            let error = self.exhausted();
            self.finish_with(Err(error));
            return None;
        };
        self.phase = Phase::Answering { next: next + 1 };
        let (expert, replica) = (attempt.expert, attempt.replica);
        if let Some(k) = self.probe_experts.iter().position(|&p| p == expert) {
            // Keeping a probe's answer needs no call (a failed probe is never in the plan).
            if let Some(answer) = self.probes[k].answer.take() {
                let replica = self.explanation.probes[k].replica.unwrap_or(0);
                self.finish_with(Ok(Answered {
                    answer,
                    expert,
                    replica,
                    kept_probe: true,
                }));
            }
            return None;
        }
        if !self.affordable(self.view[expert].price) {
            self.not_sent(expert, replica, Role::Answer, NotSent::OverBudget);
            return None;
        }
        Some(self.issue(expert, replica, Role::Answer))
    }

    /// The error when no expert of the pool can take the query: which could not, and why.
    fn none_can_take(&self) -> AskError {
        let reasons: Vec<(Exclusion, &str)> = self
            .view
            .iter()
            .filter_map(|e| Some((Exclusion::Unfit(e.unfit?), e.id)))
            .collect();
        AskError::NoneCanTake {
            not_held: reasons
                .iter()
                .all(|(why, _)| *why == Exclusion::Unfit(Unfit::NotHeld)),
            experts: describe_exclusions(reasons.into_iter()),
        }
    }

    /// The deadline has passed, or a call missed for want of time: a later failure to find a
    /// free replica is the deadline's.
    fn out_of_time(&self) -> bool {
        let passed = self
            .params
            .deadline
            .is_some_and(|d| self.elapsed + Duration::from_millis(1) >= d);
        passed
            || self.explanation.misses().any(|(_, m)| {
                matches!(
                    m,
                    Miss::Failed(Failure::DeadlinePassed) | Miss::NotSent(NotSent::DeadlinePassed)
                )
            })
    }

    /// The error once every attempt of the plan missed.
    fn exhausted(&self) -> AskError {
        let answers: Vec<&CallRecord> = self
            .explanation
            .calls
            .iter()
            .filter(|c| c.role == Role::Answer)
            .collect();
        let full = |c: &CallRecord| c.end == Some(Err(Miss::NotSent(NotSent::ReplicaFull)));
        let attempts = self
            .explanation
            .decision
            .as_ref()
            .map_or(0, |d| d.plan.attempts.len());
        if self.out_of_time() {
            let calls = self.explanation.misses().count();
            return AskError::DeadlinePassed { calls };
        }
        if attempts > 0 && answers.iter().filter(|c| full(c)).count() == attempts {
            // Every option filled up between the view and the calls: shed, with a hint.
            let latencies = answers
                .iter()
                .filter_map(|c| self.view[c.expert].replicas.get(c.replica).map(|r| r.rtt));
            return AskError::EveryReplicaFull {
                tried: attempts,
                retry_after: retry_after(latencies),
            };
        }
        let misses: Vec<(&CallRecord, Miss)> = self.explanation.misses().collect();
        let no_answer = !misses.is_empty()
            && misses
                .iter()
                .all(|(_, m)| *m == Miss::Failed(Failure::NoAnswer));
        // The failures grouped by what they were, with the experts that had each.
        let mut groups: Vec<(Miss, Vec<String>)> = Vec::new();
        for (call, miss) in &misses {
            let id = self.view[call.expert].id.to_owned();
            match groups.iter_mut().find(|(m, _)| m == miss) {
                Some((_, ids)) => ids.push(id),
                None => groups.push((*miss, vec![id])),
            }
        }
        AskError::EveryCallFailed {
            no_answer,
            tried: misses.len(),
            groups,
        }
    }

    fn finish_with(&mut self, outcome: Result<Answered<A>, AskError>) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
        self.phase = Phase::Done;
    }
}

fn describe_groups(groups: &[(Miss, Vec<String>)]) -> String {
    let parts: Vec<String> = groups
        .iter()
        .map(|(miss, ids)| format!("{}: {miss}", ids.join(", ")))
        .collect();
    parts.join("; ")
}

/// A probe's calls: its best usable replicas, one try per replica, as [`decide`] orders them for
/// an expert alone.
fn probe_attempts(expert: &ExpertView<'_>, params: &AskParams) -> Vec<Attempt> {
    let single = [Candidate {
        cost: expert.price,
        expected_cost: None,
        replicas: expert.replicas,
        unfit: None,
    }];
    let tries = params.tries_per_expert;
    let probe = DecisionParams {
        budget: None,
        max_attempts: tries,
        tries_per_expert: tries,
        seed: params.seed,
        ..DecisionParams::default()
    };
    decide(&single, &probe)
        .map(|p| p.attempts)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// How the test pool answers one call: the kind of ending and when (ms after the start).
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Script {
        Answer,
        Fail(Failure),
        Full,
    }

    fn arb_script() -> impl Strategy<Value = Script> {
        prop_oneof![
            3 => Just(Script::Answer),
            1 => Just(Script::Fail(Failure::NoAnswer)),
            1 => Just(Script::Fail(Failure::Unreachable)),
            1 => Just(Script::Fail(Failure::Broken)),
            1 => Just(Script::Fail(Failure::Declined)),
            1 => Just(Script::Fail(Failure::Refused)),
            1 => Just(Script::Fail(Failure::Dropped)),
            1 => Just(Script::Fail(Failure::DeadlinePassed)),
            1 => Just(Script::Full),
        ]
    }

    /// The failures the request pays for: the expert ran on the query (an independent statement
    /// of the rule; one that could not take the query is not charged).
    fn ran(f: Failure) -> bool {
        matches!(f, Failure::Broken | Failure::Malformed { .. })
    }

    #[derive(Debug, Clone)]
    struct Case {
        prices: Vec<f64>,
        replicas: Vec<Vec<ReplicaLoad>>,
        scores: Vec<Option<f64>>,
        probes: Vec<usize>,
        params: AskParams,
        /// Per call, in the order calls are issued: how it ends, when, and which call in
        /// flight ends next (an index into those in flight).
        script: Vec<(Script, u64, usize)>,
    }

    fn arb_case() -> impl Strategy<Value = Case> {
        let expert = (
            0.5f64..100.0,
            prop::option::of(0.0f64..1.0),
            prop::collection::vec(
                (
                    0u32..4,
                    prop_oneof![1u32..4, Just(u32::MAX)],
                    0.001f64..0.1,
                    any::<bool>(),
                ),
                0..4,
            ),
        );
        (
            prop::collection::vec(expert, 1..6),
            prop::collection::vec(0usize..6, 0..3),
            prop::option::of(0.5f64..250.0),
            prop::option::of(1u64..400),
            1usize..6,
            1usize..3,
            prop_oneof![Just(0.0), Just(0.2), Just(1.0)],
            (any::<u64>(), 0.0f64..1.0, 0.0f64..1.0),
            prop::collection::vec((arb_script(), 0u64..500, 0usize..4), 0..24),
            0usize..3,
        )
            .prop_map(
                |(
                    experts,
                    probes,
                    budget,
                    deadline,
                    max_attempts,
                    tries,
                    explore,
                    draws,
                    script,
                    stages,
                )| {
                    let n = experts.len();
                    let mut probe_set: Vec<usize> = probes.into_iter().filter(|&p| p < n).collect();
                    probe_set.dedup();
                    Case {
                        prices: experts.iter().map(|e| e.0).collect(),
                        scores: experts.iter().map(|e| e.1).collect(),
                        replicas: experts
                            .iter()
                            .map(|e| {
                                e.2.iter()
                                    .map(|&(in_flight, limit, rtt, available)| ReplicaLoad {
                                        in_flight,
                                        limit,
                                        rtt,
                                        available,
                                    })
                                    .collect()
                            })
                            .collect(),
                        probes: probe_set,
                        params: AskParams {
                            budget,
                            deadline: deadline.map(Duration::from_millis),
                            max_attempts,
                            tries_per_expert: tries,
                            wait_price: 0.02,
                            explore,
                            seed: draws.0,
                            draws: (draws.1, draws.2),
                            stages,
                        },
                        script,
                    }
                },
            )
    }

    /// A run of the machine against the scripted pool.
    struct Run {
        calls: Vec<Call>,
        /// Per call issued: its scripted ending.
        endings: Vec<Script>,
        finished: Result<Finished<String>, AskError>,
        /// Steps after `Done` that were not `Done`.
        after_done: usize,
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("e{i}")).collect()
    }

    /// An expert that can take any query.
    fn expert<'a>(id: &'a str, price: f64, replicas: &'a [ReplicaLoad]) -> ExpertView<'a> {
        ExpertView {
            id,
            price,
            replicas,
            unfit: None,
        }
    }

    fn run(case: &Case) -> Run {
        let names = ids(case.prices.len());
        let view: Vec<ExpertView<'_>> = (0..case.prices.len())
            .map(|i| expert(&names[i], case.prices[i], &case.replicas[i]))
            .collect();
        let scores = case.scores.clone();
        let scorer = |_: &[Observed<'_>], out: &mut Vec<Option<f64>>| out.extend(&scores);
        let mut ask = match Ask::new(&view, &case.probes, case.params, scorer) {
            Ok(ask) => ask,
            Err(e) => {
                return Run {
                    calls: Vec::new(),
                    endings: Vec::new(),
                    finished: Err(e),
                    after_done: 0,
                };
            }
        };
        let mut calls = Vec::new();
        let mut endings = Vec::new();
        let mut in_flight: Vec<Call> = Vec::new();
        let mut waits = 0;
        for _ in 0..1000 {
            match ask.next_step() {
                Step::Call(call) => {
                    calls.push(call);
                    in_flight.push(call);
                }
                Step::Wait => {
                    assert!(!in_flight.is_empty(), "waiting with nothing in flight");
                    let (script, at, pick) =
                        case.script
                            .get(waits)
                            .copied()
                            .unwrap_or((Script::Answer, 0, 0));
                    waits += 1;
                    let call = in_flight.remove(pick % in_flight.len());
                    let result = match script {
                        Script::Answer => CallResult::Answered(format!("answer {}", call.id)),
                        Script::Fail(f) => CallResult::Missed(Miss::Failed(f)),
                        Script::Full => CallResult::Missed(Miss::NotSent(NotSent::ReplicaFull)),
                    };
                    endings.push((call.id, script));
                    ask.record(call.id, result, Duration::from_millis(at));
                }
                Step::Done => break,
            }
        }
        let after_done = (0..3).filter(|_| ask.next_step() != Step::Done).count();
        endings.sort_by_key(|&(id, _)| id);
        Run {
            calls,
            endings: endings.into_iter().map(|(_, s)| s).collect(),
            finished: Ok(ask.finish()),
            after_done,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn every_request_ends_once_and_is_charged_the_prices_of_the_calls_it_made(case in arb_case()) {
            let run = run(&case);
            let Ok(finished) = run.finished else {
                // Refused before any call: only a budget below the probes' prices.
                let probe_cost: f64 = case.probes.iter().map(|&p| case.prices[p]).sum();
                prop_assert!(case.params.budget.is_some_and(|b| b < probe_cost));
                return Ok(());
            };
            prop_assert_eq!(run.after_done, 0);
            prop_assert!(!matches!(finished.outcome, Err(AskError::Unfinished)));
            prop_assert_eq!(run.endings.len(), run.calls.len(), "a call never ended");
            // The charge: each call's price when the expert ran (answered or failed after
            // running); a kept probe answer costs nothing more.
            let expected: f64 = run
                .calls
                .iter()
                .zip(&run.endings)
                .filter(|(_, s)| match s {
                    Script::Answer => true,
                    Script::Fail(f) => ran(*f),
                    Script::Full => false,
                })
                .map(|(c, _)| case.prices[c.expert])
                .sum();
            prop_assert!((finished.explanation.charged - expected).abs() < 1e-9,
                "charged {} for calls worth {}", finished.explanation.charged, expected);
            if let Some(b) = case.params.budget {
                prop_assert!(finished.explanation.charged <= b * (1.0 + 1e-9),
                    "charged {} over the budget {}", finished.explanation.charged, b);
            }
            // One outcome: an answer is the last answer-call's, and nothing answered before it.
            let answers: Vec<(usize, &Call)> = run
                .calls
                .iter()
                .enumerate()
                .filter(|(_, c)| c.role == Role::Answer)
                .collect();
            let asked: Vec<usize> = finished.explanation.probes.iter().map(|p| p.expert).collect();
            prop_assert!(asked.starts_with(&case.probes));
            prop_assert!(finished.explanation.stages.len() <= case.params.stages);
            prop_assert_eq!(asked.len(), case.probes.len() + finished.explanation.stages.len());
            match &finished.outcome {
                Ok(a) if a.kept_probe => {
                    prop_assert!(asked.contains(&a.expert));
                    prop_assert!(answers.iter().all(|(i, _)| run.endings[*i] != Script::Answer));
                }
                Ok(a) => {
                    let (last, call) = answers.last().expect("an answer needs a call");
                    prop_assert_eq!(run.endings[*last], Script::Answer);
                    prop_assert_eq!((a.expert, a.replica), (call.expert, call.replica));
                    prop_assert_eq!(&a.answer, &format!("answer {}", call.id));
                    prop_assert!(answers[..answers.len() - 1].iter().all(|(i, _)| run.endings[*i] != Script::Answer));
                }
                Err(_) => {
                    prop_assert!(answers.iter().all(|(i, _)| run.endings[*i] != Script::Answer));
                }
            }
        }

        #[test]
        fn calls_go_to_usable_replicas_of_affordable_experts_in_the_ranking_order(case in arb_case()) {
            let run = run(&case);
            let Ok(finished) = run.finished else { return Ok(()) };
            // The probes, then the experts the stages asked: each asked once.
            let asked: Vec<usize> = finished.explanation.probes.iter().map(|p| p.expert).collect();
            prop_assert!((1..asked.len()).all(|i| !asked[..i].contains(&asked[i])), "asked twice: {:?}", asked);
            // What was charged before the answer walk (every probe and stage call ended before).
            let asked_cost: f64 = finished
                .explanation
                .calls
                .iter()
                .filter(|c| matches!(c.role, Role::Probe(_)))
                .map(|c| c.charged)
                .sum();
            for call in &run.calls {
                // Never an ejected, unavailable or saturated replica: the view had usable ones.
                prop_assert!(case.replicas[call.expert][call.replica].usable(),
                    "call to unusable replica {:?}", call);
                match call.role {
                    Role::Probe(k) => prop_assert_eq!(asked[k], call.expert),
                    Role::Answer => {
                        prop_assert!(!asked.contains(&call.expert));
                        prop_assert!(case.params.budget.is_none_or(|b| case.prices[call.expert] <= b - asked_cost + 1e-9));
                    }
                }
            }
            let Some(d) = &finished.explanation.decision else { return Ok(()) };
            // Experts are tried in blocks; the first is the chosen one, the rest follow the
            // ranking.
            let mut order: Vec<usize> = Vec::new();
            for a in &d.plan.attempts {
                if order.last() != Some(&a.expert) {
                    prop_assert!(!order.contains(&a.expert), "expert {} tried in two blocks", a.expert);
                    order.push(a.expert);
                }
            }
            prop_assert_eq!(order[0], d.chosen);
            let rank = |e: usize| d.plan.ranked.iter().position(|&r| r == e).expect("ranked");
            for pair in order[1..].windows(2) {
                prop_assert!(rank(pair[0]) < rank(pair[1]), "fallbacks out of rank: {:?} in {:?}", order, d.plan.ranked);
            }
            // The calls made are a prefix of the plan's attempts (kept probes and budget skips
            // aside).
            let made: Vec<(usize, usize)> = finished
                .explanation
                .calls
                .iter()
                .filter(|c| c.role == Role::Answer)
                .map(|c| (c.expert, c.replica))
                .collect();
            let planned: Vec<(usize, usize)> = d
                .plan
                .attempts
                .iter()
                .filter(|a| !asked.contains(&a.expert))
                .map(|a| (a.expert, a.replica))
                .collect();
            prop_assert!(planned.starts_with(&made), "made {:?}, planned {:?}", made, planned);
        }

    }

    proptest! {
        // Each case runs the machine 6,000 times.
        #![proptest_config(ProptestConfig::with_cases(40))]

        #[test]
        fn the_logged_propensity_is_the_frequency_of_the_choice_over_the_draws(
            case in arb_case(),
            epsilon in prop_oneof![Just(0.1), Just(0.25), Just(0.5), Just(1.0)],
        ) {
            // Draws on a grid fine enough that each outcome's frequency is exact: 100 values of
            // u (ε is a multiple of 1/100), 60 of v (divisible by every eligible count up to 6).
            let mut seen: Vec<(usize, f64, usize)> = Vec::new();
            let total = 100 * 60;
            for i in 0..100 {
                for j in 0..60 {
                    let params = AskParams {
                        explore: epsilon,
                        draws: ((i as f64 + 0.5) / 100.0, (j as f64 + 0.5) / 60.0),
                        ..case.params
                    };
                    let run = run(&Case { params, script: Vec::new(), ..case.clone() });
                    let Ok(finished) = run.finished else { return Ok(()) };
                    let Some(d) = finished.explanation.decision else { return Ok(()) };
                    match seen.iter_mut().find(|(e, _, _)| *e == d.chosen) {
                        Some((_, p, n)) => {
                            prop_assert_eq!(*p, d.propensity);
                            *n += 1;
                        }
                        None => seen.push((d.chosen, d.propensity, 1)),
                    }
                }
            }
            for (expert, propensity, n) in seen {
                let frequency = n as f64 / total as f64;
                prop_assert!((propensity - frequency).abs() < 1e-9,
                    "expert {} drawn with frequency {} but logged with propensity {}", expert, frequency, propensity);
            }
        }
    }

    #[test]
    fn when_the_deadline_cuts_the_answer_call_the_best_answer_seen_is_kept() {
        let up = [ReplicaLoad::idle(0.01)];
        let names = ids(3);
        let view: Vec<ExpertView<'_>> = [1.0, 2.0, 50.0]
            .iter()
            .enumerate()
            .map(|(i, &price)| expert(&names[i], price, &up))
            .collect();
        // e2 is best; of the probes, e1 ranks above e0.
        let scorer = |_: &[Observed<'_>], out: &mut Vec<Option<f64>>| {
            out.extend([Some(0.5), Some(0.3), Some(0.1)]);
        };
        let params = AskParams {
            deadline: Some(Duration::from_millis(500)),
            ..AskParams::default()
        };
        let mut ask = Ask::<String, _>::new(&view, &[0, 1], params, scorer).unwrap();
        let (Step::Call(a), Step::Call(b)) = (ask.next_step(), ask.next_step()) else {
            panic!("both probes start");
        };
        ask.record(
            a.id,
            CallResult::Answered("zero".into()),
            Duration::from_millis(5),
        );
        ask.record(
            b.id,
            CallResult::Answered("one".into()),
            Duration::from_millis(20),
        );
        let Step::Call(call) = ask.next_step() else {
            panic!("the best expert is called");
        };
        assert_eq!((call.expert, call.role), (2, Role::Answer));
        ask.record(
            call.id,
            CallResult::Missed(Miss::Failed(Failure::DeadlinePassed)),
            Duration::from_millis(500),
        );
        assert_eq!(ask.next_step(), Step::Done);
        let Finished {
            outcome,
            explanation,
        } = ask.finish();
        let answered = outcome.unwrap();
        assert_eq!(
            (
                answered.answer.as_str(),
                answered.expert,
                answered.kept_probe
            ),
            ("one", 1, true)
        );
        // The call cut by the deadline is not charged; the probes are.
        assert_eq!(explanation.charged, 3.0);
    }

    #[test]
    fn a_probe_expected_after_the_deadline_is_not_sent_and_the_decision_goes_on() {
        let fast = [ReplicaLoad::idle(0.01)];
        let slow = [ReplicaLoad::idle(2.0)];
        let names = ids(3);
        let view = [
            expert(&names[0], 1.0, &fast),
            expert(&names[1], 2.0, &slow),
            expert(&names[2], 50.0, &slow),
        ];
        // The slow probe's answer is missing when the policy scores; e2 (also slow) would be
        // best without a deadline.
        let scorer = |observed: &[Observed<'_>], out: &mut Vec<Option<f64>>| {
            let answers: Vec<(&str, Option<&str>)> =
                observed.iter().map(|o| (o.expert, o.answer)).collect();
            assert_eq!(answers, [("e0", Some("a")), ("e1", None)]);
            out.extend([Some(0.3), Some(0.2), Some(0.1)]);
        };
        let params = AskParams {
            deadline: Some(Duration::from_millis(500)),
            ..AskParams::default()
        };
        let mut ask = Ask::<String, _>::new(&view, &[0, 1], params, scorer).unwrap();
        let Step::Call(only) = ask.next_step() else {
            panic!("the fast probe is sent");
        };
        assert_eq!((only.expert, only.role), (0, Role::Probe(0)));
        assert_eq!(ask.next_step(), Step::Wait, "the slow probe is not sent");
        ask.record(
            only.id,
            CallResult::Answered("a".into()),
            Duration::from_millis(10),
        );
        // e2 expects 2 s with 490 ms left: excluded while the kept probe answer fits.
        assert_eq!(ask.next_step(), Step::Done);
        let Finished {
            outcome,
            explanation,
        } = ask.finish();
        let answered = outcome.unwrap();
        assert_eq!((answered.expert, answered.kept_probe), (0, true));
        assert_eq!(explanation.charged, 1.0);
        assert_eq!(
            explanation.probes[1].miss,
            Some(Miss::NotSent(NotSent::TooSlow))
        );
        let reason = explanation.reason(&view);
        assert!(
            reason.contains("e2 (expected latency beyond the deadline)"),
            "{reason}"
        );
    }

    #[test]
    fn probes_run_together_then_the_kept_answer_costs_nothing_more() {
        let up = [ReplicaLoad::idle(0.01), ReplicaLoad::idle(0.01)];
        let names = ids(3);
        let view: Vec<ExpertView<'_>> = [1.0, 2.0, 50.0]
            .iter()
            .enumerate()
            .map(|(i, &price)| expert(&names[i], price, &up))
            .collect();
        // The policy prefers the second probe once it has read both answers.
        let scorer = |observed: &[Observed<'_>], out: &mut Vec<Option<f64>>| {
            let answers: Vec<(&str, Option<&str>)> =
                observed.iter().map(|o| (o.expert, o.answer)).collect();
            assert_eq!(answers, [("e0", Some("a")), ("e1", Some("b"))]);
            out.extend([Some(0.5), Some(0.1), Some(0.3)]);
        };
        let mut ask = Ask::<String, _>::new(&view, &[0, 1], AskParams::default(), scorer).unwrap();
        let (Step::Call(first), Step::Call(second)) = (ask.next_step(), ask.next_step()) else {
            panic!("both probes start before any ends");
        };
        assert_eq!((first.role, second.role), (Role::Probe(0), Role::Probe(1)));
        assert_eq!(ask.next_step(), Step::Wait);
        // The first probe fails on its first replica (charged: it ran) and is retried.
        ask.record(
            first.id,
            CallResult::Missed(Miss::Failed(Failure::Broken)),
            Duration::ZERO,
        );
        let Step::Call(retry) = ask.next_step() else {
            panic!("the failed probe is retried at once");
        };
        assert_eq!((retry.expert, retry.role), (0, Role::Probe(0)));
        assert_ne!(retry.replica, first.replica);
        ask.record(second.id, CallResult::Answered("b".into()), Duration::ZERO);
        assert_eq!(ask.next_step(), Step::Wait);
        ask.record(retry.id, CallResult::Answered("a".into()), Duration::ZERO);
        assert_eq!(ask.next_step(), Step::Done);
        let Finished {
            outcome,
            explanation,
        } = ask.finish();
        let answered = outcome.unwrap();
        assert_eq!((answered.expert, answered.kept_probe), (1, true));
        assert_eq!(answered.answer, "b");
        assert_eq!(explanation.charged, 1.0 + 1.0 + 2.0);
        assert_eq!(
            explanation.reason(&view),
            "keep the probe's answer: best policy score (0.1000) among 3 eligible experts"
        );
    }

    #[test]
    fn reasons_write_four_decimals_as_the_formatter_does() {
        for x in [
            0.0,
            0.78281,
            1.0,
            12.34567,
            -0.5,
            0.00004,
            123456.0,
            0.99999,
            -2.25,
            -0.000_01,
            1e15,
            f64::INFINITY,
            7.0,
            1234.5678,
            0.1,
            3.0e-5,
        ] {
            let mut written = String::from("<");
            push_fixed4(&mut written, x);
            assert_eq!(written, format!("<{x:.4}"), "{x}");
        }
    }

    #[test]
    fn a_cascade_asks_one_stage_at_a_time_within_the_budget_and_the_deadline() {
        let fast = [ReplicaLoad::idle(0.01)];
        let slow = [ReplicaLoad::idle(2.0)];
        let names = ids(4);
        // e0 cheap and fast; e1 scored best but slower than the deadline; e2 dear; e3 fair.
        let loads: [&[ReplicaLoad]; 4] = [&fast, &slow, &fast, &fast];
        let prices = [1.0, 5.0, 50.0, 10.0];
        let view: Vec<ExpertView<'_>> = (0..4)
            .map(|i| expert(&names[i], prices[i], loads[i]))
            .collect();
        let mut seen = Vec::new();
        // The policy wants e1, then e2, then e3 asked; once it has seen e3 it keeps e0's answer.
        let scorer = |observed: &[Observed<'_>], out: &mut Vec<Option<f64>>| {
            seen.push(
                observed
                    .iter()
                    .map(|o| o.expert.to_owned())
                    .collect::<Vec<_>>(),
            );
            let asked = |id: &str| observed.iter().any(|o| o.expert == id);
            if asked("e3") {
                out.extend([Some(0.1), None, None, Some(0.5)]);
            } else {
                out.extend([Some(0.9), Some(0.1), Some(0.2), Some(0.3)]);
            }
        };
        let params = AskParams {
            budget: Some(12.0),
            deadline: Some(Duration::from_millis(500)),
            stages: 3,
            ..AskParams::default()
        };
        let mut ask = Ask::<String, _>::new(&view, &[], params, scorer).unwrap();
        // Stage 1: e1 is too slow for the deadline and e2 over the budget: e3 is asked.
        let Step::Call(call) = ask.next_step() else {
            panic!("a stage call first");
        };
        assert_eq!((call.expert, call.role), (3, Role::Probe(0)));
        assert_eq!(ask.next_step(), Step::Wait);
        ask.record(
            call.id,
            CallResult::Answered("three".to_owned()),
            Duration::from_millis(20),
        );
        // Stage 2: with e3's answer the policy prefers e0, not asked yet: asked as a stage.
        let Step::Call(call) = ask.next_step() else {
            panic!("a second stage");
        };
        assert_eq!((call.expert, call.role), (0, Role::Probe(1)));
        ask.record(
            call.id,
            CallResult::Answered("zero".to_owned()),
            Duration::from_millis(40),
        );
        // Then e0's answer is kept, at no further cost.
        assert_eq!(ask.next_step(), Step::Done);
        let Finished {
            outcome,
            explanation,
        } = ask.finish();
        let answered = outcome.unwrap();
        assert_eq!(
            (answered.answer.as_str(), answered.kept_probe),
            ("zero", true)
        );
        assert_eq!(explanation.charged, 11.0);
        assert_eq!(explanation.stages.len(), 2);
        let first = &explanation.stages[0];
        assert_eq!(
            first.plan.excluded,
            vec![
                (1, super::super::decision::Exclusion::TooSlow),
                (2, super::super::decision::Exclusion::OverBudget)
            ]
        );
        let reason = explanation.reason(&view);
        assert!(
            reason.starts_with("stage 1: ask e3: best policy score plus waiting (0.3000 + 0.0001) among 2 eligible experts; excluded: e1 (expected latency beyond the deadline), e2 (over budget); stage 2: ask e0"),
            "{reason}"
        );
        assert!(reason.contains("keep e0's answer"), "{reason}");
        assert_eq!(seen, [vec![], vec!["e3"], vec!["e3", "e0"]]);
    }

    /// Runs a request to its end, every call answered except those to `failing` experts.
    fn served_and_override(
        view: &[ExpertView<'_>],
        params: AskParams,
        failing: &[usize],
    ) -> (Option<usize>, Option<Override>) {
        // e0 is the policy's favourite, e1 its second.
        let scorer = |_: &[Observed<'_>], out: &mut Vec<Option<f64>>| {
            out.extend([Some(0.1), Some(0.2)]);
        };
        let mut ask = Ask::<String, _>::new(view, &[], params, scorer).unwrap();
        while let Step::Call(call) = ask.next_step() {
            let result = if failing.contains(&call.expert) {
                CallResult::Missed(Miss::Failed(Failure::Unreachable))
            } else {
                CallResult::Answered(format!("e{}", call.expert))
            };
            ask.record(call.id, result, Duration::from_millis(1));
        }
        let finished = ask.finish();
        let served = finished.outcome.ok().map(|a| a.expert);
        let decision = finished.explanation.decision.expect("a decision was made");
        (served, decision.override_reason(served))
    }

    #[test]
    fn an_answer_from_another_expert_than_the_policy_preferred_says_why() {
        let idle = [ReplicaLoad::idle(0.02)];
        let ejected = [ReplicaLoad {
            available: false,
            ..ReplicaLoad::idle(0.02)
        }];
        let full = [ReplicaLoad {
            in_flight: 2,
            limit: 2,
            ..ReplicaLoad::idle(0.02)
        }];
        // Ten seconds of expected waiting at 0.01 a second outweighs the 0.1 score gap.
        let slow = [ReplicaLoad::idle(10.0)];
        fn pool<'a>(first: &'a [ReplicaLoad], idle: &'a [ReplicaLoad]) -> [ExpertView<'a>; 2] {
            [expert("e0", 5.0, first), expert("e1", 1.0, idle)]
        }
        let free = AskParams::default();
        assert_eq!(
            served_and_override(&pool(&idle, &idle), free, &[]),
            (Some(0), None)
        );
        assert_eq!(
            served_and_override(&pool(&ejected, &idle), free, &[]),
            (Some(1), Some(Override::Unavailable))
        );
        assert_eq!(
            served_and_override(&pool(&full, &idle), free, &[]),
            (Some(1), Some(Override::Load))
        );
        let waiting = AskParams {
            wait_price: 0.02,
            ..free
        };
        assert_eq!(
            served_and_override(&pool(&slow, &idle), waiting, &[]),
            (Some(1), Some(Override::Load))
        );
        let short = AskParams {
            deadline: Some(Duration::from_secs(1)),
            ..free
        };
        assert_eq!(
            served_and_override(&pool(&slow, &idle), short, &[]),
            (Some(1), Some(Override::Deadline))
        );
        let tight = AskParams {
            budget: Some(2.0),
            ..free
        };
        assert_eq!(
            served_and_override(&pool(&idle, &idle), tight, &[]),
            (Some(1), Some(Override::Budget))
        );
        assert_eq!(
            served_and_override(&pool(&idle, &idle), free, &[0]),
            (Some(1), Some(Override::Fallback))
        );
        // Nothing served, nothing overridden.
        assert_eq!(
            served_and_override(&pool(&idle, &idle), free, &[0, 1]),
            (None, None)
        );
        let mut unfit = pool(&idle, &idle);
        unfit[0].unfit = Some(Unfit::Language);
        assert_eq!(
            served_and_override(&unfit, free, &[]),
            (Some(1), Some(Override::Capability))
        );
    }

    #[test]
    fn budgets_must_be_positive_and_finite() {
        let one = [ReplicaLoad::idle(0.02)];
        let view = [expert("e", 1.0, &one)];
        let scorer = |_: &[Observed<'_>], out: &mut Vec<Option<f64>>| out.push(Some(0.1));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let params = AskParams {
                budget: Some(bad),
                ..AskParams::default()
            };
            let refused = Ask::<String, _>::new(&view, &[], params, scorer).err();
            assert!(
                matches!(refused, Some(AskError::InvalidBudget(b)) if b.to_bits() == bad.to_bits()),
                "{bad}"
            );
        }
        let params = AskParams {
            budget: Some(2.5),
            ..AskParams::default()
        };
        assert!(Ask::<String, _>::new(&view, &[], params, scorer).is_ok());
    }

    #[test]
    fn a_deadline_that_passes_ends_the_walk_and_a_full_pool_sheds_with_a_hint() {
        let one = [ReplicaLoad::idle(0.02)];
        let names = ids(2);
        let view: Vec<ExpertView<'_>> = (0..2).map(|i| expert(&names[i], 1.0, &one)).collect();
        let scorer =
            |_: &[Observed<'_>], out: &mut Vec<Option<f64>>| out.extend([Some(0.1), Some(0.2)]);
        let params = AskParams {
            deadline: Some(Duration::from_millis(100)),
            ..AskParams::default()
        };
        let mut ask = Ask::<String, _>::new(&view, &[], params, scorer).unwrap();
        let Step::Call(call) = ask.next_step() else {
            panic!()
        };
        // A failure worth another try, but reported after the deadline.
        ask.record(
            call.id,
            CallResult::Missed(Miss::Failed(Failure::Unreachable)),
            Duration::from_millis(100),
        );
        assert_eq!(ask.next_step(), Step::Done);
        assert_eq!(
            ask.finish().outcome.unwrap_err(),
            AskError::DeadlinePassed { calls: 1 }
        );

        // A deadline spent before the next call could be sent is the deadline's, not a full pool.
        let mut ask = Ask::<String, _>::new(&view, &[], params, scorer).unwrap();
        let Step::Call(call) = ask.next_step() else {
            panic!()
        };
        ask.record(
            call.id,
            CallResult::Missed(Miss::NotSent(NotSent::DeadlinePassed)),
            Duration::from_millis(20),
        );
        assert_eq!(ask.next_step(), Step::Done);
        assert_eq!(
            ask.finish().outcome.unwrap_err(),
            AskError::DeadlinePassed { calls: 1 }
        );

        // A probe that ran out of time, then every other expert full: still the deadline's.
        let full = [ReplicaLoad {
            in_flight: 1,
            limit: 1,
            ..ReplicaLoad::idle(0.02)
        }];
        let probed = [expert(&names[0], 1.0, &one), expert(&names[1], 1.0, &full)];
        let mut ask = Ask::<String, _>::new(&probed, &[0], params, scorer).unwrap();
        let Step::Call(call) = ask.next_step() else {
            panic!()
        };
        ask.record(
            call.id,
            CallResult::Missed(Miss::Failed(Failure::DeadlinePassed)),
            Duration::from_millis(100),
        );
        assert_eq!(ask.next_step(), Step::Done);
        assert_eq!(
            ask.finish().outcome.unwrap_err(),
            AskError::DeadlinePassed { calls: 1 }
        );

        let mut ask = Ask::<String, _>::new(&view, &[], AskParams::default(), scorer).unwrap();
        for _ in 0..2 {
            let Step::Call(call) = ask.next_step() else {
                panic!()
            };
            ask.record(
                call.id,
                CallResult::Missed(Miss::NotSent(NotSent::ReplicaFull)),
                Duration::ZERO,
            );
        }
        assert_eq!(ask.next_step(), Step::Done);
        assert_eq!(
            ask.finish().outcome.unwrap_err(),
            AskError::EveryReplicaFull {
                tried: 2,
                retry_after: 0.02
            }
        );
    }
}
