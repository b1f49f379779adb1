//! What both live readers compute about a (question, context) pair: which context tokens carry
//! question terms, how much each term is worth, and the sliding-window overlap of a candidate
//! answer span with the question; and what the policy's featurizer keeps of a context
//! ([`ContextAnalysis`]) to count a question's terms in it.
//!
//! Term weights are MCTest's inverse counts (Richardson et al., 2013), as in the sliding-window
//! baseline of the SQuAD paper: `ln(1 + 1 / count of the term in the context)`, so a term that
//! occurs once in the passage is worth more than one that occurs everywhere.

use super::answer_type::{AnswerType, fits_text};
use super::text::{
    Token, TokenKind, ends_sentence, is_stop_word, scan, sentences, stem_key, tokenize, with_stem,
};
use compact_str::CompactString;

/// At most this many distinct question terms are tracked (a bit per term).
const MAX_TERMS: usize = 64;

fn fingerprint(word: &str) -> (usize, u8) {
    (word.len(), word.as_bytes().first().copied().unwrap_or(0))
}

/// What does not depend on the question: where the context's words are by stem, its sentences,
/// and per sentence how many tokens fit each answer type. A passage asked about several times is
/// analysed once (the scheduler keeps these for recent contexts); the question's part is then
/// proportional to the question and to where its terms occur ([`ContextAnalysis::count_terms`]),
/// not to the context's length. No token is kept: an analysis is the context's text, its stems'
/// keys and a few counts per sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextAnalysis {
    /// The context analysed, to tell an analysis of another one.
    context: Box<str>,
    /// How many tokens the context has.
    tokens: usize,
    /// Token ranges `[start, end)` of the sentences.
    sentences: Vec<(usize, usize)>,
    /// Byte ranges of the sentences, from their first token's start to their last token's end.
    spans: Vec<(usize, usize)>,
    /// The words and numbers' [`stem_key`]s with their positions, in text order, stop words
    /// left out (no question term is one), chained by [`key_slot`] from `heads`: a term's
    /// tokens are found by walking its slot's chain. Chaining makes building the index one step
    /// per key whatever the keys (sorting them for binary searches cost several times more),
    /// and at worst, were every key in one chain, a look-up walks them all.
    keys: Vec<Keyed>,
    /// Per slot, the last of `keys` in its chain, or [`NO_KEY`].
    heads: Vec<u32>,
    /// Tokens that are numbers.
    numbers: usize,
    /// Per sentence, how many of its tokens fit an answer of each type ([`TYPED`]).
    typed: Vec<[u32; TYPED.len()]>,
}

/// A token of [`ContextAnalysis`] by its stem's key: one cache line holds what a look-up reads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Keyed {
    key: u64,
    /// The token's position.
    position: u32,
    /// The next (earlier) of the keys in its chain; [`NO_KEY`] ends a chain.
    next: u32,
}

/// The end of a chain of keys in [`ContextAnalysis`].
const NO_KEY: u32 = u32::MAX;

/// Slots for `keys` chained keys: a power of two, at least twice as many (chains of one key,
/// mostly).
fn slots_for(keys: usize) -> usize {
    (2 * keys).next_power_of_two().max(2)
}

/// The slot of `key` among `1 << bits` (Fibonacci hashing: the top bits of a multiplication,
/// which mix every bit of the key in).
fn key_slot(key: u64, bits: u32) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
}

/// The answer types whose fitting tokens [`ContextAnalysis`] counts per sentence.
const TYPED: [AnswerType; 3] = [AnswerType::Date, AnswerType::Number, AnswerType::Name];

