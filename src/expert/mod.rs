//! The expert worker: one QA model behind the `Expert` service.
//!
//! [`Model`] is what the worker calls: asynchronous, given the time the caller has left, with
//! a readiness of its own when it stands for a model server (the `openai` and `kserve`
//! backends call one over the network). [`Backend`] is the simpler form for models computed in
//! the worker itself (replay and the live readers answer in microseconds; a heavy one should
//! hand work to `spawn_blocking`); every `Backend` is a `Model` through [`Local`].
//! [`ExpertNode`] wraps a model with its identity, validation and load counters; [`serve`] runs
//! it on a bound listener, optionally keeping a lease with a scheduler ([`registration`]).

pub mod align;
pub mod kserve;
pub mod lexical;
pub mod openai;
pub mod registration;
pub mod replay;
mod service;
pub mod typed;

pub use registration::LoadCounters;
pub use registration::Registration;
pub use service::{ExpertNode, Fault, SERVICES, serve};

use crate::core::capability::Capabilities;
use crate::core::query::Query;
use std::sync::Arc;
use std::time::Duration;

/// One answer as a backend produces it; the service adds timing and identity.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendAnswer {
    /// Empty means "no answer".
    pub text: String,
    /// Code-point offsets `[start, end)` into the context, when known.
    pub span: Option<(u32, u32)>,
    pub score: Option<f64>,
    /// Compute units spent, on the scale of the declared cost.
    pub compute_units: f64,
}

