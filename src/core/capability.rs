//! What an expert can take: the limits it declares (context length in characters or tokens,
//! languages) and, for a replay expert, the queries it holds a recording of. The scheduler
//! checks a query against them before scoring, so an expert that cannot take a query is never
//! called for it; an expert that declares nothing takes any query, as before.
//!
//! Recorded queries are kept as 64-bit fingerprints (XXH3 of a prefix and the normalised text),
//! the same function on both sides of the wire: the replay backend resolves a query through the
//! set it announces, so the scheduler's check and the expert's lookup agree by construction.
//! A query id is looked up by id alone (as the replay backend does); a query without an id by
//! its question and context, with surrounding white space trimmed and inner runs of white space
//! made one space.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Limits and holdings an expert declares. Every part is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capabilities {
    /// Longest context it takes, in Unicode code points.
    pub max_context_chars: Option<u32>,
    /// Longest context it takes, in tokens as l2d's tokenizer counts them ([`count_tokens`]).
    pub max_context_tokens: Option<u32>,
    /// Languages it answers in (primary subtags of BCP 47 tags, lower case); empty: any. Checked
    /// against the language a query states; a query that states none is not checked.
    pub languages: Vec<String>,
    /// The queries it holds (a replay expert's recordings); `None`: any query.
    pub holds: Option<Arc<Holdings>>,
}

/// The queries a replay expert holds, as fingerprints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    ids: HashSet<u64>,
    contents: HashSet<u64>,
}

/// Why an expert cannot take a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unfit {
    /// A replay expert has no recording of it.
    NotHeld,
    ContextChars {
        chars: u32,
        max: u32,
    },
    ContextTokens {
        tokens: u32,
        max: u32,
    },
    Language,
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::NotHeld => f.write_str("no recording of this question"),
            Unfit::ContextChars { chars, max } => {
                write!(f, "context of {chars} characters over its limit of {max}")
            }
            Unfit::ContextTokens { tokens, max } => {
                write!(f, "context of {tokens} tokens over its limit of {max}")
            }
            Unfit::Language => f.write_str("the query's language is not among its languages"),
        }
    }
}

/// The fingerprint of a query id.
pub fn id_fingerprint(id: &str) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(b"id\0");
    hasher.update(id.trim().as_bytes());
    hasher.digest()
}

/// The fingerprint of a (question, context) pair, white space normalised.
pub fn content_fingerprint(question: &str, context: &str) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(b"qc\0");
    hasher.update(normalised(question).as_bytes());
    hasher.update(b"\0");
    hasher.update(normalised(context).as_bytes());
    hasher.digest()
}

/// `text`'s words separated by single spaces; borrowed when it already is (the usual case: one
/// pass over the text, no copy).
fn normalised(text: &str) -> Cow<'_, str> {
    let clean = text.as_bytes().first() != Some(&b' ')
        && text.as_bytes().last() != Some(&b' ')
        && !text.contains("  ")
        && !has_other_white_space(text);
    if clean || text.is_empty() {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// Whether `text` has white space other than the ASCII space: a control character from tab to
/// carriage return, or a non-ASCII one (each starts with one of four UTF-8 lead bytes). Scanned
/// in blocks without early exit, which the compiler vectorises; only a block with a candidate
/// byte is looked at closely.
fn has_other_white_space(text: &str) -> bool {
    const BLOCK: usize = 64;
    let candidate = |b: u8| (b'\t'..=b'\r').contains(&b) | matches!(b, 0xC2 | 0xE1 | 0xE2 | 0xE3);
    text.as_bytes()
        .chunks(BLOCK)
        .enumerate()
        .filter(|(_, block)| block.iter().fold(false, |any, &b| any | candidate(b)))
        .any(|(k, block)| {
            block.iter().enumerate().any(|(i, &b)| {
                candidate(b)
                    && text[k * BLOCK + i..]
                        .chars()
                        .next()
                        .is_some_and(char::is_whitespace)
            })
        })
}

/// Tokens of `text` as l2d's tokenizer counts them: runs of letters and digits (a number keeps
/// its inner `,` and `.`, a word its apostrophe), and single punctuation characters
/// ([`super::text::tokenize`]).
pub fn count_tokens(text: &str) -> u32 {
    let mut tokens = 0usize;
    super::text::scan(text, |_| tokens += 1);
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

impl Holdings {
    pub fn new(
        ids: impl IntoIterator<Item = u64>,
        contents: impl IntoIterator<Item = u64>,
    ) -> Self {
        Self {
            ids: ids.into_iter().collect(),
            contents: contents.into_iter().collect(),
        }
    }

    /// The id fingerprints, then the content fingerprints (for the wire; any order).
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.ids.iter().copied()
    }

    pub fn contents(&self) -> impl Iterator<Item = u64> + '_ {
        self.contents.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.ids.len().max(self.contents.len())
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.contents.is_empty()
    }

    /// Holds the query: by its id when it has one, else by its question and context.
    pub fn holds(&self, query: &QueryFit<'_>) -> bool {
        match query.id {
            Some(_) => self.ids.contains(&query.id_fingerprint()),
            None => self.contents.contains(&query.content_fingerprint()),
        }
    }
}

