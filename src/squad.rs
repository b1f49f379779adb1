//! Reading SQuAD-format data sets (v1.1 and v2.0).
//!
//! Layout: `{"version", "data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
//! "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}`. In v2.0 a question with
//! `is_impossible: true` has no answers, and its correct answer is "no answer", the empty string.
//!
//! Errors name the file and the place (article, paragraph, question and field), never panic. A
//! [`Dataset`] also resolves a (question, context) pair to its question id, which is how replay
//! experts answer queries sent without an id, and scores predictions with the official metric
//! ([`Dataset::evaluate`]).

use crate::core::metric::{self, MetricVersion};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub version: String,
    pub articles: Vec<Article>,
    /// Trimmed question text → (article, paragraph, question) positions of questions with that text.
    by_question: HashMap<String, Vec<(u32, u32, u32)>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Article {
    pub title: String,
    pub paragraphs: Vec<Paragraph>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paragraph {
    pub context: String,
    #[serde(rename = "qas")]
    pub questions: Vec<Question>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub answers: Vec<ReferenceAnswer>,
    /// SQuAD v2.0: the context does not answer the question.
    #[serde(default)]
    pub is_impossible: bool,
    /// SQuAD v2.0: spans that look like answers to unanswerable questions (not used for scoring).
    #[serde(default)]
    pub plausible_answers: Vec<ReferenceAnswer>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceAnswer {
    pub text: String,
    /// Character offset into the context (code points); advisory, not checked.
    pub answer_start: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SquadError {
    #[error("cannot read SQuAD file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SQuAD file {}: at {place}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        place: String,
        message: String,
    },
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    version: Option<String>,
    data: Vec<Article>,
}

impl Dataset {
    pub fn load(path: &Path) -> Result<Self, SquadError> {
        let bytes = std::fs::read(path).map_err(|source| SquadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses and checks a SQuAD file's bytes; `path` only names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, SquadError> {
        let invalid = |place: String, message: String| SquadError::Invalid {
            path: path.to_owned(),
            place,
            message,
        };
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
            // serde_json's message ends with the line and column.
            invalid(
                describe_json_path(&e.path().to_string()),
                e.into_inner().to_string(),
            )
        })?;
        let mut seen: HashMap<&str, String> = HashMap::new();
        let mut by_question: HashMap<String, Vec<(u32, u32, u32)>> = HashMap::new();
        for (a, article) in raw.data.iter().enumerate() {
            for (p, paragraph) in article.paragraphs.iter().enumerate() {
                let place = |q: &Question| {
                    format!(
                        "article {a} ({:?}), paragraph {p}, question {:?}",
                        article.title, q.id
                    )
                };
                if paragraph.context.is_empty() {
                    return Err(invalid(
                        format!("article {a} ({:?}), paragraph {p}", article.title),
                        "context is empty".into(),
                    ));
                }
                for (q, question) in paragraph.questions.iter().enumerate() {
                    if question.id.trim().is_empty() {
                        return Err(invalid(
                            format!(
                                "article {a} ({:?}), paragraph {p}, question {q}",
                                article.title
                            ),
                            "question id is empty".into(),
                        ));
                    }
                    if question.question.trim().is_empty() {
                        return Err(invalid(place(question), "question text is empty".into()));
                    }
                    if !question.is_impossible && question.answers.is_empty() {
                        return Err(invalid(
                            place(question),
                            "no reference answers, and the question is not marked is_impossible"
                                .into(),
                        ));
                    }
                    if let Some(first) = seen.insert(&question.id, place(question)) {
                        return Err(invalid(
                            place(question),
                            format!("duplicate question id, first seen at {first}"),
                        ));
                    }
                    by_question
                        .entry(question.question.trim().to_owned())
                        .or_default()
                        .push((a as u32, p as u32, q as u32));
                }
            }
        }
        Ok(Self {
            version: raw.version.unwrap_or_default(),
            articles: raw.data,
            by_question,
        })
    }

    /// Every question with its article title and context, in file order.
    pub fn questions(&self) -> impl Iterator<Item = (&Article, &Paragraph, &Question)> {
        self.articles.iter().flat_map(|a| {
            a.paragraphs
                .iter()
                .flat_map(move |p| p.questions.iter().map(move |q| (a, p, q)))
        })
    }

    pub fn len(&self) -> usize {
        self.by_question.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_question.is_empty()
    }

    /// The id of the question with this text (white space around it ignored) asked about exactly
    /// this context.
    pub fn find_id(&self, question: &str, context: &str) -> Option<&str> {
        self.by_question
            .get(question.trim())?
            .iter()
            .find(|&&(a, p, _)| self.articles[a as usize].paragraphs[p as usize].context == context)
            .map(|&(a, p, q)| {
                self.articles[a as usize].paragraphs[p as usize].questions[q as usize]
                    .id
                    .as_str()
            })
    }
}

impl Dataset {
    /// Which official script's scoring rules apply: v2.0 for files that say so or that hold
    /// unanswerable questions.
    pub fn metric_version(&self) -> MetricVersion {
        let says_v2 = self.version.trim_start_matches(['v', 'V']).starts_with('2');
        if says_v2 || self.questions().any(|(_, _, q)| q.is_impossible) {
            MetricVersion::V2
        } else {
            MetricVersion::V1
        }
    }

    /// Scores `predictions` (question id → answer text) with the official metric. A question
    /// without a prediction scores 0; predictions for ids not in the set are ignored.
    pub fn evaluate(&self, predictions: &HashMap<String, String>) -> Evaluation {
        self.evaluate_where(predictions, |_| true)
    }

    /// [`Dataset::evaluate`] over the questions `include` accepts.
    pub fn evaluate_where(
        &self,
        predictions: &HashMap<String, String>,
        include: impl Fn(&Question) -> bool,
    ) -> Evaluation {
        let version = self.metric_version();
        let mut all = Tally::default();
        let mut has_ans = Tally::default();
        let mut no_ans = Tally::default();
        let mut missing = 0;
        for (_, _, q) in self.questions().filter(|(_, _, q)| include(q)) {
            let score = match predictions.get(&q.id) {
                Some(prediction) => {
                    let references: Vec<&str> = q.answers.iter().map(|a| a.text.as_str()).collect();
                    metric::score(prediction, &references, version)
                }
                None => {
                    missing += 1;
                    metric::Score {
                        exact: 0.0,
                        f1: 0.0,
                    }
                }
            };
            all.add(score);
            if q.answers.is_empty() {
                &mut no_ans
            } else {
                &mut has_ans
            }
            .add(score);
        }
        let v2 = version == MetricVersion::V2;
        Evaluation {
            exact_match: all.exact_pct(),
            f1: all.f1_pct(),
            total: all.total,
            missing,
            has_ans: (v2 && has_ans.total > 0).then(|| has_ans.split()),
            no_ans: (v2 && no_ans.total > 0).then(|| no_ans.split()),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    exact: f64,
    f1: f64,
    total: u64,
}

impl Tally {
    fn add(&mut self, s: metric::Score) {
        self.exact += s.exact;
        self.f1 += s.f1;
        self.total += 1;
    }

    fn exact_pct(&self) -> f64 {
        percent(self.exact, self.total)
    }

    fn f1_pct(&self) -> f64 {
        percent(self.f1, self.total)
    }

    fn split(&self) -> Split {
        Split {
            exact: self.exact_pct(),
            f1: self.f1_pct(),
            total: self.total,
        }
    }
}

fn percent(sum: f64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * sum / total as f64
    }
}

/// The official scripts' figures, in percent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub exact_match: f64,
    pub f1: f64,
    pub total: u64,
    /// Questions with no prediction (scored 0).
    pub missing: u64,
    /// v2.0 only: questions with answers.
    #[serde(rename = "HasAns", skip_serializing_if = "Option::is_none")]
    pub has_ans: Option<Split>,
    /// v2.0 only: unanswerable questions.
    #[serde(rename = "NoAns", skip_serializing_if = "Option::is_none")]
    pub no_ans: Option<Split>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Split {
    pub exact: f64,
    pub f1: f64,
    pub total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PredictionsError {
    #[error("cannot read predictions file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "predictions file {}: at {place}: {message} (expected a JSON object {{question id: answer text}})",
        path.display()
    )]
    Invalid {
        path: PathBuf,
        place: String,
        message: String,
    },
}

/// Reads a predictions file: a JSON object mapping question ids to answer texts.
pub fn load_predictions(path: &Path) -> Result<HashMap<String, String>, PredictionsError> {
    let bytes = std::fs::read(path).map_err(|source| PredictionsError::Io {
        path: path.to_owned(),
        source,
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| PredictionsError::Invalid {
        path: path.to_owned(),
        place: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

/// Renders a serde path such as `data[3].paragraphs[7].qas[2].id` as
/// `article 3, paragraph 7, question 2, field id`.
fn describe_json_path(path: &str) -> String {
    let mut parts = Vec::new();
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').split("][").next()),
            None => (segment, None),
        };
        let label = match name {
            "data" => "article",
            "paragraphs" => "paragraph",
            "qas" => "question",
            "answers" => "answer",
            "plausible_answers" => "plausible answer",
            _ => "",
        };
        match (label, index) {
            ("", _) => parts.push(format!("field {segment}")),
            (label, Some(i)) => parts.push(format!("{label} {i}")),
            (_, None) => parts.push(format!("field {name}")),
        }
    }
    parts.join(", ")
}

/// Loads each data set once per process, however many experts refer to it.
#[derive(Debug, Default)]
pub struct DatasetCache {
    loaded: Mutex<HashMap<PathBuf, Arc<Dataset>>>,
}

impl DatasetCache {
    pub fn get(&self, path: &Path) -> Result<Arc<Dataset>, SquadError> {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        // Loading under the lock is deliberate: two experts sharing a file must not parse it twice,
        // and nothing here awaits.
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dataset) = loaded.get(&key) {
            return Ok(dataset.clone());
        }
        let dataset = Arc::new(Dataset::load(path)?);
        loaded.insert(key, dataset.clone());
        Ok(dataset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"{"version": "v2.0", "data": [{"title": "T", "paragraphs": [
        {"context": "Denver won in 2016.", "qas": [
            {"id": "a", "question": "Who won?", "answers": [{"text": "Denver", "answer_start": 0}]},
            {"id": "b", "question": "Who lost?", "answers": [], "is_impossible": true,
             "plausible_answers": [{"text": "Denver", "answer_start": 0}]}]},
        {"context": "Carolina lost.", "qas": [
            {"id": "c", "question": "Who won?", "answers": [{"text": "nobody", "answer_start": null}]}]}
    ]}]}"#;

    fn parse(text: &str) -> Result<Dataset, SquadError> {
        Dataset::parse(text.as_bytes(), Path::new("test.json"))
    }

    #[test]
    fn reads_v2_with_impossible_questions() {
        let d = parse(V2).unwrap();
        assert_eq!(d.version, "v2.0");
        assert_eq!(d.len(), 3);
        let (_, _, b) = d.questions().nth(1).unwrap();
        assert!(b.is_impossible && b.answers.is_empty());
    }

    #[test]
    fn v2_scoring_splits_answerable_and_unanswerable() {
        let d = parse(V2).unwrap();
        assert_eq!(d.metric_version(), MetricVersion::V2);
        let predictions = HashMap::from([
            ("a".to_string(), "Denver".to_string()),
            ("b".to_string(), "Denver".to_string()),
        ]);
        let e = d.evaluate(&predictions);
        assert_eq!(e.total, 3);
        assert_eq!(e.missing, 1);
        assert!((e.exact_match - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(
            e.has_ans.unwrap(),
            Split {
                exact: 50.0,
                f1: 50.0,
                total: 2
            }
        );
        assert_eq!(
            e.no_ans.unwrap(),
            Split {
                exact: 0.0,
                f1: 0.0,
                total: 1
            }
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["HasAns"]["total"], 2);
        // Abstaining on "b" is right.
        let abstain = HashMap::from([("b".to_string(), String::new())]);
        assert_eq!(d.evaluate(&abstain).no_ans.unwrap().exact, 100.0);
    }

    #[test]
    fn v1_files_have_no_splits() {
        let v1 = r#"{"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "c d", "qas": [
            {"id": "x", "question": "q?", "answers": [{"text": "c", "answer_start": 0}]}]}]}]}"#;
        let d = parse(v1).unwrap();
        assert_eq!(d.metric_version(), MetricVersion::V1);
        let e = d.evaluate(&HashMap::from([("x".to_string(), "the c".to_string())]));
        assert_eq!(
            (e.exact_match, e.f1, e.total, e.missing),
            (100.0, 100.0, 1, 0)
        );
        assert!(e.has_ans.is_none() && e.no_ans.is_none());
        let json = serde_json::to_value(&e).unwrap();
        assert!(json.get("HasAns").is_none());
    }

    #[test]
    fn resolves_question_and_context_to_id() {
        let d = parse(V2).unwrap();
        assert_eq!(d.find_id(" Who won? ", "Denver won in 2016."), Some("a"));
        assert_eq!(d.find_id("Who won?", "Carolina lost."), Some("c"));
        assert_eq!(d.find_id("Who won?", "Some other text."), None);
        assert_eq!(d.find_id("Why?", "Carolina lost."), None);
    }

    #[test]
    fn malformed_files_name_the_place() {
        let err = parse(
            r#"{"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": 5}]}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "SQuAD file test.json: at article 0, paragraph 0, question 0, field id: \
                 invalid type: integer `5`, expected a string at line 1 column"
            ),
            "{err}"
        );

        let err = parse(
            r#"{"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [
            {"id": "x", "question": "q?", "answers": []}]}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(r#"article 0 ("T"), paragraph 0, question "x""#),
            "{err}"
        );
        assert!(err.contains("not marked is_impossible"), "{err}");

        let err = parse(
            r#"{"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [
            {"id": "x", "question": "q?", "answers": [{"text": "c", "answer_start": 0}]},
            {"id": "x", "question": "r?", "answers": [{"text": "c", "answer_start": 0}]}]}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("duplicate question id"), "{err}");

        assert!(parse("not json").is_err());
        assert!(parse("").is_err());
    }
}
