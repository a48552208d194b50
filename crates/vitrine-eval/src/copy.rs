//! `vitrine eval copy` / `vitrine eval lm`: validation loss and perplexity, and for copy runs
//! the quality of generated candidates for the validation lines' briefs: keyword coverage,
//! distinct-1/2, constraint compliance (checked again, independently of the generator) and
//! the rate of candidates that repeat a training line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_data::copy::{normalize, words, Brief};
use vitrine_infer::copy::{
    check_request, eval_loss, generate, is_number, prepare, GenerateParams, Lexicon, LexiconMode,
    LmPrepared, LmRun,
};
use vitrine_infer::run::files;
use vitrine_infer::Result;

#[derive(Debug, Clone, Serialize)]
pub struct CopyEvalReport {
    pub run: String,
    pub val_loss: f64,
    pub val_perplexity: f64,
    pub val_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationMetrics>,
    pub secs: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GenerationMetrics {
    pub briefs: usize,
    pub candidates: usize,
    /// Mean fraction of a brief's keywords found (as whole words) in its candidates.
    pub keyword_coverage: f64,
    /// Distinct unigrams / bigrams over all unigrams / bigrams of all candidates.
    pub distinct_1: f64,
    pub distinct_2: f64,
    /// Fraction of returned candidates within max_chars, not empty, not repeated.
    pub constraint_compliance: f64,
    /// Fraction of returned candidates equal (normalised) to a training line.
    pub training_copy_rate: f64,
    /// Briefs that got fewer than n candidates within the budget.
    pub briefs_short: usize,
    pub sampled: usize,
    pub lexicon: LexiconMetrics,
    /// Tokens generated (all samples, rejected ones included) per second of generation.
    pub tokens: usize,
    pub tokens_per_sec: f64,
}

/// The words of the candidates against the run's lexicon (and an independent word list).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LexiconMetrics {
    /// How the candidates were generated: held to the lexicon (`corpus`) or not (`off`).
    pub mode: LexiconMode,
    /// Words in the run's lexicon (training corpus + `generate.lexicon_extra`).
    pub size: usize,
    /// Words of all candidates.
    pub words: usize,
    /// Candidate words in neither the lexicon nor their brief's keywords (numbers pass).
    pub words_outside: usize,
    /// Share of candidate words in the lexicon, their brief's keywords or numbers.
    pub share: f64,
    /// Share of the validation headlines' words (never seen in training) in the lexicon or
    /// numbers: how much a real headline the constraint would let through.
    pub valid_share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub word_list: Option<WordListShares>,
}

/// Shares of words (numbers left out) found in an independent word list, used only to report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WordListShares {
    pub path: String,
    pub entries: usize,
    /// Candidate words.
    pub generated: f64,
    /// Validation headlines' words.
    pub valid: f64,
}

/// What `vitrine eval copy` may change from the run's `[eval]`.
#[derive(Debug, Clone, Default)]
pub struct CopyEvalOptions {
    /// Generate with or without the lexicon, whatever the run's `generate.lexicon` says.
    pub lexicon: Option<LexiconMode>,
    /// An independent word list (e.g. Debian's `wamerican`) to report words against.
    pub word_list: Option<PathBuf>,
}

impl CopyEvalOptions {
    /// Where the report goes in the run: `eval.json`, or `eval-lexicon-off.json` /
    /// `eval-lexicon-corpus.json` when `--lexicon` chose the mode.
    pub fn report_file(&self) -> String {
        match self.lexicon {
            None => files::EVAL.to_string(),
            Some(LexiconMode::Corpus) => "eval-lexicon-corpus.json".into(),
            Some(LexiconMode::Off) => "eval-lexicon-off.json".into(),
        }
    }
}

