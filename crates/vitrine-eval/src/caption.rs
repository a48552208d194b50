//! `vitrine eval caption`: BLEU-1..4, ROUGE-L and CIDEr-D (pycocoevalcap's definitions,
//! [`crate::caption_metrics`]) of a caption run on its test split, for each configured beam
//! size, next to a nearest-neighbour baseline scored by the same code: each test image gets
//! the training caption of the most similar training image under a visual-search encoder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_data::catalog::{decode_pixels, Catalog, LoadReport};
use vitrine_infer::caption::{open_caption_data, CaptionRun, CaptionRunConfig, CaptionSplitRecord};
use vitrine_infer::run::files;
use vitrine_infer::search::Encoder;
use vitrine_infer::{InferError, Result};

use crate::caption_metrics::{score_all, tokenize, CaptionScores};

#[derive(Debug, Clone, Serialize)]
pub struct MethodScores {
    /// "greedy", "beam 3" or "nearest neighbour".
    pub method: String,
    pub scores: CaptionScores,
    pub secs: f64,
    pub images_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptionExample {
    pub id: String,
    pub reference: String,
    /// One caption per method, in the order of `methods`.
    pub captions: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptionEvalReport {
    pub run: String,
    pub test_images: usize,
    pub methods: Vec<MethodScores>,
    pub baseline_search_run: Option<PathBuf>,
    pub examples: Vec<CaptionExample>,
}

impl CaptionEvalReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "test split: {} images, one reference each (metrics as pycocoevalcap, pre-tokenised)\n\n",
            self.test_images
        );
        s.push_str("| method | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | CIDEr-D | images/s |\n|---|---|---|---|---|---|---|---|\n");
        for m in &self.methods {
            let b = &m.scores.bleu;
            s.push_str(&format!(
                "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1} |\n",
                m.method,
                b[0],
                b[1],
                b[2],
                b[3],
                m.scores.rouge_l,
                m.scores.cider_d,
                m.images_per_sec
            ));
        }
        s
    }
}

/// Catalogue indices of `ids`, in order; an id missing from the catalogue is an error.
fn indices_of(catalog: &Catalog, ids: &[String]) -> Result<Vec<usize>> {
    let pos: std::collections::HashMap<&str, usize> = catalog
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.id.as_str(), i))
        .collect();
    ids.iter()
        .map(|id| {
            pos.get(id.as_str()).copied().ok_or_else(|| {
                InferError::Invalid(format!(
                    "{}: item {id:?} of the run's split.json is not in the catalogue any more",
                    catalog.source_name
                ))
            })
        })
        .collect()
}

/// Index of the most similar row of `gallery` [n, d] for each row of `queries` [m, d]
/// (dot product of unit vectors; ties go to the lower index).
pub fn nearest(queries: &[f32], gallery: &[f32], dim: usize) -> Vec<usize> {
    queries
        .chunks(dim)
        .map(|q| {
            let mut best = (f32::NEG_INFINITY, 0);
            for (j, g) in gallery.chunks(dim).enumerate() {
                let s: f32 = q.iter().zip(g).map(|(a, b)| a * b).sum();
                if s > best.0 {
                    best = (s, j);
                }
            }
            best.1
        })
        .collect()
}

/// What `vitrine eval caption` may change from the run's own settings.
#[derive(Debug, Clone, Default)]
pub struct CaptionEvalOptions {
    /// Search run of the baseline (default: the run's `eval.search_run`).
    pub search_run: Option<PathBuf>,
    /// Beam sizes to evaluate (default: the run's `eval.beams`).
    pub beams: Option<Vec<usize>>,
    /// Length normalisation exponent (default: the run's `decode.length_penalty`).
    pub length_penalty: Option<f64>,
    pub quiet: bool,
}

