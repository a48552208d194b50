//! `vitrine eval score`: how often a click-through scorer picks the winner of a pair of
//! headline variants in the validation A/B tests, next to two baselines judged by the same
//! function ([`pairwise_metrics`]): "the longer headline wins" and seeded random scores.

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_data::ctr::{length_scores, pairwise_metrics, random_scores, PairwiseMetrics};
use vitrine_infer::run::files;
use vitrine_infer::score::ScoreRun;
use vitrine_infer::Result;

#[derive(Debug, Clone, Serialize)]
pub struct ScoreEvalReport {
    pub run: String,
    pub tests: usize,
    pub variants: usize,
    /// Same-test pairs left out: identical headlines (no text model can order them) and
    /// exactly equal CTR.
    pub same_text_pairs: usize,
    pub same_ctr_pairs: usize,
    pub significance_z: f64,
    pub model: PairwiseMetrics,
    pub longer_wins: PairwiseMetrics,
    pub random: PairwiseMetrics,
    pub secs: f64,
}

impl ScoreEvalReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "validation: {} tests, {} variants, {} pairs ({} significant at |z| >= {}); left out: {} same-headline, {} equal-CTR pairs\n\n",
            self.tests,
            self.variants,
            self.model.pairs,
            self.model.significant_pairs,
            self.significance_z,
            self.same_text_pairs,
            self.same_ctr_pairs
        );
        s.push_str("| scorer | pairwise accuracy | significant pairs | AUC | ties |\n|---|---|---|---|---|\n");
        for (name, m) in [
            ("model", &self.model),
            ("longer headline wins", &self.longer_wins),
            ("random", &self.random),
        ] {
            s.push_str(&format!(
                "| {name} | {:.4} | {:.4} | {} | {} |\n",
                m.accuracy,
                m.significant_accuracy,
                m.auc.map_or("-".into(), |a| format!("{a:.4}")),
                m.ties
            ));
        }
        s
    }
}

pub fn eval_score<B: Backend>(run_path: &Path, device: &B::Device) -> Result<ScoreEvalReport> {
    let started = Instant::now();
    let run = ScoreRun::<B>::load(run_path, device)?;
    let enc = run.validation_pairs()?;
    let z = run.config.pairs.significance_z;
    let scores = enc.scores(&run.model, run.config.limits.batch_size, device)?;
    let p = &enc.pairs;
    let report = ScoreEvalReport {
        run: run_path.display().to_string(),
        tests: p.test_of.last().map_or(0, |t| t + 1),
        variants: p.variants.len(),
        same_text_pairs: p.same_text,
        same_ctr_pairs: p.same_ctr,
        significance_z: z,
        model: pairwise_metrics(p, &scores, z),
        longer_wins: pairwise_metrics(p, &length_scores(p), z),
        random: pairwise_metrics(p, &random_scores(p, run.config.eval.random_seed), z),
        secs: started.elapsed().as_secs_f64(),
    };
    run.dir.save_json(files::EVAL, &report)?;
    Ok(report)
}
