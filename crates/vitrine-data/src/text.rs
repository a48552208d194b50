//! Tokenizers: byte-level BPE trained with the `tokenizers` crate, any Hugging Face
//! `tokenizer.json`, and a character-level vocabulary (the Shakespeare benchmark). All three
//! save to and load from one `tokenizer.json`; the character vocabulary is marked by
//! `"type": "vitrine-char"` so the two formats cannot be confused.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder, TokenizerImpl,
};

use crate::error::{DataError, Result};
use crate::fsio::atomic_save;

/// Marks the start and end of every document.
pub const EOS: &str = "<|endoftext|>";

const CHAR_TYPE: &str = "vitrine-char";

#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// Byte-level BPE or any other Hugging Face tokenizer.
    Hf(Box<tokenizers::Tokenizer>),
    /// One token per character of the training text.
    Char(CharVocab),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CharVocab {
    #[serde(rename = "type")]
    kind: String,
    /// Token id = position.
    chars: Vec<char>,
    #[serde(skip)]
    ids: HashMap<char, u32>,
}

impl CharVocab {
    fn new(mut chars: Vec<char>) -> Self {
        chars.sort_unstable();
        chars.dedup();
        let mut v = Self {
            kind: CHAR_TYPE.into(),
            chars,
            ids: HashMap::new(),
        };
        v.index();
        v
    }

    fn index(&mut self) {
        self.ids = self
            .chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
    }
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(format!("{what}: {e}"))
}

