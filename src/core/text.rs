//! Text handling shared by the live readers: tokens with their character offsets, sentences,
//! light stemming, stop words.
//!
//! Tokens are runs of letters/digits (a number keeps internal `,` and `.` between digits, so
//! "1,000.5" is one token; a word keeps an apostrophe between letters, so "Levi's" is one) or
//! single punctuation characters. Offsets are in code points, like
//! SQuAD's `answer_start`, and in bytes, to cut answers out of the context verbatim.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Word,
    Number,
    Punct,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    /// Lower-cased, possessive and plural endings stripped (see [`stem`]).
    pub stem: String,
    pub capitalised: bool,
    pub byte_start: usize,
    pub byte_end: usize,
    pub char_start: u32,
    pub char_end: u32,
}

impl Token {
    pub fn text<'a>(&self, source: &'a str) -> &'a str {
        &source[self.byte_start..self.byte_end]
    }
}

/// Splits `text` into tokens.
pub fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let mut tokens = Vec::with_capacity(chars.len() / 5 + 1);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let kind = if c.is_alphanumeric() {
            let mut has_letter = false;
            while i < chars.len() {
                let c = chars[i].1;
                if c.is_alphanumeric() {
                    has_letter |= c.is_alphabetic();
                    i += 1;
                } else if (c == ',' || c == '.')
                    && chars[i - 1].1.is_ascii_digit()
                    && chars.get(i + 1).is_some_and(|n| n.1.is_ascii_digit())
                {
                    i += 1;
                } else if (c == '\'' || c == '’')
                    && chars[i - 1].1.is_alphabetic()
                    && chars.get(i + 1).is_some_and(|n| n.1.is_alphabetic())
                {
                    // "Levi's", "don't": one word.
                    i += 1;
                } else {
                    break;
                }
            }
            if has_letter && !chars[start].1.is_ascii_digit() {
                TokenKind::Word
            } else {
                TokenKind::Number
            }
        } else {
            i += 1;
            TokenKind::Punct
        };
        let raw = &text[byte_at(start)..byte_at(i)];
        tokens.push(Token {
            kind,
            stem: stem(raw),
            capitalised: raw.chars().next().is_some_and(char::is_uppercase),
            byte_start: byte_at(start),
            byte_end: byte_at(i),
            char_start: start as u32,
            char_end: i as u32,
        });
    }
    tokens
}

/// Lower-cases and strips the commonest inflections, so "Broncos" meets "bronco" and
/// "defeated" meets "defeat". Deliberately light: a wrong stem only costs a missed match.
pub fn stem(word: &str) -> String {
    let mut w = word.to_lowercase();
    for suffix in ["'s", "’s"] {
        if let Some(stripped) = w.strip_suffix(suffix) {
            w = stripped.to_owned();
        }
    }
    let n = w.chars().count();
    if n > 4 && w.ends_with("ies") {
        w.truncate(w.len() - 3);
        w.push('y');
    } else if n > 5 && w.ends_with("ing") {
        w.truncate(w.len() - 3);
    } else if n > 4 && w.ends_with("ed") {
        w.truncate(w.len() - 2);
    } else if n > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") {
        w.truncate(w.len() - 1);
    }
    w
}

const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "being", "between", "both", "but", "by", "can", "could", "did", "do", "doe",
    "during", "each", "for", "from", "ha", "had", "have", "he", "her", "hi", "his", "how", "i",
    "if", "in", "into", "is", "it", "its", "kind", "many", "may", "more", "most", "much", "name",
    "of", "on", "one", "or", "other", "our", "over", "she", "should", "so", "some", "such", "than",
    "that", "the", "their", "them", "then", "there", "these", "they", "thi", "this", "those", "to",
    "type", "under", "up", "upon", "us", "wa", "was", "we", "were", "what", "when", "where",
    "which", "while", "who", "whom", "whose", "why", "will", "with", "would", "you",
];

/// Function words that carry no topic (compared on stems).
pub fn is_stop_word(stem: &str) -> bool {
    STOP_WORDS.binary_search(&stem).is_ok()
}

/// Token ranges `[start, end)` of the sentences of `tokens` (split after `.`, `!`, `?`).
pub fn sentences(tokens: &[Token], source: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        if t.kind == TokenKind::Punct && matches!(t.text(source), "." | "!" | "?") {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < tokens.len() {
        out.push((start, tokens.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_binary_search() {
        assert!(
            STOP_WORDS.windows(2).all(|w| w[0] < w[1]),
            "keep STOP_WORDS sorted"
        );
        assert!(is_stop_word("the") && is_stop_word(&stem("was")) && !is_stop_word("bronco"));
    }

    #[test]
    fn tokens_keep_offsets_numbers_and_punctuation() {
        let text = "Zürich's 1,000.5 people—won 24-10.";
        let tokens = tokenize(text);
        let texts: Vec<&str> = tokens.iter().map(|t| t.text(text)).collect();
        assert_eq!(
            texts,
            [
                "Zürich's",
                "1,000.5",
                "people",
                "—",
                "won",
                "24",
                "-",
                "10",
                "."
            ]
        );
        assert_eq!((tokens[0].char_start, tokens[0].char_end), (0, 8));
        assert!(tokens[0].capitalised);
        assert_eq!(tokens[0].stem, "zürich");
        assert_eq!(tokens[1].kind, TokenKind::Number);
        assert_eq!(tokens[1].char_start, 9);
        assert_eq!(tokens[8].kind, TokenKind::Punct);
    }

    #[test]
    fn stems_meet_their_inflections() {
        assert_eq!(stem("Broncos"), "bronco");
        assert_eq!(stem("defeated"), stem("defeat"));
        assert_eq!(stem("cities"), "city");
        assert_eq!(stem("playing"), "play");
        assert_eq!(stem("class"), "class");
        assert_eq!(stem("Levi’s"), "levi");
    }

    #[test]
    fn sentences_split_at_terminal_punctuation() {
        let text = "It won. Did it? Yes";
        let tokens = tokenize(text);
        assert_eq!(sentences(&tokens, text), [(0, 3), (3, 6), (6, 7)]);
    }
}
