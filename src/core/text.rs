//! Text handling shared by the live readers: tokens with their character offsets, sentences,
//! light stemming, stop words.
//!
//! Tokens are runs of letters/digits (a number keeps internal `,` and `.` between digits, so
//! "1,000.5" is one token; a word keeps an apostrophe between letters, so "Levi's" is one) or
//! single punctuation characters. Offsets are in code points, like SQuAD's `answer_start`, and
//! in bytes, to cut answers out of the context verbatim.

use compact_str::CompactString;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Word,
    Number,
    Punct,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    /// Lower-cased, possessive and plural endings stripped (see [`stem`]); kept inline (no heap
    /// allocation) up to 24 bytes, which is every English word this sees.
    pub stem: CompactString,
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
    tokenize_stemming(text, |_| true)
}

/// Splits `text` into tokens, stemming only the words and numbers whose first character
/// passes `stem_if` (the others get an empty stem). A stem starts with its word's first
/// character lower-cased, so a caller matching stems against a few known terms skips the words
/// that cannot match.
pub fn tokenize_stemming(text: &str, stem_if: impl Fn(char) -> bool) -> Vec<Token> {
    let mut tokens = Vec::with_capacity(text.len() / 5 + 1);
    scan(text, |t| {
        tokens.push(Token {
            kind: t.kind,
            // Punctuation never matches a term: no stem to make.
            stem: if t.kind == TokenKind::Punct || !stem_if(t.first) {
                CompactString::default()
            } else {
                stem(&text[t.byte_start..t.byte_end])
            },
            capitalised: t.first.is_uppercase(),
            byte_start: t.byte_start,
            byte_end: t.byte_end,
            char_start: t.char_start,
            char_end: t.char_end,
        })
    });
    tokens
}

/// A token as [`scan`] finds it: where it is and what kind, not stemmed.
#[derive(Debug, Clone, Copy)]
pub struct Scanned {
    pub kind: TokenKind,
    /// Its first character.
    pub first: char,
    pub byte_start: usize,
    pub byte_end: usize,
    pub char_start: u32,
    pub char_end: u32,
}

/// Calls `each` on the tokens of `text`, in order: what [`tokenize`] cuts, for a caller that
/// keeps less of each token than a [`Token`].
#[inline(always)]
pub fn scan(text: &str, mut each: impl FnMut(Scanned)) {
    let b = text.as_bytes();
    let len = b.len();
    let at = |i: usize| char_at(text, i);
    // Byte offset and code-point offset of the next character.
    let (mut i, mut chars) = (0, 0u32);
    while i < len {
        let (first, width) = at(i);
        let (start, char_start) = (i, chars);
        i += width;
        chars += 1;
        if first.is_whitespace() {
            continue;
        }
        let kind = if first.is_alphanumeric() {
            let (mut has_letter, mut prev) = (first.is_alphabetic(), first);
            loop {
                // A run of ASCII letters and digits, the bulk of every word, by a table
                // look-up per byte and without decoding (one character per byte).
                let run = i;
                if has_letter {
                    // Nothing more to learn from the run's classes: only where it ends.
                    while i < len && ASCII_CLASS[usize::from(b[i])] != 0 {
                        i += 1;
                    }
                } else {
                    while i < len {
                        let class = ASCII_CLASS[usize::from(b[i])];
                        if class == 0 {
                            break;
                        }
                        has_letter |= class == LETTER;
                        i += 1;
                    }
                }
                if i > run {
                    chars += (i - run) as u32;
                    prev = char::from(b[i - 1]);
                }
                if i >= len {
                    break;
                }
                // The run ended on an ASCII byte that is not a letter or a digit: only `,`, `.`
                // and an apostrophe can join what follows (a space, nearly always, cannot).
                if b[i].is_ascii() && !matches!(b[i], b',' | b'.' | b'\'') {
                    break;
                }
                let (c, width) = at(i);
                let joined = if c.is_alphanumeric() {
                    has_letter |= c.is_alphabetic();
                    true
                } else {
                    let next = (i + width < len).then(|| at(i + width).0);
                    match c {
                        // "1,000.5": one number.
                        ',' | '.' => {
                            prev.is_ascii_digit() && next.is_some_and(|n| n.is_ascii_digit())
                        }
                        // "Levi's", "don't": one word.
                        '\'' | '’' => {
                            prev.is_alphabetic() && next.is_some_and(char::is_alphabetic)
                        }
                        _ => false,
                    }
                };
                if !joined {
                    break;
                }
                prev = c;
                i += width;
                chars += 1;
            }
            if has_letter && !first.is_ascii_digit() {
                TokenKind::Word
            } else {
                TokenKind::Number
            }
        } else {
            TokenKind::Punct
        };
        each(Scanned {
            kind,
            first,
            byte_start: start,
            byte_end: i,
            char_start,
            char_end: chars,
        });
    }
}