impl Tokenizer {
    /// Trains a byte-level BPE (GPT-2 style, no prefix space) of at most `vocab_size` tokens
    /// on `texts`. `special` tokens get the first ids and are never split.
    pub fn train_bpe<'a>(
        texts: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
        special: &[&str],
    ) -> Result<Self> {
        let min = 256 + special.len() + 1;
        if vocab_size < min || vocab_size > 1 << 20 {
            return Err(DataError::Tokenizer(format!(
                "vocab_size = {vocab_size}: a byte-level BPE needs {min}..=1048576 (256 bytes + special tokens + merges)"
            )));
        }
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(
                special
                    .iter()
                    .map(|s| AddedToken::from(s.to_string(), true))
                    .collect(),
            )
            .initial_alphabet(
                tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
                    .into_iter()
                    .collect(),
            )
            .build();
        let byte_level = ByteLevel::new(false, true, true);
        let mut tok: TokenizerImpl<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        > = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(byte_level.into()))
            .with_post_processor(None)
            .with_decoder(Some(byte_level.into()))
            .build()
            .map_err(|e| tok_err("building the BPE tokenizer", e))?;
        tok.train(&mut trainer, texts)
            .map_err(|e| tok_err("training the BPE tokenizer", e))?;
        Ok(Self::Hf(Box::new(tok.into())))
    }

    /// A character vocabulary holding every character of `text`.
    pub fn build_char(text: &str) -> Self {
        Self::Char(CharVocab::new(text.chars().collect()))
    }

    /// Loads a `tokenizer.json` written by [`Tokenizer::save`] or by Hugging Face.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
        let bad = |e: &dyn std::fmt::Display| {
            DataError::Tokenizer(format!("{}: not a tokenizer.json ({e})", path.display()))
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e))?;
        if value.get("type").and_then(|t| t.as_str()) == Some(CHAR_TYPE) {
            let mut vocab: CharVocab = serde_json::from_value(value).map_err(|e| bad(&e))?;
            vocab.index();
            if vocab.ids.len() != vocab.chars.len() {
                return Err(bad(&"repeated characters in the vocabulary"));
            }
            return Ok(Self::Char(vocab));
        }
        let mut tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| bad(&e))?;
        // Callers pad and cut rows themselves: a file's own padding (BERT folders pad every
        // row to 128) or truncation would change the ids silently.
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| bad(&e))?;
        Ok(Self::Hf(Box::new(tok)))
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = match self {
            Self::Hf(t) => t
                .to_string(true)
                .map_err(|e| tok_err("serialising the tokenizer", e))?,
            Self::Char(v) => serde_json::to_string_pretty(v).expect("char vocab serialises"),
        };
        atomic_save(path, text.as_bytes()).map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Adds `tokens` as special (never split) tokens where the vocabulary lacks them.
    /// Character vocabularies have no special tokens: asking for one is an error.
    pub fn ensure_special(&mut self, tokens: &[&str]) -> Result<()> {
        match self {
            Self::Hf(t) => {
                let missing: Vec<AddedToken> = tokens
                    .iter()
                    .filter(|s| t.token_to_id(s).is_none())
                    .map(|s| AddedToken::from(s.to_string(), true))
                    .collect();
                t.add_special_tokens(&missing);
                Ok(())
            }
            Self::Char(_) if tokens.is_empty() => Ok(()),
            Self::Char(_) => Err(DataError::Tokenizer(format!(
                "a character-level tokenizer cannot hold the special tokens {tokens:?}; use a BPE tokenizer"
            ))),
        }
    }

    /// Number of token ids (special tokens included).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Hf(t) => t.get_vocab_size(true),
            Self::Char(v) => v.chars.len(),
        }
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::Hf(t) => t.token_to_id(token),
            Self::Char(v) => {
                let mut it = token.chars();
                match (it.next(), it.next()) {
                    (Some(c), None) => v.ids.get(&c).copied(),
                    _ => None,
                }
            }
        }
    }

    /// Token ids of `text`; special tokens written in the text are recognised as such.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Hf(t) => Ok(t
                .encode_fast(text, false)
                .map_err(|e| tok_err("encoding", e))?
                .get_ids()
                .to_vec()),
            Self::Char(v) => text
                .chars()
                .map(|c| {
                    v.ids.get(&c).copied().ok_or_else(|| {
                        DataError::Tokenizer(format!(
                            "character {c:?} is not in the character vocabulary ({} characters)",
                            v.chars.len()
                        ))
                    })
                })
                .collect(),
        }
    }

    /// Token ids of `text` with the tokenizer's own framing added (e.g. CLIP's
    /// `<|startoftext|> … <|endoftext|>`); the same as [`Tokenizer::encode`] for tokenizers
    /// without a post-processor.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Hf(t) => Ok(t
                .encode_fast(text, true)
                .map_err(|e| tok_err("encoding", e))?
                .get_ids()
                .to_vec()),
            Self::Char(_) => self.encode(text),
        }
    }

    /// The bytes each token id stands for, for decoders that constrain tokens by their text;
    /// `None` for added (special) tokens, which stand for no text. Only byte-level
    /// tokenizers (GPT-2's scheme: every byte is a printable character in the vocabulary)
    /// have a byte string per token; others are an error.
    pub fn token_bytes(&self) -> Result<Vec<Option<Vec<u8>>>> {
        let not_byte_level = || {
            DataError::Tokenizer(
                "this tokenizer is not byte-level BPE, so its tokens have no byte strings".into(),
            )
        };
        let Self::Hf(t) = self else {
            return Err(not_byte_level());
        };
        if !matches!(t.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return Err(not_byte_level());
        }
        let to_byte = byte_level_chars();
        let added = t.get_added_tokens_decoder();
        (0..t.get_vocab_size(true) as u32)
            .map(|id| {
                if added.contains_key(&id) {
                    return Ok(None);
                }
                let Some(token) = t.id_to_token(id) else {
                    return Ok(None);
                };
                token
                    .chars()
                    .map(|c| to_byte.get(&c).copied().ok_or_else(not_byte_level))
                    .collect::<Result<Vec<u8>>>()
                    .map(Some)
            })
            .collect()
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Self::Hf(t) => t.decode(ids, true).map_err(|e| tok_err("decoding", e)),
            Self::Char(v) => ids
                .iter()
                .map(|&i| {
                    v.chars.get(i as usize).copied().ok_or_else(|| {
                        DataError::Tokenizer(format!(
                            "token id {i} is outside the vocabulary ({} characters)",
                            v.chars.len()
                        ))
                    })
                })
                .collect(),
        }
    }
}