pub fn eval_caption<B: Backend>(
    run_path: &Path,
    opts: &CaptionEvalOptions,
    device: &B::Device,
) -> Result<CaptionEvalReport> {
    let quiet = opts.quiet;
    let run = CaptionRun::<B>::load(run_path, device)?;
    let config = &run.config;
    let split: CaptionSplitRecord = run.dir.load_json(files::SPLIT)?;
    let data = open_caption_data(config, false)?;
    let catalog = &data.catalog;
    let test = indices_of(catalog, &split.test_ids)?;
    let train = indices_of(catalog, &split.train_ids)?;
    let title = |i: usize| catalog.items[i].title.clone().unwrap_or_default();
    let refs: Vec<Vec<String>> = test.iter().map(|&i| vec![tokenize(&title(i))]).collect();
    let mut report = data.report;
    let (kept, pixels) = decode_pixels(
        catalog,
        &test,
        &config.preprocess,
        &config.data.limits,
        false,
        &mut report,
        None,
    )?;
    debug_assert_eq!(kept.len(), test.len());

    let mut methods = Vec::new();
    let mut captions: Vec<Vec<String>> = Vec::new();
    let mut score = |method: String, hyps: Vec<String>, secs: f64| -> Result<()> {
        let tokens: Vec<String> = hyps.iter().map(|h| tokenize(h)).collect();
        let scores = score_all(&tokens, &refs).map_err(|e| InferError::Invalid(e.to_string()))?;
        methods.push(MethodScores {
            method,
            scores,
            secs,
            images_per_sec: test.len() as f64 / secs.max(1e-9),
        });
        captions.push(hyps);
        Ok(())
    };
    for &beam in opts.beams.as_ref().unwrap_or(&config.eval.beams) {
        let cfg = run.decode_config(|c| {
            c.beam = beam;
            c.length_penalty = opts.length_penalty.unwrap_or(c.length_penalty);
        })?;
        let started = Instant::now();
        let hyps = run.caption_pixels(&pixels, &cfg)?;
        let name = if beam == 1 {
            "greedy".to_string()
        } else {
            format!("beam {beam}")
        };
        score(name, hyps, started.elapsed().as_secs_f64())?;
    }

    let search_run = opts
        .search_run
        .clone()
        .or_else(|| config.eval.search_run.clone());
    if let Some(sr) = &search_run {
        let started = Instant::now();
        let hyps = nearest_titles::<B>(
            sr,
            catalog,
            [&train, &test],
            config,
            &mut report,
            quiet,
            device,
        )?;
        score(
            "nearest neighbour".into(),
            hyps,
            started.elapsed().as_secs_f64(),
        )?;
    }

    let examples = test
        .iter()
        .take(config.eval.examples)
        .enumerate()
        .map(|(r, &i)| CaptionExample {
            id: catalog.items[i].id.clone(),
            reference: title(i),
            captions: captions.iter().map(|c| c[r].clone()).collect(),
        })
        .collect();
    let out = CaptionEvalReport {
        run: run_path.display().to_string(),
        test_images: test.len(),
        methods,
        baseline_search_run: search_run,
        examples,
    };
    run.dir.save_json(files::EVAL, &out)?;
    Ok(out)
}

/// The nearest-neighbour baseline: each test image gets the title of the most similar
/// training image under the search run `sr`'s encoder.
fn nearest_titles<B: Backend>(
    sr: &Path,
    catalog: &Catalog,
    [train, test]: [&[usize]; 2],
    config: &CaptionRunConfig,
    report: &mut LoadReport,
    quiet: bool,
    device: &B::Device,
) -> Result<Vec<String>> {
    let encoder = Encoder::<B>::load(sr, device).map_err(|e| {
        InferError::Invalid(format!(
            "nearest-neighbour baseline: search run {}: {e} (train one, e.g. \
             `vitrine train --config configs/search-fashion-products.toml`, and pass \
             --search-run or set eval.search_run)",
            sr.display()
        ))
    })?;
    let limits = &config.data.limits;
    let (_, gallery) =
        encoder.embed_items(catalog, train, limits, false, report, "embed train", quiet)?;
    let (_, queries) =
        encoder.embed_items(catalog, test, limits, false, report, "embed test", quiet)?;
    let dim = encoder.config.model.embed_dim();
    Ok(nearest(&queries, &gallery, dim)
        .into_iter()
        .map(|j| catalog.items[train[j]].title.clone().unwrap_or_default())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_picks_the_most_similar_row() {
        let gallery = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let queries = [0.0, 1.0, 0.8, 0.6, 1.0, 0.0];
        assert_eq!(nearest(&queries, &gallery, 2), vec![1, 2, 0]);
    }
}
