//! Exact cosine top-k on a Burn device. Embeddings are L2-normalised, so cosine similarity
//! is one matrix product; filters select the allowed rows before the product, so results
//! are exact, never post-filtered.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;

use crate::{Filter, Index, IndexError, Result};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub row: usize,
    pub id: String,
    pub score: f32,
}

/// The index's embeddings resident on a device, [len, dim].
pub struct DeviceIndex<B: Backend> {
    embeddings: Option<Tensor<B, 2>>,
    device: B::Device,
    selection: Selection,
}

/// Where the top-k of each query's score row is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// One pass over the scores on the host (O(n) per query). Best on the CPU backend, whose
    /// `topk` sorts each row: 64 queries over 1M rows took 2.3 s that way, 0.45 s this way.
    Host,
    /// The backend's `topk`, then only k scores per query leave the device. Best on a GPU,
    /// where copying the whole [queries, rows] score matrix to the host would dominate.
    Device,
}

impl<B: Backend> DeviceIndex<B> {
    /// Host selection on the CPU backend, device selection elsewhere.
    pub fn new(index: &Index, device: &B::Device) -> Self {
        let selection = if B::name(device).contains("flex") {
            Selection::Host
        } else {
            Selection::Device
        };
        Self::with_selection(index, device, selection)
    }

    pub fn with_selection(index: &Index, device: &B::Device, selection: Selection) -> Self {
        let embeddings = (!index.is_empty()).then(|| {
            Tensor::from_data(
                TensorData::new(index.embeddings().to_vec(), [index.len(), index.dim]),
                device,
            )
        });
        Self {
            embeddings,
            device: device.clone(),
            selection,
        }
    }

    /// Top-k rows for each query (row-major [q, dim]), best first. `max_k` is the caller's
    /// configured limit on k. Fewer than k hits come back when fewer rows pass the filter.
    pub fn search(
        &self,
        index: &Index,
        queries: &[f32],
        k: usize,
        max_k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<Hit>>> {
        if k == 0 || k > max_k {
            return Err(IndexError::BadK { k, max: max_k });
        }
        if !queries.len().is_multiple_of(index.dim) || queries.is_empty() {
            return Err(IndexError::Dim {
                got: queries.len() % index.dim.max(1),
                expected: index.dim,
            });
        }
        let n_queries = queries.len() / index.dim;
        let Some(all) = &self.embeddings else {
            return Err(IndexError::Empty);
        };
        let allowed = filter.allowed_rows(index)?;
        let (candidates, rows): (Tensor<B, 2>, Option<Vec<usize>>) = match allowed {
            None => (all.clone(), None),
            Some(rows) if rows.is_empty() => return Ok(vec![Vec::new(); n_queries]),
            Some(rows) => {
                let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                let ids = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(ids, [rows.len()]),
                    &self.device,
                );
                (all.clone().select(0, ids), Some(rows))
            }
        };
        let n = candidates.dims()[0];
        let k = k.min(n);
        let q = Tensor::<B, 2>::from_data(
            TensorData::new(queries.to_vec(), [n_queries, index.dim]),
            &self.device,
        );
        // [q, dim] x [dim, n] -> [q, n] on the device, then top-k along the candidates.
        let scores = q.matmul(candidates.transpose());
        let read = |what: &str, e| IndexError::Backend(format!("reading {what}: {e:?}"));
        let picked: Vec<Vec<(usize, f32)>> = match self.selection {
            Selection::Host => {
                let scores: Vec<f32> = scores
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .map_err(|e| read("scores", e))?;
                scores.chunks(n).map(|row| top_k(row, k)).collect()
            }
            Selection::Device => {
                let (values, indices) = scores.topk_with_indices(k, 1);
                let values: Vec<f32> = values
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .map_err(|e| read("scores", e))?;
                let indices: Vec<i64> = indices.into_data().iter::<i64>().collect();
                (0..n_queries)
                    .map(|qi| {
                        (qi * k..(qi + 1) * k)
                            .map(|j| (indices[j] as usize, values[j]))
                            .collect()
                    })
                    .collect()
            }
        };
        let mut out = Vec::with_capacity(n_queries);
        for hits in picked {
            let hits = hits
                .into_iter()
                .map(|(local, score)| {
                    let row = rows.as_ref().map_or(local, |r| r[local]);
                    let id = index.item(row).map(|it| it.id.clone()).unwrap_or_default();
                    Hit { row, id, score }
                })
                .collect();
            out.push(hits);
        }
        Ok(out)
    }
}