/// GPT-2's byte-level alphabet, character → byte: the printable bytes stand for
/// themselves, the others (controls, space, …) for the characters from U+0100 on, in order.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                next += 1;
                (char::from_u32(next - 1).expect("below U+0200"), b)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn corpus() -> Vec<String> {
        (0..200)
            .map(|i| format!("Summer sale on sandals number {i}! Don't miss the beach deals."))
            .collect()
    }

    #[test]
    fn bpe_trains_round_trips_and_reloads_identically() {
        let texts = corpus();
        let tok =
            Tokenizer::train_bpe(texts.iter().map(String::as_str), 400, &[EOS, "<|x|>"]).unwrap();
        assert!(tok.vocab_size() <= 400 && tok.vocab_size() > 258);
        assert_eq!(tok.token_id(EOS), Some(0));
        let text = format!("{EOS}Summer sandals, café ☀ 42{EOS}");
        let ids = tok.encode(&text).unwrap();
        assert_eq!(ids[0], 0);
        assert_eq!(*ids.last().unwrap(), 0);
        // Merges learned: far fewer tokens than bytes for in-domain text.
        let common = tok.encode("Summer sale on sandals").unwrap();
        assert!(common.len() < 10, "{common:?}");
        assert_eq!(tok.decode(&ids).unwrap(), "Summer sandals, café ☀ 42");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let back = Tokenizer::from_file(&path).unwrap();
        assert_eq!(back.vocab_size(), tok.vocab_size());
        assert_eq!(back.encode(&text).unwrap(), ids);
    }

    #[test]
    fn token_bytes_concatenate_to_the_text() {
        let texts = corpus();
        let tok =
            Tokenizer::train_bpe(texts.iter().map(String::as_str), 400, &[EOS, "<|x|>"]).unwrap();
        let bytes = tok.token_bytes().unwrap();
        assert_eq!(bytes.len(), tok.vocab_size());
        assert_eq!((&bytes[0], &bytes[1]), (&None, &None), "special tokens");
        let text = "Summer sandals, café ☀ 42\n\t";
        let ids = tok.encode(text).unwrap();
        let joined: Vec<u8> = ids
            .iter()
            .flat_map(|&i| bytes[i as usize].clone().unwrap())
            .collect();
        assert_eq!(joined, text.as_bytes());
        // Every byte has a one-byte token.
        let singles: HashSet<u8> = bytes
            .iter()
            .flatten()
            .filter(|b| b.len() == 1)
            .map(|b| b[0])
            .collect();
        assert_eq!(singles.len(), 256);
        let err = Tokenizer::build_char("ab")
            .token_bytes()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not byte-level"), "{err}");
    }

    #[test]
    fn bpe_vocab_size_limits() {
        let texts = corpus();
        let min = 256 + 1 + 1;
        assert!(Tokenizer::train_bpe(texts.iter().map(String::as_str), min, &[EOS]).is_ok());
        let err = Tokenizer::train_bpe(texts.iter().map(String::as_str), min - 1, &[EOS])
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocab_size = 257"), "{err}");
    }

    #[test]
    fn char_round_trip_and_unknown_character() {
        let tok = Tokenizer::build_char("hello world\n");
        assert_eq!(tok.vocab_size(), 9);
        let ids = tok.encode("hold\nworld").unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), "hold\nworld");
        let err = tok.encode("hex").unwrap_err().to_string();
        assert!(err.contains("'x'"), "{err}");
        assert!(tok.decode(&[99]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let back = Tokenizer::from_file(&path).unwrap();
        assert!(matches!(back, Tokenizer::Char(_)));
        assert_eq!(back.encode("hold\nworld").unwrap(), ids);
        assert!(Tokenizer::build_char("ab").ensure_special(&[EOS]).is_err());
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, b"{\"model\": 3}").unwrap();
        let err = Tokenizer::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("not a tokenizer.json"), "{err}");
        let missing = Tokenizer::from_file(&dir.path().join("nope.json")).unwrap_err();
        assert!(matches!(missing, DataError::Io { .. }));
    }

    #[test]
    fn ensure_special_adds_missing_tokens_once() {
        let texts = corpus();
        let mut tok = Tokenizer::train_bpe(texts.iter().map(String::as_str), 300, &[EOS]).unwrap();
        let n = tok.vocab_size();
        tok.ensure_special(&[EOS, "<|brief|>"]).unwrap();
        assert_eq!(tok.vocab_size(), n + 1);
        let id = tok.token_id("<|brief|>").unwrap();
        assert_eq!(tok.encode("<|brief|>").unwrap(), vec![id]);
    }
}
