//! Retrieval metrics for a query/gallery split where "relevant" means "same label".
//!
//! - Recall@K: fraction of queries with at least one relevant item among the top K (the
//!   definition used in the metric-learning literature, e.g. ProxyAnchor).
//! - mAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020): with R the number of
//!   relevant gallery items of a query, AP@R = (1/R) sum_{i<=R} P@i * rel(i) over the top R.
//!
//! Similarities are computed on the device in query chunks; ranking is done here, in plain
//! Rust, by partial selection (O(G) per query) rather than a full sort.
//! Ties are broken by gallery index, so results are deterministic.

use std::cmp::Ordering;
use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum EvalError {
    #[error("{what} has {got} labels for {expected} embeddings")]
    LabelCount {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("query and gallery embeddings differ in dimension ({query} vs {gallery})")]
    Dim { query: usize, gallery: usize },
    #[error("empty {0}")]
    Empty(&'static str),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    /// (K, Recall@K)
    pub recall: Vec<(usize, f64)>,
    pub map_at_r: f64,
    pub queries: usize,
    pub gallery: usize,
    /// Queries whose label has no relevant gallery item (excluded from both metrics).
    pub queries_without_relevant: usize,
}

impl RetrievalMetrics {
    pub fn recall_at(&self, k: usize) -> Option<f64> {
        self.recall.iter().find(|(kk, _)| *kk == k).map(|(_, r)| *r)
    }
}

/// Per-query accumulator of Recall@K and mAP@R, for rankings scored any way (the device
/// path below, BM25, mixed queries).
pub struct Accumulator {
    ks: Vec<usize>,
    hits: Vec<usize>,
    ap_sum: f64,
    counted: usize,
    skipped: usize,
}

impl Accumulator {
    pub fn new(ks: &[usize]) -> Self {
        Self {
            ks: ks.to_vec(),
            hits: vec![0; ks.len()],
            ap_sum: 0.0,
            counted: 0,
            skipped: 0,
        }
    }

    /// `scores`: similarities of one query to every gallery item. `r`: relevant count
    /// (`exclude`, the query's own item, not counted in it).
    pub fn add(
        &mut self,
        scores: &[f32],
        relevant: impl Fn(usize) -> bool,
        r: usize,
        exclude: Option<usize>,
    ) {
        if r == 0 {
            self.skipped += 1;
            return;
        }
        let max_k = self.ks.iter().copied().max().unwrap_or(1);
        let mut order: Vec<usize> = (0..scores.len()).filter(|&g| Some(g) != exclude).collect();
        let depth = r.max(max_k).min(order.len());
        let cmp = |a: &usize, b: &usize| {
            scores[*b]
                .partial_cmp(&scores[*a])
                .unwrap_or(Ordering::Equal)
                .then(a.cmp(b))
        };
        if depth < order.len() {
            order.select_nth_unstable_by(depth, cmp);
            order.truncate(depth);
        }
        order.sort_unstable_by(cmp);
        for (i, &k) in self.ks.iter().enumerate() {
            if order.iter().take(k).any(|&g| relevant(g)) {
                self.hits[i] += 1;
            }
        }
        let mut found = 0usize;
        let mut ap = 0.0f64;
        for (rank, &g) in order.iter().take(r).enumerate() {
            if relevant(g) {
                found += 1;
                ap += found as f64 / (rank + 1) as f64;
            }
        }
        self.ap_sum += ap / r as f64;
        self.counted += 1;
    }

    pub fn finish(self, queries: usize, gallery: usize) -> RetrievalMetrics {
        let n = self.counted.max(1) as f64;
        RetrievalMetrics {
            recall: self
                .ks
                .iter()
                .zip(&self.hits)
                .map(|(&k, &h)| (k, h as f64 / n))
                .collect(),
            map_at_r: self.ap_sum / n,
            queries,
            gallery,
            queries_without_relevant: self.skipped,
        }
    }
}

/// Evaluates L2-normalised query embeddings [Q, D] against gallery embeddings [G, D].
/// `same_set`: queries are the gallery itself (leave-one-out: each query's own row is
/// excluded from its ranking and from R).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_retrieval<B: Backend>(
    queries: &[f32],
    query_labels: &[u32],
    gallery: &[f32],
    gallery_labels: &[u32],
    dim: usize,
    ks: &[usize],
    same_set: bool,
    device: &B::Device,
) -> Result<RetrievalMetrics, EvalError> {
    let nq = query_labels.len();
    let ng = gallery_labels.len();
    if nq == 0 {
        return Err(EvalError::Empty("query set"));
    }
    if ng == 0 {
        return Err(EvalError::Empty("gallery"));
    }
    if queries.len() != nq * dim {
        return Err(EvalError::LabelCount {
            what: "query set",
            got: nq,
            expected: queries.len() / dim.max(1),
        });
    }
    if gallery.len() != ng * dim {
        return Err(EvalError::LabelCount {
            what: "gallery",
            got: ng,
            expected: gallery.len() / dim.max(1),
        });
    }
    let mut label_count: HashMap<u32, usize> = HashMap::new();
    for &l in gallery_labels {
        *label_count.entry(l).or_default() += 1;
    }
    let g =
        Tensor::<B, 2>::from_data(TensorData::new(gallery.to_vec(), [ng, dim]), device).transpose();
    let mut acc = Accumulator::new(ks);
    // Bound device memory: chunk * G floats per product.
    let chunk = (16_000_000 / ng).clamp(1, 1024);
    for start in (0..nq).step_by(chunk) {
        let end = (start + chunk).min(nq);
        let q = Tensor::<B, 2>::from_data(
            TensorData::new(queries[start * dim..end * dim].to_vec(), [end - start, dim]),
            device,
        );
        let sims: Vec<f32> = q.matmul(g.clone()).into_data().iter::<f32>().collect();
        for (i, row) in sims.chunks_exact(ng).enumerate() {
            let qi = start + i;
            let label = query_labels[qi];
            let exclude = same_set.then_some(qi);
            let r = label_count
                .get(&label)
                .copied()
                .unwrap_or(0)
                .saturating_sub(usize::from(same_set));
            acc.add(row, |gi| gallery_labels[gi] == label, r, exclude);
        }
    }
    Ok(acc.finish(nq, ng))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    /// Hand-made example with a known answer.
    /// Gallery (1-D embeddings are unit vectors in 2-D): g0=(1,0) label 0, g1=(0,1) label 1,
    /// g2=(0.8,0.6) label 1, g3=(0.6,0.8) label 0.
    /// Query q=(1,0) label 0: ranking by cosine g0 (1.0), g2 (0.8), g3 (0.6), g1 (0.0).
    /// Relevant: g0, g3 -> R = 2. Top-2 = [g0, g2]: AP@R = (1/2)(1/1) = 0.5.
    /// Recall@1 = 1 (g0 relevant).
    /// Query q=(0,1) label 0: ranking g1 (1.0), g3 (0.8), g2 (0.6), g0 (0). R = 2, top-2 =
    /// [g1, g3]: AP@R = (1/2)(1/2) = 0.25. Recall@1 = 0, Recall@2 = 1.
    #[test]
    fn known_answer() {
        let gallery = [1.0, 0.0, 0.0, 1.0, 0.8, 0.6, 0.6, 0.8];
        let gl = [0, 1, 1, 0];
        let queries = [1.0, 0.0, 0.0, 1.0];
        let ql = [0, 0];
        let m = evaluate_retrieval::<B>(
            &queries,
            &ql,
            &gallery,
            &gl,
            2,
            &[1, 2],
            false,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(m.recall_at(1), Some(0.5));
        assert_eq!(m.recall_at(2), Some(1.0));
        assert!((m.map_at_r - 0.375).abs() < 1e-12, "{}", m.map_at_r);
    }

    #[test]
    fn leave_one_out_excludes_self() {
        // Every item's nearest other item has a different label -> Recall@1 = 0.
        let emb = [1.0, 0.0, 0.99, 0.141, 0.0, 1.0, 0.141, 0.99];
        let labels = [0, 1, 0, 1];
        let m = evaluate_retrieval::<B>(
            &emb,
            &labels,
            &emb,
            &labels,
            2,
            &[1],
            true,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(m.recall_at(1), Some(0.0));
        assert_eq!(m.queries_without_relevant, 0);
    }

    #[test]
    fn labels_without_relevant_items_are_reported_not_counted() {
        let m = evaluate_retrieval::<B>(
            &[1.0, 1.0],
            &[7, 0],
            &[1.0],
            &[0],
            1,
            &[1],
            false,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(m.queries_without_relevant, 1);
        assert_eq!(m.recall_at(1), Some(1.0));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let d = Default::default();
        assert_eq!(
            evaluate_retrieval::<B>(&[], &[], &[1.0], &[0], 1, &[1], false, &d),
            Err(EvalError::Empty("query set"))
        );
        assert!(
            evaluate_retrieval::<B>(&[1.0, 2.0], &[0], &[1.0], &[0], 1, &[1], false, &d).is_err()
        );
    }
}
