//! What kind of failure an l2d error is, in the domain's words: the one vocabulary every error
//! type of the core, the registry and the experts maps to. The gRPC edge turns a kind into a
//! status code in exactly one place (`grpc::status`); nothing else picks a code.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorKind {
    /// The request itself is malformed (empty, over a limit, not a number it must be).
    InvalidInput,
    /// What was asked for does not exist: no answer recorded, an unknown lease.
    NotFound,
    /// The request is valid but the system is not in a state to serve it (a budget below every
    /// price, a cost that contradicts the known one).
    Unsatisfiable,
    /// The request is valid but beyond what this node takes (a context over an expert's declared
    /// limit).
    BeyondLimits,
    /// Nothing can serve it now (no expert, no reachable replica); trying later may work.
    Unavailable,
    /// The caller's deadline passed before the work was done.
    DeadlinePassed,
    /// A limit is reached; retry after the given time, if known.
    Exhausted { retry_after: Option<Duration> },
    /// The caller did not prove who it is (no credential, or one that is not valid).
    Unauthenticated,
    /// The caller is known but not allowed this.
    Forbidden,
    /// The operation is switched off on this node.
    Disabled,
    /// Something is already held by someone else (an address served by another replica).
    Conflict,
    /// A bug or a broken peer.
    Internal,
}

/// An error that knows its kind.
pub trait HasKind: std::fmt::Display {
    fn kind(&self) -> ErrorKind;
}

/// A refusal with a kind and a message, for the checks that have no error type of their own
/// (who may call what, what a credential may register).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl HasKind for Refusal {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl HasKind for super::query::QueryError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

impl HasKind for super::capability::Unfit {
    fn kind(&self) -> ErrorKind {
        match self {
            super::capability::Unfit::NotHeld => ErrorKind::NotFound,
            _ => ErrorKind::BeyondLimits,
        }
    }
}

impl HasKind for super::decision::DecisionError {
    fn kind(&self) -> ErrorKind {
        use super::decision::DecisionError as E;
        match self {
            E::OverBudget { .. } => ErrorKind::Unsatisfiable,
            E::EmptyPool | E::NoAvailableReplica { .. } => ErrorKind::Unavailable,
            E::NoneCanTake => ErrorKind::Unsatisfiable,
            E::Saturated { retry_after, .. } => ErrorKind::Exhausted {
                retry_after: Some(Duration::from_secs_f64(*retry_after)),
            },
        }
    }
}

impl HasKind for super::ask::AskError {
    fn kind(&self) -> ErrorKind {
        use super::ask::AskError as E;
        use super::call::Failure;
        match self {
            E::InvalidBudget(_) => ErrorKind::InvalidInput,
            E::ProbesOverBudget { .. } => ErrorKind::Unsatisfiable,
            E::Decision(e) => e.kind(),
            E::DeadlinePassed { .. } => ErrorKind::DeadlinePassed,
            E::Refused(Failure::DeadlinePassed) => ErrorKind::DeadlinePassed,
            E::Refused(_) => ErrorKind::InvalidInput,
            E::EveryReplicaFull { retry_after, .. } => ErrorKind::Exhausted {
                retry_after: Some(Duration::from_secs_f64(*retry_after)),
            },
            E::EveryCallFailed {
                no_answer: true, ..
            } => ErrorKind::NotFound,
            E::EveryCallFailed { .. } => ErrorKind::Unavailable,
            // A replay-only pool without the query is what NOT_FOUND always said; a query over
            // every expert's limits is one the pool cannot serve as it is.
            E::NoneCanTake { not_held: true, .. } => ErrorKind::NotFound,
            E::NoneCanTake { .. } => ErrorKind::Unsatisfiable,
            E::Unfinished => ErrorKind::Internal,
        }
    }
}
