//! Lexicon-constrained decoding: a copy run may only write words it has seen.
//!
//! The lexicon is the set of words of the training corpus (saved as `lexicon.txt` at training
//! time; derived from `train-lines.txt` for runs made before that), plus an optional user
//! word list (`generate.lexicon_extra`). A request's keywords are always allowed, and
//! numbers pass. Words are the words of [`vitrine_data::copy::words`]: runs of letters and
//! digits with inner apostrophes, lower-cased, so the decoder and the evaluation agree on
//! what a word is.
//!
//! While sampling, each row carries a [`WordState`]: where the word being written stands in
//! the lexicon's byte trie (and in the keywords' trie). A token is allowed when its bytes keep
//! that word a prefix of some allowed word; a byte that ends a word (space, punctuation) and
//! the end of the line are allowed only when the word is complete. The tries and the bytes of
//! every token are built once per run (keywords: once per request), never per step.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vitrine_data::copy::words;
use vitrine_data::fsio::atomic_save;
use vitrine_data::text::Tokenizer;

use crate::error::{io_err, Result};

/// Whether generation is held to the lexicon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum LexiconMode {
    /// Only words of the training corpus (+ `generate.lexicon_extra`, keywords, numbers).
    #[default]
    Corpus,
    /// Any byte sequence the model samples.
    Off,
}

/// Words that pass without a lexicon: numbers (ASCII digits only).
pub fn is_number(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit())
}

/// A set of lower-cased words.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lexicon {
    words: BTreeSet<String>,
}

impl Lexicon {
    /// The words of `texts`.
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut lexicon = Self::default();
        lexicon.extend(texts);
        lexicon
    }

    /// Adds the words of `texts`.
    pub fn extend<'a>(&mut self, texts: impl IntoIterator<Item = &'a str>) {
        for t in texts {
            self.words.extend(words(t));
        }
    }

    /// Adds the words of `other`.
    pub fn merge(&mut self, other: Lexicon) {
        self.words.extend(other.words);
    }

    /// Reads a word list: the words of each line (`#` comments and blank lines ignored).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Ok(Self::from_texts(
            text.lines().map(str::trim).filter(|l| !l.starts_with('#')),
        ))
    }

    /// Writes one word per line, sorted, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        atomic_save(path, self.to_text().as_bytes()).map_err(io_err(path))
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for w in &self.words {
            s.push_str(w);
            s.push('\n');
        }
        s
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Whether a word (as [`words`] gives it) is allowed: in the lexicon, or a number.
    pub fn allows(&self, word: &str) -> bool {
        is_number(word) || self.words.contains(word)
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.words.iter().map(String::as_str)
    }
}

/// Node id meaning "not in the trie".
const NONE: u32 = u32::MAX;
const ROOT: u32 = 0;

/// A byte trie whose keys carry a value (a token id; 0 for words): node `i`'s children are
/// `edges[start..start + len]`, sorted by byte. It always has its root, node 0.
#[derive(Debug, Clone)]
struct ByteTrie {
    nodes: Vec<TrieNode>,
    edges: Vec<(u8, u32)>,
}

#[derive(Debug, Clone, Copy)]
struct TrieNode {
    start: u32,
    len: u16,
    /// The value of the key ending here, [`NONE`] if none does.
    value: u32,
}

