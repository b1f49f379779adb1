//! Reading SQuAD-format data sets (v1.1 and v2.0).
//!
//! Layout: `{"version", "data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
//! "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}`. In v2.0 a question with
//! `is_impossible: true` has no answers, and its correct answer is "no answer", the empty string.
//!
//! Errors name the file and the place (JSON path, or article, paragraph and question id), never
//! panic. A [`Dataset`] also resolves a (question, context) pair to its question id, which is how
//! replay experts answer queries sent without an id.

use serde::Deserialize;
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
            let place = e.path().to_string();
            let inner = e.into_inner();
            invalid(
                format!("{place} (line {}, column {})", inner.line(), inner.column()),
                inner.to_string(),
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
            err.starts_with("SQuAD file test.json: at data[0].paragraphs[0].qas[0].id"),
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
