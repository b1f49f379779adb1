//! The `typed` backend: a stronger rule-based reader. It ranks the context's sentences by BM25
//! against the question, reads the expected answer type off the question words (a date for
//! "when" and "what year", a number for "how many" and "what percentage", a capitalised name for
//! "who" and "where"), and takes the best span of that type in the best sentences, scored by
//! sentence rank, sliding-window overlap and distance to the question terms. Questions of no
//! recognised type fall back to the sliding-window reader inside the best sentences.
//!
//! Compute units: sentences ranked plus candidate spans scored.

use super::lexical::LexicalReader;
use super::{Backend, BackendAnswer, BackendError};
use crate::core::answer_type::{AnswerType, MONTHS, answer_type};
use crate::core::query::Query;
use crate::core::reading::Passage;
use crate::core::text::{Token, TokenKind, is_stop_word};

#[derive(Debug, Clone)]
pub struct TypedReader {
    /// Sentences (best BM25 first) searched for a typed answer.
    pub sentences_searched: usize,
    pub window: usize,
    lexical: LexicalReader,
}

impl Default for TypedReader {
    fn default() -> Self {
        Self {
            sentences_searched: 3,
            window: 10,
            lexical: LexicalReader::default(),
        }
    }
}

const NUMBER_WORDS: &[&str] = &[
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
    "hundred",
    "dozen",
    "half",
];
const SCALE_WORDS: &[&str] = &[
    "hundred", "thousand", "million", "billion", "trillion", "percent", "%",
];

fn lower(t: &Token, source: &str) -> String {
    t.text(source).to_lowercase()
}

fn is_year(t: &Token, source: &str) -> bool {
    let text = t.text(source);
    let digits = text.trim_end_matches('s');
    t.kind == TokenKind::Number
        && digits.len() == 4
        && digits
            .parse::<u32>()
            .is_ok_and(|y| (1000..=2100).contains(&y))
}

fn is_month(t: &Token, source: &str) -> bool {
    t.kind == TokenKind::Word && t.capitalised && MONTHS.contains(&lower(t, source).as_str())
}

fn is_day(t: &Token, source: &str) -> bool {
    t.kind == TokenKind::Number
        && t.text(source)
            .parse::<u32>()
            .is_ok_and(|d| (1..=31).contains(&d))
}

fn is_number(t: &Token, source: &str) -> bool {
    t.kind == TokenKind::Number || NUMBER_WORDS.contains(&lower(t, source).as_str())
}

/// Spans of the wanted type starting at token `i` within `[i, hi)`, as end positions.
fn typed_spans_at(p: &Passage<'_>, kind: AnswerType, i: usize, hi: usize, out: &mut Vec<usize>) {
    out.clear();
    let tok = |k: usize| (k < hi).then(|| &p.tokens[k]);
    let src = p.context;
    match kind {
        AnswerType::Date => {
            let t = &p.tokens[i];
            if is_year(t, src) {
                out.push(i + 1);
            }
            if is_month(t, src) {
                let mut j = i + 1;
                if tok(j).is_some_and(|t| is_day(t, src)) {
                    j += 1;
                }
                out.push(j);
                if tok(j).is_some_and(|t| t.text(src) == ",") {
                    j += 1;
                }
                if tok(j).is_some_and(|t| is_year(t, src)) {
                    out.push(j + 1);
                }
            }
            if is_day(t, src) && tok(i + 1).is_some_and(|t| is_month(t, src)) {
                out.push(i + 2);
                if tok(i + 2).is_some_and(|t| is_year(t, src)) {
                    out.push(i + 3);
                }
            }
            let text = t.text(src).to_lowercase();
            if ["st", "nd", "rd", "th"]
                .iter()
                .any(|s| text.ends_with(s) && text[..text.len() - 2].parse::<u32>().is_ok())
                && tok(i + 1).is_some_and(|t| t.stem == "century")
            {
                out.push(i + 2);
            }
        }
        AnswerType::Number => {
            if is_number(&p.tokens[i], src) && !is_year(&p.tokens[i], src) {
                let mut j = i + 1;
                out.push(j);
                while tok(j).is_some_and(|t| SCALE_WORDS.contains(&lower(t, src).as_str())) {
                    j += 1;
                    out.push(j);
                }
            } else if is_number(&p.tokens[i], src) {
                out.push(i + 1);
            }
        }
        AnswerType::Name => {
            let starts_name = |t: &Token| {
                t.kind == TokenKind::Word
                    && t.capitalised
                    && !is_stop_word(&t.stem)
                    && !is_month(t, src)
            };
            if !starts_name(&p.tokens[i]) {
                return;
            }
            let mut j = i + 1;
            loop {
                match tok(j) {
                    Some(t) if starts_name(t) => j += 1,
                    Some(t)
                        if matches!(
                            lower(t, src).as_str(),
                            "of" | "de" | "von" | "van" | "the"
                        ) && tok(j + 1).is_some_and(starts_name) =>
                    {
                        j += 2
                    }
                    _ => break,
                }
            }
            out.push(j);
        }
        AnswerType::Other => {}
    }
}