impl ByteTrie {
    fn build<'a>(words: impl IntoIterator<Item = &'a str>) -> Self {
        Self::build_valued(words.into_iter().map(|w| (w.as_bytes(), 0)))
    }

    /// A later key with the same bytes keeps the first one's value.
    fn build_valued<'a>(keys: impl IntoIterator<Item = (&'a [u8], u32)>) -> Self {
        // Built with sorted child maps, then laid out flat for cheap lookups.
        let mut kids: Vec<std::collections::BTreeMap<u8, u32>> = vec![Default::default()];
        let mut values = vec![NONE];
        for (key, value) in keys {
            let mut node = 0usize;
            for &b in key {
                let next = kids.len() as u32;
                let child = *kids[node].entry(b).or_insert(next);
                if child == next {
                    kids.push(Default::default());
                    values.push(NONE);
                }
                node = child as usize;
            }
            if values[node] == NONE {
                values[node] = value;
            }
        }
        let mut trie = Self {
            nodes: Vec::with_capacity(kids.len()),
            edges: Vec::with_capacity(kids.len()),
        };
        for (k, value) in kids.iter().zip(values) {
            trie.nodes.push(TrieNode {
                start: trie.edges.len() as u32,
                // A node has at most 256 children.
                len: k.len() as u16,
                value,
            });
            trie.edges.extend(k.iter().map(|(&b, &c)| (b, c)));
        }
        trie
    }

    fn children(&self, node: u32) -> &[(u8, u32)] {
        let n = self.nodes[node as usize];
        &self.edges[n.start as usize..n.start as usize + n.len as usize]
    }

    fn child(&self, node: u32, byte: u8) -> u32 {
        if node == NONE {
            return NONE;
        }
        let kids = self.children(node);
        match kids.binary_search_by_key(&byte, |&(b, _)| b) {
            Ok(i) => kids[i].1,
            Err(_) => NONE,
        }
    }

    fn value(&self, node: u32) -> u32 {
        if node == NONE {
            NONE
        } else {
            self.nodes[node as usize].value
        }
    }

    fn terminal(&self, node: u32) -> bool {
        self.value(node) != NONE
    }
}

impl Default for ByteTrie {
    fn default() -> Self {
        Self::build([])
    }
}

/// The run's half of the constraint: the lexicon's trie, each token's bytes, and the tokens
/// as a trie of their bytes (to list the tokens a state allows without trying all).
#[derive(Debug, Clone)]
pub struct LexiconIndex {
    trie: ByteTrie,
    /// Per token id its bytes; `None` for special tokens (never allowed in a line).
    tokens: Vec<Option<Box<[u8]>>>,
    token_trie: ByteTrie,
    eos: Option<u32>,
}

impl LexiconIndex {
    /// Fails when the tokenizer's tokens have no byte strings (not byte-level BPE).
    pub fn new(lexicon: &Lexicon, tokenizer: &Tokenizer, eos: Option<u32>) -> Result<Self> {
        let tokens = tokenizer
            .token_bytes()?
            .into_iter()
            .map(|t| t.map(Vec::into_boxed_slice))
            .collect();
        Ok(Self::from_parts(lexicon, tokens, eos))
    }

    fn from_parts(lexicon: &Lexicon, tokens: Vec<Option<Box<[u8]>>>, eos: Option<u32>) -> Self {
        let token_trie = ByteTrie::build_valued(
            tokens
                .iter()
                .enumerate()
                .filter_map(|(id, b)| Some((b.as_deref()?, id as u32))),
        );
        Self {
            trie: ByteTrie::build(lexicon.iter()),
            tokens,
            token_trie,
            eos,
        }
    }

    /// Every token allowed at `state`, in id order: the token trie walked with the state,
    /// a branch left as soon as its bytes leave the lexicon, so a word half written costs
    /// only its few continuations.
    pub fn allowed_tokens(&self, kw: &KeywordTrie, state: WordState) -> Vec<u32> {
        let tries = Tries {
            lex: &self.trie,
            kw: &kw.0,
        };
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, state)];
        while let Some((node, s)) = stack.pop() {
            let id = self.token_trie.value(node);
            if id != NONE {
                out.push(id);
            }
            for &(b, child) in self.token_trie.children(node) {
                if let Some(next) = s.push_byte(&tries, b) {
                    stack.push((child, next));
                }
            }
        }
        if let Some(eos) = self.eos.filter(|_| state.can_end(self, kw)) {
            out.push(eos);
        }
        out.sort_unstable();
        out
    }

    /// Whether token `tok` may follow a line whose word stands at `state`.
    pub fn allows(&self, kw: &KeywordTrie, state: WordState, tok: u32) -> bool {
        self.advance(kw, state, tok).is_some()
    }

    /// The state after `tok`, or `None` when `tok` is not allowed there. The end of the
    /// line is a state of its own: allowed when the word is complete.
    pub fn advance(&self, kw: &KeywordTrie, state: WordState, tok: u32) -> Option<WordState> {
        if Some(tok) == self.eos {
            return state.can_end(self, kw).then_some(WordState::START);
        }
        let bytes = self.tokens.get(tok as usize)?.as_deref()?;
        let tries = Tries {
            lex: &self.trie,
            kw: &kw.0,
        };
        bytes.iter().try_fold(state, |s, &b| s.push_byte(&tries, b))
    }
}

