//! Copy corpora and briefs for subject-line / ad-copy generation.
//!
//! A training line becomes `<|endoftext|><|brief|> kw1, kw2[<|tone|>tone]<|text|>LINE<|endoftext|>`.
//! Its keywords are extracted from the line itself: the line's content words (at least 3
//! characters, not in a small English stop-word list) ranked rarest first by corpus IDF
//! (ties: first occurrence); a line keeps 1, 2 or 3 of them, chosen by a hash of the line so
//! the choice is stable across runs and the model learns briefs of every size. A keyword is
//! written exactly as it appears in the line, after a space, so it tokenizes as it does inside
//! the line: the model learns to copy brief tokens (a general mechanism) rather than to map
//! `sandals` onto ` Sandals` (a different token for every word, unlearnable for rare words).
//! At inference the user's keywords take that slot as typed.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::table::Table;
use crate::text::EOS;

pub const BRIEF: &str = "<|brief|>";
pub const TONE: &str = "<|tone|>";
pub const TEXT: &str = "<|text|>";
/// Special tokens a copy tokenizer must hold, [`EOS`] first.
pub const SPECIAL_TOKENS: [&str; 4] = [EOS, BRIEF, TONE, TEXT];

/// A CSV column of lines (and optionally a tone column), deduplicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyCorpusConfig {
    pub csv: std::path::PathBuf,
    #[serde(default = "default_text_column")]
    pub text_column: String,
    #[serde(default)]
    pub tone_column: Option<String>,
}

fn default_text_column() -> String {
    "headline".into()
}

#[derive(Debug, Clone, PartialEq)]
pub struct CopyLine {
    pub text: String,
    pub tone: Option<String>,
}

/// Reads the corpus: trims lines, drops empty ones and exact duplicates (first kept).
/// A missing column is an error naming the file and the columns it has.
pub fn read_copy_corpus(cfg: &CopyCorpusConfig) -> Result<Vec<CopyLine>> {
    let mut table = Table::open(&cfg.csv)?;
    let text_at = table.column(&cfg.text_column, "text_column")?;
    let tone_at = cfg
        .tone_column
        .as_deref()
        .map(|c| table.column(c, "tone_column"))
        .transpose()?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, record) in table.reader.records().enumerate() {
        let row = i + 2; // 1-based, after the header
        let record = record.map_err(|e| DataError::BadRow {
            file: cfg.csv.clone(),
            row,
            reason: e.to_string(),
        })?;
        let text = record.get(text_at).unwrap_or("").trim();
        if text.is_empty() || !seen.insert(text.to_string()) {
            continue;
        }
        let tone = tone_at
            .and_then(|t| record.get(t))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase);
        out.push(CopyLine {
            text: text.to_string(),
            tone,
        });
    }
    if out.is_empty() {
        return Err(DataError::BadRow {
            file: cfg.csv.clone(),
            row: 0,
            reason: format!("no non-empty `{}` values", cfg.text_column),
        });
    }
    Ok(out)
}

const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "again", "all", "also", "am", "an", "and", "any", "are", "aren't", "as",
    "at", "be", "because", "been", "before", "being", "but", "by", "can", "can't", "could", "did",
    "didn't", "do", "does", "doesn't", "doing", "don't", "down", "each", "even", "ever", "every",
    "few", "for", "from", "get", "gets", "got", "had", "has", "have", "having", "he", "he's",
    "her", "here", "here's", "hers", "him", "his", "how", "i", "i'm", "if", "in", "into", "is",
    "isn't", "it", "it's", "its", "just", "like", "made", "make", "makes", "many", "me", "more",
    "most", "much", "my", "never", "no", "not", "now", "of", "off", "on", "one", "only", "or",
    "other", "our", "out", "over", "own", "really", "same", "say", "says", "see", "she", "she's",
    "should", "so", "some", "such", "than", "that", "that's", "the", "their", "them", "then",
    "there", "there's", "these", "they", "they're", "thing", "things", "this", "those", "through",
    "to", "too", "under", "until", "up", "us", "very", "was", "wasn't", "way", "we", "we're",
    "were", "what", "what's", "when", "where", "which", "while", "who", "who's", "whom", "why",
    "will", "with", "won't", "would", "you", "you'll", "you're", "your", "yours",
];