/// A query as the capability check reads it; each measure computed once, when first needed.
#[derive(Debug)]
pub struct QueryFit<'q> {
    question: &'q str,
    context: &'q str,
    id: Option<&'q str>,
    language: Option<String>,
    chars: OnceLock<u32>,
    tokens: OnceLock<u32>,
    id_fingerprint: OnceLock<u64>,
    content_fingerprint: OnceLock<u64>,
}

impl<'q> QueryFit<'q> {
    /// `language`: the BCP 47 tag the query states, if any.
    pub fn new(
        question: &'q str,
        context: &'q str,
        id: Option<&'q str>,
        language: Option<&str>,
    ) -> Self {
        Self {
            question,
            context,
            id,
            language: language.and_then(primary_subtag),
            chars: OnceLock::new(),
            tokens: OnceLock::new(),
            id_fingerprint: OnceLock::new(),
            content_fingerprint: OnceLock::new(),
        }
    }

    pub fn context_chars(&self) -> u32 {
        *self
            .chars
            .get_or_init(|| u32::try_from(self.context.chars().count()).unwrap_or(u32::MAX))
    }

    /// This query, its context known to have `tokens` tokens (as [`count_tokens`] counts them;
    /// the context's analysis counts the same), so the check does not count them again.
    pub fn with_context_tokens(self, tokens: usize) -> Self {
        let _ = self.tokens.set(u32::try_from(tokens).unwrap_or(u32::MAX));
        self
    }

    pub fn context_tokens(&self) -> u32 {
        *self.tokens.get_or_init(|| count_tokens(self.context))
    }

    fn id_fingerprint(&self) -> u64 {
        *self
            .id_fingerprint
            .get_or_init(|| id_fingerprint(self.id.unwrap_or_default()))
    }

    fn content_fingerprint(&self) -> u64 {
        *self
            .content_fingerprint
            .get_or_init(|| content_fingerprint(self.question, self.context))
    }
}

/// The primary subtag of a BCP 47 tag, lower case ("en-GB" → "en"); `None` for an empty tag.
pub fn primary_subtag(tag: &str) -> Option<String> {
    let primary = tag.trim().split(['-', '_']).next()?.trim();
    (!primary.is_empty()).then(|| primary.to_ascii_lowercase())
}

impl Capabilities {
    /// Declares nothing: takes any query.
    pub fn is_unlimited(&self) -> bool {
        self.max_context_chars.is_none()
            && self.max_context_tokens.is_none()
            && self.languages.is_empty()
            && self.holds.is_none()
    }

    /// Whether the expert can take `query`, and if not, the first reason.
    pub fn admits(&self, query: &QueryFit<'_>) -> Result<(), Unfit> {
        if self.is_unlimited() {
            return Ok(());
        }
        if let Some(max) = self.max_context_chars {
            let chars = query.context_chars();
            if chars > max {
                return Err(Unfit::ContextChars { chars, max });
            }
        }
        if let Some(max) = self.max_context_tokens {
            let tokens = query.context_tokens();
            if tokens > max {
                return Err(Unfit::ContextTokens { tokens, max });
            }
        }
        if let Some(language) = &query.language
            && !self.languages.is_empty()
            && !self.languages.iter().any(|l| l == language)
        {
            return Err(Unfit::Language);
        }
        if let Some(holds) = &self.holds
            && !holds.holds(query)
        {
            return Err(Unfit::NotHeld);
        }
        Ok(())
    }

    /// These capabilities with `declared` laid over them: the tighter of each context limit,
    /// `declared`'s languages when it names any, and these holdings.
    pub fn tightened_by(&self, declared: &Capabilities) -> Self {
        let tighter = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Self {
            max_context_chars: tighter(self.max_context_chars, declared.max_context_chars),
            max_context_tokens: tighter(self.max_context_tokens, declared.max_context_tokens),
            languages: if declared.languages.is_empty() {
                self.languages.clone()
            } else {
                declared.languages.clone()
            },
            holds: self.holds.clone(),
        }
    }

    /// The context limits alone (what a worker checks at its door: it cannot know the query's
    /// language, and its backend checks its own recordings).
    pub fn context_limits(&self) -> Self {
        Self {
            max_context_chars: self.max_context_chars,
            max_context_tokens: self.max_context_tokens,
            ..Self::default()
        }
    }