/// The request's half of the constraint: the words of its keywords, allowed whether or not
/// the lexicon has them.
#[derive(Debug, Clone, Default)]
pub struct KeywordTrie(ByteTrie);

impl KeywordTrie {
    pub fn new<'a>(keywords: impl IntoIterator<Item = &'a str>) -> Self {
        Self(ByteTrie::build(Lexicon::from_texts(keywords).iter()))
    }
}

struct Tries<'a> {
    lex: &'a ByteTrie,
    kw: &'a ByteTrie,
}

/// Where the word being written stands. Between words every field is at its start value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WordState {
    /// The word so far in the lexicon's and in the keywords' trie ([`NONE`]: not a prefix).
    lex: u32,
    kw: u32,
    in_word: bool,
    /// The word so far is all ASCII digits.
    digits: bool,
    /// Apostrophes after the word: inner if a letter follows, else trimmed (as [`words`]).
    apos: u8,
    /// The first bytes of a character not complete yet.
    pending: [u8; 4],
    npending: u8,
}

impl WordState {
    /// The start of a line.
    pub const START: Self = Self {
        lex: ROOT,
        kw: ROOT,
        in_word: false,
        digits: false,
        apos: 0,
        pending: [0; 4],
        npending: 0,
    };

    fn complete(&self, t: &Tries) -> bool {
        !self.in_word || self.digits || t.lex.terminal(self.lex) || t.kw.terminal(self.kw)
    }

    fn can_end(&self, lex: &LexiconIndex, kw: &KeywordTrie) -> bool {
        let t = Tries {
            lex: &lex.trie,
            kw: &kw.0,
        };
        self.npending == 0 && self.complete(&t)
    }

    /// An apostrophe may follow a word that is complete (it is trimmed if nothing follows)
    /// or whose apostrophes lead on in a trie (an inner one, as in "don't"). Else it would
    /// only lead to a dead end, where the model would pile up apostrophes it cannot leave.
    fn apostrophe_may_follow(&self, t: &Tries) -> bool {
        if !self.in_word {
            return false;
        }
        if self.complete(t) {
            return true;
        }
        let (mut lex, mut kw) = (self.lex, self.kw);
        for _ in 0..=self.apos {
            lex = t.lex.child(lex, b'\'');
            kw = t.kw.child(kw, b'\'');
        }
        lex != NONE || kw != NONE
    }

    fn push_byte(mut self, t: &Tries, b: u8) -> Option<Self> {
        if self.npending == 0 {
            if b < 0x80 {
                return self.push_char(t, char::from(b));
            }
            if utf8_len(b) == 0 {
                // A stray continuation byte decodes as U+FFFD: a separator.
                return self.push_char(t, char::REPLACEMENT_CHARACTER);
            }
        } else if b & 0xC0 != 0x80 {
            // The pending character was cut short: U+FFFD, then `b` starts afresh.
            self.npending = 0;
            return self
                .push_char(t, char::REPLACEMENT_CHARACTER)?
                .push_byte(t, b);
        }
        self.pending[self.npending as usize] = b;
        self.npending += 1;
        let need = utf8_len(self.pending[0]);
        if (self.npending as usize) < need {
            // Allowed while the character may still be a separator (the word is complete),
            // continue the word (its bytes so far are on a trie path) or be an apostrophe.
            let on_path = |trie: &ByteTrie, from: u32| {
                self.pending[..self.npending as usize]
                    .iter()
                    .try_fold(from, |n, &b| Some(trie.child(n, b)).filter(|&c| c != NONE))
                    .is_some()
            };
            let (lex, kw) = if self.in_word {
                (self.lex, self.kw)
            } else {
                (ROOT, ROOT)
            };
            let continues = self.apos == 0 && (on_path(t.lex, lex) || on_path(t.kw, kw));
            let apostrophe = "\u{2019}"
                .as_bytes()
                .starts_with(&self.pending[..self.npending as usize])
                && self.apostrophe_may_follow(t);
            return (self.complete(t) || continues || apostrophe).then_some(self);
        }
        let c = std::str::from_utf8(&self.pending[..need])
            .ok()
            .and_then(|s| s.chars().next())
            .unwrap_or(char::REPLACEMENT_CHARACTER);
        self.npending = 0;
        self.push_char(t, c)
    }