/// The `k` largest values of `scores` as (position, value), best first; ties keep the lower
/// position first. NaN never ranks.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &v) in scores.iter().enumerate() {
        // Strictly greater than the current k-th: an equal later value loses the tie.
        if v.is_nan() || (best.len() == k && v <= best[k - 1].1) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= v);
        best.insert(at, (i, v));
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::small;
    use burn::backend::Flex;

    type B = Flex;

    #[test]
    fn exact_top_k_best_first() {
        let ix = small();
        let dev = Default::default();
        let d = DeviceIndex::<B>::new(&ix, &dev);
        let hits = d
            .search(&ix, &[1.0, 0.0, 0.0, 1.0], 2, 100, &Filter::default())
            .unwrap();
        assert_eq!(hits.len(), 2);
        assert_eq!(
            hits[0].iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert!((hits[0][1].score - 0.6).abs() < 1e-6);
        assert_eq!(
            hits[1].iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
    }

    #[test]
    fn filters_apply_before_top_k() {
        let ix = small();
        let dev = Default::default();
        let d = DeviceIndex::<B>::new(&ix, &dev);
        // Query closest to "b" (blue) but only red rows allowed: both reds, in order.
        let red = Filter::parse(&["colour=red"]).unwrap();
        let hits = d.search(&ix, &[0.0, 1.0], 5, 100, &red).unwrap();
        let ids: Vec<_> = hits[0].iter().map(|h| (h.id.as_str(), h.row)).collect();
        assert_eq!(ids, [("c", 2), ("a", 0)]);
        let none = Filter::parse(&["colour=green"]).unwrap();
        assert!(d.search(&ix, &[0.0, 1.0], 5, 100, &none).unwrap()[0].is_empty());
    }

    #[test]
    fn host_and_device_selection_agree() {
        let mut ix = Index::new(8, Default::default());
        let mut x = 11u64;
        for r in 0..300 {
            let mut e: Vec<f32> = (0..8)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((x >> 40) % 1000) as f32 / 500.0 - 1.0
                })
                .collect();
            let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
            e.iter_mut().for_each(|v| *v /= norm);
            let item = crate::IndexItem {
                id: r.to_string(),
                attrs: Default::default(),
            };
            ix.add(item, &e).unwrap();
        }
        let dev = Default::default();
        let host = DeviceIndex::<B>::with_selection(&ix, &dev, Selection::Host);
        let device = DeviceIndex::<B>::with_selection(&ix, &dev, Selection::Device);
        assert_eq!(DeviceIndex::<B>::new(&ix, &dev).selection, Selection::Host);
        let queries: Vec<f32> = ix.embeddings()[..3 * 8].to_vec();
        let a = host
            .search(&ix, &queries, 7, 10, &Filter::default())
            .unwrap();
        let b = device
            .search(&ix, &queries, 7, 10, &Filter::default())
            .unwrap();
        for (qa, qb) in a.iter().zip(&b) {
            let ids = |h: &[Hit]| h.iter().map(|h| h.id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(qa), ids(qb));
        }
        assert_eq!(a.len(), 3);
        assert_eq!(a[0][0].id, "0", "a stored row is its own nearest neighbour");
    }

    #[test]
    fn top_k_matches_a_full_stable_sort() {
        // Pseudo-random scores with many ties.
        let mut x = 7u64;
        let scores: Vec<f32> = (0..5000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % 200) as f32 / 10.0 - 10.0
            })
            .collect();
        let mut sorted: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1)); // stable: lower position first on ties
        for k in [1, 2, 10, 137, 5000, 6000] {
            let want: Vec<_> = sorted.iter().copied().take(k).collect();
            assert_eq!(top_k(&scores, k), want, "k = {k}");
        }
        assert!(top_k(&scores, 0).is_empty());
        assert_eq!(top_k(&[1.0, f32::NAN, 3.0], 3), vec![(2, 3.0), (0, 1.0)]);
        assert_eq!(
            top_k(&[-1.0, f32::NEG_INFINITY], 5),
            vec![(0, -1.0), (1, f32::NEG_INFINITY)]
        );
    }

    #[test]
    fn k_limits_at_and_past() {
        let ix = small();
        let dev = Default::default();
        let d = DeviceIndex::<B>::new(&ix, &dev);
        assert_eq!(
            d.search(&ix, &[1.0, 0.0], 3, 3, &Filter::default())
                .unwrap()[0]
                .len(),
            3
        );
        assert!(matches!(
            d.search(&ix, &[1.0, 0.0], 4, 3, &Filter::default()),
            Err(IndexError::BadK { k: 4, max: 3 })
        ));
        assert!(matches!(
            d.search(&ix, &[1.0, 0.0], 0, 3, &Filter::default()),
            Err(IndexError::BadK { .. })
        ));
        assert!(matches!(
            d.search(&ix, &[1.0, 0.0, 1.0], 1, 3, &Filter::default()),
            Err(IndexError::Dim { .. })
        ));
    }
}
