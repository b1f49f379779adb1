//! The answer type a question asks for, read off its wh-word and the noun after it: a date for
//! "when" and "what year", a number for "how many" and "what percentage", a name for "who",
//! "where" and "which city". Used by the typed reader and by the policy's featurizer.

use super::text::{Token, TokenKind, lower_case};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerType {
    Date,
    Number,
    Name,
    Other,
}

pub const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
];
const DATE_NOUNS: &[&str] = &[
    "year", "date", "day", "month", "century", "decade", "era", "period",
];
const NUMBER_NOUNS: &[&str] = &[
    "percentage",
    "percent",
    "number",
    "amount",
    "population",
    "size",
    "age",
    "cost",
    "price",
];
const HOW_NUMBER: &[&str] = &[
    "many", "much", "long", "old", "far", "large", "big", "tall", "high", "often", "fast", "deep",
    "wide", "heavy",
];
const NAME_NOUNS: &[&str] = &[
    "city",
    "country",
    "state",
    "place",
    "region",
    "river",
    "company",
    "team",
    "person",
    "man",
    "woman",
    "king",
    "queen",
    "president",
    "group",
    "organization",
    "university",
    "county",
    "island",
    "nation",
    "language",
    "church",
    "empire",
    "party",
];
/// The answer type a question asks for, from its wh-word and the noun after it. `question` is
/// the question's tokens as [`super::text::tokenize`] gives them (every word stemmed).
pub fn answer_type(question: &[Token], source: &str) -> AnswerType {
    // The noun after a wh-word is compared by its stem and by the word itself, lower-cased.
    let next_is = |i: usize, list: &[&str]| {
        question.get(i + 1).is_some_and(|t| {
            let stem = t.stem.as_str();
            list.contains(&stem) || {
                let word = lower_case(t.text(source));
                word != stem && list.contains(&word.as_str())
            }
        })
    };
    for (i, t) in question.iter().enumerate() {
        let text = t.text(source);
        // Wh-words have 3 to 5 letters and start with w or h: most words are ruled out before
        // they are lower-cased (a word beyond ASCII may lower-case to one).
        if text.is_ascii()
            && !((3..=5).contains(&text.len()) && matches!(text.as_bytes()[0] | 0x20, b'w' | b'h'))
        {
            continue;
        }
        let kind = match lower_case(text).as_str() {
            "when" => AnswerType::Date,
            "who" | "whom" | "whose" | "where" => AnswerType::Name,
            "how" if next_is(i, HOW_NUMBER) => AnswerType::Number,
            "what" | "which" if next_is(i, DATE_NOUNS) => AnswerType::Date,
            "what" | "which" if next_is(i, NUMBER_NOUNS) => AnswerType::Number,
            "what" | "which" if next_is(i, NAME_NOUNS) => AnswerType::Name,
            "what" | "which" | "how" | "why" => AnswerType::Other,
            _ => continue,
        };
        return kind;
    }
    AnswerType::Other
}

/// Whether `word` is a month's name or abbreviation, in any case.
pub fn is_month(word: &str) -> bool {
    /// The first three letters of every entry of [`MONTHS`], lower-case, as integers.
    const PREFIXES: [u32; 12] = {
        let names = [
            b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
            b"dec",
        ];
        let mut keys = [0u32; 12];
        let mut i = 0;
        while i < keys.len() {
            keys[i] = u32::from_le_bytes([names[i][0], names[i][1], names[i][2], 0]);
            i += 1;
        }
        keys
    };
    /// Bit `c - 'a'` set for the first letter `c` of a month (j, f, m, a, s, o, n, d).
    const INITIALS: u32 = {
        let mut bits = 0u32;
        let mut i = 0;
        while i < MONTHS.len() {
            bits |= 1 << (MONTHS[i].as_bytes()[0] - b'a');
            i += 1;
        }
        bits
    };
    // Months are ASCII; no other character lower-cases into one of their letters. Nearly every
    // word is ruled out by its length, its first letter or its first three bytes (with the bit
    // that lower-cases an ASCII letter set: a filter that keeps every month in any case) before
    // any comparison.
    let b = word.as_bytes();
    (3..=9).contains(&b.len())
        && (b[0] | 0x20).wrapping_sub(b'a') < 26
        && INITIALS & (1 << ((b[0] | 0x20) - b'a')) != 0
        && PREFIXES.contains(&u32::from_le_bytes([
            b[0] | 0x20,
            b[1] | 0x20,
            b[2] | 0x20,
            0,
        ]))
        && MONTHS.iter().any(|m| m.eq_ignore_ascii_case(word))
}

/// Whether a token looks like part of an answer of the expected type.
pub fn fits(t: &Token, kind: AnswerType, source: &str) -> bool {
    fits_text(t.kind, t.capitalised, t.text(source), kind)
}

