//! Turning a generated answer into a span of the context.
//!
//! An LLM asked for an extractive answer replies with text that is usually, but not always, a
//! copy of part of the context: it may wrap it in quotes, add a final period, start with "The
//! answer is", change the case, or paraphrase. [`align`] finds the part of the context the reply
//! means, in three steps, and returns the context's own text for it:
//!
//! 1. **Exact**: the cleaned reply (see [`clean`]) occurs in the context as it is, as whole
//!    words ("Ten" is not found inside "Tennessee").
//! 2. **Normalised**: a run of context words whose SQuAD-normalised tokens (lower case, no ASCII
//!    punctuation, no articles; [`normalize_answer`]) equal the reply's.
//! 3. **Closest**: the run of context words with the best token F1 against the reply, if that
//!    F1 reaches a threshold; ties go to the shorter run, then the earlier.
//!
//! A reply that says there is no answer ("unanswerable", "I don't know"…) or that nothing in
//! the context matches well enough gives `None`: the expert then answers "no answer" (the empty
//! string, as SQuAD v2.0 scores it), never text the context does not hold.

use crate::core::metric::normalize_answer;
use std::collections::HashMap;

/// How a reply was found in the context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Match {
    Exact,
    Normalised,
    /// The best window's token F1 against the reply.
    Closest(f64),
}

/// A span of the context: code-point offsets `[start, end)` and the context's text there.
#[derive(Debug, Clone, PartialEq)]
pub struct Aligned {
    pub start: u32,
    pub end: u32,
    pub text: String,
    pub how: Match,
}

/// The default threshold of step 3: half the tokens shared, the F1 of a two-word answer with
/// one word right.
pub const DEFAULT_MIN_F1: f64 = 0.5;

/// Replies that mean "the context does not say", compared after [`clean`] and lower-casing.
const NO_ANSWER: &[&str] = &[
    "",
    "unanswerable",
    "no answer",
    "none",
    "n/a",
    "unknown",
    "not mentioned",
    "not stated",
    "not given",
    "not in the context",
    "cannot be determined",
    "i don't know",
    "i do not know",
];

/// Prefixes a model puts before the answer, compared lower-cased.
const PREFIXES: &[&str] = &["the answer is", "answer is", "the answer:", "answer:", "a:"];

/// Characters that wrap an answer without being part of it.
fn is_wrapper(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | '`' | '*' | '“' | '”' | '‘' | '’' | '«' | '»'
    )
}

/// The reply without what surrounds an answer: wrapping quotes, backticks or emphasis, a
/// leading "The answer is" or "Answer:", and white space, on the first line left with text
/// ("Answer:" alone on a line is followed by the answer on the next).
pub fn clean(reply: &str) -> &str {
    for line in reply.lines() {
        let mut text = unwrap(line);
        for prefix in PREFIXES {
            if text.len() >= prefix.len()
                && text.is_char_boundary(prefix.len())
                && text[..prefix.len()].eq_ignore_ascii_case(prefix)
            {
                text = unwrap(text[prefix.len()..].trim_start_matches([' ', ':']));
                break;
            }
        }
        if !text.is_empty() {
            return text;
        }
    }
    ""
}

/// `text` without wrapping characters and white space around it.
fn unwrap(text: &str) -> &str {
    text.trim_matches(|c: char| is_wrapper(c) || c.is_whitespace())
}

/// Where `needle` occurs in `context` as whole words (not inside a longer word or number).
fn find_words(context: &str, needle: &str) -> Option<usize> {
    let joins = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    context.match_indices(needle).map(|(at, _)| at).find(|&at| {
        let before = context[..at].chars().next_back();
        let after = context[at + needle.len()..].chars().next();
        let glued_before = joins(before) && needle.starts_with(char::is_alphanumeric);
        let glued_after = joins(after) && needle.ends_with(char::is_alphanumeric);
        !glued_before && !glued_after
    })
}