impl ContextAnalysis {
    pub fn of(context: &str) -> Self {
        let mut tokens = 0;
        let (mut sentences, mut spans, mut typed) = (Vec::new(), Vec::new(), Vec::new());
        let mut keys = Vec::with_capacity(context.len() / 8 + 1);
        let mut numbers = 0;
        // The sentence being read: its first token, its first byte, its typed counts.
        let (mut first, mut from, mut counts) = (0, None, [0u32; TYPED.len()]);
        let mut last_end = 0;
        scan(context, |t| {
            let text = &context[t.byte_start..t.byte_end];
            from = from.or(Some(t.byte_start));
            let capitalised = t.first.is_uppercase();
            for (count, kind) in counts.iter_mut().zip(TYPED) {
                *count += u32::from(fits_text(t.kind, capitalised, text, kind));
            }
            numbers += usize::from(t.kind == TokenKind::Number);
            if t.kind != TokenKind::Punct {
                // A question term is never a stop word: those are never looked up.
                if let Some(key) = with_stem(text, stem_key) {
                    keys.push(Keyed {
                        key,
                        position: tokens as u32,
                        next: NO_KEY,
                    });
                }
            }
            tokens += 1;
            last_end = t.byte_end;
            if ends_sentence(t.kind, text) {
                sentences.push((first, tokens));
                spans.push((from.take().unwrap_or(t.byte_start), t.byte_end));
                typed.push(std::mem::take(&mut counts));
                first = tokens;
            }
        });
        if first < tokens {
            sentences.push((first, tokens));
            spans.push((from.unwrap_or(0), last_end));
            typed.push(counts);
        }
        let mut heads = vec![NO_KEY; slots_for(keys.len())];
        let bits = heads.len().trailing_zeros();
        for (i, k) in keys.iter_mut().enumerate() {
            k.next = std::mem::replace(&mut heads[key_slot(k.key, bits)], i as u32);
        }
        Self {
            context: context.into(),
            tokens,
            sentences,
            spans,
            keys,
            heads,
            numbers,
            typed,
        }
    }

    /// Whether this is an analysis of `context`.
    pub fn is_of(&self, context: &str) -> bool {
        *self.context == *context
    }

    /// How many tokens the context has.
    pub fn token_count(&self) -> usize {
        self.tokens
    }

    /// Token ranges `[start, end)` of the sentences; together they cover every token.
    pub fn sentences(&self) -> &[(usize, usize)] {
        &self.sentences
    }

    /// The text of sentence `s`, from its first token to its last.
    pub fn sentence_text(&self, s: usize) -> &str {
        let (lo, hi) = self.spans[s];
        &self.context[lo..hi]
    }

    /// How many tokens are numbers.
    pub fn numbers(&self) -> usize {
        self.numbers
    }

    /// How many tokens of sentence `s` fit an answer of type `kind` ([`fits`]).
    pub fn typed_in_sentence(&self, s: usize, kind: AnswerType) -> usize {
        TYPED
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |k| self.typed[s][k] as usize)
    }

    /// Where the distinct question `terms` (as [`question_terms`] gives them: no stop word, since
    /// the analysis does not index those) occur: visits only the keys in the terms' chains.
    pub fn count_terms(&self, terms: &[CompactString]) -> TermCounts<'_> {
        let width = terms.len();
        let mut in_context = vec![0u32; width];
        let mut per_sentence = vec![0u32; width * self.sentences.len()];
        let bits = self.heads.len().trailing_zeros();
        for (i, term) in terms.iter().enumerate() {
            // An empty stem or a stop word is not indexed: found nowhere.
            let Some(key) = stem_key(term) else {
                continue;
            };
            let mut at = self.heads[key_slot(key, bits)];
            while at != NO_KEY {
                let k = &self.keys[at as usize];
                if k.key == key {
                    let p = k.position as usize;
                    in_context[i] += 1;
                    let sentence = self.sentences.partition_point(|&(_, hi)| hi <= p);
                    per_sentence[sentence * width + i] += 1;
                }
                at = k.next;
            }
        }
        TermCounts {
            analysis: self,
            in_context,
            per_sentence,
        }
    }
}

/// How often each question term occurs in an analysed context, in all and per sentence.
pub struct TermCounts<'a> {
    analysis: &'a ContextAnalysis,
    /// Occurrences of each term in the context.
    pub in_context: Vec<u32>,
    /// One row of per-term counts per sentence.
    per_sentence: Vec<u32>,
}

impl TermCounts<'_> {
    /// How many distinct terms occur in sentence `s`.
    pub fn terms_in_sentence(&self, s: usize) -> usize {
        let width = self.in_context.len();
        self.per_sentence[s * width..(s + 1) * width]
            .iter()
            .filter(|&&c| c > 0)
            .count()
    }

    /// [`Passage::sentence_bm25`] of the same question and context, to the bit.
    pub fn sentence_bm25(&self) -> Vec<f64> {
        let a = self.analysis;
        bm25(
            &a.sentences,
            a.tokens,
            self.in_context.len(),
            &self.per_sentence,
        )
    }
}