    /// Languages as declared (any BCP 47 tags), normalised to primary subtags; empty tags are
    /// an error.
    pub fn parse_languages(tags: &[String]) -> Result<Vec<String>, String> {
        let mut languages = Vec::with_capacity(tags.len());
        for tag in tags {
            let primary = primary_subtag(tag)
                .filter(|p| p.chars().all(|c| c.is_ascii_alphabetic()) && p.len() <= 8)
                .ok_or_else(|| format!("{tag:?} is not a language tag (e.g. \"en\", \"de-CH\")"))?;
            if !languages.contains(&primary) {
                languages.push(primary);
            }
        }
        Ok(languages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit<'a>(q: &'a str, c: &'a str, id: Option<&'a str>) -> QueryFit<'a> {
        QueryFit::new(q, c, id, None)
    }

    #[test]
    fn declaring_nothing_admits_everything() {
        let any = Capabilities::default();
        let long = "word ".repeat(10_000);
        assert!(any.is_unlimited());
        assert_eq!(
            any.admits(&QueryFit::new("q?", &long, None, Some("xx"))),
            Ok(())
        );
    }

    #[test]
    fn context_limits_count_code_points_and_tokens() {
        let chars = Capabilities {
            max_context_chars: Some(5),
            ..Capabilities::default()
        };
        // Five code points, more bytes.
        assert_eq!(
            chars.admits(&fit("q", "Zürich", None)).unwrap_err(),
            Unfit::ContextChars { chars: 6, max: 5 }
        );
        assert_eq!(chars.admits(&fit("q", "Züri!", None)), Ok(()));
        let tokens = Capabilities {
            max_context_tokens: Some(3),
            ..Capabilities::default()
        };
        assert_eq!(
            tokens
                .admits(&fit("q", "It cost 1,000.5 dollars", None))
                .unwrap_err(),
            Unfit::ContextTokens { tokens: 4, max: 3 }
        );
        assert_eq!(tokens.admits(&fit("q", "Levi's   stadium.", None)), Ok(()));
        assert_eq!(count_tokens("Zürich — the city’s heart …"), 6);
    }

    #[test]
    fn languages_match_on_the_primary_subtag_and_only_when_the_query_states_one() {
        let english = Capabilities {
            languages: Capabilities::parse_languages(&["en-US".into(), "EN".into()]).unwrap(),
            ..Capabilities::default()
        };
        assert_eq!(english.languages, ["en"]);
        assert_eq!(
            english.admits(&QueryFit::new("q", "c", None, Some("en-GB"))),
            Ok(())
        );
        assert_eq!(english.admits(&QueryFit::new("q", "c", None, None)), Ok(()));
        assert_eq!(
            english.admits(&QueryFit::new("q", "c", None, Some("de"))),
            Err(Unfit::Language)
        );
        assert!(Capabilities::parse_languages(&["".into()]).is_err());
        assert!(Capabilities::parse_languages(&["e n".into()]).is_err());
    }

    #[test]
    fn holdings_match_ids_alone_or_normalised_text() {
        let held = Capabilities {
            holds: Some(Arc::new(Holdings::new(
                [id_fingerprint("q1")],
                [content_fingerprint("Who won?", "Denver won  in\n2016.")],
            ))),
            ..Capabilities::default()
        };
        assert_eq!(held.admits(&fit("anything", "at all", Some("q1"))), Ok(()));
        // An id it does not hold is not rescued by the text.
        assert_eq!(
            held.admits(&fit("Who won?", "Denver won in 2016.", Some("q2"))),
            Err(Unfit::NotHeld)
        );
        assert_eq!(
            held.admits(&fit(" Who won? ", "Denver won in 2016. ", None)),
            Ok(())
        );
        assert_eq!(
            held.admits(&fit("Who lost?", "Denver won in 2016.", None)),
            Err(Unfit::NotHeld)
        );
        assert_eq!(normalised("a b"), Cow::Borrowed("a b"));
        assert_eq!(normalised(" a\u{a0}b  c\n"), "a b c");
        assert_eq!(normalised("a b "), "a b");
        assert_eq!(normalised("  "), "");
        assert_eq!(normalised("a\tb"), "a b");
        assert_eq!(normalised("a  b"), "a b");
        assert_eq!(normalised(" a"), "a");
        assert_eq!(normalised("Zürich — a\u{2009}b\u{3000}"), "Zürich — a b");
        assert_eq!(normalised("Zürich — “a”"), Cow::Borrowed("Zürich — “a”"));
        // The question and the context are kept apart.
        assert_ne!(
            content_fingerprint("a b", "c"),
            content_fingerprint("a", "b c")
        );
    }
}