/// [`ASCII_CLASS`] of an ASCII letter.
const LETTER: u8 = 1;
/// [`ASCII_CLASS`] of an ASCII digit.
const DIGIT: u8 = 2;
/// Per byte: [`LETTER`], [`DIGIT`], or 0 for any other byte (bytes beyond ASCII included).
const ASCII_CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        class[b] = if c.is_ascii_alphabetic() {
            LETTER
        } else if c.is_ascii_digit() {
            DIGIT
        } else {
            0
        };
        b += 1;
    }
    class
};

/// The character starting at byte `i` of `text` (a character boundary) and its length in
/// bytes: an ASCII byte is its own character, so most text is read without decoding.
#[inline(always)]
fn char_at(text: &str, i: usize) -> (char, usize) {
    let b = text.as_bytes()[i];
    if b.is_ascii() {
        (char::from(b), 1)
    } else {
        decode(text, i)
    }
}

/// [`char_at`] of a character beyond ASCII.
#[inline(never)]
fn decode(text: &str, i: usize) -> (char, usize) {
    let c = text[i..].chars().next().unwrap_or_default();
    (c, c.len_utf8())
}

/// The first bytes of some stems, to stem only the words that can have one of them: a stem
/// starts with its word's first character lower-cased when that is ASCII.
pub struct StemInitials(Vec<u8>);

impl StemInitials {
    pub fn of<'a>(stems: impl IntoIterator<Item = &'a str>) -> Self {
        Self(stems.into_iter().filter_map(|s| s.bytes().next()).collect())
    }

    /// Whether a word starting with `c` may have one of the stems (a word starting beyond
    /// ASCII always may).
    pub fn may_start(&self, c: char) -> bool {
        !c.is_ascii() || self.0.contains(&(c as u8).to_ascii_lowercase())
    }
}

/// Lower-cases and strips the commonest inflections, so "Broncos" meets "bronco" and
/// "defeated" meets "defeat". Deliberately light: a wrong stem only costs a missed match.
pub fn stem(word: &str) -> CompactString {
    match stem_ascii(word) {
        Some(stemmed) => stemmed,
        None => stem_any(word),
    }
}

/// Room for the stem of nearly every word (the longest kept inline by `CompactString`).
const INLINE: usize = 24;

/// [`stem`] of an ASCII word of at most 24 bytes (nearly every word), worked on a copy on the
/// stack and made a string once: the general path edits a `CompactString` in place, and each
/// edit checks its representation again. `None` for any other word.
fn stem_ascii(word: &str) -> Option<CompactString> {
    let mut buf = [0u8; INLINE];
    let n = stem_ascii_into(word, &mut buf)?;
    // SAFETY: `stem_ascii_into` leaves ASCII in `buf[..n]`, which is UTF-8. (Validating it
    // again was a tenth of the tokenizer's work.)
    Some(unsafe { CompactString::from_utf8_unchecked(&buf[..n]) })
}