impl Backend for TypedReader {
    fn kind(&self) -> &'static str {
        "typed"
    }

    fn detail(&self) -> String {
        format!(
            "BM25 sentence ranking + answer-type rules, top {} sentences",
            self.sentences_searched
        )
    }

    fn answer(&self, query: &Query) -> Result<BackendAnswer, BackendError> {
        let p = Passage::new(query.question(), query.context());
        let kind = answer_type(&p.question_tokens, p.question);
        let ranks = p.sentence_bm25();
        let mut order: Vec<usize> = (0..p.sentences.len()).collect();
        order.sort_by(|&a, &b| ranks[b].total_cmp(&ranks[a]).then(a.cmp(&b)));
        let top_rank = ranks.iter().copied().fold(0.0, f64::max).max(1e-9);
        let total_weight = p.total_weight().max(1e-9);
        let mut scored = p.sentences.len();

        // Typed candidates in the best sentences, then anywhere.
        let mut best: Option<(f64, usize, usize)> = None;
        let mut ends = Vec::new();
        if kind != AnswerType::Other {
            for pass in [
                &order[..order.len().min(self.sentences_searched)],
                &order[..],
            ] {
                for &s in pass {
                    let (lo, hi) = p.sentences[s];
                    for i in lo..hi {
                        typed_spans_at(&p, kind, i, hi, &mut ends);
                        for &j in &ends {
                            if j <= i || (i..j).any(|k| p.term_of[k].is_some()) {
                                continue;
                            }
                            scored += 1;
                            let overlap =
                                p.window_overlap(i, j, self.window, lo, hi) / total_weight;
                            let distance = p.distance_to_question(i, j);
                            let near = if distance == usize::MAX {
                                0.0
                            } else {
                                1.0 / (1.0 + distance as f64)
                            };
                            let score =
                                ranks[s] / top_rank + overlap + 0.5 * near + 0.01 * (j - i) as f64;
                            if best.is_none_or(|(b, _, _)| score > b) {
                                best = Some((score, i, j));
                            }
                        }
                    }
                }
                if best.is_some() {
                    break;
                }
            }
        }
        // No type, or none of that type: the sliding window inside the best sentences.
        if best.is_none() {
            for &s in order.iter().take(self.sentences_searched) {
                let (lo, hi) = p.sentences[s];
                if let Some(pick) = self.lexical.best_in(&p, lo, hi) {
                    scored += pick.scored;
                    let score = ranks[s] / top_rank + pick.score / total_weight;
                    if best.is_none_or(|(b, _, _)| score > b) {
                        best = Some((score, pick.start, pick.end));
                    }
                }
            }
        }
        Ok(BackendAnswer::from_span(&p, best, scored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::query::QueryLimits;

    const CONTEXT: &str = "Super Bowl 50 was an American football game. The American Football Conference \
        (AFC) champion Denver Broncos defeated the National Football Conference (NFC) champion \
        Carolina Panthers 24-10 to earn their third Super Bowl title. The game was played on \
        February 7, 2016, at Levi's Stadium in Santa Clara, California. About 71,088 people attended.";

    fn ask(question: &str) -> String {
        let q = Query::new(question, CONTEXT, None, &QueryLimits::default()).unwrap();
        TypedReader::default().answer(&q).unwrap().text
    }

    #[test]
    fn typed_answers_come_from_the_best_sentence() {
        assert_eq!(ask("When was the game played?"), "February 7, 2016");
        assert_eq!(ask("How many people attended?"), "71,088");
        assert_eq!(ask("Where was the game played?"), "Levi's Stadium");
    }
}
