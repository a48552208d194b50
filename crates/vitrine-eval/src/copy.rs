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
use vitrine_train::generate::{generate, validate, GenerateRequest};
use vitrine_train::lm::{eval_loss, prepare, LmRun};
use vitrine_train::Result;

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
        let mut s = String::from("| metric | value |\n|---|---|\n");
        s.push_str(&format!(
            "| validation loss (nats/token) | {:.4} |\n",
            self.val_loss
        ));
        s.push_str(&format!(
            "| validation perplexity | {:.2} |\n",
            self.val_perplexity
        ));
        if let Some(g) = &self.generation {
            s.push_str(&format!(
                "| briefs / candidates | {} / {} |\n",
                g.briefs, g.candidates
            ));
            s.push_str(&format!(
                "| keyword coverage | {:.4} |\n",
                g.keyword_coverage
            ));
            s.push_str(&format!("| distinct-1 | {:.4} |\n", g.distinct_1));
            s.push_str(&format!("| distinct-2 | {:.4} |\n", g.distinct_2));
            s.push_str(&format!(
                "| constraint compliance | {:.4} |\n",
                g.constraint_compliance
            ));
            s.push_str(&format!(
                "| training-copy rate | {:.4} |\n",
                g.training_copy_rate
            ));
            s.push_str(&format!("| briefs short of n | {} |\n", g.briefs_short));
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
    let batches = prepared
        .valid
        .eval_batches(t.batch_size, t.block_size, t.eval_batches);
    let (val_loss, val_tokens) = eval_loss(&run.model, &batches, device)?;
    let generation = if run.config.is_copy() && run.config.eval.briefs > 0 {
        {
            let e = &run.config.eval;
            let mut texts = Vec::new();
            let (mut coverage, mut compliant, mut copies) = (0.0, 0usize, 0usize);
            let (mut short, mut sampled, mut briefs) = (0, 0, 0);
            for brief in prepared.valid_briefs.iter().take(e.briefs) {
                let req = GenerateRequest {
                    keywords: brief.keywords.join(", "),
                    tone: brief.tone.clone(),
                    n: e.n,
                    max_chars: e.max_chars,
                    temperature: e.temperature,
                    top_k: e.top_k,
                    top_p: e.top_p,
                    repetition_penalty: e.repetition_penalty,
                    seed: e.seed ^ briefs as u64,
                    keyword_boost: e.keyword_boost,
                    ..Default::default()
                };
                let checked = validate(&req, &run, &run.config.generate)?;
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
                        && c.text.chars().count() <= e.max_chars
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
    run.dir.save_json("eval.json", &report)?;
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