/// `f` of the stem of `word`, with no string made for nearly every word.
pub fn with_stem<R>(word: &str, f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; INLINE];
    match stem_ascii_into(word, &mut buf) {
        // SAFETY: as in `stem_ascii`.
        Some(n) => f(unsafe { std::str::from_utf8_unchecked(&buf[..n]) }),
        None => f(&stem_any(word)),
    }
}

/// The stem of an ASCII word of at most 24 bytes into `buf`: its length, ASCII bytes. `None`
/// for any other word (`buf` then means nothing).
fn stem_ascii_into(word: &str, buf: &mut [u8; INLINE]) -> Option<usize> {
    let bytes = word.as_bytes();
    if bytes.len() > INLINE {
        return None;
    }
    // Copied, lower-cased and checked for ASCII in one pass over the word's few bytes (a copy
    // of a length known only at run time was a library call).
    let mut high = 0;
    for (to, &b) in buf.iter_mut().zip(bytes) {
        high |= b;
        *to = b.to_ascii_lowercase();
    }
    if !high.is_ascii() {
        return None;
    }
    let mut n = bytes.len() - possessive(&buf[..bytes.len()]);
    // ASCII: as many characters as bytes.
    let (cut, then_y) = inflection(&buf[..n], n);
    n -= cut;
    if then_y {
        buf[n] = b'y';
        n += 1;
    }
    Some(n)
}

/// [`stem`] of any word.
fn stem_any(word: &str) -> CompactString {
    let mut w = lower_case(word);
    w.truncate(w.len() - possessive(w.as_bytes()));
    let chars = if w.is_ascii() {
        w.len()
    } else {
        w.chars().count()
    };
    let (cut, then_y) = inflection(w.as_bytes(), chars);
    w.truncate(w.len() - cut);
    if then_y {
        w.push('y');
    }
    w
}

/// `word` lower-cased, kept inline (no allocation) up to 24 bytes. An ASCII word (nearly every
/// one) is lower-cased without Unicode tables; any other is lower-cased in full, since that can
/// give ASCII (the Kelvin sign gives "k").
pub fn lower_case(word: &str) -> CompactString {
    if word.is_ascii() {
        let mut w = CompactString::from(word);
        w.make_ascii_lowercase();
        w
    } else {
        CompactString::from(word.to_lowercase())
    }
}

/// Whether `b` ends with `suffix`, compared byte by byte: these suffixes are a few bytes long,
/// and a library memcmp call per test cost more than the comparison.
fn ends(b: &[u8], suffix: &[u8]) -> bool {
    b.len() >= suffix.len() && b[b.len() - suffix.len()..].iter().eq(suffix.iter())
}

/// Bytes of possessive endings (`'s`, then `’s`) that end the lower-cased word `b`.
fn possessive(b: &[u8]) -> usize {
    let mut cut = 0;
    for suffix in ["'s", "’s"] {
        if ends(&b[..b.len() - cut], suffix.as_bytes()) {
            cut += suffix.len();
        }
    }
    cut
}

