//! Where a run's tokenizer comes from (`[tokenizer]` in its config), and making one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vitrine_data::text::Tokenizer;

use crate::config::absolutize_in;
use crate::error::{InferError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TokenizerSource {
    /// One token per character of the training text.
    Char,
    /// Byte-level BPE trained on the training text.
    Bpe { vocab_size: usize },
    /// A `tokenizer.json` (ours or Hugging Face's).
    File { path: PathBuf },
    /// The `tokenizer.json` of the pretrained model named by the run's `init`.
    Pretrained,
}

impl TokenizerSource {
    /// Makes a `file` path absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Self::File { path } = self {
            absolutize_in(base, path);
        }
    }
}

/// Builds the tokenizer `source` names: trains it on `texts` (char, BPE) or reads it
/// (file), with `special` tokens added.
pub fn build_tokenizer<'a>(
    source: &TokenizerSource,
    texts: impl Iterator<Item = &'a str> + Send,
    special: &[&str],
) -> Result<Tokenizer> {
    let mut tok = match source {
        TokenizerSource::Char => {
            let all: String = texts.collect();
            Tokenizer::build_char(&all)
        }
        TokenizerSource::Bpe { vocab_size } => Tokenizer::train_bpe(texts, *vocab_size, special)?,
        TokenizerSource::File { path } => Tokenizer::from_file(path)?,
        TokenizerSource::Pretrained => {
            return Err(InferError::Invalid(
                "tokenizer.kind = \"pretrained\" needs the run's init model".into(),
            ))
        }
    };
    tok.ensure_special(special)?;
    Ok(tok)
}
