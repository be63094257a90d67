//! Small text tools the three engines share: splitting the player's input into words that keep
//! their byte spans, fixing near-miss spellings, a stable hash for deterministic phrasing, and
//! the bits of English grammar the narration needs (articles, lists, sentences).
//!
//! They live in one place so the IPA and the NGA agree on what a "word" is, and so the
//! determinism of the narration rests on one hash function that never changes between builds
//! (unlike `std`'s `DefaultHasher`, which is allowed to).

/// One word of the player's input and where it sits in the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    /// The word as the engines read it: lowercase, straight apostrophes, spelling fixed.
    pub word: String,
    /// True when `word` is a spelling correction of what was typed.
    pub corrected: bool,
    /// Byte offset of the word in the original text (inclusive).
    pub start: usize,
    /// Byte offset just past the word in the original text (exclusive).
    pub end: usize,
}

/// Splits `text` into words: runs of letters and digits, with an apostrophe kept when it sits
/// between two letters ("i'm", "don't"). Everything else separates words. Spans are byte
/// offsets into `text`, always on character boundaries.
pub(crate) fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut start: Option<usize> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((offset, ch)) = chars.next() {
        let is_apostrophe_inside_word = is_apostrophe(ch)
            && start.is_some()
            && chars
                .peek()
                .is_some_and(|&(_, next)| next.is_alphanumeric());
        if ch.is_alphanumeric() || is_apostrophe_inside_word {
            start.get_or_insert(offset);
        } else if let Some(begin) = start.take() {
            tokens.push(make_token(text, begin, offset));
        }
    }
    if let Some(begin) = start {
        tokens.push(make_token(text, begin, text.len()));
    }
    tokens
}

fn is_apostrophe(ch: char) -> bool {
    ch == '\'' || ch == '\u{2019}'
}

fn make_token(text: &str, start: usize, end: usize) -> Token {
    let typed = text.get(start..end).unwrap_or_default();
    let mut word = typed.to_lowercase();
    if word.contains('\u{2019}') {
        word = word.replace('\u{2019}', "'");
    }
    if let Some(expanded) = expand_lazy_spelling(&word) {
        word = expanded.to_owned();
    }
    Token {
        word,
        corrected: false,
        start,
        end,
    }
}

/// Apostrophe-less spellings people type on phones, mapped to the form the rules match on;
/// `None` for a word that needs no change.
fn expand_lazy_spelling(word: &str) -> Option<&'static str> {
    Some(match word {
        "im" => "i'm",
        "ive" => "i've",
        "dont" => "don't",
        "cant" => "can't",
        "cannot" => "can't",
        "wont" => "won't",
        "isnt" => "isn't",
        "doesnt" => "doesn't",
        "didnt" => "didn't",
        "lets" => "let's",
        "whats" => "what's",
        "thats" => "that's",
        _ => return None,
    })
}

/// The optimal-string-alignment edit distance: insertions, deletions, substitutions and swaps
/// of two neighbouring characters each cost one. Swaps matter because "lantren" and "nroth"
/// are the typos people actually make.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut table = vec![0usize; (a.len() + 1) * width];
    let at = |i: usize, j: usize| i * width + j;
    for i in 0..=a.len() {
        table[at(i, 0)] = i;
    }
    for j in 0..=b.len() {
        table[at(0, j)] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (table[at(i - 1, j)] + 1)
                .min(table[at(i, j - 1)] + 1)
                .min(table[at(i - 1, j - 1)] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(table[at(i - 2, j - 2)] + 1);
            }
            table[at(i, j)] = best;
        }
    }
    table[at(a.len(), b.len())]
}

/// The 64-bit FNV-1a hash: tiny, stable across builds and platforms, good enough to spread
/// turn ids over a handful of phrasings. Not for anything adversarial.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// Picks one of `options` for a turn: the same seed and slot always give the same choice, and
/// different slots of one turn choose independently (so one reply does not always pair the
/// first opening with the first closing).
pub(crate) fn pick<'a>(seed: u64, slot: &str, options: &[&'a str]) -> &'a str {
    if options.is_empty() {
        return "";
    }
    let mixed = stable_hash(slot.as_bytes()) ^ seed.rotate_left(17);
    let index = mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    let len = options.len() as u64;
    usize::try_from(index % len)
        .ok()
        .and_then(|i| options.get(i))
        .copied()
        .unwrap_or_default()
}

/// `text` with its first character in upper case.
pub(crate) fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Turns a name written with an indefinite article ("an old brass lantern", "some lavender")
/// into its definite form ("the old brass lantern"); names without one are left alone.
pub(crate) fn definite(name: &str) -> String {
    for article in ["a ", "an ", "some ", "A ", "An ", "Some "] {
        if let Some(rest) = name.strip_prefix(article) {
            return format!("the {rest}");
        }
    }
    name.to_owned()
}