/// The commonest inflection ending the lower-cased word `b` of `chars` characters (its
/// possessive cut): how many bytes to cut, and whether a `y` then ends the stem ("cities").
fn inflection(b: &[u8], chars: usize) -> (usize, bool) {
    if chars > 4 && ends(b, b"ies") {
        (3, true)
    } else if chars > 5 && ends(b, b"ing") {
        (3, false)
    } else if chars > 4 && ends(b, b"ed") {
        (2, false)
    } else if chars > 3 && ends(b, b"s") && !ends(b, b"ss") && !ends(b, b"us") {
        (1, false)
    } else {
        (0, false)
    }
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

const LONGEST_STOP_WORD: usize = 7;

/// The longest word [`pack`] takes: seven bytes and the length fill a `u64`.
const PACKED: usize = 7;
const _: () = assert!(LONGEST_STOP_WORD <= PACKED, "every stop word must pack");

/// A word of at most [`PACKED`] bytes as one integer: its bytes big-endian and zero-padded, then its
/// length in the last byte. Two words have the same key only if they are the same word (the
/// length tells "a" from "a\0"), keys of words without NUL bytes order like the words, and a
/// comparison is one instruction. Built a byte at a time over the word's own bytes (every word
/// of a passage is packed when it is analysed; a copy into an array was a library call).
const fn pack(word: &[u8]) -> u64 {
    debug_assert!(word.len() <= PACKED);
    if word.is_empty() {
        return 0;
    }
    let mut key = 0u64;
    let mut i = 0;
    while i < word.len() {
        key = key << 8 | word[i] as u64;
        i += 1;
    }
    key << (8 * (8 - word.len())) | word.len() as u64
}

/// [`STOP_WORDS`] packed, in the same (sorted) order.
#[cfg(test)]
const STOP_KEYS: [u64; STOP_WORDS.len()] = {
    let mut keys = [0u64; STOP_WORDS.len()];
    let mut i = 0;
    while i < STOP_WORDS.len() {
        keys[i] = pack(STOP_WORDS[i].as_bytes());
        i += 1;
    }
    keys
};

/// Slots of [`STOP_TABLE`]: a power of two, under half full.
const STOP_SLOTS: usize = 256;

/// The slot a packed word's search in [`STOP_TABLE`] starts at (Fibonacci hashing).
const fn stop_slot(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize & (STOP_SLOTS - 1)
}

/// [`STOP_WORDS`] packed, in an open-addressing table (linear probing; 0, the key of no word
/// of 1 to 7 bytes, marks an empty slot): a look-up is a multiplication and one or two
/// comparisons, where a binary search over the 107 words took seven unpredictable branches.
/// Every word in a passage is looked up once when the passage is analysed.
const STOP_TABLE: [u64; STOP_SLOTS] = {
    let mut table = [0u64; STOP_SLOTS];
    let mut i = 0;
    while i < STOP_WORDS.len() {
        let key = pack(STOP_WORDS[i].as_bytes());
        let mut slot = stop_slot(key);
        while table[slot] != 0 {
            slot = (slot + 1) & (STOP_SLOTS - 1);
        }
        table[slot] = key;
        i += 1;
    }
    table
};

/// Function words that carry no topic (compared on stems).
pub fn is_stop_word(stem: &str) -> bool {
    let word = stem.as_bytes();
    !word.is_empty() && word.len() <= LONGEST_STOP_WORD && is_stop_key(pack(word))
}

/// Whether `key`, a word [`pack`]ed, is a stop word's.
fn is_stop_key(key: u64) -> bool {
    let mut slot = stop_slot(key);
    loop {
        match STOP_TABLE[slot] {
            0 => return false,
            k if k == key => return true,
            _ => slot = (slot + 1) & (STOP_SLOTS - 1),
        }
    }
}

/// The key a stem is indexed and looked up by, or `None` for a stop word (or an empty stem),
/// which is never indexed: a stem of at most 7 bytes is its own bytes [`pack`]ed (exact, and
/// the same packing tells a stop word), a longer one its 64-bit XXH3. A short stem and a long
/// one share a key by accident with a probability of the order of 2^-64 per pair; a crafted
/// long word could take a short term's key, which whoever writes the context can do by writing
/// the term.
pub fn stem_key(stem: &str) -> Option<u64> {
    let word = stem.as_bytes();
    if word.len() > PACKED {
        return Some(xxhash_rust::xxh3::xxh3_64(word));
    }
    let key = pack(word);
    (!word.is_empty() && !is_stop_key(key)).then_some(key)
}

/// Whether a token of `kind` and `text` ends a sentence: `.`, `!` or `?`.
pub fn ends_sentence(kind: TokenKind, text: &str) -> bool {
    kind == TokenKind::Punct && matches!(text, "." | "!" | "?")
}

/// Token ranges `[start, end)` of the sentences of `tokens` (split after `.`, `!`, `?`).
pub fn sentences(tokens: &[Token], source: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        if ends_sentence(t.kind, t.text(source)) {
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
    fn the_stop_list_is_sorted_and_fits_its_table() {
        assert!(
            STOP_WORDS.windows(2).all(|w| w[0] < w[1]),
            "keep STOP_WORDS sorted"
        );
        assert_eq!(
            STOP_WORDS.iter().map(|w| w.len()).max(),
            Some(LONGEST_STOP_WORD)
        );
        assert!(STOP_KEYS.windows(2).all(|k| k[0] < k[1]));
        assert!(STOP_WORDS.len() < STOP_SLOTS / 2);
        assert!(STOP_KEYS.iter().all(|&k| k != 0));
        for w in STOP_WORDS {
            assert!(is_stop_word(w));
            assert!(!is_stop_word(&format!("{w}x")) || STOP_WORDS.contains(&&*format!("{w}x")));
        }
        assert!(!is_stop_word("") && !is_stop_word("zz") && !is_stop_word("a\0"));
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

    proptest::proptest! {
        /// The stack path gives the general path's stem on every word it takes.
        #[test]
        fn the_ascii_stem_is_the_general_stem(word in "[a-zA-Z0-9'’]{0,30}|[a-z]{1,6}(ies|ing|ed|ss|us|s|'s|’s)") {
            if let Some(fast) = stem_ascii(&word) {
                proptest::prop_assert_eq!(fast, stem_any(&word));
            } else {
                proptest::prop_assert!(word.len() > 24 || !word.is_ascii());
            }
        }

        /// The hashed stop-word table says what the list says: on every stop word, on those
        /// words one byte off, cut short or made longer, and on any short text.
        #[test]
        fn the_stop_table_is_the_stop_list(
            word in proptest::sample::select(STOP_WORDS),
            edit in 0usize..8,
            byte in 0u8..128,
            other in "\\PC{0,8}|[a-z]{1,8}|\\x00[a-z]{0,3}",
        ) {
            use proptest::prelude::*;
            let mut off = word.as_bytes().to_vec();
            let at = edit % off.len();
            off[at] = byte;
            let mut longer = word.to_owned();
            longer.push(char::from(byte));
            let shorter = &word[..word.len() - 1];
            let off = String::from_utf8(off).unwrap();
            for w in [word, off.as_str(), longer.as_str(), shorter, other.as_str()] {
                prop_assert_eq!(is_stop_word(w), STOP_WORDS.contains(&w), "{:?}", w);
            }
        }

        /// Two different stems that are not stop words have different keys: exactly when both
        /// are at most 7 bytes (no hash in between), and a stop word or an empty stem has none.
        #[test]
        fn a_stem_key_tells_stems_apart_and_has_none_for_stop_words(
            a in "\\PC{0,9}|[a-z]{1,9}|[a-z]{0,6}\\x00{1,2}",
            b in "\\PC{0,9}|[a-z]{1,9}|[a-z]{0,6}\\x00{1,2}",
            word in proptest::sample::select(STOP_WORDS),
        ) {
            use proptest::prelude::*;
            prop_assert_eq!(stem_key(word), None);
            prop_assert_eq!(stem_key(""), None);
            for w in [&a, &b] {
                prop_assert_eq!(stem_key(w).is_none(), w.is_empty() || is_stop_word(w));
            }
            // A NUL byte on the end makes another stem (the packing's zero padding must not
            // hide it).
            let padded = format!("{a}\0");
            for (x, y) in [(&a, &b), (&a, &padded)] {
                if let (Some(kx), Some(ky)) = (stem_key(x), stem_key(y)) {
                    prop_assert_eq!(kx == ky, x == y, "{:?} {:?}", x, y);
                }
            }
            // A long stem is hashed; its first 7 bytes alone key another stem.
            let long = format!("abcdefg{a}{b}h");
            prop_assert_ne!(stem_key(&long), stem_key("abcdefg"));
        }
    }

    /// The tokenizer as first written, character by character over an index of the
    /// characters: the reference the byte scanner is checked against.
    fn scan(text: &str, stem_if: impl Fn(char) -> bool) -> Vec<Token> {
        let indexed: Vec<(usize, char)> = text.char_indices().collect();
        let len = indexed.len();
        let char_at = |i: usize| indexed[i].1;
        let byte_at = |i: usize| indexed.get(i).map_or(text.len(), |&(b, _)| b);
        let mut tokens = Vec::with_capacity(len / 5 + 1);
        let mut i = 0;
        while i < len {
            let c = char_at(i);
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            let start = i;
            let kind = if c.is_alphanumeric() {
                let mut has_letter = false;
                while i < len {
                    let c = char_at(i);
                    let next = (i + 1 < len).then(|| char_at(i + 1));
                    if c.is_alphanumeric() {
                        has_letter |= c.is_alphabetic();
                        i += 1;
                    } else if (c == ',' || c == '.')
                        && char_at(i - 1).is_ascii_digit()
                        && next.is_some_and(|n| n.is_ascii_digit())
                    {
                        i += 1;
                    } else if (c == '\'' || c == '’')
                        && char_at(i - 1).is_alphabetic()
                        && next.is_some_and(char::is_alphabetic)
                    {
                        // "Levi's", "don't": one word.
                        i += 1;
                    } else {
                        break;
                    }
                }
                if has_letter && !char_at(start).is_ascii_digit() {
                    TokenKind::Word
                } else {
                    TokenKind::Number
                }
            } else {
                i += 1;
                TokenKind::Punct
            };
            let (byte_start, byte_end) = (byte_at(start), byte_at(i));
            let raw = &text[byte_start..byte_end];
            tokens.push(Token {
                kind,
                // Punctuation never matches a term: no stem to allocate.
                stem: if kind == TokenKind::Punct || !stem_if(char_at(start)) {
                    CompactString::default()
                } else {
                    stem(raw)
                },
                capitalised: char_at(start).is_uppercase(),
                byte_start,
                byte_end,
                char_start: start as u32,
                char_end: i as u32,
            });
        }
        tokens
    }

    proptest::proptest! {
        /// The byte scanner cuts, kinds, stems and places every token as the character-indexed
        /// scan does, on any text and on text made of the characters its rules look at
        /// (joiners between digits and letters, white space beyond ASCII, letters that are
        /// several bytes, digits that are not ASCII, the Kelvin sign).
        #[test]
        fn the_byte_scan_is_the_character_scan(
            any in "\\PC{0,40}",
            bytes in proptest::collection::vec(0u8..128, 0..60),
            rules in proptest::collection::vec(
                proptest::sample::select(vec!['a', 'Z', 'y', 's', '0', '9', ' ', ',', '.', '\'', '’', '-', '\t', '\x0b', '\x1c', '?', 'é', 'É', '٣', '\u{212a}', '—', '\u{85}', '\u{a0}']),
                0..40,
            ),
        ) {
            let rules: String = rules.into_iter().collect();
            for text in [any, String::from_utf8(bytes).unwrap(), rules] {
                // Stemming some words only, as the featurizer asks.
                let stem_if = |c: char| c != 'a' && c != 'é';
                proptest::prop_assert_eq!(tokenize_stemming(&text, stem_if), scan(&text, stem_if));
                proptest::prop_assert_eq!(tokenize(&text), scan(&text, |_| true));
            }
        }
    }

    #[test]
    fn sentences_split_at_terminal_punctuation() {
        let text = "It won. Did it? Yes";
        let tokens = tokenize(text);
        assert_eq!(sentences(&tokens, text), [(0, 3), (3, 6), (6, 7)]);
    }
}
