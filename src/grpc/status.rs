//! The one table that maps l2d's errors to gRPC status codes. Messages are lowercase, specific,
//! and carry no trailing period.

use crate::core::ask::AskError;
use crate::core::call::{Failure, Miss, NotSent};
use crate::core::decision::DecisionError;
use crate::core::error_kind::{ErrorKind, HasKind, Refusal};
use crate::core::query::QueryError;
use tonic::{Code, Status};

/// The table: each kind of domain error and its gRPC code.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidInput => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Unsatisfiable => Code::FailedPrecondition,
        ErrorKind::BeyondLimits => Code::OutOfRange,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlinePassed => Code::DeadlineExceeded,
        ErrorKind::Exhausted { .. } => Code::ResourceExhausted,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Forbidden => Code::PermissionDenied,
        ErrorKind::Disabled => Code::Unimplemented,
        ErrorKind::Conflict => Code::AlreadyExists,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The kind of error an l2d service's status code stands for: the table read backwards, for
/// clients of l2d's own services (several kinds share no code, so this is exact for them).
pub fn kind_of(code: Code) -> Option<ErrorKind> {
    Some(match code {
        Code::InvalidArgument => ErrorKind::InvalidInput,
        Code::NotFound => ErrorKind::NotFound,
        Code::FailedPrecondition => ErrorKind::Unsatisfiable,
        Code::OutOfRange => ErrorKind::BeyondLimits,
        Code::Unavailable => ErrorKind::Unavailable,
        Code::DeadlineExceeded => ErrorKind::DeadlinePassed,
        Code::ResourceExhausted => ErrorKind::Exhausted { retry_after: None },
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::PermissionDenied => ErrorKind::Forbidden,
        Code::Unimplemented => ErrorKind::Disabled,
        Code::AlreadyExists => ErrorKind::Conflict,
        Code::Internal => ErrorKind::Internal,
        _ => return None,
    })
}

/// The status of a domain error: its kind's code, its message, and a retry hint where the
/// kind carries one.
pub fn status_of(error: &impl HasKind) -> Status {
    match error.kind() {
        ErrorKind::Exhausted {
            retry_after: Some(wait),
        } => resource_exhausted(error.to_string(), wait),
        kind => Status::new(code_of(kind), error.to_string()),
    }
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Self {
        status_of(&e)
    }
}

impl From<AskError> for Status {
    fn from(e: AskError) -> Self {
        match &e {
            // Each group of failures under the code its calls are reported with.
            AskError::EveryCallFailed { tried, groups, .. } => {
                let detail: Vec<String> = groups
                    .iter()
                    .map(|(miss, experts)| {
                        let code = code_name(code_of_miss(*miss));
                        format!("{code} from {}: {miss}", experts.join(", "))
                    })
                    .collect();
                Status::new(
                    code_of(e.kind()),
                    format!(
                        "every expert call failed ({tried} tried): {}",
                        detail.join("; ")
                    ),
                )
            }
            _ => status_of(&e),
        }
    }
}

impl From<Refusal> for Status {
    fn from(e: Refusal) -> Self {
        status_of(&e)
    }
}

impl From<DecisionError> for Status {
    fn from(e: DecisionError) -> Self {
        status_of(&e)
    }
}

/// RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail (how long to wait before retrying),
/// which gRPC clients in every language can read; the message says it too.
pub fn resource_exhausted(message: String, retry_after: std::time::Duration) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let details = ErrorDetails::with_retry_info(Some(retry_after));
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

/// The retry delay a status carries in its `google.rpc.RetryInfo` detail, if any.
pub fn retry_after(status: &Status) -> Option<std::time::Duration> {
    use tonic_types::StatusExt;
    status.get_details_retry_info()?.retry_delay
}

/// A client's view of a call's failure, in the codes gRPC specifies for clients. tonic's client
/// enforces a deadline itself and reports it as CANCELLED "Timeout expired" when it fires before
/// the server's answer arrives: that is DEADLINE_EXCEEDED. A connection that fails under the call
/// is UNAVAILABLE.
pub fn client_deadline(status: Status) -> Status {
    if status.code() == Code::Cancelled && status.message() == "Timeout expired" {
        return Status::deadline_exceeded("deadline passed before the answer arrived");
    }
    // The connection failed under the call (the server died, a reset): the client library
    // reports it as CANCELLED or UNKNOWN with the transport's error as its source, where the
    // status-code guide says UNAVAILABLE. A status the server sent has no such source.
    let transport = std::error::Error::source(&status).is_some();
    if transport && matches!(status.code(), Code::Cancelled | Code::Unknown) {
        return Status::unavailable(format!("the connection failed: {}", status.message()));
    }
    status
}