impl CopyEvalReport {
    pub fn table(&self) -> String {
        let mut rows = vec![
            (
                "validation loss (nats/token)",
                format!("{:.4}", self.val_loss),
            ),
            (
                "validation perplexity",
                format!("{:.2}", self.val_perplexity),
            ),
        ];
        if let Some(g) = &self.generation {
            let f = |v: f64| format!("{v:.4}");
            rows.extend([
                (
                    "briefs / candidates",
                    format!("{} / {}", g.briefs, g.candidates),
                ),
                ("keyword coverage", f(g.keyword_coverage)),
                ("distinct-1", f(g.distinct_1)),
                ("distinct-2", f(g.distinct_2)),
                ("constraint compliance", f(g.constraint_compliance)),
                ("training-copy rate", f(g.training_copy_rate)),
                ("briefs short of n", g.briefs_short.to_string()),
                (
                    "lexicon",
                    format!("{:?} ({} words)", g.lexicon.mode, g.lexicon.size).to_lowercase(),
                ),
                (
                    "candidate words outside lexicon + keywords",
                    format!("{} of {}", g.lexicon.words_outside, g.lexicon.words),
                ),
                ("candidate words in lexicon + keywords", f(g.lexicon.share)),
                (
                    "validation headline words in lexicon",
                    f(g.lexicon.valid_share),
                ),
                ("generation tokens/s", format!("{:.1}", g.tokens_per_sec)),
            ]);
            if let Some(w) = &g.lexicon.word_list {
                rows.extend([
                    ("candidate words in word list", f(w.generated)),
                    ("validation headline words in word list", f(w.valid)),
                ]);
            }
        }
        let mut s = String::from("| metric | value |\n|---|---|\n");
        for (name, value) in rows {
            s.push_str(&format!("| {name} | {value} |\n"));
        }
        s
    }
}

/// Distinct-n: unique word n-grams / all word n-grams over `texts` (0 when there are none).
pub fn distinct_n(texts: &[String], n: usize) -> f64 {
    let mut all = 0usize;
    let mut uniq = HashSet::new();
    for t in texts {
        let w = words(t);
        for g in w.windows(n) {
            all += 1;
            uniq.insert(g.to_vec());
        }
    }
    if all == 0 {
        0.0
    } else {
        uniq.len() as f64 / all as f64
    }
}

pub fn eval_copy<B: Backend>(
    run_path: &Path,
    opts: &CopyEvalOptions,
    device: &B::Device,
) -> Result<CopyEvalReport> {
    let started = Instant::now();
    let run = LmRun::<B>::load(run_path, device)?;
    let prepared = prepare(&run.config, Some(run.tokenizer.clone()))?;
    let t = &run.config.train;
    let batches =
        prepared
            .valid
            .eval_batches(t.fit.batch_size, t.task.block_size, t.task.eval_batches);
    let (val_loss, val_tokens) = eval_loss(&run.model, &batches, device)?;
    let generation = if run.config.is_copy() && run.config.eval.briefs > 0 {
        Some(eval_generation(&run, &prepared, opts, device)?)
    } else {
        None
    };
    let report = CopyEvalReport {
        run: run_path.display().to_string(),
        val_loss,
        val_perplexity: val_loss.exp(),
        val_tokens,
        generation,
        secs: started.elapsed().as_secs_f64(),
    };
    run.dir.save_json(&opts.report_file(), &report)?;
    Ok(report)
}