/// Strips a leading article from a name: the words a player would type for it.
pub(crate) fn without_article(name: &str) -> &str {
    for article in ["a ", "an ", "some ", "the ", "A ", "An ", "Some ", "The "] {
        if let Some(rest) = name.strip_prefix(article) {
            return rest;
        }
    }
    name
}

/// Joins items as English does: "a", "a and b", "a, b and c"; `last` is "and" or "or".
pub(crate) fn join_list(items: &[String], last: &str) -> String {
    match items {
        [] => String::new(),
        [only] => only.clone(),
        [init @ .., tail] => format!("{} {last} {tail}", init.join(", ")),
    }
}

/// Splits prose into sentences after '.', '!' or '?' (and any closing quotes) followed by
/// white space. The sentences come back trimmed; nothing between them is lost but the spaces.
pub(crate) fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((_, ch)) = chars.next() {
        if matches!(ch, '.' | '!' | '?') {
            while chars
                .next_if(|&(_, quote)| matches!(quote, '"' | '\u{201d}' | '\'' | '\u{2019}' | ')'))
                .is_some()
            {}
            let end = chars.peek().map_or(text.len(), |&(at, _)| at);
            if chars.peek().is_none_or(|&(_, next)| next.is_whitespace()) {
                push_trimmed(&mut out, &text[start..end]);
                start = end;
            }
        }
    }
    push_trimmed(&mut out, &text[start..]);
    out
}

fn push_trimmed(out: &mut Vec<String>, sentence: &str) {
    let mut collapsed = String::with_capacity(sentence.len());
    for word in sentence.split_whitespace() {
        if !collapsed.is_empty() {
            collapsed.push(' ');
        }
        collapsed.push_str(word);
    }
    if !collapsed.is_empty() {
        out.push(collapsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        tokenize(text).into_iter().map(|t| t.word).collect()
    }

    #[test]
    fn tokenize_keeps_byte_spans_of_the_original_text() {
        let text = "  Take the LANTERN!";
        let tokens = tokenize(text);
        assert_eq!(words(text), ["take", "the", "lantern"]);
        assert_eq!(&text[tokens[2].start..tokens[2].end], "LANTERN");
    }

    #[test]
    fn tokenize_keeps_apostrophes_inside_words_and_straightens_curly_ones() {
        assert_eq!(
            words("I’m tired, don't worry"),
            ["i'm", "tired", "don't", "worry"]
        );
        assert_eq!(words("'quoted'"), ["quoted"]);
    }

    #[test]
    fn tokenize_handles_multibyte_text_on_character_boundaries() {
        let text = "café – naïve";
        let tokens = tokenize(text);
        assert_eq!(words(text), ["café", "naïve"]);
        assert_eq!(&text[tokens[1].start..tokens[1].end], "naïve");
    }

    #[test]
    fn tokenize_expands_apostrophe_less_contractions() {
        assert_eq!(
            words("im tired and cant sleep"),
            ["i'm", "tired", "and", "can't", "sleep"]
        );
    }

    #[test]
    fn edit_distance_counts_a_swap_of_neighbours_as_one() {
        assert_eq!(edit_distance("lantren", "lantern"), 1);
        assert_eq!(edit_distance("nroth", "north"), 1);
        assert_eq!(edit_distance("look", "lok"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn pick_is_stable_for_a_seed_and_varies_across_seeds() {
        let options = ["a", "b", "c", "d"];
        let seed = stable_hash(b"turn-1");
        assert_eq!(pick(seed, "slot", &options), pick(seed, "slot", &options));
        let chosen: std::collections::BTreeSet<&str> = (0..40)
            .map(|i| {
                pick(
                    stable_hash(format!("turn-{i}").as_bytes()),
                    "slot",
                    &options,
                )
            })
            .collect();
        assert!(chosen.len() > 1, "forty turns all chose {chosen:?}");
        assert_eq!(pick(seed, "slot", &[]), "");
    }

    #[test]
    fn stable_hash_matches_the_published_fnv1a_values() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn definite_replaces_an_indefinite_article() {
        assert_eq!(definite("an old brass lantern"), "the old brass lantern");
        assert_eq!(definite("some lavender"), "the lavender");
        assert_eq!(definite("Mara"), "Mara");
    }

    #[test]
    fn join_list_reads_as_english() {
        let list = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(join_list(&list(&[]), "and"), "");
        assert_eq!(join_list(&list(&["north"]), "or"), "north");
        assert_eq!(join_list(&list(&["north", "east"]), "or"), "north or east");
        assert_eq!(join_list(&list(&["a", "b", "c"]), "and"), "a, b and c");
    }

    #[test]
    fn sentences_split_after_end_marks_and_closing_quotes() {
        let text = "Mara smiles. \"Sit as long as you like.\" The kettle hums!  Is it late?";
        assert_eq!(
            sentences(text),
            [
                "Mara smiles.",
                "\"Sit as long as you like.\"",
                "The kettle hums!",
                "Is it late?"
            ]
        );
        assert_eq!(sentences("No end mark"), ["No end mark"]);
        assert_eq!(sentences("3.5 knots."), ["3.5 knots."]);
    }
}