/// What a status code from an expert call says happened, in the domain's words (the rules for
/// charging and retrying are the domain's: [`Failure`]). CANCELLED is a dropped call: the
/// scheduler's own cancellation drops the call instead of returning it, so an expert call ends
/// CANCELLED when its connection died under it (a killed replica) or when the expert's server ran
/// out of the forwarded deadline, which the request checks on its own clock.
pub fn failure_of(code: Code) -> Failure {
    match code {
        Code::NotFound => Failure::NoAnswer,
        Code::InvalidArgument => Failure::Refused,
        Code::FailedPrecondition => Failure::Declined,
        Code::OutOfRange => Failure::BeyondLimits,
        Code::Internal => Failure::Broken,
        Code::Unavailable => Failure::Unreachable,
        Code::ResourceExhausted => Failure::Overloaded,
        Code::DeadlineExceeded => Failure::DeadlinePassed,
        Code::Cancelled => Failure::Dropped,
        Code::Unimplemented => Failure::Unsupported,
        Code::PermissionDenied | Code::Unauthenticated => Failure::Denied,
        _ => Failure::Other,
    }
}

/// The code a call that did not answer is reported with (the reply's fallbacks, the metrics):
/// the inverse of [`failure_of`] where it is one to one.
pub fn code_of_miss(miss: Miss) -> Code {
    match miss {
        Miss::Failed(f) => match f {
            Failure::NoAnswer => Code::NotFound,
            Failure::Refused => Code::InvalidArgument,
            Failure::Declined => Code::FailedPrecondition,
            Failure::BeyondLimits => Code::OutOfRange,
            Failure::Broken | Failure::Malformed { .. } => Code::Internal,
            Failure::Unreachable | Failure::TryTimedOut { .. } => Code::Unavailable,
            Failure::Overloaded => Code::ResourceExhausted,
            Failure::DeadlinePassed => Code::DeadlineExceeded,
            Failure::Dropped => Code::Cancelled,
            Failure::Unsupported => Code::Unimplemented,
            Failure::Denied => Code::PermissionDenied,
            Failure::Other => Code::Unknown,
        },
        Miss::NotSent(NotSent::ReplicaFull) => Code::ResourceExhausted,
        Miss::NotSent(NotSent::DeadlinePassed | NotSent::TooSlow) => Code::DeadlineExceeded,
        Miss::NotSent(NotSent::OverBudget | NotSent::CannotTake) => Code::FailedPrecondition,
    }
}

/// The canonical upper-case name of a status code, as the gRPC specification spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_decision_errors_map_to_the_documented_codes() {
        assert_eq!(
            Status::from(QueryError::EmptyQuestion).code(),
            Code::InvalidArgument
        );
        let over = DecisionError::OverBudget {
            budget: 0.5,
            cheapest: 1.0,
        };
        let status = Status::from(over);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "no expert fits the budget of 0.5: the cheapest costs 1"
        );
        assert_eq!(
            Status::from(DecisionError::EmptyPool).code(),
            Code::Unavailable
        );
    }

    #[test]
    fn every_code_an_expert_returns_is_reported_back_as_itself() {
        // A code that maps to a failure kind of its own comes back unchanged in the reply's
        // fallbacks and the metrics; the rest are UNKNOWN (or, for the two credential codes,
        // PERMISSION_DENIED).
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::Internal,
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Unimplemented,
            Code::PermissionDenied,
            Code::Unknown,
        ] {
            assert_eq!(
                code_of_miss(Miss::Failed(failure_of(code))),
                code,
                "{code:?}"
            );
        }
        assert!(failure_of(Code::Cancelled).worth_another_try());
        assert!(!failure_of(Code::InvalidArgument).worth_another_try());
        let local = client_deadline(Status::cancelled("Timeout expired"));
        assert_eq!(local.code(), Code::DeadlineExceeded);
        // A CANCELLED or UNKNOWN the server sent stays; the same codes made by the client
        // library from a failed connection (the transport's error as source) are UNAVAILABLE.
        assert_eq!(
            client_deadline(Status::cancelled("other")).code(),
            Code::Cancelled
        );
        assert_eq!(client_deadline(Status::unknown("x")).code(), Code::Unknown);
        let reset = || {
            std::sync::Arc::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset",
            ))
        };
        for code in [Code::Cancelled, Code::Unknown] {
            let mut lost = Status::new(code, "operation was canceled");
            lost.set_source(reset());
            assert_eq!(client_deadline(lost).code(), Code::Unavailable, "{code:?}");
        }
        let mut refused = Status::invalid_argument("bad");
        refused.set_source(reset());
        assert_eq!(client_deadline(refused).code(), Code::InvalidArgument);
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }

    #[test]
    fn the_table_reads_back_to_the_kind_it_was_written_from() {
        for kind in [
            ErrorKind::InvalidInput,
            ErrorKind::NotFound,
            ErrorKind::Unsatisfiable,
            ErrorKind::Unavailable,
            ErrorKind::DeadlinePassed,
            ErrorKind::Exhausted { retry_after: None },
            ErrorKind::Unauthenticated,
            ErrorKind::Forbidden,
            ErrorKind::Disabled,
            ErrorKind::Conflict,
            ErrorKind::Internal,
        ] {
            assert_eq!(kind_of(code_of(kind)), Some(kind), "{kind:?}");
        }
    }
}
