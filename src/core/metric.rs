//! The official SQuAD metric, exactly: answer normalisation, exact match and token F1, maximum
//! over the reference answers.
//!
//! Normalisation follows the official evaluation scripts (v1.1 and v2.0): lower-case, remove
//! ASCII punctuation (Python's `string.punctuation`), replace the words a/an/the with a space
//! (`\b(a|an|the)\b`, with Python's Unicode word boundaries), collapse white space (Python's
//! `str.split()` white space). Scoring differs between the two scripts in two corners, and
//! [`MetricVersion`] selects which:
//!
//! - v1.1: F1 is 0 when the prediction and reference share no token (so an empty prediction
//!   scores F1 0 against anything).
//! - v2.0: references that normalise to nothing are dropped, and a question left with none (an
//!   unanswerable question) has the single reference "" (no answer); F1 is 1 when both sides
//!   are empty and 0 when only one is.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricVersion {
    V1,
    V2,
}

/// Python's `str.split()` white space: Unicode White_Space plus the ASCII separators
/// U+001C..U+001F, which Python also treats as white space.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\w` for `str` patterns: Unicode letters and digits, and the underscore.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_ascii_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// The normalised form of an answer, as the official scripts compute it.
pub fn normalize_answer(s: &str) -> String {
    let lowered: String = s.to_lowercase();
    let unpunctuated: Vec<char> = lowered
        .chars()
        .filter(|&c| !is_ascii_punctuation(c))
        .collect();
    // Replace every a/an/the standing between word boundaries with a space.
    let mut without_articles = String::with_capacity(unpunctuated.len());
    let mut i = 0;
    while i < unpunctuated.len() {
        let at_boundary = i == 0 || !is_word_char(unpunctuated[i - 1]);
        if at_boundary && let Some(len) = article_at(&unpunctuated[i..]) {
            without_articles.push(' ');
            i += len;
            continue;
        }
        without_articles.push(unpunctuated[i]);
        i += 1;
    }
    without_articles
        .split(is_python_space)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Length of the article (a, an, the) starting `chars`, if one ends at a word boundary there.
/// Regex alternation tries `a` before `an`: `a` matches only when a boundary follows it.
fn article_at(chars: &[char]) -> Option<usize> {
    let ends_word = |len: usize| chars.get(len).is_none_or(|&c| !is_word_char(c));
    for article in [&['a'][..], &['a', 'n'], &['t', 'h', 'e']] {
        if chars.starts_with(article) && ends_word(article.len()) {
            return Some(article.len());
        }
    }
    None
}

fn tokens(normalized: &str) -> Vec<&str> {
    normalized.split(' ').filter(|t| !t.is_empty()).collect()
}

/// Exact match of two already-normalised answers.
fn exact(pred: &str, gold: &str) -> f64 {
    f64::from(u8::from(pred == gold))
}

/// Token F1 of two answers normalised already ([`normalize_answer`]), as SQuAD v1.1 scores it.
pub fn token_f1(pred: &str, gold: &str) -> f64 {
    f1(pred, gold, MetricVersion::V1)
}

/// Token F1 of two already-normalised answers.
fn f1(pred: &str, gold: &str, version: MetricVersion) -> f64 {
    let (p, g) = (tokens(pred), tokens(gold));
    if version == MetricVersion::V2 && (p.is_empty() || g.is_empty()) {
        return f64::from(u8::from(p == g));
    }
    let mut counts: HashMap<&str, i32> = HashMap::with_capacity(g.len());
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0;
    for t in &p {
        if let Some(c) = counts.get_mut(t)
            && *c > 0
        {
            *c -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// EM and F1 of one prediction (each 0..=1), the maximum over `references`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub exact: f64,
    pub f1: f64,
}

/// Scores `prediction` against the reference answers of one question. For v2.0, an empty
/// reference list (an unanswerable question) means the correct answer is "no answer" (`""`).
pub fn score(prediction: &str, references: &[&str], version: MetricVersion) -> Score {
    let pred = normalize_answer(prediction);
    let mut golds: Vec<String> = references.iter().map(|r| normalize_answer(r)).collect();
    if version == MetricVersion::V2 {
        golds.retain(|g| !g.is_empty());
        if golds.is_empty() {
            golds.push(String::new());
        }
    }
    golds.iter().fold(
        Score {
            exact: 0.0,
            f1: 0.0,
        },
        |best, gold| Score {
            exact: best.exact.max(exact(&pred, gold)),
            f1: best.f1.max(f1(&pred, gold, version)),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_matches_the_official_script() {
        // Expected values computed with the official script's normalize_answer.
        let cases = [
            ("The Denver Broncos!", "denver broncos"),
            ("  a  cat, an   apple\tand THE end ", "cat apple and end"),
            ("1,000,000", "1000000"),
            ("3.14", "314"),
            ("U.S.A.", "usa"),
            ("then theme another", "then theme another"),
            ("the_x", "thex"),
            ("théâtre a1 an_b ánthe the", "théâtre a1 anb ánthe"),
            ("Zürich’s “quotes” — dash", "zürich’s “quotes” — dash"),
            ("ΣΊΣΥΦΟΣ", "σίσυφος"),
            ("", ""),
            ("!!!", ""),
            ("the a an", ""),
            ("a-b", "ab"),
            ("x\u{1f}y\u{a0}z", "x y z"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_answer(input), expected, "{input:?}");
        }
    }

    #[test]
    fn exact_and_f1_take_the_best_reference() {
        let s = score(
            "Denver Broncos",
            &["Broncos", "the Denver Broncos"],
            MetricVersion::V1,
        );
        assert_eq!(
            s,
            Score {
                exact: 1.0,
                f1: 1.0
            }
        );
        let s = score("Broncos of Denver", &["Denver Broncos"], MetricVersion::V1);
        assert_eq!(s.exact, 0.0);
        // 2 shared of 3 predicted, 2 of 2 reference: P 2/3, R 1, F1 0.8.
        assert!((s.f1 - 0.8).abs() < 1e-12);
        // Repeated tokens count once per occurrence on both sides.
        let s = score("the the cat cat", &["cat"], MetricVersion::V1);
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12, "{}", s.f1);
    }

    #[test]
    fn empty_answers_follow_each_script() {
        // v1.1: an empty prediction shares no token: F1 0.
        assert_eq!(
            score("", &["Denver"], MetricVersion::V1),
            Score {
                exact: 0.0,
                f1: 0.0
            }
        );
        // v2.0: an unanswerable question is answered right by "no answer" only.
        assert_eq!(
            score("", &[], MetricVersion::V2),
            Score {
                exact: 1.0,
                f1: 1.0
            }
        );
        assert_eq!(
            score("Denver", &[], MetricVersion::V2),
            Score {
                exact: 0.0,
                f1: 0.0
            }
        );
        assert_eq!(
            score("", &["Denver"], MetricVersion::V2),
            Score {
                exact: 0.0,
                f1: 0.0
            }
        );
        // v2.0 drops references that normalise to nothing.
        assert_eq!(score("", &["the", "Denver"], MetricVersion::V2).exact, 0.0);
        assert_eq!(score("", &["the", "Denver"], MetricVersion::V1).exact, 1.0);
    }

    proptest::proptest! {
        /// The featurizer scores the probes' normalised answers against each other directly:
        /// normalising twice must change nothing, and F1 of the normalised forms must be the
        /// official F1.
        #[test]
        fn normalising_is_idempotent(
            a in "[ a-zA-Z0-9.,!?'\"()\\-–éÉİK\u{212A}]{0,24}",
            b in "[ a-zA-Z0-9.,!?'\"()\\-–éÉİK\u{212A}]{0,24}",
        ) {
            let (na, nb) = (normalize_answer(&a), normalize_answer(&b));
            proptest::prop_assert_eq!(&normalize_answer(&na), &na);
            proptest::prop_assert_eq!(token_f1(&na, &nb), score(&a, &[&b], MetricVersion::V1).f1);
        }
    }
}
