//! The one table that maps l2d's errors to gRPC status codes. Messages are lowercase, specific,
//! and carry no trailing period.

use crate::core::decision::DecisionError;
use crate::core::error_kind::{ErrorKind, HasKind};
use crate::core::query::QueryError;
use tonic::{Code, Status};

/// The table: each kind of domain error and its gRPC code.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidInput => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Unsatisfiable => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Exhausted { .. } => Code::ResourceExhausted,
        ErrorKind::Forbidden => Code::PermissionDenied,
        ErrorKind::Conflict => Code::AlreadyExists,
        ErrorKind::Internal => Code::Internal,
    }
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

/// A client's view of a call it gave a deadline: tonic's client enforces that deadline itself
/// and reports it as CANCELLED "Timeout expired" when it fires before the server's answer
/// arrives; that is the deadline's, DEADLINE_EXCEEDED, as gRPC specifies for clients.
pub fn client_deadline(status: Status) -> Status {
    if status.code() == Code::Cancelled && status.message() == "Timeout expired" {
        Status::deadline_exceeded("deadline passed before the answer arrived")
    } else {
        status
    }
}

/// Whether a failed expert call is worth trying elsewhere. A query the expert refused as
/// malformed fails the same way everywhere, and a deadline that passed has passed; every other
/// failure (unreachable, overloaded, no answer in its recordings, internal error) may succeed on
/// another replica or expert. That includes CANCELLED: the scheduler's own cancellation drops
/// the call instead of returning it, so an expert call ends CANCELLED when its connection died
/// under it (a killed replica) or when the expert's server ran out of the forwarded deadline,
/// which the caller checks first.
pub fn worth_another_try(code: Code) -> bool {
    !matches!(code, Code::InvalidArgument | Code::DeadlineExceeded)
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
    fn only_failures_that_may_succeed_elsewhere_are_retried() {
        assert!(worth_another_try(Code::Unavailable));
        assert!(worth_another_try(Code::NotFound));
        assert!(worth_another_try(Code::Internal));
        assert!(!worth_another_try(Code::InvalidArgument));
        assert!(!worth_another_try(Code::DeadlineExceeded));
        assert!(worth_another_try(Code::Cancelled));
        let local = client_deadline(Status::cancelled("Timeout expired"));
        assert_eq!(local.code(), Code::DeadlineExceeded);
        assert_eq!(
            client_deadline(Status::cancelled("other")).code(),
            Code::Cancelled
        );
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
