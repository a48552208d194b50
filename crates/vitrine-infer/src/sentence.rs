//! Pretrained sentence encoders (BERT family, e.g. all-MiniLM-L6-v2): a model folder or
//! `hf:` name loaded with its tokenizer, texts framed as the model was trained
//! (`[CLS] … [SEP]`), cut or refused past a token limit, and embedded in batches.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use vitrine_data::text::Tokenizer;
use vitrine_models::bert::{load_hf_bert, Bert, BertConfig};
use vitrine_models::hf::{self, HfConfig};

use crate::error::{InferError, Result};
use crate::score::pad;

/// What happens to a text longer than `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Overflow {
    /// Keep the first tokens and the closing `[SEP]`, as sentence-transformers does.
    #[default]
    Truncate,
    /// Refuse the text with an error.
    Refuse,
}

/// Limits of a sentence encoder's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextLimits {
    /// Longest row in tokens, `[CLS]` and `[SEP]` included; a model with fewer positions
    /// caps it at those.
    pub max_tokens: usize,
    pub overflow: Overflow,
}

impl Default for TextLimits {
    /// 256 tokens: all-MiniLM-L6-v2's `max_seq_length`.
    fn default() -> Self {
        Self {
            max_tokens: 256,
            overflow: Overflow::Truncate,
        }
    }
}

/// Largest `max_tokens` accepted (BERT-family models have at most a few thousand positions).
pub const MAX_TOKENS_LIMIT: usize = 65_536;

impl TextLimits {
    /// `max_tokens` must hold `[CLS] x [SEP]`.
    pub fn validate(&self) -> Result<()> {
        if !(3..=MAX_TOKENS_LIMIT).contains(&self.max_tokens) {
            return Err(InferError::Invalid(format!(
                "max_tokens = {} (allowed 3..={MAX_TOKENS_LIMIT})",
                self.max_tokens
            )));
        }
        Ok(())
    }

    /// These limits for a model with `max_positions` positions.
    pub fn capped(&self, max_positions: usize) -> Self {
        Self {
            max_tokens: self.max_tokens.min(max_positions),
            overflow: self.overflow,
        }
    }
}

/// Token ids of `text` framed by the tokenizer (`[CLS] … [SEP]` for BERT), cut to `limits`
/// keeping the closing token or refused. Returns (ids, whether it was cut).
pub fn encode_sentence(
    tok: &Tokenizer,
    text: &str,
    limits: &TextLimits,
) -> Result<(Vec<u32>, bool)> {
    let mut ids = tok.encode_with_special(text)?;
    if ids.is_empty() {
        return Err(InferError::Invalid("a text with no tokens".into()));
    }
    if ids.len() <= limits.max_tokens {
        return Ok((ids, false));
    }
    if limits.overflow == Overflow::Refuse {
        return Err(InferError::Invalid(format!(
            "{} tokens, more than max_tokens = {} (overflow = \"refuse\")",
            ids.len(),
            limits.max_tokens
        )));
    }
    let last = *ids.last().expect("non-empty");
    ids.truncate(limits.max_tokens - 1);
    ids.push(last);
    Ok((ids, true))
}

/// A pretrained BERT-family sentence encoder and its tokenizer.
pub struct SentenceEncoder<B: Backend> {
    pub dir: PathBuf,
    pub config: BertConfig,
    pub model: Bert<B>,
    pub tokenizer: Tokenizer,
}

/// Whether the model folder `spec` names (a folder or `hf:…`) is a BERT checkpoint.
pub fn is_bert(spec: &str) -> Result<bool> {
    let dir = hf::resolve(spec)?;
    Ok(HfConfig::read(&dir)?.model_type()? == "bert")
}

impl<B: Backend> SentenceEncoder<B> {
    /// Loads `spec` (a model folder or `hf:<repo>`): `config.json`, `model.safetensors`,
    /// `tokenizer.json` and the sentence-transformers pooling files. Each missing or
    /// unreadable file is an error naming it.
    pub fn load(spec: &str, device: &B::Device) -> Result<Self> {
        let dir = hf::resolve(spec)?;
        Self::load_dir(&dir, device)
    }