impl BackendAnswer {
    /// A live reader's answer: the best `(score, start token, end token)` span of `passage`, or
    /// "no answer" when there was no candidate; `scored` candidates is the work done.
    pub fn from_span(
        passage: &crate::core::reading::Passage<'_>,
        best: Option<(f64, usize, usize)>,
        scored: usize,
    ) -> Self {
        match best {
            Some((score, i, j)) => {
                let (text, span) = passage.span_text(i, j);
                Self {
                    text,
                    span: Some(span),
                    score: Some(score),
                    compute_units: scored as f64,
                }
            }
            None => Self {
                text: String::new(),
                span: None,
                score: None,
                compute_units: scored as f64,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend has no answer for this query (e.g. a replay expert never saw it).
    #[error("{0}")]
    NoAnswer(String),
    /// The backend cannot work out which query this is (e.g. no id and no data file).
    #[error("{0}")]
    CannotResolve(String),
    /// The model server cannot be reached or refuses work for now (worth another replica).
    #[error("{0}")]
    Unavailable(String),
    /// The answer did not come within the caller's deadline or the backend's timeout.
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
}

impl crate::core::error_kind::HasKind for BackendError {
    fn kind(&self) -> crate::core::error_kind::ErrorKind {
        use crate::core::error_kind::ErrorKind;
        match self {
            BackendError::NoAnswer(_) => ErrorKind::NotFound,
            BackendError::CannotResolve(_) => ErrorKind::Unsatisfiable,
            BackendError::Unavailable(_) => ErrorKind::Unavailable,
            BackendError::DeadlineExceeded(_) => ErrorKind::DeadlinePassed,
            BackendError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl From<BackendError> for tonic::Status {
    fn from(e: BackendError) -> Self {
        crate::grpc::status::status_of(&e)
    }
}

pub trait Backend: Send + Sync + 'static {
    /// The backend kind as named in pool files: "replay", ...
    fn kind(&self) -> &'static str;
    /// One line saying what this instance serves (e.g. its predictions file).
    fn detail(&self) -> String;
    fn answer(&self, query: &Query) -> Result<BackendAnswer, BackendError>;
    /// What it can take (a replay backend: the queries it holds a recording of). Default:
    /// anything.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

/// What the worker calls to answer a query.
#[tonic::async_trait]
pub trait Model: Send + Sync + 'static {
    /// The backend kind as named in pool files: "replay", "openai", ...
    fn kind(&self) -> &'static str;
    /// One line saying what this instance serves (never a secret).
    fn detail(&self) -> String;
    /// What it can take. Default: anything.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    /// Answers `query`, within `time_left` when the caller set a deadline.
    async fn answer(
        &self,
        query: &Query,
        time_left: Option<Duration>,
    ) -> Result<BackendAnswer, BackendError>;
    /// Whether it has a readiness of its own (a model server), which [`Model::readiness`]
    /// reports; otherwise it is ready whenever the worker is.
    fn has_readiness(&self) -> bool {
        false
    }
    /// Whether the model can answer now: `Err(why)` when it cannot.
    async fn readiness(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A [`Backend`] as a [`Model`]: answered in place, always ready.
pub struct Local(pub Arc<dyn Backend>);

#[tonic::async_trait]
impl Model for Local {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn detail(&self) -> String {
        self.0.detail()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn answer(
        &self,
        query: &Query,
        _time_left: Option<Duration>,
    ) -> Result<BackendAnswer, BackendError> {
        self.0.answer(query)
    }
}

/// What bounds one call to a model server: the caller's deadline or the backend's timeout,
/// whichever ends first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limit {
    pub time: Duration,
    /// The caller's deadline is the bound (not the backend's own timeout).
    pub callers: bool,
}

impl Limit {
    pub fn of(time_left: Option<Duration>, timeout: Duration) -> Self {
        match time_left {
            Some(left) if left <= timeout => Self {
                time: left,
                callers: true,
            },
            _ => Self {
                time: timeout,
                callers: false,
            },
        }
    }

    /// No answer from `server` within the limit: DEADLINE_EXCEEDED when it was the caller's
    /// deadline (nothing more can be done for this query), UNAVAILABLE when it was the
    /// backend's timeout (another replica or expert may still answer in the time left).
    pub fn expired(&self, server: &str) -> BackendError {
        let ms = self.time.as_millis();
        if self.callers {
            BackendError::DeadlineExceeded(format!(
                "{server} did not answer within the caller's deadline ({ms} ms)"
            ))
        } else {
            BackendError::Unavailable(format!(
                "{server} did not answer within the backend's timeout ({ms} ms)"
            ))
        }
    }
}

/// The answer for an aligned span, or "no answer".
pub(crate) fn answer_from(aligned: Option<align::Aligned>, units: f64) -> BackendAnswer {
    match aligned {
        Some(a) => BackendAnswer {
            text: a.text,
            span: Some((a.start, a.end)),
            score: None,
            compute_units: units,
        },
        None => BackendAnswer {
            text: String::new(),
            span: None,
            score: None,
            compute_units: units,
        },
    }
}

/// Code-point span of the first occurrence of `needle` in `haystack`, if any.
pub fn find_span(haystack: &str, needle: &str) -> Option<(u32, u32)> {
    if needle.is_empty() {
        return None;
    }
    let byte_start = haystack.find(needle)?;
    let start = haystack[..byte_start].chars().count();
    let len = needle.chars().count();
    Some((start as u32, (start + len) as u32))
}

#[cfg(test)]
mod tests {
    use super::{BackendError, Limit, find_span};
    use std::time::Duration;

    #[test]
    fn only_the_callers_deadline_ends_the_query() {
        let timeout = Duration::from_secs(5);
        let callers = Limit::of(Some(Duration::from_millis(300)), timeout);
        assert_eq!(callers.time, Duration::from_millis(300));
        assert!(matches!(
            callers.expired("s"),
            BackendError::DeadlineExceeded(m) if m == "s did not answer within the caller's deadline (300 ms)"
        ));
        // The backend's own timeout, with time left: another replica may answer.
        for time_left in [None, Some(Duration::from_secs(30))] {
            let own = Limit::of(time_left, timeout);
            assert_eq!(own.time, timeout);
            assert!(matches!(own.expired("s"), BackendError::Unavailable(_)));
        }
    }

    #[test]
    fn spans_count_code_points_not_bytes() {
        assert_eq!(find_span("Zürich is in Schweiz", "Schweiz"), Some((13, 20)));
        assert_eq!(find_span("abc", "x"), None);
        assert_eq!(find_span("abc", ""), None);
    }
}