/// The span of `context` that `reply` means, or `None` when the reply says there is no answer
/// or no run of context words reaches `min_f1` token F1 against it.
pub fn align(context: &str, reply: &str, min_f1: f64) -> Option<Aligned> {
    let cleaned = clean(reply);
    if NO_ANSWER.contains(&cleaned.to_lowercase().trim_end_matches('.')) {
        return None;
    }
    // 1. Exact, preferring the reply without a final period (SQuAD answers have none), unless
    //    the period ends an abbreviation ("U.S.").
    let unpunctuated = cleaned
        .trim_end_matches(['.', '!', '?', ',', ';'])
        .trim_end();
    let candidates = if unpunctuated.contains('.') {
        [cleaned, unpunctuated]
    } else {
        [unpunctuated, cleaned]
    };
    for candidate in candidates {
        if let Some(at) = (!candidate.is_empty())
            .then(|| find_words(context, candidate))
            .flatten()
        {
            return Some(span(context, at, at + candidate.len(), Match::Exact));
        }
    }
    let wanted: Vec<String> = normalize_answer(cleaned)
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if wanted.is_empty() {
        return None;
    }
    let words = Words::of(context);
    // 2. The same normalised tokens.
    if let Some((first, last)) = words.find(&wanted) {
        return Some(words.span(context, first, last, Match::Normalised));
    }
    // 3. The closest run.
    let (f1, first, last) = words.closest(&wanted)?;
    (f1 >= min_f1).then(|| words.span(context, first, last, Match::Closest(f1)))
}

/// A span of `context` from byte `start` to byte `end`, in code points.
fn span(context: &str, start: usize, end: usize, how: Match) -> Aligned {
    let char_start = context[..start].chars().count() as u32;
    let text = context[start..end].to_owned();
    Aligned {
        start: char_start,
        end: char_start + text.chars().count() as u32,
        text,
        how,
    }
}

/// The context's white-space separated words and their normalised tokens (most words give
/// one; an article or a lone punctuation mark none).
struct Words {
    /// Byte ranges of the words.
    bounds: Vec<(usize, usize)>,
    /// Every normalised token, with the word it came from.
    tokens: Vec<(String, usize)>,
}

impl Words {
    fn of(context: &str) -> Self {
        let mut bounds = Vec::new();
        let mut tokens = Vec::new();
        let mut start = None;
        for (at, c) in context.char_indices().chain([(context.len(), ' ')]) {
            match (start, c.is_whitespace()) {
                (None, false) => start = Some(at),
                (Some(from), true) => {
                    for token in normalize_answer(&context[from..at]).split(' ') {
                        if !token.is_empty() {
                            tokens.push((token.to_owned(), bounds.len()));
                        }
                    }
                    bounds.push((from, at));
                    start = None;
                }
                _ => {}
            }
        }
        Self { bounds, tokens }
    }

    /// The first run of tokens equal to `wanted`, as (first token, last token).
    fn find(&self, wanted: &[String]) -> Option<(usize, usize)> {
        (0..self.tokens.len().saturating_sub(wanted.len() - 1))
            .find(|&i| {
                self.tokens[i..i + wanted.len()]
                    .iter()
                    .zip(wanted)
                    .all(|((t, _), w)| t == w)
            })
            .map(|i| (i, i + wanted.len() - 1))
    }

    /// The run of tokens with the best token F1 against `wanted` (runs up to twice its length,
    /// plus two), as (F1, first token, last token); ties go to the shorter, then the earlier.
    fn closest(&self, wanted: &[String]) -> Option<(f64, usize, usize)> {
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for w in wanted {
            *counts.entry(w).or_default() += 1;
        }
        let longest = 2 * wanted.len() + 2;
        let mut best: Option<(f64, usize, usize)> = None;
        for first in 0..self.tokens.len() {
            if !counts.contains_key(self.tokens[first].0.as_str()) {
                continue; // a best run starts with a shared token
            }
            let mut left = counts.clone();
            let mut shared = 0u32;
            for last in first..self.tokens.len().min(first + longest) {
                if let Some(n) = left.get_mut(self.tokens[last].0.as_str())
                    && *n > 0
                {
                    *n -= 1;
                    shared += 1;
                }
                let precision = f64::from(shared) / (last - first + 1) as f64;
                let recall = f64::from(shared) / wanted.len() as f64;
                let f1 = 2.0 * precision * recall / (precision + recall);
                if best.is_none_or(|(b, _, _)| f1 > b) {
                    best = Some((f1, first, last));
                }
            }
        }
        best.filter(|(f1, _, _)| *f1 > 0.0)
    }

    /// The context's text from the word of token `first` to the word of token `last`, without
    /// punctuation around it ("Broncos," gives "Broncos"; "U.S." keeps its final period).
    fn span(&self, context: &str, first: usize, last: usize, how: Match) -> Aligned {
        let start = self.bounds[self.tokens[first].1].0;
        let end = self.bounds[self.tokens[last].1].1;
        let text = &context[start..end];
        let lead = text.len() - text.trim_start_matches(is_outer_punctuation).len();
        let mut trimmed = text.trim_end_matches(is_outer_punctuation);
        if text[trimmed.len()..].starts_with('.') && trimmed.contains('.') {
            trimmed = &text[..trimmed.len() + 1]; // an abbreviation's period
        }
        span(context, start + lead, start + trimmed.len().max(lead), how)
    }
}

