//! The `lexical` backend: the sliding-window baseline of the SQuAD paper (Rajpurkar et al.,
//! 2016, after MCTest's sliding window). Every span of up to `max_answer_tokens` tokens inside a
//! sentence is a candidate; its score is the inverse-count weight of the distinct question terms
//! within `window` tokens on either side (windows stop at the sentence's ends); ties go to the
//! span nearest a question term, then to the longer span. No training, microseconds per query.
//! On SQuAD v1.1 dev: 12.4 EM / 22.8 F1 (the SQuAD paper reports about 13 EM / 20 F1 for its own).
//!
//! Compute units: candidate spans scored (the work the reader does is linear in them).

use super::{Backend, BackendAnswer, BackendError};
use crate::core::query::Query;
use crate::core::reading::Passage;

#[derive(Debug, Clone)]
pub struct LexicalReader {
    pub max_answer_tokens: usize,
    pub window: usize,
}

impl Default for LexicalReader {
    fn default() -> Self {
        Self {
            max_answer_tokens: 3,
            window: 6,
        }
    }
}

/// The best span found by a reader, with the work it took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub start: usize,
    pub end: usize,
    pub score: f64,
    pub scored: usize,
}

impl LexicalReader {
    /// The best sliding-window span within the token range `[lo, hi)`.
    pub fn best_in(&self, passage: &Passage<'_>, lo: usize, hi: usize) -> Option<Pick> {
        let mut best: Option<(f64, usize, usize, usize)> = None;
        let mut scored = 0;
        for i in lo..hi {
            for len in 1..=self.max_answer_tokens {
                let j = i + len;
                if j > hi {
                    break;
                }
                if !passage.is_candidate(i, j) {
                    continue;
                }
                scored += 1;
                let score = passage.window_overlap(i, j, self.window, lo, hi);
                let distance = passage.distance_to_question(i, j);
                let better = match best {
                    None => true,
                    Some((s, d, l, _)) => {
                        score > s + 1e-12
                            || ((score - s).abs() <= 1e-12
                                && (distance, std::cmp::Reverse(len)) < (d, std::cmp::Reverse(l)))
                    }
                };
                if better {
                    best = Some((score, distance, len, i));
                }
            }
        }
        best.map(|(score, _, len, start)| Pick {
            start,
            end: start + len,
            score,
            scored,
        })
    }
}

impl Backend for LexicalReader {
    fn kind(&self) -> &'static str {
        "lexical"
    }

    fn detail(&self) -> String {
        format!(
            "sliding-window reader: spans of up to {} tokens, window {}",
            self.max_answer_tokens, self.window
        )
    }

    fn answer(&self, query: &Query) -> Result<BackendAnswer, BackendError> {
        let passage = Passage::new(query.question(), query.context());
        let mut best: Option<Pick> = None;
        let mut scored = 0;
        // A sentence without any question term scores 0 everywhere (windows stop at sentence
        // ends): search those only when no sentence has one.
        let has_term =
            |&&(lo, hi): &&(usize, usize)| passage.term_of[lo..hi].iter().any(Option::is_some);
        let with_terms: Vec<(usize, usize)> =
            passage.sentences.iter().filter(has_term).copied().collect();
        let searched = if with_terms.is_empty() {
            &passage.sentences[..]
        } else {
            &with_terms
        };
        for &(lo, hi) in searched {
            if let Some(pick) = self.best_in(&passage, lo, hi) {
                scored += pick.scored;
                if best.is_none_or(|b| pick.score > b.score + 1e-12) {
                    best = Some(pick);
                }
            }
        }
        let best = best.map(|pick| (pick.score, pick.start, pick.end));
        Ok(BackendAnswer::from_span(&passage, best, scored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::query::QueryLimits;

    fn ask(question: &str, context: &str) -> BackendAnswer {
        let q = Query::new(question, context, None, &QueryLimits::default()).unwrap();
        LexicalReader::default().answer(&q).unwrap()
    }

    #[test]
    fn picks_the_span_surrounded_by_question_terms() {
        let context = "The game was played in Santa Clara. The Denver Broncos defeated the Carolina \
                       Panthers in the final.";
        let a = ask("Who defeated the Carolina Panthers in the final?", context);
        assert_eq!(a.text, "Denver Broncos");
        let (start, end) = a.span.unwrap();
        let chars: Vec<char> = context.chars().collect();
        assert_eq!(
            chars[start as usize..end as usize]
                .iter()
                .collect::<String>(),
            "Denver Broncos"
        );
        assert!(a.compute_units > 0.0);
    }

    #[test]
    fn a_context_with_nothing_to_offer_gets_no_answer() {
        let a = ask("Who won?", "Won. Won won.");
        assert_eq!(a.text, "");
        assert_eq!(a.span, None);
    }
}
