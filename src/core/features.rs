//! The policy's featurizer, versioned: what the rejector sees of a query.
//!
//! Computed from (question, context) in microseconds, plus, in *defer* mode, the answers of the
//! cheap probe experts that already ran. Two parts:
//!
//! - dense features ([`DENSE_NAMES`] lists them): question word and expected answer type,
//!   lengths, question–context overlap (whole context and the best BM25 sentence), digits and
//!   capitals, how many candidates of the expected type the best sentence offers; in defer mode,
//!   per probe: empty answer, answer length, overlap with the question, answer type against the
//!   question word, answer inside the best sentence; per pair of probes: exact agreement and
//!   token F1 between their answers;
//! - hashed question n-grams (stemmed unigrams and bigrams, and the wh-word crossed with the
//!   answer type) into [`HASH_BUCKETS`] buckets with FNV-1a, each n-gram weighing
//!   `1 / sqrt(n-grams in the question)`.
//!
//! Any change to what is computed must bump [`FEATURIZER_VERSION`]: policy files record the
//! version they were trained with and are refused by a featurizer of another version.

use super::answer_type::{AnswerType, answer_type, fits};
use super::metric::{normalize_answer, token_f1};
use super::reading::{ContextAnalysis, question_terms};
use super::text::{StemInitials, Token, TokenKind, tokenize, tokenize_stemming};

pub const FEATURIZER_VERSION: &str = "l2d-features-v1";
pub const HASH_BUCKETS: usize = 1024;

const WH_WORDS: [&str; 8] = [
    "what", "who", "when", "where", "why", "how", "which", "whom",
];

/// The question's wh-word ("what", "who", ... or "other"): the first one among its words.
pub fn question_word(question: &str) -> &'static str {
    tokenize(question)
        .iter()
        .find_map(|t| {
            let w = t.text(question).to_lowercase();
            WH_WORDS.iter().find(|x| **x == w).copied()
        })
        .unwrap_or("other")
}

/// Names of the route-mode dense features, in order.
pub const DENSE_NAMES: &[&str] = &[
    "wh_what",
    "wh_who",
    "wh_when",
    "wh_where",
    "wh_why",
    "wh_how",
    "wh_which",
    "wh_whom",
    "wh_other",
    "type_date",
    "type_number",
    "type_name",
    "type_other",
    "how_many_or_much",
    "log_question_tokens",
    "log_context_tokens",
    "log_sentences",
    "question_terms",
    "terms_in_context",
    "terms_in_best_sentence",
    "bm25_best",
    "bm25_margin",
    "question_has_digit",
    "log_question_capitals",
    "question_has_quote",
    "context_number_share",
    "log_typed_candidates",
];

/// Names of the dense features each probe adds in defer mode, in order.
pub const PROBE_NAMES: &[&str] = &[
    "empty",
    "log_answer_tokens",
    "answer_question_overlap",
    "answer_type_match",
    "answer_in_best_sentence",
];

/// Names of the dense features each pair of probes adds in defer mode, in order.
pub const PAIR_NAMES: &[&str] = &["agree_exact", "agree_f1"];

/// How many dense features a featurizer with `probes` probes produces.
pub fn dense_len(probes: usize) -> usize {
    DENSE_NAMES.len()
        + probes * PROBE_NAMES.len()
        + probes * probes.saturating_sub(1) / 2 * PAIR_NAMES.len()
}

/// How many dense features cascade mode gives the rejector for a pool of `agents` experts: the
/// defer-mode features with every agent as a probe, then one "asked" flag per agent.
pub fn cascade_dense_len(agents: usize) -> usize {
    dense_len(agents) + agents
}

/// Cascade mode: the dense features of the state in which the agents flagged in `asked` have
/// been asked, from `full`, the dense features of [`featurize`] with one probe slot per agent
/// (the answers of the agents not asked may be anything: their slots are cleared). An agent not
/// asked has all its answer features and every pair feature it is part of at zero (an agent
/// asked that gave no answer has its "empty" flag set instead); one flag per agent says whether
/// it was asked. Training derives every state of a query from one featurization this way;
/// serving featurizes what it has seen.
pub fn cascade_dense(full: &[f64], asked: &[bool], out: &mut Vec<f64>) {
    let agents = asked.len();
    debug_assert_eq!(full.len(), dense_len(agents));
    out.clear();
    out.extend_from_slice(&full[..DENSE_NAMES.len()]);
    let mut k = DENSE_NAMES.len();
    for &a in asked {
        let block = &full[k..k + PROBE_NAMES.len()];
        if a {
            out.extend_from_slice(block);
        } else {
            out.extend(std::iter::repeat_n(0.0, block.len()));
        }
        k += PROBE_NAMES.len();
    }
    for a in 0..agents {
        for b in a + 1..agents {
            let block = &full[k..k + PAIR_NAMES.len()];
            if asked[a] && asked[b] {
                out.extend_from_slice(block);
            } else {
                out.extend(std::iter::repeat_n(0.0, block.len()));
            }
            k += PAIR_NAMES.len();
        }
    }
    out.extend(asked.iter().map(|&a| f64::from(u8::from(a))));
}