    pub fn load_dir(dir: &Path, device: &B::Device) -> Result<Self> {
        verify_checksums(dir)?;
        let tok_path = dir.join(hf::TOKENIZER_FILE);
        if !tok_path.is_file() {
            return Err(InferError::Invalid(format!(
                "{}: missing (a sentence encoder needs its tokenizer)",
                tok_path.display()
            )));
        }
        let tokenizer = Tokenizer::from_file(&tok_path)?;
        let (config, model) = load_hf_bert::<B>(dir, device)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(InferError::Invalid(format!(
                "{}: {} tokens, more than the model's vocab_size = {}",
                tok_path.display(),
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        Ok(Self {
            dir: dir.to_owned(),
            config,
            model,
            tokenizer,
        })
    }

    /// Embeddings of `texts`, row-major [n, d], `batch_size` rows per forward pass.
    /// Empty texts are refused; long ones are cut or refused as `limits` says.
    pub fn embed(
        &self,
        texts: &[String],
        limits: &TextLimits,
        batch_size: usize,
    ) -> Result<Vec<f32>> {
        limits.validate()?;
        let limits = &limits.capped(self.config.max_positions);
        let mut rows = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            if t.trim().is_empty() {
                return Err(InferError::Invalid(format!("text {}: empty", i + 1)));
            }
            let (ids, _) = encode_sentence(&self.tokenizer, t, limits)
                .map_err(|e| InferError::Invalid(format!("text {}: {e}", i + 1)))?;
            rows.push(ids);
        }
        embed_rows(&self.model, &rows, batch_size)
    }
}

/// The checksum list `scripts/get-models.sh` writes beside a model's files.
pub const CHECKSUMS_FILE: &str = "SHA256SUMS";

/// Checks every file `dir/SHA256SUMS` lists (`sha256sum` format) when the folder has one:
/// a missing file or a different hash is an error naming the file and how to refetch it.
pub fn verify_checksums(dir: &Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    let list = dir.join(CHECKSUMS_FILE);
    let Ok(text) = std::fs::read_to_string(&list) else {
        return Ok(());
    };
    let refetch = "(re-run scripts/get-models.sh)";
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let Some((want, name)) = line.split_once("  ") else {
            return Err(InferError::Invalid(format!(
                "{}: line {} is not `<sha256>  <file>`",
                list.display(),
                n + 1
            )));
        };
        let path = dir.join(name.trim_start_matches('*'));
        let bytes = std::fs::read(&path).map_err(|e| {
            InferError::Invalid(format!(
                "{}: {e}; {CHECKSUMS_FILE} lists it {refetch}",
                path.display()
            ))
        })?;
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if !got.eq_ignore_ascii_case(want.trim()) {
            return Err(InferError::Invalid(format!(
                "{}: sha256 {got} is not the {want} that {CHECKSUMS_FILE} lists: the file is corrupt or was changed {refetch}",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Embeddings of encoded rows, row-major [n, d].
pub fn embed_rows<B: Backend>(
    model: &Bert<B>,
    rows: &[Vec<u32>],
    batch_size: usize,
) -> Result<Vec<f32>> {
    let device = model.word.weight.device();
    let mut out = Vec::with_capacity(rows.len() * model.d_model());
    for chunk in rows.chunks(batch_size.max(1)) {
        let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        let (tokens, lengths) = pad::<B>(&refs, &device);
        let e = model.embed(tokens, &lengths)?;
        out.extend(
            e.into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| InferError::Invalid(format!("reading embeddings back: {e:?}")))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf/bert")
    }

    fn encoder() -> SentenceEncoder<Flex> {
        SentenceEncoder::<Flex>::load_dir(&fixture(), &Default::default()).unwrap()
    }

    /// The fixture's tokenizer.json pads every row to 16: loading turns that off, so ids
    /// are the text's own ([CLS] … [SEP]) and embeddings match the reference.
    #[test]
    fn loads_the_fixture_without_its_padding_and_matches_the_reference() {
        let enc = encoder();
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture().join("reference.json")).unwrap(),
        )
        .unwrap();
        let texts: Vec<String> = r["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        for (t, want) in texts.iter().zip(r["input_ids"].as_array().unwrap()) {
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let (ids, cut) = encode_sentence(&enc.tokenizer, t, &TextLimits::default()).unwrap();
            assert_eq!((ids, cut), (want, false));
        }
        let got = enc.embed(&texts, &TextLimits::default(), 2).unwrap();
        let want: Vec<f32> = r["embeddings"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff <= 1e-4, "embeddings differ by {diff}");
    }

    /// At `max_tokens` a text is whole; one token past it is cut keeping [SEP] (and then
    /// embeds as its cut form) or refused, as `overflow` says.
    #[test]
    fn long_texts_are_cut_or_refused_at_the_limit() {
        let enc = encoder();
        let text = "summer sale on linen dresses";
        let (full, _) = encode_sentence(&enc.tokenizer, text, &TextLimits::default()).unwrap();
        let n = full.len();
        let at = TextLimits {
            max_tokens: n,
            overflow: Overflow::Refuse,
        };
        assert_eq!(
            encode_sentence(&enc.tokenizer, text, &at).unwrap(),
            (full.clone(), false)
        );
        let past = TextLimits {
            max_tokens: n - 1,
            overflow: Overflow::Refuse,
        };
        let err = encode_sentence(&enc.tokenizer, text, &past)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_tokens") && err.contains("refuse"),
            "{err}"
        );
        let cut = TextLimits {
            max_tokens: n - 1,
            overflow: Overflow::Truncate,
        };
        let (ids, was_cut) = encode_sentence(&enc.tokenizer, text, &cut).unwrap();
        assert!(was_cut);
        assert_eq!(ids.len(), n - 1);
        assert_eq!(ids[..n - 2], full[..n - 2]);
        assert_eq!(ids.last(), full.last());
        assert!(enc.embed(&[text.to_string()], &past, 4).is_err());
        assert!(enc
            .embed(&[" ".to_string()], &TextLimits::default(), 4)
            .is_err());
        for (m, ok) in [
            (2, false),
            (3, true),
            (MAX_TOKENS_LIMIT, true),
            (MAX_TOKENS_LIMIT + 1, false),
        ] {
            let l = TextLimits {
                max_tokens: m,
                overflow: Overflow::Truncate,
            };
            assert_eq!(l.validate().is_ok(), ok, "max_tokens = {m}");
        }
        // The model's 64 positions cap the default 256.
        assert_eq!(TextLimits::default().capped(64).max_tokens, 64);
    }

    fn copy_fixture(to: &Path) {
        std::fs::create_dir_all(to.join("1_Pooling")).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "modules.json",
            "1_Pooling/config.json",
        ] {
            std::fs::copy(fixture().join(f), to.join(f)).unwrap();
        }
    }

    fn load_err(dir: &Path) -> String {
        match SentenceEncoder::<Flex>::load_dir(dir, &Default::default()) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    /// Missing files, corrupt weights and checksum mismatches are errors naming the file.
    #[test]
    fn missing_or_corrupt_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("m");
        copy_fixture(&d);
        assert!(SentenceEncoder::<Flex>::load_dir(&d, &Default::default()).is_ok());
        // A checksum list that matches loads; one byte changed in a listed file does not.
        let sum = |f: &str| {
            use sha2::{Digest, Sha256};
            let b = std::fs::read(d.join(f)).unwrap();
            Sha256::digest(&b)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        };
        let list = format!(
            "{}  model.safetensors\n{}  tokenizer.json\n",
            sum("model.safetensors"),
            sum("tokenizer.json")
        );
        std::fs::write(d.join(CHECKSUMS_FILE), list).unwrap();
        assert!(SentenceEncoder::<Flex>::load_dir(&d, &Default::default()).is_ok());
        let mut w = std::fs::read(d.join("model.safetensors")).unwrap();
        let last = w.len() - 1;
        w[last] ^= 1;
        std::fs::write(d.join("model.safetensors"), &w).unwrap();
        let err = load_err(&d);
        assert!(
            err.contains("model.safetensors") && err.contains("sha256"),
            "{err}"
        );
        // Without the list, a truncated weights file is still named.
        std::fs::remove_file(d.join(CHECKSUMS_FILE)).unwrap();
        std::fs::write(d.join("model.safetensors"), &w[..100]).unwrap();
        let err = load_err(&d);
        assert!(err.contains("model.safetensors"), "{err}");
        for missing in ["tokenizer.json", "config.json"] {
            let d = tmp.path().join(missing);
            copy_fixture(&d);
            std::fs::remove_file(d.join(missing)).unwrap();
            let err = load_err(&d);
            assert!(err.contains(missing), "{missing}: {err}");
        }
        let d = tmp.path().join("weights");
        copy_fixture(&d);
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        assert!(load_err(&d).contains("model.safetensors"));
    }
}
