//! The answer type a question asks for, read off its wh-word and the noun after it: a date for
//! "when" and "what year", a number for "how many" and "what percentage", a name for "who",
//! "where" and "which city". Used by the typed reader and by the policy's featurizer.

use super::text::{Token, stem};

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
/// The answer type a question asks for, from its wh-word and the noun after it.
pub fn answer_type(question: &[Token], source: &str) -> AnswerType {
    let words: Vec<String> = question
        .iter()
        .map(|t| t.text(source).to_lowercase())
        .collect();
    let next_is = |i: usize, list: &[&str]| {
        words
            .get(i + 1)
            .is_some_and(|w| list.contains(&stem(w).as_str()) || list.contains(&w.as_str()))
    };
    for (i, w) in words.iter().enumerate() {
        match w.as_str() {
            "when" => return AnswerType::Date,
            "who" | "whom" | "whose" | "where" => return AnswerType::Name,
            "how" if next_is(i, HOW_NUMBER) => return AnswerType::Number,
            "what" | "which" if next_is(i, DATE_NOUNS) => return AnswerType::Date,
            "what" | "which" if next_is(i, NUMBER_NOUNS) => return AnswerType::Number,
            "what" | "which" if next_is(i, NAME_NOUNS) => return AnswerType::Name,
            "what" | "which" | "how" | "why" => return AnswerType::Other,
            _ => {}
        }
    }
    AnswerType::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::text::tokenize;

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
    }
}