/// BM25 score of each sentence for the question terms (k1 = 1.2, b = 0.75; sentences are the
/// documents), from `tf`: one row of `terms` counts per sentence, the sentences covering
/// `tokens` tokens.
fn bm25(sentences: &[(usize, usize)], tokens: usize, terms: usize, tf: &[u32]) -> Vec<f64> {
    let n = sentences.len() as f64;
    let avg_len = tokens as f64 / n.max(1.0);
    if terms == 0 {
        return vec![0.0; sentences.len()];
    }
    let mut doc_freq = vec![0u32; terms];
    for counts in tf.chunks(terms) {
        for (df, &c) in doc_freq.iter_mut().zip(counts) {
            *df += u32::from(c > 0);
        }
    }
    let (k1, b) = (1.2, 0.75);
    // Each term's idf once, not once per sentence that holds it; a term found nowhere never
    // has its idf read, and gets none.
    let idf: Vec<f64> = doc_freq
        .iter()
        .map(|&df| {
            if df == 0 {
                0.0
            } else {
                ((n - df as f64 + 0.5) / (df as f64 + 0.5) + 1.0).ln()
            }
        })
        .collect();
    sentences
        .iter()
        .zip(tf.chunks(terms))
        .map(|(&(lo, hi), counts)| {
            let len = (hi - lo) as f64;
            counts
                .iter()
                .zip(&idf)
                .filter(|(c, _)| **c > 0)
                .map(|(&c, &idf)| {
                    let c = c as f64;
                    idf * c * (k1 + 1.0) / (c + k1 * (1.0 - b + b * len / avg_len.max(1.0)))
                })
                .sum()
        })
        .collect()
}

pub struct Passage<'a> {
    pub context: &'a str,
    pub tokens: Vec<Token>,
    pub sentences: Vec<(usize, usize)>,
    /// Index of the question term each context token carries, if any.
    pub term_of: Vec<Option<u8>>,
    /// Inverse-count weight of each question term (0 when absent from the context).
    pub weights: Vec<f64>,
    /// Positions of context tokens that carry a question term, ascending.
    pub matches: Vec<usize>,
    /// Question tokens (for answer-type rules).
    pub question_tokens: Vec<Token>,
    pub question: &'a str,
}

/// The distinct question terms (stems that are not stop words), at most [`MAX_TERMS`]: a
/// question has a handful, so a linear scan beats hashing.
pub fn question_terms(question_tokens: &[Token]) -> Vec<CompactString> {
    let mut terms: Vec<CompactString> = Vec::with_capacity(question_tokens.len().min(MAX_TERMS));
    for t in question_tokens {
        if t.kind != TokenKind::Punct
            && !is_stop_word(&t.stem)
            && terms.len() < MAX_TERMS
            && !terms.iter().any(|x| x.as_str() == t.stem.as_str())
        {
            terms.push(t.stem.clone());
        }
    }
    terms
}

impl<'a> Passage<'a> {
    pub fn new(question: &'a str, context: &'a str) -> Self {
        let question_tokens = tokenize(question);
        let terms = question_terms(&question_tokens);
        let tokens = tokenize(context);
        let sentences = sentences(&tokens, context);
        // Compare a cheap fingerprint (length and first byte) before the bytes: most context
        // tokens differ from every term in one of them.
        let prints: Vec<(usize, u8)> = terms.iter().map(|t| fingerprint(t)).collect();
        let term_of: Vec<Option<u8>> = tokens
            .iter()
            .map(|t| {
                let print = fingerprint(&t.stem);
                prints
                    .iter()
                    .zip(&terms)
                    .position(|(p, q)| *p == print && q.as_str() == t.stem.as_str())
                    .map(|i| i as u8)
            })
            .collect();
        let mut counts = vec![0u32; terms.len()];
        for term in term_of.iter().flatten() {
            counts[*term as usize] += 1;
        }
        let weights = counts
            .iter()
            .map(|&c| {
                if c == 0 {
                    0.0
                } else {
                    (1.0 + 1.0 / c as f64).ln()
                }
            })
            .collect();
        let matches = (0..tokens.len())
            .filter(|&i| term_of[i].is_some())
            .collect();
        Self {
            context,
            tokens,
            sentences,
            term_of,
            weights,
            matches,
            question_tokens,
            question,
        }
    }

