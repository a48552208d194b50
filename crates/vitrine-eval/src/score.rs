//! `vitrine eval score`: how often a click-through scorer picks the winner of a pair of
//! headline variants in the validation A/B tests, next to baselines judged by the same
//! function ([`pairwise_metrics`]): "the longer headline wins", seeded random scores and,
//! for a scorer on a pretrained encoder, that encoder's frozen embeddings with a pairwise
//! logistic regression fitted here on the training split (what fine-tuning adds to it).

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_data::ctr::{
    length_scores, pairwise_metrics, random_scores, read_ab_tests, PairwiseMetrics,
};
use vitrine_infer::run::files;
use vitrine_infer::score::frozen::{fit_frozen_lr, linear_scores};
use vitrine_infer::score::{dev_split, EncodedPairs, RowCodec, ScoreRun};
use vitrine_infer::sentence::{embed_rows, SentenceEncoder};
use vitrine_infer::Result;
use vitrine_models::scorer::TrunkKind;

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
    /// The init encoder's frozen embeddings + pairwise logistic regression (BERT trunks).
    pub frozen_lr: Option<FrozenBaseline>,
    pub secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrozenBaseline {
    pub model: String,
    /// The L2 strength the dev split chose.
    pub l2: f64,
    pub dev: Option<PairwiseMetrics>,
    pub valid: PairwiseMetrics,
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
        let frozen = self.frozen_lr.as_ref().map(|f| &f.valid);
        for (name, m) in [
            ("model", Some(&self.model)),
            ("frozen embeddings + logistic regression", frozen),
            ("longer headline wins", Some(&self.longer_wins)),
            ("random", Some(&self.random)),
        ] {
            let Some(m) = m else { continue };
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
        frozen_lr: frozen_baseline(&run, &enc, device)?,
        secs: started.elapsed().as_secs_f64(),
    };
    run.dir.save_json(files::EVAL, &report)?;
    Ok(report)
}

/// The frozen baseline of a run whose trunk is a pretrained BERT (`init`): embeddings of
/// the init model, the regression fitted on the run's training split less its dev tests
/// (the same seeded split training used), its L2 strength chosen on those dev tests, then
/// judged on `valid`. `None` for GPT trunks.
fn frozen_baseline<B: Backend>(
    run: &ScoreRun<B>,
    valid: &EncodedPairs,
    device: &B::Device,
) -> Result<Option<FrozenBaseline>> {
    let c = &run.config;
    let (TrunkKind::Bert, Some(init)) = (c.model.trunk, &c.init) else {
        return Ok(None);
    };
    let spec = init.display().to_string();
    let enc = SentenceEncoder::<B>::load(&spec, device)?;
    let codec = RowCodec::of(c);
    let (fit_tests, dev_tests) = dev_split(
        read_ab_tests(&c.data.train)?,
        c.train.task.dev_fraction,
        c.seed,
    );
    let batch = c.limits.batch_size;
    let fit = EncodedPairs::new(&fit_tests, &enc.tokenizer, &codec)?;
    let fit_emb = embed_rows(&enc.model, &fit.rows, batch)?;
    let dev = (!dev_tests.is_empty())
        .then(|| EncodedPairs::new(&dev_tests, &enc.tokenizer, &codec))
        .transpose()?;
    let dev_emb = match &dev {
        Some(d) => Some(embed_rows(&enc.model, &d.rows, batch)?),
        None => None,
    };
    let d = enc.config.d_model;
    let lr = fit_frozen_lr(
        &fit,
        &fit_emb,
        dev.as_ref().zip(dev_emb.as_deref()),
        &c.pairs,
        d,
    );
    let valid_emb = embed_rows(&enc.model, &valid.rows, batch)?;
    let scores = linear_scores(valid, &valid_emb, &lr.w);
    Ok(Some(FrozenBaseline {
        model: spec,
        l2: lr.l2,
        dev: lr.dev,
        valid: pairwise_metrics(&valid.pairs, &scores, c.pairs.significance_z),
    }))
}
