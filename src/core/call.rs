//! How one expert call ended, in the domain's words: the request path's rules (what is charged,
//! what is worth another try, when the deadline has won) are written here once, and the gRPC
//! edge maps each kind to and from a status code in one table (`grpc::status`).

use std::fmt;

/// Why a call that was sent came back without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The expert ran and has no answer to this query (a replay expert without its recording).
    NoAnswer,
    /// The expert rejected the query as malformed: it would be rejected anywhere.
    Refused,
    /// The expert looked at the query and declined it (a precondition of its own).
    Declined,
    /// The query is beyond what the expert takes (too long, out of its range).
    BeyondLimits,
    /// The expert failed while answering.
    Broken,
    /// The expert answered with a span that does not lie in the context.
    Malformed {
        start: u32,
        end: u32,
        context_chars: usize,
    },
    /// The replica could not be reached (connection refused, reset, no route).
    Unreachable,
    /// No answer within the try timeout: the replica may be hung; another may answer.
    TryTimedOut { millis: u64 },
    /// The replica said it is overloaded.
    Overloaded,
    /// The caller's deadline passed during the call.
    DeadlinePassed,
    /// The call was cut (its connection died under it, or the expert's server cancelled it).
    Dropped,
    /// The replica does not serve the expert interface.
    Unsupported,
    /// The replica refused this scheduler's credentials.
    Denied,
    /// Any other failure.
    Other,
}

impl Failure {
    /// The expert ran, so its compute was spent and is charged. A call that never reached it,
    /// that it rejected before running, or that it could not take ([`Failure::could_not_take`])
    /// costs nothing.
    pub fn charges_compute(self) -> bool {
        matches!(self, Failure::Broken | Failure::Malformed { .. })
    }

    /// The expert could not take this query: it holds no recording of it, a precondition of its
    /// own fails, or the query is beyond its limits. Not charged, not the replica's fault, kept
    /// apart from failures in the explanation and the pool's counters.
    pub fn could_not_take(self) -> bool {
        matches!(
            self,
            Failure::NoAnswer | Failure::Declined | Failure::BeyondLimits
        )
    }

    /// Whether another replica or expert may succeed. A query refused as malformed fails the
    /// same way everywhere, and a deadline that passed has passed; every other failure
    /// (unreachable, overloaded, no recording, internal error, a dropped connection) may
    /// succeed elsewhere.
    pub fn worth_another_try(self) -> bool {
        !matches!(self, Failure::Refused | Failure::DeadlinePassed)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoAnswer => f.write_str("the expert has no answer to this query"),
            Failure::Refused | Failure::Declined | Failure::BeyondLimits => {
                f.write_str("the expert refused the query")
            }
            Failure::Broken | Failure::Other => f.write_str("the expert failed"),
            Failure::Malformed {
                start,
                end,
                context_chars,
            } => write!(
                f,
                "malformed answer: span [{start}, {end}) outside the context of {context_chars} \
                 characters"
            ),
            Failure::Unreachable => f.write_str("the replica could not be reached"),
            Failure::TryTimedOut { millis } => {
                write!(f, "no answer within the try timeout of {millis} ms")
            }
            Failure::Overloaded => f.write_str("the replica is overloaded"),
            Failure::DeadlinePassed => f.write_str("deadline passed"),
            Failure::Dropped => f.write_str("the call ran out of time"),
            Failure::Unsupported => f.write_str("the replica does not serve the expert interface"),
            Failure::Denied => f.write_str("the replica refused the scheduler's credentials"),
        }
    }
}

/// How a call that was sent reflects on the replica that took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered, or refused clearly (no recording, a query it cannot take): the replica works.
    Healthy,
    /// The caller's deadline ran out, or the call was cut: latency is observed, the replica is
    /// not blamed.
    TimedOut,
    /// Unreachable, overloaded, hung, broken: counts toward ejection.
    Unhealthy,
}

impl Verdict {
    pub fn of(ending: Result<(), Failure>) -> Self {
        match ending {
            Ok(())
            | Err(
                Failure::NoAnswer | Failure::Refused | Failure::Declined | Failure::BeyondLimits,
            ) => Verdict::Healthy,
            Err(Failure::DeadlinePassed | Failure::Dropped) => Verdict::TimedOut,
            Err(_) => Verdict::Unhealthy,
        }
    }
}

/// Why a planned call was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotSent {
    /// Every slot of the replica was taken when the request got to it.
    ReplicaFull,
    /// The caller's deadline had passed.
    DeadlinePassed,
    /// The call could be charged more than the budget left after the calls already charged.
    OverBudget,
    /// The replica's expected completion time exceeded the time the request had left.
    TooSlow,
    /// The expert cannot take the query (no recording of it, a context over its limits).
    CannotTake,
}

impl fmt::Display for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotSent::ReplicaFull => "replica at its concurrency limit; not sent",
            NotSent::DeadlinePassed => "deadline passed",
            NotSent::OverBudget => "over the budget left after the calls already charged; not sent",
            NotSent::TooSlow => "expected completion beyond the deadline; not sent",
            NotSent::CannotTake => "the expert cannot take the query; not sent",
        })
    }
}

/// How a call that did not answer ended: sent and failed, or never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Miss {
    Failed(Failure),
    NotSent(NotSent),
}

impl Miss {
    pub fn charges_compute(self) -> bool {
        matches!(self, Miss::Failed(f) if f.charges_compute())
    }

    pub fn worth_another_try(self) -> bool {
        match self {
            Miss::Failed(f) => f.worth_another_try(),
            Miss::NotSent(NotSent::DeadlinePassed | NotSent::TooSlow) => false,
            Miss::NotSent(_) => true,
        }
    }
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::Failed(x) => x.fmt(f),
            Miss::NotSent(x) => x.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_calls_the_expert_ran_are_charged_and_only_hopeless_ones_stop_the_walk() {
        assert!(Failure::Broken.charges_compute());
        assert!(!Failure::NoAnswer.charges_compute());
        assert!(!Failure::Declined.charges_compute());
        assert!(!Failure::BeyondLimits.charges_compute());
        assert!(Failure::NoAnswer.could_not_take() && Failure::BeyondLimits.could_not_take());
        assert!(!Failure::Broken.could_not_take() && !Failure::Unreachable.could_not_take());
        assert!(!Failure::Unreachable.charges_compute());
        assert!(!Failure::Refused.charges_compute());
        assert!(!Miss::NotSent(NotSent::ReplicaFull).charges_compute());
        assert!(Failure::Dropped.worth_another_try());
        assert!(Failure::NoAnswer.worth_another_try());
        assert!(!Failure::Refused.worth_another_try());
        assert!(!Failure::DeadlinePassed.worth_another_try());
        assert!(!Miss::NotSent(NotSent::DeadlinePassed).worth_another_try());
        assert!(Miss::NotSent(NotSent::ReplicaFull).worth_another_try());
    }
}