/// [`fits`] of a token given by its kind, whether it is capitalised, and its text.
pub fn fits_text(token: TokenKind, capitalised: bool, text: &str, kind: AnswerType) -> bool {
    match kind {
        AnswerType::Date => (token == TokenKind::Number && text.len() == 4) || is_month(text),
        AnswerType::Number => token == TokenKind::Number,
        AnswerType::Name => token == TokenKind::Word && capitalised,
        AnswerType::Other => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::text::tokenize;

    /// [`answer_type`] as first written, every word compared case-insensitively with each
    /// listed word in turn: the reference the one-pass version is checked against.
    fn answer_type_by_lists(question: &[Token], source: &str) -> AnswerType {
        let lowered: Vec<Option<String>> = question
            .iter()
            .map(|t| {
                let word = t.text(source);
                (!word.is_ascii()).then(|| word.to_lowercase())
            })
            .collect();
        let is = |i: usize, lower: &str| match &lowered[i] {
            Some(word) => word == lower,
            None => question[i].text(source).eq_ignore_ascii_case(lower),
        };
        let next_is = |i: usize, list: &[&str]| {
            question.get(i + 1).is_some_and(|t| {
                list.contains(&t.stem.as_str()) || list.iter().any(|w| is(i + 1, w))
            })
        };
        for i in 0..question.len() {
            if is(i, "when") {
                return AnswerType::Date;
            }
            if ["who", "whom", "whose", "where"].iter().any(|w| is(i, w)) {
                return AnswerType::Name;
            }
            let what = is(i, "what") || is(i, "which");
            if is(i, "how") && next_is(i, HOW_NUMBER) {
                return AnswerType::Number;
            }
            if what && next_is(i, DATE_NOUNS) {
                return AnswerType::Date;
            }
            if what && next_is(i, NUMBER_NOUNS) {
                return AnswerType::Number;
            }
            if what && next_is(i, NAME_NOUNS) {
                return AnswerType::Name;
            }
            if what || is(i, "how") || is(i, "why") {
                return AnswerType::Other;
            }
        }
        AnswerType::Other
    }

    proptest::proptest! {
        /// The one-pass answer type is the answer type compared list by list, on questions of
        /// wh-words, listed nouns (plural, capitalised), other words and non-ASCII ones.
        #[test]
        fn the_answer_type_is_read_as_by_the_lists(
            words in proptest::collection::vec(
                proptest::sample::select(vec![
                    "When", "who", "WHOM", "whose", "Where", "what", "Which", "how", "HOW", "why",
                    "many", "Much", "year", "Years", "percentage", "cities", "City", "kings",
                    "organization", "the", "did", "\u{212A}ing", "Zürich", "ÉTAT", "was", "1990",
                    "?", ",", "whenever", "howl", "sizes", "AGE",
                ]),
                0..8,
            ),
        ) {
            let question = words.join(" ");
            let tokens = tokenize(&question);
            proptest::prop_assert_eq!(
                answer_type(&tokens, &question),
                answer_type_by_lists(&tokens, &question),
                "{}",
                question
            );
        }

        /// The filtered month test says what comparing with every month says, on months in any
        /// case, on words one letter off and on any short text.
        #[test]
        fn the_month_filter_keeps_every_month(
            month in proptest::sample::select(MONTHS),
            upper in proptest::collection::vec(proptest::bool::ANY, 9),
            edit in 0usize..9,
            other in "\\PC{0,10}",
        ) {
            let cased: String = month
                .chars()
                .zip(&upper)
                .map(|(c, u)| if *u { c.to_ascii_uppercase() } else { c })
                .collect();
            let mut off = cased.clone().into_bytes();
            let at = edit % off.len();
            off[at] = if off[at] == b'z' { b'y' } else { b'z' };
            let off = String::from_utf8(off).unwrap();
            for word in [cased.as_str(), off.as_str(), other.as_str()] {
                let every = MONTHS.iter().any(|m| m.eq_ignore_ascii_case(word));
                proptest::prop_assert_eq!(is_month(word), every, "{}", word);
            }
        }
    }

    #[test]
    fn question_words_give_the_answer_type() {
        let kind = |q: &str| answer_type(&tokenize(q), q);
        assert_eq!(kind("When was the game played?"), AnswerType::Date);
        assert_eq!(kind("In what year did it start?"), AnswerType::Date);
        assert_eq!(kind("How many people attended?"), AnswerType::Number);
        assert_eq!(kind("What percentage voted?"), AnswerType::Number);
        assert_eq!(kind("Who won?"), AnswerType::Name);
        assert_eq!(kind("Which city hosted it?"), AnswerType::Name);
        assert_eq!(kind("What is the name of the game?"), AnswerType::Other);
        // Case does not matter, nor a plural noun after the wh-word.
        assert_eq!(kind("WHEN did it end?"), AnswerType::Date);
        assert_eq!(kind("HOW Many attended?"), AnswerType::Number);
        assert_eq!(kind("Which Cities hosted it?"), AnswerType::Name);
        assert_eq!(kind("Why did it end?"), AnswerType::Other);
        assert_eq!(kind("Il était où?"), AnswerType::Other);
        // A question with non-ASCII characters: its ASCII words still count, and a word that
        // lower-cases to ASCII (with the Kelvin sign for K) is the word it lower-cases to.
        assert_eq!(kind("Zürich: who founded it?"), AnswerType::Name);
        assert_eq!(kind("Which \u{212A}ing ruled Zürich?"), AnswerType::Name);
    }
}