    /// Total weight of all question terms found in the context.
    pub fn total_weight(&self) -> f64 {
        self.weights.iter().sum()
    }

    /// Sum of the weights of the distinct question terms within `window` tokens on either side
    /// of the span `[i, j)`, not crossing `[lo, hi)`; the span itself does not count.
    pub fn window_overlap(&self, i: usize, j: usize, window: usize, lo: usize, hi: usize) -> f64 {
        let mut seen: u64 = 0;
        let left = i.saturating_sub(window).max(lo)..i;
        let right = j..(j + window).min(hi);
        for p in left.chain(right) {
            if let Some(term) = self.term_of[p] {
                seen |= 1 << term;
            }
        }
        let mut sum = 0.0;
        while seen != 0 {
            let term = seen.trailing_zeros() as usize;
            sum += self.weights[term];
            seen &= seen - 1;
        }
        sum
    }

    /// Token distance from the span `[i, j)` to the nearest question-term token outside it
    /// (`usize::MAX` when there is none).
    pub fn distance_to_question(&self, i: usize, j: usize) -> usize {
        let after = self.matches.partition_point(|&p| p < j);
        let right = self.matches.get(after).map(|&p| p + 1 - j);
        let before = self.matches.partition_point(|&p| p < i);
        let left = before.checked_sub(1).map(|k| i - self.matches[k]);
        right.into_iter().chain(left).min().unwrap_or(usize::MAX)
    }

    /// Whether `[i, j)` may be an answer: starts and ends on a content word or number, repeats
    /// no question term, and holds no punctuation but joiners (`-`, `,`, `&`, `'`, `.` in
    /// abbreviations is not allowed).
    pub fn is_candidate(&self, i: usize, j: usize) -> bool {
        let edge_ok = |t: &Token| t.kind != TokenKind::Punct && !is_stop_word(&t.stem);
        if !edge_ok(&self.tokens[i]) || !edge_ok(&self.tokens[j - 1]) {
            return false;
        }
        (i..j).all(|p| {
            self.term_of[p].is_none()
                && (self.tokens[p].kind != TokenKind::Punct
                    || matches!(
                        self.tokens[p].text(self.context),
                        "-" | "–" | "," | "&" | "'"
                    ))
        })
    }

    /// BM25 score of each sentence for the question terms (k1 = 1.2, b = 0.75; sentences are the
    /// documents).
    pub fn sentence_bm25(&self) -> Vec<f64> {
        let terms = self.weights.len();
        // Term counts per sentence, one row of `terms` counts per sentence in one buffer.
        let mut tf = vec![0u32; terms * self.sentences.len()];
        for (&(lo, hi), counts) in self.sentences.iter().zip(tf.chunks_mut(terms.max(1))) {
            for term in self.term_of[lo..hi].iter().flatten() {
                counts[*term as usize] += 1;
            }
        }
        bm25(&self.sentences, self.tokens.len(), terms, &tf)
    }