    fn push_char(self, t: &Tries, c: char) -> Option<Self> {
        if c.is_alphanumeric() {
            let (mut lex, mut kw, mut digits) = if self.in_word {
                (self.lex, self.kw, self.digits)
            } else {
                (ROOT, ROOT, true)
            };
            let mut walk = |b: u8| {
                lex = t.lex.child(lex, b);
                kw = t.kw.child(kw, b);
            };
            for _ in 0..self.apos {
                walk(b'\'');
            }
            let mut buf = [0u8; 4];
            for lc in c.to_lowercase() {
                lc.encode_utf8(&mut buf).bytes().for_each(&mut walk);
            }
            digits = digits && self.apos == 0 && c.is_ascii_digit();
            if lex == NONE && kw == NONE && !digits {
                return None;
            }
            Some(Self {
                lex,
                kw,
                in_word: true,
                digits,
                ..Self::START
            })
        } else if (c == '\'' || c == '\u{2019}') && self.apostrophe_may_follow(t) {
            Some(Self {
                apos: self.apos.saturating_add(1),
                ..self
            })
        } else if self.complete(t) {
            Some(Self::START)
        } else {
            None
        }
    }
}

/// Bytes of the UTF-8 character that starts with `lead` (0: not a lead byte).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte tokenizer stand-in: token `b` is byte `b`, 256 is the end of line, 257 special,
    /// then a few longer tokens.
    fn index(words: &str) -> LexiconIndex {
        let mut tokens: Vec<Option<Box<[u8]>>> = (0..=255u8)
            .map(|b| Some(vec![b].into_boxed_slice()))
            .collect();
        tokens.push(None);
        tokens.push(None);
        for t in [
            "the",
            " the",
            " hat",
            "ca",
            "fé",
            "t's",
            "'s",
            "s,",
            " 20",
            "é",
            "\u{2019}t",
        ] {
            tokens.push(Some(t.as_bytes().into()));
        }
        LexiconIndex::from_parts(&Lexicon::from_texts([words]), tokens, Some(256))
    }

    /// Whether `text` then the end of line can be written, byte by byte.
    fn writable(ix: &LexiconIndex, kw: &KeywordTrie, text: &str) -> bool {
        text.bytes()
            .try_fold(WordState::START, |s, b| ix.advance(kw, s, u32::from(b)))
            .is_some_and(|s| ix.allows(kw, s, 256))
    }

    #[test]
    fn only_lexicon_words_keywords_and_numbers_are_written() {
        let ix = index("the cat's hat, don't 3d café");
        let none = KeywordTrie::default();
        for ok in [
            "The Cat's Hat!",
            "the  hat, the hat.",
            "Don’t  2016 hat' hat",
            "3D CAFÉ",
            "",
            "-- 42 --",
        ] {
            assert!(writable(&ix, &none, ok), "{ok:?}");
        }
        for bad in [
            "th", "the ca", "thee", "cat", "hat3", "2016s", "’tis", "dont", "ca'", "th’",
        ] {
            assert!(!writable(&ix, &none, bad), "{bad:?}");
        }
        // An apostrophe after an unfinished word must lead on ("cat'" does, "ca'" does not),
        // so the line never walks into a run of apostrophes it cannot leave.
        let ca = "ca"
            .bytes()
            .try_fold(WordState::START, |s, b| ix.advance(&none, s, u32::from(b)));
        assert!(ix.advance(&none, ca.unwrap(), u32::from(b'\'')).is_none());
        let cat = "cat"
            .bytes()
            .try_fold(WordState::START, |s, b| ix.advance(&none, s, u32::from(b)));
        assert!(ix.advance(&none, cat.unwrap(), u32::from(b'\'')).is_some());
        // Trailing apostrophes are trimmed, so "cats'" is the word "cats": not in the lexicon.
        assert!(!writable(&ix, &none, "cats' hat"));
        // A keyword is allowed although the lexicon lacks it.
        let kw = KeywordTrie::new(["Pcal deal"]);
        assert!(writable(&ix, &kw, "the pcal deal"));
        assert!(!writable(&ix, &kw, "the pca deal"));
        // Special tokens never pass.
        assert!(!ix.allows(&none, WordState::START, 257));
    }

    #[test]
    fn allowed_tokens_are_exactly_the_tokens_that_pass() {
        let ix = index("the cat's hat, don't 3d café");
        let kw = KeywordTrie::new(["Pcal"]);
        let mut states = vec![WordState::START];
        for text in [
            "the",
            "th",
            "ca",
            "caf",
            "cat'",
            "don\u{2019}",
            "3",
            "pc",
            "x",
        ] {
            if let Some(s) = text
                .bytes()
                .try_fold(WordState::START, |s, b| ix.advance(&kw, s, u32::from(b)))
            {
                states.push(s);
            }
        }
        assert_eq!(states.len(), 9, "all but \"x\" are prefixes");
        let vocab = ix.tokens.len() as u32;
        for s in states {
            let brute: Vec<u32> = (0..vocab).filter(|&t| ix.allows(&kw, s, t)).collect();
            assert_eq!(ix.allowed_tokens(&kw, s), brute, "{s:?}");
        }
    }

    /// Lines drawn at random among the allowed tokens, over many seeds, hold only words
    /// of the lexicon, the keywords and numbers, as `words` splits the decoded text.
    #[test]
    fn random_allowed_lines_use_only_allowed_words() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let ix = index("the cat's hat, don't 3d café");
        let kw = KeywordTrie::new(["Pcal"]);
        let lexicon = Lexicon::from_texts(["the cat's hat, don't 3d café"]);
        let allowed_word = |w: &String| lexicon.allows(w) || w == "pcal";
        let mut ended = 0;
        for seed in 0..300 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut state, mut bytes) = (WordState::START, Vec::new());
            for _ in 0..40 {
                let ids = ix.allowed_tokens(&kw, state);
                let tok = ids[rng.random_range(0..ids.len())];
                state = ix.advance(&kw, state, tok).unwrap();
                if tok == 256 {
                    ended += 1;
                    let text = String::from_utf8_lossy(&bytes);
                    let bad: Vec<String> = words(&text)
                        .into_iter()
                        .filter(|w| !allowed_word(w))
                        .collect();
                    assert!(bad.is_empty(), "seed {seed}: {text:?} has {bad:?}");
                    break;
                }
                bytes.extend_from_slice(ix.tokens[tok as usize].as_deref().unwrap());
            }
        }
        assert!(ended > 30, "only {ended} lines ended");
    }

    #[test]
    fn multibyte_characters_wait_for_their_last_byte() {
        let ix = index("café");
        let none = KeywordTrie::default();
        let s = "caf".bytes().fold(WordState::START, |s, b| {
            ix.advance(&none, s, u32::from(b)).unwrap()
        });
        // "é" = C3 A9: its first byte is on the path, so it is allowed and held.
        let held = ix.advance(&none, s, 0xC3).unwrap();
        assert!(
            !ix.allows(&none, held, 256),
            "half a character cannot end a line"
        );
        assert!(ix.advance(&none, held, 0xA9).is_some());
        // "caf" + "ø" (C3 B8) is no word.
        assert!(ix.advance(&none, held, 0xB8).is_none());
        // Between words a separator character (an em dash) passes.
        let dash = "café — café"
            .bytes()
            .try_fold(WordState::START, |s, b| ix.advance(&none, s, u32::from(b)));
        assert!(dash.is_some());
    }

    #[test]
    fn lexicon_reads_and_saves_one_word_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("words.txt");
        std::fs::write(&p, "# mine\nZebra\nsale, sandals\n\n").unwrap();
        let lex = Lexicon::read(&p).unwrap();
        assert_eq!(lex.to_text(), "sale\nsandals\nzebra\n");
        assert!(lex.allows("zebra") && lex.allows("2024") && !lex.allows("mine"));
        let out = dir.path().join("lexicon.txt");
        lex.save(&out).unwrap();
        assert_eq!(Lexicon::read(&out).unwrap(), lex);
        let err = Lexicon::read(&dir.path().join("absent.txt")).unwrap_err();
        assert!(err.to_string().contains("absent.txt"), "{err}");
    }
}