#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub dense: Vec<f64>,
    /// (bucket, value), buckets may repeat.
    pub hashed: Vec<(u32, f64)>,
}

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0x1f;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn bucket(parts: &[&str]) -> u32 {
    (fnv1a(parts) % HASH_BUCKETS as u64) as u32
}

/// Whether `bytes` hold an ASCII digit, eight bytes at a time: a byte `b` below 0x80 is a digit
/// when `b + 0x46` (0x76 for `'0'`) and `b + 0x50` straddle 0x80, which no carry crosses.
fn has_ascii_digit(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let x = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Bytes of 0x80 and above are no digits; below it, adding 0x46 (0x7f - '9') sets the
        // high bit from '9' + 1 up, adding 0x50 (0x80 - '0') from '0' up: a digit sets only
        // the second.
        let low = x & !HIGH;
        let from_zero = low + ONES * 0x50;
        let above_nine = low + ONES * 0x46;
        if from_zero & !above_nine & !x & HIGH != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(u8::is_ascii_digit)
}

fn ln1p(x: usize) -> f64 {
    (x as f64).ln_1p()
}

/// Features of one query; `probe_answers` holds the probes' answers in defer mode (`None` for a
/// probe that failed), and is empty in route mode.
pub fn featurize(question: &str, context: &str, probe_answers: &[Option<&str>]) -> Features {
    featurize_analysed(question, context, None, probe_answers)
}

/// [`featurize`] on a context analysed before (`analysis` must be of `context`): the same
/// features, without tokenizing the context again.
pub fn featurize_analysed(
    question: &str,
    context: &str,
    analysis: Option<&ContextAnalysis>,
    probe_answers: &[Option<&str>],
) -> Features {
    featurize_with(question, context, analysis, probe_answers, NGrams::Hashed)
}

/// [`featurize_analysed`] without the hashed question n-grams (`hashed` is empty): the dense
/// features alone, for a reader of them only (a cascade's stage rejectors).
pub fn featurize_dense(
    question: &str,
    context: &str,
    analysis: Option<&ContextAnalysis>,
    probe_answers: &[Option<&str>],
) -> Features {
    featurize_with(question, context, analysis, probe_answers, NGrams::Skipped)
}

/// Whether a featurization hashes the question's n-grams.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NGrams {
    Hashed,
    Skipped,
}