    /// The context text and code-point span of tokens `[i, j)`.
    pub fn span_text(&self, i: usize, j: usize) -> (String, (u32, u32)) {
        let (first, last) = (&self.tokens[i], &self.tokens[j - 1]);
        (
            self.context[first.byte_start..last.byte_end].to_owned(),
            (first.char_start, last.char_end),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::answer_type::fits;
    use crate::core::capability::count_tokens;
    use proptest::prelude::*;

    /// Words that stem alike in different cases and inflections, beyond ASCII too.
    const VOCABULARY: &[&str] = &[
        "Panthers",
        "panther",
        "Panther's",
        "defeated",
        "Defeat",
        "ÉCOLE",
        "école",
        "Zürich",
        "zurich",
        "Über",
        "über",
        "the",
        "The",
        "won",
        "1,000",
        "running",
        "Runs",
        "studies",
        "Study",
        "?",
        ".",
        ",",
        "Levi's",
        "Ángel",
        "ángel",
        "May",
        "march",
        "SEPT",
        "2016",
    ];

    proptest! {
        /// Term counts from an analysed context are the full passage's: per term, per sentence,
        /// and its sentences' BM25 scores to the bit.
        #[test]
        fn an_analysed_context_counts_the_terms_the_passage_finds(
            question in prop::collection::vec(prop::sample::select(VOCABULARY), 0..8),
            context in prop::collection::vec(prop::sample::select(VOCABULARY), 0..60),
        ) {
            let (question, context) = (question.join(" "), context.join(" "));
            let full = Passage::new(&question, &context);
            let analysis = ContextAnalysis::of(&context);
            prop_assert!(analysis.is_of(&context));
            prop_assert_eq!(analysis.token_count(), full.tokens.len());
            // The scheduler's capability check takes the analysis's count for its own.
            prop_assert_eq!(count_tokens(&context) as usize, full.tokens.len());
            prop_assert_eq!(analysis.sentences(), &full.sentences[..]);
            for (s, &(lo, hi)) in full.sentences.iter().enumerate() {
                let text = &context[full.tokens[lo].byte_start..full.tokens[hi - 1].byte_end];
                prop_assert_eq!(analysis.sentence_text(s), text);
            }
            let terms = question_terms(&full.question_tokens);
            let counts = analysis.count_terms(&terms);
            let in_context: Vec<u32> = (0..terms.len())
                .map(|i| full.term_of.iter().filter(|t| **t == Some(i as u8)).count() as u32)
                .collect();
            prop_assert_eq!(&counts.in_context, &in_context);
            for (s, &(lo, hi)) in full.sentences.iter().enumerate() {
                let mut seen = full.term_of[lo..hi].iter().flatten().collect::<Vec<_>>();
                seen.sort_unstable();
                seen.dedup();
                prop_assert_eq!(counts.terms_in_sentence(s), seen.len());
            }
            for (s, &(lo, hi)) in full.sentences.iter().enumerate() {
                for kind in [AnswerType::Date, AnswerType::Number, AnswerType::Name, AnswerType::Other] {
                    let fitting = full.tokens[lo..hi].iter().filter(|t| fits(t, kind, &context)).count();
                    prop_assert_eq!(analysis.typed_in_sentence(s, kind), fitting);
                }
            }
            let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
            prop_assert_eq!(bits(counts.sentence_bm25()), bits(full.sentence_bm25()));
        }
    }

    const CONTEXT: &str =
        "The Denver Broncos defeated the Carolina Panthers. The Panthers played well.";

    #[test]
    fn rarer_question_terms_weigh_more() {
        let p = Passage::new("Who defeated the Panthers?", CONTEXT);
        // Terms: defeat (once in the context), panther (twice).
        assert_eq!(p.weights.len(), 2);
        assert!((p.weights[0] - 2f64.ln()).abs() < 1e-12);
        assert!((p.weights[1] - 1.5f64.ln()).abs() < 1e-12);
        assert_eq!(p.matches, [3, 6, 9]);
    }

    #[test]
    fn window_overlap_counts_each_term_once_and_skips_the_span() {
        let p = Passage::new("Who defeated the Panthers?", CONTEXT);
        let (lo, hi) = p.sentences[0];
        // "Denver Broncos" = tokens 1..3: "defeated" and "Panthers" lie within 4 tokens after it.
        let both = p.weights[0] + p.weights[1];
        assert!((p.window_overlap(1, 3, 4, lo, hi) - both).abs() < 1e-12);
        // A window of 1 sees only "defeated".
        assert!((p.window_overlap(1, 3, 1, lo, hi) - p.weights[0]).abs() < 1e-12);
        assert_eq!(p.distance_to_question(1, 3), 1);
        assert!(p.is_candidate(1, 3));
        assert!(!p.is_candidate(3, 4), "a question term is no answer");
        assert!(!p.is_candidate(0, 2), "starts with a stop word");
        assert_eq!(p.span_text(1, 3), ("Denver Broncos".to_string(), (4, 18)));
    }
}
