//! A trained language-model or copy run, loaded for inference; and its export as a
//! Hugging Face GPT-2 folder.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use vitrine_data::fsio::atomic_save;
use vitrine_data::text::{Tokenizer, EOS};
use vitrine_models::gpt::Gpt;

use super::config::LmRunConfig;
use super::lexicon::{Lexicon, LexiconIndex};
use crate::error::{io_err, InferError, Result};
use crate::run::{files, RunDir};

/// A trained GPT run ready for inference.
pub struct LmRun<B: Backend> {
    pub config: LmRunConfig,
    pub model: Gpt<B>,
    pub tokenizer: Tokenizer,
    /// Normalised training lines (copy runs).
    pub train_lines: HashSet<String>,
    /// The words lines may use (copy runs; empty for plain language models).
    pub lexicon: Lexicon,
    /// The lexicon as the decoder walks it (copy runs with a byte-level tokenizer), or why
    /// there is none.
    pub lexicon_index: std::result::Result<LexiconIndex, String>,
    pub dir: RunDir,
}

impl<B: Backend> LmRun<B> {
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        let (dir, config, tokenizer) = RunDir::open::<LmRunConfig>(path, None)?;
        let model = dir.load_weights(config.model.init::<B>(device)?, device)?;
        let train_lines = if config.is_copy() {
            let p = dir.file(files::TRAIN_LINES);
            std::fs::read_to_string(&p)
                .map_err(io_err(&p))?
                .lines()
                .map(String::from)
                .collect()
        } else {
            HashSet::new()
        };
        let (lexicon, lexicon_index) = if config.is_copy() {
            let lexicon = load_lexicon(&dir, &config, &train_lines)?;
            let eos = tokenizer.token_id(EOS);
            let index = LexiconIndex::new(&lexicon, &tokenizer, eos).map_err(|e| e.to_string());
            (lexicon, index)
        } else {
            let why = "a plain language-model run has no lexicon";
            (Lexicon::default(), Err(why.into()))
        };
        Ok(Self {
            config,
            model,
            tokenizer,
            train_lines,
            lexicon,
            lexicon_index,
            dir,
        })
    }

    pub fn eos(&self) -> Option<u32> {
        self.tokenizer.token_id(EOS)
    }
}

/// A copy run's lexicon: `lexicon.txt`, or for runs made before it was saved the words of
/// the training lines (the same set); then the words of `generate.lexicon_extra`.
fn load_lexicon(
    dir: &RunDir,
    config: &LmRunConfig,
    train_lines: &HashSet<String>,
) -> Result<Lexicon> {
    let saved = dir.file(files::LEXICON);
    let mut lexicon = if saved.exists() {
        Lexicon::read(&saved)?
    } else {
        Lexicon::from_texts(train_lines.iter().map(String::as_str))
    };
    if let Some(extra) = &config.generate.lexicon_extra {
        // Relative to the run (training writes it absolute).
        let more = Lexicon::read(&dir.path.join(extra))
            .map_err(|e| InferError::Invalid(format!("generate.lexicon_extra: {e}")))?;
        lexicon.merge(more);
    }
    Ok(lexicon)
}

/// What [`export_hf`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub out: PathBuf,
    pub files: Vec<String>,
    pub tensors: usize,
}

/// Writes a trained GPT run as a Hugging Face GPT-2 folder (`config.json`,
/// `model.safetensors`, `tokenizer.json`) that `transformers` loads with
/// `GPT2LMHeadModel.from_pretrained` and Vitrine with `init = "<folder>"`. Each file is
/// written atomically.
pub fn export_hf<B: Backend>(run: &Path, out: &Path, device: &B::Device) -> Result<ExportReport> {
    let lm = LmRun::<B>::load(run, device)?;
    if matches!(lm.tokenizer, Tokenizer::Char(_)) {
        return Err(InferError::Invalid(format!(
            "{}: a character-level tokenizer has no Hugging Face form; export needs a BPE run",
            run.display()
        )));
    }
    let mut export = vitrine_models::hf::Export::default();
    lm.model.export_hf(&mut export, "transformer.");
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let mut config = lm.config.model.to_hf();
    if let Some(eos) = lm.eos() {
        config["bos_token_id"] = eos.into();
        config["eos_token_id"] = eos.into();
    }
    let files = [
        (
            vitrine_models::hf::CONFIG_FILE,
            serde_json::to_vec_pretty(&config).expect("JSON value"),
        ),
        (vitrine_models::hf::WEIGHTS_FILE, export.to_safetensors()?),
    ];
    for (name, bytes) in &files {
        let path = out.join(name);
        atomic_save(&path, bytes).map_err(io_err(&path))?;
    }
    lm.tokenizer.save(&out.join(files::TOKENIZER))?;
    Ok(ExportReport {
        out: out.to_owned(),
        files: vec![
            vitrine_models::hf::CONFIG_FILE.into(),
            vitrine_models::hf::WEIGHTS_FILE.into(),
            files::TOKENIZER.into(),
        ],
        tensors: export.tensors.len(),
    })
}
