//! `vitrine eval copy` / `vitrine eval lm`: validation loss and perplexity, and for copy runs
//! the quality of generated candidates for the validation lines' briefs: keyword coverage,
//! distinct-1/2, constraint compliance (checked again, independently of the generator) and
//! the rate of candidates that repeat a training line.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_data::copy::{normalize, words, Brief};
use vitrine_infer::copy::{check_request, eval_loss, generate, prepare, GenerateParams, LmRun};
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
            ]);
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

pub fn eval_copy<B: Backend>(run_path: &Path, device: &B::Device) -> Result<CopyEvalReport> {
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
        {
            let e = &run.config.eval;
            let mut texts = Vec::new();
            let (mut coverage, mut compliant, mut copies) = (0.0, 0usize, 0usize);
            let (mut short, mut sampled, mut briefs) = (0, 0, 0);
            for brief in prepared.valid_briefs.iter().take(e.briefs) {
                let req = GenerateParams {
                    keywords: brief.keywords.join(", "),
                    tone: brief.tone.clone(),
                    seed: e.generate.seed ^ briefs as u64,
                    ..e.generate.clone()
                };
                let checked = check_request(&req, &run, &run.config.generate)?;
                let out = generate(&run, &checked, &run.config.generate, device)?;
                briefs += 1;
                sampled += out.sampled;
                short += usize::from(out.budget_exhausted);
                let parsed = Brief::parse(&req.keywords, req.tone.as_deref());
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
                    texts.push(c.text);
                }
            }
            let n = texts.len().max(1) as f64;
            Some(GenerationMetrics {
                briefs,
                candidates: texts.len(),
                keyword_coverage: coverage / n,
                distinct_1: distinct_n(&texts, 1),
                distinct_2: distinct_n(&texts, 2),
                constraint_compliance: compliant as f64 / n,
                training_copy_rate: copies as f64 / n,
                briefs_short: short,
                sampled,
            })
        }
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
    run.dir.save_json(files::EVAL, &report)?;
    Ok(report)
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
