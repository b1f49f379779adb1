//! A validated extractive-QA query: what every node checks once, at its edge, before any work.

use super::reading::ContextAnalysis;
use std::fmt;
use std::sync::Arc;

/// Size limits applied to every incoming query. Generous for SQuAD (the longest dev context is
/// under 4,000 characters) while keeping one query from costing unbounded work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    pub max_question_bytes: usize,
    pub max_context_bytes: usize,
    pub max_id_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_question_bytes: 4 * 1024,
            max_context_bytes: 256 * 1024,
            max_id_bytes: 256,
        }
    }
}

/// A question about a context, optionally carrying the query id of a labelled data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    question: String,
    context: String,
    id: Option<String>,
    /// The context analysed before, when the caller keeps analyses of recent contexts.
    analysis: Option<Arc<ContextAnalysis>>,
}

/// Why a query was refused. Each variant maps to one gRPC status in `grpc::status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("question is empty")]
    EmptyQuestion,
    #[error("context is empty: an extractive question needs the passage to answer from")]
    EmptyContext,
    #[error("id is empty: leave it unset instead")]
    EmptyId,
    #[error("{field} is {actual} bytes, over the limit of {limit}")]
    TooLarge {
        field: &'static str,
        actual: usize,
        limit: usize,
    },
}

impl Query {
    /// Checks a query's fields. Surrounding white space of the question and id is not
    /// significant and is trimmed; the context is kept as sent, since answer spans index into it.
    pub fn new(
        question: impl Into<String>,
        context: impl Into<String>,
        id: Option<String>,
        limits: &QueryLimits,
    ) -> Result<Self, QueryError> {
        let question = question.into();
        let context = context.into();
        check_size("question", question.len(), limits.max_question_bytes)?;
        check_size("context", context.len(), limits.max_context_bytes)?;
        let question = trim_owned(question);
        if question.is_empty() {
            return Err(QueryError::EmptyQuestion);
        }
        if context.trim().is_empty() {
            return Err(QueryError::EmptyContext);
        }
        let id = match id {
            None => None,
            Some(id) => {
                check_size("id", id.len(), limits.max_id_bytes)?;
                let id = trim_owned(id);
                if id.is_empty() {
                    return Err(QueryError::EmptyId);
                }
                Some(id)
            }
        };
        Ok(Self {
            question,
            context,
            id,
            analysis: None,
        })
    }

    /// Attaches an analysis of the context made before. One of another context is ignored.
    pub fn with_analysis(mut self, analysis: Arc<ContextAnalysis>) -> Self {
        if analysis.is_of(&self.context) {
            self.analysis = Some(analysis);
        }
        self
    }

    /// The context's analysis, when one was attached.
    pub fn analysis(&self) -> Option<&ContextAnalysis> {
        self.analysis.as_deref()
    }

    pub fn question(&self) -> &str {
        &self.question
    }

    pub fn context(&self) -> &str {
        &self.context
    }

    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "query {id}"),
            None => write!(f, "query without id"),
        }
    }
}

fn check_size(field: &'static str, actual: usize, limit: usize) -> Result<(), QueryError> {
    if actual > limit {
        Err(QueryError::TooLarge {
            field,
            actual,
            limit,
        })
    } else {
        Ok(())
    }
}

fn trim_owned(s: String) -> String {
    let trimmed = s.trim();
    if trimmed.len() == s.len() {
        s
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str, c: &str, id: Option<&str>) -> Result<Query, QueryError> {
        Query::new(q, c, id.map(str::to_owned), &QueryLimits::default())
    }

    #[test]
    fn trims_question_and_id_but_keeps_context_verbatim() {
        let q = query("  Who won? \n", "  The Broncos won. ", Some(" q1 ")).unwrap();
        assert_eq!(q.question(), "Who won?");
        assert_eq!(q.context(), "  The Broncos won. ");
        assert_eq!(q.id(), Some("q1"));
    }

    #[test]
    fn refuses_blank_fields() {
        assert_eq!(query(" \t", "ctx", None), Err(QueryError::EmptyQuestion));
        assert_eq!(query("Who?", "   ", None), Err(QueryError::EmptyContext));
        assert_eq!(query("Who?", "ctx", Some("  ")), Err(QueryError::EmptyId));
    }

    #[test]
    fn refuses_oversized_fields_before_copying_them() {
        let limits = QueryLimits {
            max_question_bytes: 8,
            max_context_bytes: 16,
            max_id_bytes: 4,
        };
        let err = Query::new("a".repeat(9), "ctx", None, &limits).unwrap_err();
        assert_eq!(
            err,
            QueryError::TooLarge {
                field: "question",
                actual: 9,
                limit: 8
            }
        );
        let err = Query::new("q", "c".repeat(17), None, &limits).unwrap_err();
        assert!(matches!(
            err,
            QueryError::TooLarge {
                field: "context",
                ..
            }
        ));
        let err = Query::new("q", "c", Some("12345".into()), &limits).unwrap_err();
        assert!(matches!(err, QueryError::TooLarge { field: "id", .. }));
    }
}