/// Generates for the first `eval.briefs` validation briefs and measures the candidates.
fn eval_generation<B: Backend>(
    run: &LmRun<B>,
    prepared: &LmPrepared,
    opts: &CopyEvalOptions,
    device: &B::Device,
) -> Result<GenerationMetrics> {
    let e = &run.config.eval;
    let mode = opts
        .lexicon
        .or(e.generate.lexicon)
        .unwrap_or(run.config.generate.lexicon);
    let lexicon = &run.lexicon;
    let mut texts = Vec::new();
    let (mut coverage, mut compliant, mut copies) = (0.0, 0usize, 0usize);
    let (mut short, mut sampled, mut briefs, mut tokens) = (0, 0, 0, 0);
    let (mut words_all, mut outside) = (0usize, 0usize);
    let mut gen_secs = 0.0;
    for brief in prepared.valid_briefs.iter().take(e.briefs) {
        let req = GenerateParams {
            keywords: brief.keywords.join(", "),
            tone: brief.tone.clone(),
            seed: e.generate.seed ^ briefs as u64,
            lexicon: Some(mode),
            ..e.generate.clone()
        };
        let checked = check_request(&req, run, &run.config.generate)?;
        let t0 = Instant::now();
        let out = generate(run, &checked, &run.config.generate, device)?;
        gen_secs += t0.elapsed().as_secs_f64();
        briefs += 1;
        sampled += out.sampled;
        tokens += out.tokens;
        short += usize::from(out.budget_exhausted);
        let parsed = Brief::parse(&req.keywords, req.tone.as_deref());
        let keyword_words = Lexicon::from_texts(parsed.keywords.iter().map(String::as_str));
        let mut seen = HashSet::new();
        for c in out.candidates {
            coverage += parsed.coverage(&c.text);
            let norm = normalize(&c.text);
            if !norm.is_empty()
                && c.text.chars().count() <= e.generate.max_chars
                && seen.insert(norm.clone())
            {
                compliant += 1;
            }
            copies += usize::from(run.train_lines.contains(&norm));
            for w in words(&c.text) {
                words_all += 1;
                outside += usize::from(!lexicon.allows(&w) && !keyword_words.allows(&w));
            }
            texts.push(c.text);
        }
    }
    let n = texts.len().max(1) as f64;
    let word_list = match &opts.word_list {
        Some(p) => Some(word_list_shares(p, &texts, &prepared.valid_texts)?),
        None => None,
    };
    Ok(GenerationMetrics {
        briefs,
        candidates: texts.len(),
        keyword_coverage: coverage / n,
        distinct_1: distinct_n(&texts, 1),
        distinct_2: distinct_n(&texts, 2),
        constraint_compliance: compliant as f64 / n,
        training_copy_rate: copies as f64 / n,
        briefs_short: short,
        sampled,
        lexicon: LexiconMetrics {
            mode,
            size: lexicon.len(),
            words: words_all,
            words_outside: outside,
            share: 1.0 - outside as f64 / words_all.max(1) as f64,
            valid_share: share_of(words_of(&prepared.valid_texts), |w| lexicon.allows(w)),
            word_list,
        },
        tokens,
        tokens_per_sec: tokens as f64 / gen_secs.max(1e-9),
    })
}

/// The words of all `texts`, in order.
fn words_of(texts: &[String]) -> impl Iterator<Item = String> + '_ {
    texts.iter().flat_map(|t| words(t))
}

/// Share of `words` that `known` accepts (0 when there are none).
fn share_of(words: impl Iterator<Item = String>, known: impl Fn(&str) -> bool) -> f64 {
    let (mut all, mut hit) = (0usize, 0usize);
    for w in words {
        all += 1;
        hit += usize::from(known(&w));
    }
    hit as f64 / all.max(1) as f64
}

/// Shares of generated and validation words (numbers left out) in the word list at `path`.
fn word_list_shares(path: &Path, generated: &[String], valid: &[String]) -> Result<WordListShares> {
    let list = Lexicon::read(path)?;
    let in_list = |texts| {
        share_of(words_of(texts).filter(|w| !is_number(w)), |w| {
            list.allows(w)
        })
    };
    Ok(WordListShares {
        path: path.display().to_string(),
        entries: list.len(),
        generated: in_list(generated),
        valid: in_list(valid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_n_on_a_known_example() {
        let texts = vec!["a b a b".to_string(), "a c".to_string()];
        // unigrams: a b a b a c -> 3 unique / 6
        assert!((distinct_n(&texts, 1) - 0.5).abs() < 1e-12);
        // bigrams: ab ba ab ac -> 3 unique / 4
        assert!((distinct_n(&texts, 2) - 0.75).abs() < 1e-12);
        assert_eq!(distinct_n(&[], 2), 0.0);
    }
}
