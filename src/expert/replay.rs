//! The replay backend: serves one QA system's recorded answers (`{question id: answer text}`),
//! looking the query up by id, or by (question, context) in the data set the recordings belong
//! to. It never makes an answer up: a query it has no recording for is `NoAnswer`. It announces
//! the queries it holds ([`Capabilities::holds`]), so the scheduler does not ask it others.

use super::{Backend, BackendAnswer, BackendError, find_span};
use crate::core::capability::{Capabilities, Holdings, content_fingerprint, id_fingerprint};
use crate::core::query::Query;
use crate::squad::{Dataset, PredictionsError, load_predictions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug)]
pub struct ReplayBackend {
    answers: HashMap<String, String>,
    /// Content fingerprint of each recorded question of the data set → its id.
    by_content: HashMap<u64, String>,
    /// The queries it answers, announced to the scheduler.
    holdings: Arc<Holdings>,
    /// It has the data set, so it can resolve a query by its text.
    resolves_text: bool,
    source: PathBuf,
    /// Compute units one recorded answer stands for: the declared cost of the recorded system.
    units_per_answer: f64,
}

impl ReplayBackend {
    pub fn load(
        predictions: &Path,
        dataset: Option<Arc<Dataset>>,
        units_per_answer: f64,
    ) -> Result<Self, PredictionsError> {
        let answers = load_predictions(predictions)?;
        Ok(Self::from_answers(
            answers,
            dataset,
            predictions.to_owned(),
            units_per_answer,
        ))
    }

    pub fn from_answers(
        answers: HashMap<String, String>,
        dataset: Option<Arc<Dataset>>,
        source: PathBuf,
        units_per_answer: f64,
    ) -> Self {
        let by_content: HashMap<u64, String> = dataset
            .iter()
            .flat_map(|d| d.questions())
            .filter(|(_, _, q)| answers.contains_key(&q.id))
            .map(|(_, p, q)| (content_fingerprint(&q.question, &p.context), q.id.clone()))
            .collect();
        let holdings = Arc::new(Holdings::new(
            answers.keys().map(|id| id_fingerprint(id)),
            by_content.keys().copied(),
        ));
        Self {
            resolves_text: dataset.is_some(),
            answers,
            by_content,
            holdings,
            source,
            units_per_answer,
        }
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

impl Backend for ReplayBackend {
    fn kind(&self) -> &'static str {
        "replay"
    }

    fn detail(&self) -> String {
        format!(
            "{} recorded answers from {}",
            self.answers.len(),
            self.source.display()
        )
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            holds: Some(self.holdings.clone()),
            ..Capabilities::default()
        }
    }

    fn answer(&self, query: &Query) -> Result<BackendAnswer, BackendError> {
        // By id, or by the question and context as the announced holdings fingerprint them.
        let id = match query.id() {
            Some(id) => id,
            None if !self.resolves_text => {
                return Err(BackendError::CannotResolve(
                    "this replay expert has no data file to resolve queries by text; send the \
                     query id"
                        .into(),
                ));
            }
            None => self
                .by_content
                .get(&content_fingerprint(query.question(), query.context()))
                .ok_or_else(|| {
                    BackendError::NoAnswer(
                        "no recorded question has this question text and context; send the \
                         query id"
                            .into(),
                    )
                })?,
        };
        let text = self.answers.get(id).ok_or_else(|| {
            BackendError::NoAnswer(format!("no recorded answer for query id {id:?}"))
        })?;
        Ok(BackendAnswer {
            span: find_span(query.context(), text),
            text: text.clone(),
            score: None,
            compute_units: self.units_per_answer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::query::QueryLimits;

    fn dataset() -> Arc<Dataset> {
        let json = r#"{"version": "1.1", "data": [{"title": "T", "paragraphs": [
            {"context": "The Broncos beat the Panthers.", "qas": [
                {"id": "q1", "question": "Who won?", "answers": [{"text": "Broncos", "answer_start": 4}]}]}]}]}"#;
        Arc::new(Dataset::parse(json.as_bytes(), Path::new("d.json")).unwrap())
    }

    fn backend(with_data: bool) -> ReplayBackend {
        let answers = HashMap::from([("q1".to_string(), "Broncos".to_string())]);
        ReplayBackend::from_answers(
            answers,
            with_data.then(dataset),
            PathBuf::from("p.json"),
            7.0,
        )
    }

    fn query(q: &str, c: &str, id: Option<&str>) -> Query {
        Query::new(q, c, id.map(str::to_owned), &QueryLimits::default()).unwrap()
    }

    #[test]
    fn answers_by_id_and_by_text() {
        let b = backend(true);
        let ctx = "The Broncos beat the Panthers.";
        let by_id = b.answer(&query("anything", ctx, Some("q1"))).unwrap();
        assert_eq!(by_id.text, "Broncos");
        assert_eq!(by_id.span, Some((4, 11)));
        assert_eq!(by_id.compute_units, 7.0);
        let by_text = b.answer(&query("Who won?", ctx, None)).unwrap();
        assert_eq!(by_text.text, "Broncos");
    }

    #[test]
    fn never_makes_an_answer_up() {
        let b = backend(true);
        let err = b
            .answer(&query("Who won?", "ctx", Some("nope")))
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::NoAnswer("no recorded answer for query id \"nope\"".into())
        );
        let err = b.answer(&query("Who lost?", "The Broncos beat the Panthers.", None));
        assert!(matches!(err, Err(BackendError::NoAnswer(_))));
        let err = backend(false).answer(&query("Who won?", "ctx", None));
        assert!(matches!(err, Err(BackendError::CannotResolve(_))));
    }

    #[test]
    fn it_announces_exactly_the_queries_it_answers() {
        use crate::core::capability::QueryFit;
        let ctx = "The Broncos beat the Panthers.";
        let cases = [
            ("anything", "at all", Some("q1")),
            ("Who won?", ctx, None),
            (" Who   won? ", "The Broncos beat\nthe Panthers. ", None),
            ("Who won?", ctx, Some("q2")),
            ("Who lost?", ctx, None),
            ("Who won?", "The Broncos beat the Panthers", None),
        ];
        for with_data in [true, false] {
            let b = backend(with_data);
            let capabilities = b.capabilities();
            for (q, c, id) in cases {
                let admitted = capabilities.admits(&QueryFit::new(q, c, id, None)).is_ok();
                let answered = b.answer(&query(q, c, id)).is_ok();
                assert_eq!(admitted, answered, "{q:?} {c:?} {id:?} (data: {with_data})");
            }
        }
        assert_eq!(backend(true).capabilities().holds.unwrap().len(), 1);
    }

    #[test]
    fn load_errors_name_the_file_and_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, r#"{"a": "x", "b": 3}"#).unwrap();
        let err = ReplayBackend::load(&path, None, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.json: at b"), "{err}");
        let err = ReplayBackend::load(&dir.path().join("missing.json"), None, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read predictions file"), "{err}");
    }
}