fn featurize_with(
    question: &str,
    context: &str,
    analysis: Option<&ContextAnalysis>,
    probe_answers: &[Option<&str>],
    ngrams: NGrams,
) -> Features {
    let fresh;
    let a = match analysis {
        Some(a) => a,
        None => {
            fresh = ContextAnalysis::of(context);
            &fresh
        }
    };
    debug_assert!(a.is_of(context));
    let (context_tokens, sentences) = (a.token_count(), a.sentences());
    let question_tokens = tokenize(question);
    let kind = answer_type(&question_tokens, question);
    // Wh-words are ASCII: a case-insensitive compare equals comparing the lower-cased word.
    let word = |t: &Token| t.text(question);
    let wh = question_tokens.iter().find_map(|t| {
        WH_WORDS
            .iter()
            .position(|x| x.eq_ignore_ascii_case(word(t)))
    });
    let mut dense = Vec::with_capacity(dense_len(probe_answers.len()));
    for i in 0..WH_WORDS.len() {
        dense.push(f64::from(u8::from(wh == Some(i))));
    }
    dense.push(f64::from(u8::from(wh.is_none())));
    for k in [
        AnswerType::Date,
        AnswerType::Number,
        AnswerType::Name,
        AnswerType::Other,
    ] {
        dense.push(f64::from(u8::from(kind == k)));
    }
    let how_many = question_tokens.windows(2).any(|w| {
        word(&w[0]).eq_ignore_ascii_case("how")
            && (word(&w[1]).eq_ignore_ascii_case("many")
                || word(&w[1]).eq_ignore_ascii_case("much"))
    });
    dense.push(f64::from(u8::from(how_many)));
    dense.push(ln1p(question_tokens.len()));
    dense.push(ln1p(context_tokens));
    dense.push(ln1p(sentences.len()));
    let counts = a.count_terms(&question_terms(&question_tokens));
    let terms = counts.in_context.len();
    dense.push(ln1p(terms));
    let found = counts.in_context.iter().filter(|&&c| c > 0).count();
    dense.push(if terms == 0 {
        0.0
    } else {
        found as f64 / terms as f64
    });

    // Best sentence by BM25, and how many question terms it holds.
    let ranks = counts.sentence_bm25();
    // The two best sentences (higher score first, then earlier): one pass, no sort.
    let mut first: Option<usize> = None;
    let mut runner_up: Option<usize> = None;
    let beats =
        |a: usize, b: Option<usize>| b.is_none_or(|b| ranks[a].total_cmp(&ranks[b]).is_gt());
    for s in 0..ranks.len() {
        if beats(s, first) {
            runner_up = first;
            first = Some(s);
        } else if beats(s, runner_up) {
            runner_up = Some(s);
        }
    }
    let in_best = first.map_or(0, |s| counts.terms_in_sentence(s));
    dense.push(if terms == 0 {
        0.0
    } else {
        in_best as f64 / terms as f64
    });
    let top = first.map_or(0.0, |s| ranks[s]);
    let second = runner_up.map_or(0.0, |s| ranks[s]);
    dense.push(top);
    dense.push(top - second);
    dense.push(f64::from(u8::from(has_ascii_digit(question.as_bytes()))));
    let capitals = question_tokens
        .iter()
        .skip(1)
        .filter(|t| t.kind == TokenKind::Word && t.capitalised)
        .count();
    dense.push(ln1p(capitals));
    // The curly quotes are the only ones beyond ASCII, and start with the byte 0xE2.
    let quoted = memchr::memchr2(b'"', b'\'', question.as_bytes()).is_some()
        || (memchr::memchr(0xE2, question.as_bytes()).is_some() && question.contains(['“', '”']));
    dense.push(f64::from(u8::from(quoted)));
    dense.push(if context_tokens == 0 {
        0.0
    } else {
        a.numbers() as f64 / context_tokens as f64
    });
    let typed = first.map_or(0, |s| a.typed_in_sentence(s, kind));
    dense.push(ln1p(typed));
    debug_assert_eq!(dense.len(), DENSE_NAMES.len());

    // Defer mode: what the probes answered.
    let best_text = first.map_or("", |s| a.sentence_text(s));
    let normalized: Vec<Option<String>> = probe_answers
        .iter()
        .map(|a| a.map(normalize_answer))
        .collect();
    // Only the answer words that can share a stem with a question word are stemmed.
    let initials = StemInitials::of(question_tokens.iter().map(|q| q.stem.as_str()));
    for (answer, norm) in probe_answers.iter().zip(&normalized) {
        let answer = answer.unwrap_or("");
        let norm = norm.as_deref().unwrap_or("");
        let tokens = tokenize_stemming(answer, |c| initials.may_start(c));
        dense.push(f64::from(u8::from(norm.is_empty())));
        dense.push(ln1p(tokens.len()));
        let in_question = tokens
            .iter()
            .filter(|t| {
                t.kind != TokenKind::Punct
                    && !t.stem.is_empty()
                    && question_tokens.iter().any(|q| q.stem == t.stem)
            })
            .count();
        let words = tokens.iter().filter(|t| t.kind != TokenKind::Punct).count();
        dense.push(if words == 0 {
            0.0
        } else {
            in_question as f64 / words as f64
        });
        dense.push(f64::from(u8::from(
            !answer.is_empty() && tokens.iter().any(|t| fits(t, kind, answer)),
        )));
        dense.push(f64::from(u8::from(
            !answer.is_empty() && best_text.contains(answer),
        )));
    }
    for a in 0..probe_answers.len() {
        for b in a + 1..probe_answers.len() {
            let (x, y) = (
                normalized[a].as_deref().unwrap_or(""),
                normalized[b].as_deref().unwrap_or(""),
            );
            let both = probe_answers[a].is_some() && probe_answers[b].is_some();
            dense.push(f64::from(u8::from(both && x == y)));
            // Both are normalised already (normalising is idempotent): F1 of the two directly.
            let f1 = if both { token_f1(x, y) } else { 0.0 };
            dense.push(f1);
        }
    }

    if ngrams == NGrams::Skipped {
        return Features {
            dense,
            hashed: Vec::new(),
        };
    }
    // Hashed question n-grams.
    let mut stems: Vec<&str> = Vec::with_capacity(question_tokens.len());
    stems.extend(
        question_tokens
            .iter()
            .filter(|t| t.kind != TokenKind::Punct)
            .map(|t| t.stem.as_str()),
    );
    let wh_name = wh.map_or("none", |i| WH_WORDS[i]);
    let kind_name = match kind {
        AnswerType::Date => "Date",
        AnswerType::Number => "Number",
        AnswerType::Name => "Name",
        AnswerType::Other => "Other",
    };
    // The wh-word × type key, one unigram per stem and one bigram per pair of neighbours.
    let keys = 1 + (2 * stems.len()).saturating_sub(1);
    let value = 1.0 / (keys as f64).sqrt();
    let mut hashed = Vec::with_capacity(keys);
    hashed.push((bucket(&["wh×type", wh_name, kind_name]), value));
    for (i, s) in stems.iter().enumerate() {
        hashed.push((bucket(&["1", s]), value));
        if let Some(next) = stems.get(i + 1) {
            hashed.push((bucket(&["2", s, next]), value));
        }
    }
    debug_assert_eq!(hashed.len(), keys);
    Features { dense, hashed }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: &str = "Super Bowl 50 was played on February 7, 2016. The Denver Broncos defeated the \
                           Carolina Panthers 24-10 at Levi's Stadium.";

    #[test]
    fn features_are_deterministic_and_sized_by_the_probes() {
        let q = "When was Super Bowl 50 played?";
        let a = featurize(q, CONTEXT, &[]);
        assert_eq!(a, featurize(q, CONTEXT, &[]));
        assert_eq!(a.dense.len(), DENSE_NAMES.len());
        let probes = featurize(q, CONTEXT, &[Some("February 7, 2016"), Some("2016"), None]);
        assert_eq!(probes.dense.len(), dense_len(3));
        assert_eq!(
            dense_len(2),
            DENSE_NAMES.len() + 2 * PROBE_NAMES.len() + PAIR_NAMES.len()
        );
        assert!(a.hashed.iter().all(|&(b, _)| (b as usize) < HASH_BUCKETS));
    }

    #[test]
    fn features_say_what_the_question_asks_and_what_the_probes_agree_on() {
        let q = "When was Super Bowl 50 played?";
        let f = featurize(
            q,
            CONTEXT,
            &[Some("February 7, 2016"), Some("February 7, 2016")],
        );
        let at = |name: &str| f.dense[DENSE_NAMES.iter().position(|n| *n == name).unwrap()];
        assert_eq!(at("wh_when"), 1.0);
        assert_eq!(at("type_date"), 1.0);
        assert_eq!(at("wh_who"), 0.0);
        assert_eq!(at("question_has_digit"), 1.0);
        assert_eq!(at("terms_in_context"), 1.0);
        let base = DENSE_NAMES.len();
        // Probe 0: not empty, type matches (a month and a year), inside the best sentence.
        assert_eq!(f.dense[base], 0.0);
        assert_eq!(f.dense[base + 3], 1.0);
        assert_eq!(f.dense[base + 4], 1.0);
        // The pair agrees exactly.
        let pair = base + 2 * PROBE_NAMES.len();
        assert_eq!((f.dense[pair], f.dense[pair + 1]), (1.0, 1.0));
        let g = featurize(q, CONTEXT, &[Some("February 7, 2016"), None]);
        assert_eq!((g.dense[pair], g.dense[pair + 1]), (0.0, 0.0));
        assert_eq!(
            g.dense[base + PROBE_NAMES.len()],
            1.0,
            "a failed probe counts as empty"
        );
    }

    #[test]
    fn an_answer_overlaps_the_question_by_stems_whatever_the_case() {
        let q = "Which Denver team played in Zürich?";
        let overlap = |answer: &str| {
            let f = featurize(q, CONTEXT, &[Some(answer), None]);
            f.dense[DENSE_NAMES.len() + 2]
        };
        // "DENVER" and "Denver", "teams" and "team", "zürich" and "Zürich" share stems.
        assert_eq!(overlap("the DENVER Broncos"), 1.0 / 3.0);
        assert_eq!(overlap("teams of zürich"), 2.0 / 3.0);
        assert_eq!(overlap("Carolina Panthers"), 0.0);
        assert_eq!(overlap("?"), 0.0, "punctuation shares no stem");
    }

    #[test]
    fn a_cascade_state_reads_only_the_answers_of_the_experts_asked() {
        let q = "When was Super Bowl 50 played?";
        let all = [
            Some("February 7, 2016"),
            Some("2016"),
            Some("February 7, 2016"),
        ];
        let full = featurize(q, CONTEXT, &all);
        let asked = [true, false, true];
        // Training masks the featurization with every answer; serving featurizes what it saw.
        let mut trained = Vec::new();
        cascade_dense(&full.dense, &asked, &mut trained);
        let seen = featurize(q, CONTEXT, &[all[0], None, all[2]]);
        let mut served = Vec::new();
        cascade_dense(&seen.dense, &asked, &mut served);
        assert_eq!(trained, served);
        assert_eq!(trained.len(), cascade_dense_len(3));
        let base = DENSE_NAMES.len();
        let probe = |j: usize| &trained[base + j * PROBE_NAMES.len()..][..PROBE_NAMES.len()];
        // The agent not asked has every answer feature at zero, "empty" included.
        assert!(probe(1).iter().all(|x| *x == 0.0));
        assert_eq!(probe(0)[3], 1.0, "type fits");
        // Pairs: (0, 1), (0, 2), (1, 2); only (0, 2) was seen, and it agrees.
        let pairs = base + 3 * PROBE_NAMES.len();
        assert_eq!(&trained[pairs..pairs + 6], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(&trained[trained.len() - 3..], &[1.0, 0.0, 1.0]);
        // Asked with no answer: the "empty" flag, unlike not asked.
        let mut failed = Vec::new();
        cascade_dense(
            &featurize(q, CONTEXT, &[all[0], None, all[2]]).dense,
            &[true, true, true],
            &mut failed,
        );
        assert_eq!(failed[base + PROBE_NAMES.len()], 1.0);
    }

    #[test]
    fn fnv1a_is_the_published_function() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the reference test vector).
        assert_eq!(fnv1a(&["a"]), 0xaf63_dc4c_8601_ec8c);
    }

    proptest::proptest! {
        /// The eight-at-a-time digit scan says what a byte-by-byte one says, on any bytes
        /// (bytes beyond ASCII, next to digits and at every offset included).
        #[test]
        fn the_digit_scan_is_the_byte_scan(
            bytes in proptest::collection::vec(proptest::sample::select(vec![b'0', b'9', b'/', b':', 0x00, 0x7f, 0x80, 0xb0, 0xb9, 0xe2, 0xff, b'a']), 0..40),
        ) {
            let without: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_digit()).collect();
            for b in [&bytes[..], &without[..]] {
                proptest::prop_assert_eq!(has_ascii_digit(b), b.iter().any(u8::is_ascii_digit));
            }
        }
    }

    const WORDS: &[&str] = &[
        "When", "How", "many", "Who", "what", "Denver", "Broncos", "broncos'", "defeated", "the",
        "Panthers", "24-10", "February", "7,", "2016", "1,000", "Levi's", "Stadium", "Zürich",
        "école", "\"Super", "Bowl\"", ".", "?", ",", "won", "game", "MVP",
    ];

    proptest::proptest! {
        /// Features on a context analysed before are the features, bit for bit, and the
        /// dense-only ones their dense part.
        #[test]
        fn an_analysed_context_gives_the_same_features(
            question in proptest::collection::vec(proptest::sample::select(WORDS), 1..8),
            context in proptest::collection::vec(proptest::sample::select(WORDS), 1..80),
            probe in proptest::collection::vec(proptest::sample::select(WORDS), 0..3),
        ) {
            let (question, context, probe) = (question.join(" "), context.join(" "), probe.join(" "));
            let probes = [Some(probe.as_str()), None];
            let analysis = ContextAnalysis::of(&context);
            let fresh = featurize(&question, &context, &probes);
            let kept = featurize_analysed(&question, &context, Some(&analysis), &probes);
            proptest::prop_assert_eq!(
                fresh.dense.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                kept.dense.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            proptest::prop_assert_eq!(fresh.hashed, kept.hashed);
            // The dense-only featurization (a cascade's) is the same dense part, bit for bit.
            let dense = featurize_dense(&question, &context, Some(&analysis), &probes);
            proptest::prop_assert_eq!(
                fresh.dense.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                dense.dense.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            proptest::prop_assert!(dense.hashed.is_empty());
        }
    }
}