/// Punctuation that ends or starts a word without belonging to a span.
fn is_outer_punctuation(c: char) -> bool {
    matches!(
        c,
        ',' | '.'
            | ';'
            | ':'
            | '!'
            | '?'
            | '('
            | ')'
            | '['
            | ']'
            | '"'
            | '\''
            | '“'
            | '”'
            | '‘'
            | '’'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: &str = "Super Bowl 50 was an American football game. The American Football \
        Conference (AFC) champion Denver Broncos defeated the National Football Conference (NFC) \
        champion Carolina Panthers 24–10 to earn their third Super Bowl title. The game was \
        played on February 7, 2016, at Levi's Stadium in Santa Clara, California.";

    fn aligned(reply: &str) -> Option<(String, Match)> {
        let a = align(CONTEXT, reply, DEFAULT_MIN_F1)?;
        // The span and the text always agree: the text is the context's own.
        let by_span: String = CONTEXT
            .chars()
            .skip(a.start as usize)
            .take((a.end - a.start) as usize)
            .collect();
        assert_eq!(by_span, a.text, "span and text of {reply:?}");
        Some((a.text, a.how))
    }

    #[test]
    fn copies_are_found_as_they_are() {
        assert_eq!(
            aligned("Denver Broncos"),
            Some(("Denver Broncos".into(), Match::Exact))
        );
        // A span after a non-ASCII character counts code points, not bytes.
        let a = align(CONTEXT, "to earn", DEFAULT_MIN_F1).unwrap();
        assert_eq!(CONTEXT.chars().nth(a.start as usize), Some('t'));
    }

    #[test]
    fn wrapping_a_model_adds_is_removed() {
        for reply in [
            "\"Denver Broncos\"",
            "Denver Broncos.",
            "The answer is Denver Broncos.",
            "Answer: **Denver Broncos**",
            "  `Denver Broncos`\n\nThe Broncos beat the Panthers.",
            "“Denver Broncos”",
            "Answer:\nDenver Broncos",
            "**Answer:**\n\nDenver Broncos",
        ] {
            assert_eq!(
                aligned(reply),
                Some(("Denver Broncos".into(), Match::Exact)),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn case_punctuation_and_articles_are_ignored_and_the_context_text_returned() {
        assert_eq!(
            aligned("the denver broncos"),
            Some(("Denver Broncos".into(), Match::Normalised))
        );
        assert_eq!(
            aligned("february 7 2016"),
            Some(("February 7, 2016".into(), Match::Normalised))
        );
        // Punctuation around the words is not part of the span.
        assert_eq!(
            aligned("SANTA CLARA"),
            Some(("Santa Clara".into(), Match::Normalised))
        );
    }

    #[test]
    fn a_paraphrase_gets_the_closest_span_above_the_threshold() {
        let (text, how) = aligned("the Broncos from Denver").unwrap();
        assert_eq!(text, "Denver Broncos");
        assert!(
            matches!(how, Match::Closest(f) if (f - 0.8).abs() < 1e-9),
            "{how:?}"
        );
        // Half the words right is enough; fewer is not.
        assert!(aligned("Levi's Arena").is_some());
        assert_eq!(aligned("Levi's new big arena downtown"), None);
    }

    #[test]
    fn text_the_context_does_not_hold_is_no_answer() {
        assert_eq!(aligned("Paris"), None);
        assert_eq!(aligned("New England Patriots won"), None);
        for reply in ["unanswerable", "I don't know.", "N/A", "", "   \n", "\"\""] {
            assert_eq!(aligned(reply), None, "{reply:?}");
        }
    }

    #[test]
    fn an_abbreviation_keeps_its_period_a_sentence_end_does_not() {
        let context = "He moved to the U.S. in 1990.";
        assert_eq!(align(context, "u.s", 0.5).unwrap().text, "U.S.");
        assert_eq!(align(context, "U.S.", 0.5).unwrap().text, "U.S.");
        assert_eq!(align(context, "IN 1990", 0.5).unwrap().text, "in 1990");
        assert_eq!(align(context, "in 1990.", 0.5).unwrap().text, "in 1990");
    }

    #[test]
    fn exact_copies_are_whole_words_not_parts_of_longer_ones() {
        let context = "Tennessee had 1990 votes; Ten were lost in 1990.";
        let ten = align(context, "Ten", 0.5).unwrap();
        assert_eq!((ten.start, ten.text.as_str()), (26, "Ten"));
        assert_eq!(align(context, "199", 0.5), None);
        // A reply that starts or ends with punctuation may touch a word.
        assert_eq!(align("(Ten)", "(Ten", 0.5).unwrap().start, 0);
    }
}
