//! `vitrine eval search`: embeds the run's query and gallery sets and reports Recall@K and
//! mAP@R, relevant = same label. Queries are the config's `queries` catalogue (gallery =
//! the whole training catalogue) or else the run's held-out ids (gallery = the rest).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use vitrine_models::Precision;

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_data::catalog::{Catalog, LoadReport};
use vitrine_infer::run::files;
use vitrine_infer::search::{open_and_split, Encoder};
use vitrine_infer::{InferError, Result};

use crate::retrieval::{evaluate_retrieval, RetrievalMetrics};

#[derive(Debug, Clone, Serialize)]
pub struct SearchEvalReport {
    pub run: String,
    pub protocol: String,
    pub label_column: Option<String>,
    pub metrics: RetrievalMetrics,
    pub skipped_items: usize,
    pub embed_secs: f64,
    /// Float type the encoder ran in.
    pub precision: Precision,
}

impl SearchEvalReport {
    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} ({} queries, {} gallery, encoder in {})\n",
            self.protocol, self.metrics.queries, self.metrics.gallery, self.precision
        );
        s.push_str("| metric | value |\n|---|---|\n");
        for (k, r) in &self.metrics.recall {
            s.push_str(&format!("| Recall@{k} | {r:.4} |\n"));
        }
        s.push_str(&format!("| mAP@R | {:.4} |\n", self.metrics.map_at_r));
        if self.metrics.queries_without_relevant > 0 {
            s.push_str(&format!(
                "({} queries have no relevant gallery item and are not counted)\n",
                self.metrics.queries_without_relevant
            ));
        }
        s
    }
}

/// Labels as dense ids shared by queries and gallery.
fn label_ids(
    catalog: &Catalog,
    items: &[usize],
    ids: &mut BTreeMap<String, u32>,
) -> Result<Vec<u32>> {
    items
        .iter()
        .map(|&i| {
            let item = &catalog.items[i];
            let label = item.label.as_ref().ok_or_else(|| {
                InferError::Invalid(format!(
                    "item {:?} (row {}) has no label: set data.label_column",
                    item.id, item.row
                ))
            })?;
            let next = ids.len() as u32;
            Ok(*ids.entry(label.clone()).or_insert(next))
        })
        .collect()
}

/// Where `eval_search` saves its report in the run: `eval.json`, or `eval-f16.json` /
/// `eval-bf16.json` for a half-precision encoder, so the f32 figures stay.
pub fn search_eval_file(precision: Precision) -> String {
    match precision {
        Precision::F32 => files::EVAL.into(),
        p => format!("eval-{p}.json"),
    }
}

pub fn eval_search<B: Backend>(
    run: &Path,
    device: &B::Device,
    skip_bad: bool,
    quiet: bool,
    precision: Precision,
) -> Result<SearchEvalReport> {
    let mut encoder = Encoder::<B>::load(run, device)?;
    encoder.model = precision.apply(encoder.model);
    let config = &encoder.config;
    let started = Instant::now();
    let prepared = open_and_split(config, skip_bad)?;
    let mut report: LoadReport = prepared.report;
    let dim = config.model.embed_dim();
    let limits = &config.data.limits;
    let embed = |catalog: &Catalog, items: &[usize], what: &str, report: &mut LoadReport| {
        encoder.embed_items(catalog, items, limits, skip_bad, report, what, quiet)
    };
    let mut labels = BTreeMap::new();
    let (protocol, q_emb, q_labels, g_emb, g_labels) = if let Some(qcfg) = &config.queries {
        let (qcat, qrep) = Catalog::open(qcfg, skip_bad)?;
        report.skipped += qrep.skipped;
        let all_g: Vec<usize> = (0..prepared.catalog.len()).collect();
        let all_q: Vec<usize> = (0..qcat.len()).collect();
        let (g_kept, g_emb) = embed(&prepared.catalog, &all_g, "gallery", &mut report)?;
        let (q_kept, q_emb) = embed(&qcat, &all_q, "queries", &mut report)?;
        let g_labels = label_ids(&prepared.catalog, &g_kept, &mut labels)?;
        let q_labels = label_ids(&qcat, &q_kept, &mut labels)?;
        (
            "query set vs. training catalogue".to_string(),
            q_emb,
            q_labels,
            g_emb,
            g_labels,
        )
    } else if !prepared.holdout.is_empty() {
        let (g_kept, g_emb) = embed(&prepared.catalog, &prepared.train, "gallery", &mut report)?;
        let (q_kept, q_emb) = embed(&prepared.catalog, &prepared.holdout, "queries", &mut report)?;
        let g_labels = label_ids(&prepared.catalog, &g_kept, &mut labels)?;
        let q_labels = label_ids(&prepared.catalog, &q_kept, &mut labels)?;
        (
            format!(
                "held-out {:.0}% of ids vs. the rest",
                config.split.holdout_fraction * 100.0
            ),
            q_emb,
            q_labels,
            g_emb,
            g_labels,
        )
    } else {
        return Err(InferError::Invalid(
            "the run has no evaluation split: set `queries` or `split.holdout_fraction` in its config".into(),
        ));
    };
    let embed_secs = started.elapsed().as_secs_f64();
    let metrics = evaluate_retrieval::<B>(
        &q_emb,
        &q_labels,
        &g_emb,
        &g_labels,
        dim,
        &config.eval.ks,
        false,
        device,
    )
    .map_err(|e| InferError::Invalid(e.to_string()))?;
    let out = SearchEvalReport {
        run: run.display().to_string(),
        protocol,
        label_column: config.data.label_column.clone(),
        metrics,
        skipped_items: report.skipped,
        embed_secs,
        precision,
    };
    encoder.run.save_json(&search_eval_file(precision), &out)?;
    Ok(out)
}