/// Lower-cased words: runs of letters, digits and inner apostrophes.
pub fn words(text: &str) -> Vec<String> {
    surface_words(text)
        .into_iter()
        .map(|w| w.to_lowercase())
        .collect()
}

/// Words as written (case kept; curly apostrophes made straight).
pub fn surface_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let straight = text.replace('’', "'");
    for c in straight.chars() {
        if c.is_alphanumeric() || (c == '\'' && !cur.is_empty()) {
            cur.push(c);
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur).trim_end_matches('\'').to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur.trim_end_matches('\'').to_string());
    }
    out.retain(|w| !w.is_empty());
    out
}

/// Whether the words of `phrase` occur consecutively in `hay` (the [`words`] of a text);
/// an empty phrase never does.
pub fn contains_phrase(hay: &[String], phrase: &str) -> bool {
    let needle = words(phrase);
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_slice())
}

fn is_content(word: &str) -> bool {
    word.chars().count() >= 3 && !STOP_WORDS.contains(&word)
}

/// Inverse document frequency of every word of a corpus.
#[derive(Debug, Clone)]
pub struct KeywordExtractor {
    doc_freq: HashMap<String, u32>,
}

impl KeywordExtractor {
    pub fn fit<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut doc_freq = HashMap::new();
        for line in lines {
            let unique: HashSet<String> = words(line).into_iter().collect();
            for w in unique {
                *doc_freq.entry(w).or_insert(0) += 1;
            }
        }
        Self { doc_freq }
    }

    /// Up to `k` content words of `line` as written there, rarest in the corpus first.
    pub fn keywords(&self, line: &str, k: usize) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut cands: Vec<(u32, usize, String)> = surface_words(line)
            .into_iter()
            .filter(|w| {
                let lower = w.to_lowercase();
                is_content(&lower) && seen.insert(lower)
            })
            .enumerate()
            .map(|(i, w)| {
                let df = self.doc_freq.get(&w.to_lowercase()).copied().unwrap_or(0);
                (df, i, w)
            })
            .collect();
        cands.sort();
        cands.into_iter().take(k).map(|(_, _, w)| w).collect()
    }

    /// The training brief of `line`: 1–3 keywords, the count fixed by a hash of the line.
    pub fn training_brief(&self, line: &CopyLine) -> Brief {
        let k = 1 + (fnv1a(line.text.as_bytes()) % 3) as usize;
        Brief {
            keywords: self.keywords(&line.text, k),
            tone: line.tone.clone(),
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How keywords are cased in a brief, so that they tokenize as the corpus writes words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeywordCase {
    /// Decided from the training corpus when the run starts (saved resolved).
    Auto,
    /// First letter of every word upper-cased (corpora of Title Case headlines).
    Title,
    /// As the user typed them.
    AsTyped,
}

impl KeywordCase {
    /// `Title` when most words of the corpus start with a capital letter.
    pub fn detect<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let (mut caps, mut all) = (0usize, 0usize);
        for w in lines.into_iter().flat_map(surface_words) {
            if let Some(c) = w.chars().next().filter(|c| c.is_alphabetic()) {
                all += 1;
                caps += usize::from(c.is_uppercase());
            }
        }
        if all > 0 && caps * 10 >= all * 7 {
            Self::Title
        } else {
            Self::AsTyped
        }
    }

    pub fn apply(self, keyword: &str) -> String {
        match self {
            Self::Title => keyword
                .split(' ')
                .map(|w| {
                    let mut c = w.chars();
                    match c.next() {
                        Some(f) => f.to_uppercase().chain(c).collect(),
                        None => String::new(),
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            Self::Auto | Self::AsTyped => keyword.to_string(),
        }
    }
}

/// What the user asks for: keywords (phrases allowed) and an optional tone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Brief {
    pub keywords: Vec<String>,
    pub tone: Option<String>,
}

impl Brief {
    /// Parses `"summer sale, sandals"`: comma-separated, whitespace collapsed, empties
    /// dropped, case kept (the model copies keywords as written).
    pub fn parse(keywords: &str, tone: Option<&str>) -> Self {
        Self {
            keywords: keywords
                .split(',')
                .map(|k| k.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|k| !k.is_empty())
                .collect(),
            tone: tone
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty()),
        }
    }

    /// The prompt the model continues: everything before the line itself.
    pub fn prompt(&self) -> String {
        let mut p = format!("{EOS}{BRIEF}");
        if !self.keywords.is_empty() {
            p.push(' ');
            p.push_str(&self.keywords.join(", "));
        }
        if let Some(t) = &self.tone {
            p.push_str(TONE);
            p.push_str(t);
        }
        p.push_str(TEXT);
        p
    }

    /// A full training example.
    pub fn example(&self, text: &str) -> String {
        format!("{}{text}{EOS}", self.prompt())
    }

    /// Fraction of keywords that occur in `text` as whole words (1.0 for an empty brief).
    pub fn coverage(&self, text: &str) -> f64 {
        if self.keywords.is_empty() {
            return 1.0;
        }
        let hay = words(text);
        let hit = self
            .keywords
            .iter()
            .filter(|k| contains_phrase(&hay, k))
            .count();
        hit as f64 / self.keywords.len() as f64
    }
}

/// Normal form for duplicate and training-copy checks: words joined by single spaces.
pub fn normalize(text: &str) -> String {
    words(text).join(" ")
}

/// Hard constraints every returned candidate satisfies.
#[derive(Debug, Clone, Default)]
pub struct Constraints {
    pub max_chars: usize,
    /// Lower-cased words or phrases that must not occur (whole words).
    pub banned: Vec<String>,
    /// Normalised training lines a candidate must not repeat (empty = copying allowed).
    pub no_copy_of: HashSet<String>,
}

/// Why a candidate was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rejection {
    Empty,
    TooLong,
    Banned,
    Duplicate,
    TrainingCopy,
    /// Generation hit the token limit before the line ended.
    Unfinished,
}

impl Constraints {
    /// Reads a banned-word list: one word or phrase per line, `#` comments and blanks ignored.
    pub fn read_banned(path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_lowercase)
            .collect())
    }

    /// Checks one candidate against the constraints and the candidates already accepted
    /// (by normal form).
    pub fn check(&self, text: &str, accepted: &HashSet<String>) -> Option<Rejection> {
        let norm = normalize(text);
        if norm.is_empty() {
            return Some(Rejection::Empty);
        }
        if text.chars().count() > self.max_chars {
            return Some(Rejection::TooLong);
        }
        let hay = words(text);
        if self.banned.iter().any(|b| contains_phrase(&hay, b)) {
            return Some(Rejection::Banned);
        }
        if accepted.contains(&norm) {
            return Some(Rejection::Duplicate);
        }
        if self.no_copy_of.contains(&norm) {
            return Some(Rejection::TrainingCopy);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_inner_apostrophes() {
        assert_eq!(
            words("They're Being Called 'Walmart's Worst Nightmare.' 2024!"),
            vec![
                "they're",
                "being",
                "called",
                "walmart's",
                "worst",
                "nightmare",
                "2024"
            ]
        );
        assert!(words("  ...  ").is_empty());
    }

    #[test]
    fn keywords_are_the_rarest_content_words() {
        let corpus = [
            "The best summer sale",
            "The best winter sale",
            "Summer sandals for the beach",
            "The sale is on",
        ];
        let kx = KeywordExtractor::fit(corpus);
        // df: sandals 1, beach 1, summer 2, best 2, sale 3; "the"/"for" are stop words.
        assert_eq!(
            kx.keywords("Summer sandals for the beach", 2),
            vec!["sandals", "beach"]
        );
        // Written as in the line; repeats in another case count once.
        assert_eq!(
            kx.keywords("The Best Summer Sale, best ever", 3),
            vec!["Best", "Summer", "Sale"]
        );
        assert!(kx.keywords("the of and", 3).is_empty());
        let brief = kx.training_brief(&CopyLine {
            text: "Summer sandals for the beach".into(),
            tone: None,
        });
        assert!((1..=3).contains(&brief.keywords.len()));
        assert_eq!(brief.coverage("Summer sandals for the beach"), 1.0);
    }

    #[test]
    fn brief_parse_prompt_and_coverage() {
        let b = Brief::parse(" Summer  Sale, sandals ,, ", Some(" Playful "));
        assert_eq!(b.keywords, vec!["Summer Sale", "sandals"]);
        assert_eq!(
            b.prompt(),
            "<|endoftext|><|brief|> Summer Sale, sandals<|tone|>playful<|text|>"
        );
        assert_eq!(b.example("Hi"), format!("{}Hi<|endoftext|>", b.prompt()));
        assert_eq!(b.coverage("Our SUMMER sale has sandals!"), 1.0);
        assert_eq!(b.coverage("Sale: summer sandals"), 0.5);
        assert_eq!(b.coverage("nothing"), 0.0);
        let empty = Brief::parse("", None);
        assert!(empty.keywords.is_empty());
        assert_eq!(empty.prompt(), "<|endoftext|><|brief|><|text|>");
        assert_eq!(empty.coverage("anything"), 1.0);
    }

    #[test]
    fn keyword_case_detection_and_application() {
        let title = [
            "They're Being Called Walmart's Worst Nightmare",
            "A Dog And A Cat",
        ];
        assert_eq!(KeywordCase::detect(title), KeywordCase::Title);
        let plain = ["summer sale on sandals today", "Free shipping for everyone"];
        assert_eq!(KeywordCase::detect(plain), KeywordCase::AsTyped);
        assert_eq!(KeywordCase::Title.apply("summer sale"), "Summer Sale");
        assert_eq!(KeywordCase::Title.apply("éclair"), "Éclair");
        assert_eq!(KeywordCase::AsTyped.apply("summer sale"), "summer sale");
    }

    #[test]
    fn constraints_reject_each_violation() {
        let c = Constraints {
            max_chars: 20,
            banned: vec!["free".into(), "act now".into()],
            no_copy_of: [normalize("Seen it before")].into_iter().collect(),
        };
        let mut acc = HashSet::new();
        assert_eq!(c.check("Twenty chars exactly", &acc), None);
        assert_eq!(
            c.check("Twenty-one chars, yes", &acc),
            Some(Rejection::TooLong)
        );
        assert_eq!(c.check("   !! ", &acc), Some(Rejection::Empty));
        assert_eq!(c.check("Get it FREE", &acc), Some(Rejection::Banned));
        assert_eq!(c.check("Act now, friends", &acc), Some(Rejection::Banned));
        assert_eq!(c.check("Freedom sale", &acc), None, "whole words only");
        assert_eq!(
            c.check("seen it, before!", &acc),
            Some(Rejection::TrainingCopy)
        );
        acc.insert(normalize("Sandals sale"));
        assert_eq!(c.check("sandals  SALE", &acc), Some(Rejection::Duplicate));
    }

    #[test]
    fn corpus_dedupes_and_names_missing_columns() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("c.csv");
        std::fs::write(
            &csv,
            "test_id,headline,tone\n1,Hello there,Calm\n2, Hello there ,x\n3,,y\n4,Second line,\n",
        )
        .unwrap();
        let mut cfg = CopyCorpusConfig {
            csv: csv.clone(),
            text_column: "headline".into(),
            tone_column: Some("tone".into()),
        };
        let lines = read_copy_corpus(&cfg).unwrap();
        assert_eq!(
            lines,
            vec![
                CopyLine {
                    text: "Hello there".into(),
                    tone: Some("calm".into())
                },
                CopyLine {
                    text: "Second line".into(),
                    tone: None
                }
            ]
        );
        cfg.text_column = "title".into();
        let err = read_copy_corpus(&cfg).unwrap_err().to_string();
        assert!(err.contains("title") && err.contains("headline"), "{err}");
        cfg.csv = dir.path().join("missing.csv");
        assert!(matches!(read_copy_corpus(&cfg), Err(DataError::Io { .. })));
    }

    #[test]
    fn banned_list_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("banned.txt");
        std::fs::write(&p, "# legal\nFree\n\n  guaranteed  \n").unwrap();
        assert_eq!(
            Constraints::read_banned(&p).unwrap(),
            vec!["free", "guaranteed"]
        );
    }
}
