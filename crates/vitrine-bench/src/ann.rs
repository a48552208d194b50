//! Approximate-search benchmark on vector files (`.fvecs`), against the exact neighbours
//! in an `.ivecs` file: build time and memory of the HNSW graph, then recall@k and
//! queries/s for each search breadth, at batch 1 and 64, on 1 and 2 threads; with
//! `filters`, the filtered searches' recall against exact filtered search.
//! `scripts/bench-ann.sh` prepares the data and runs the faiss peer on the same files.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_index::{
    AnnConfig, AnnIndex, DeviceIndex, Filter, Index, IndexItem, Metric, Route, Searcher,
};

#[derive(Debug, thiserror::Error)]
pub enum AnnBenchError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Index(#[from] vitrine_index::IndexError),
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, AnnBenchError>;

/// Vectors of an `.fvecs` (f32) or `.ivecs` (i32) file: (rows, dim, values).
fn read_vecs<T>(path: &Path, conv: fn([u8; 4]) -> T) -> Result<(usize, usize, Vec<T>)> {
    let bad = |reason: String| AnnBenchError::File {
        path: path.display().to_string(),
        reason,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| bad(e.to_string()))?;
    if bytes.len() < 4 {
        return Err(bad("empty".into()));
    }
    let dim = i32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    if dim <= 0 {
        return Err(bad(format!("dimension {dim}")));
    }
    let dim = dim as usize;
    let row = 4 + 4 * dim;
    if !bytes.len().is_multiple_of(row) {
        return Err(bad(format!(
            "{} bytes is not a whole number of {dim}-d rows",
            bytes.len()
        )));
    }
    let n = bytes.len() / row;
    let mut out = Vec::with_capacity(n * dim);
    for r in 0..n {
        let at = r * row;
        if bytes[at..at + 4] != (dim as i32).to_le_bytes() {
            return Err(bad(format!("row {r} has another dimension")));
        }
        for c in 0..dim {
            let o = at + 4 + 4 * c;
            out.push(conv(bytes[o..o + 4].try_into().expect("4 bytes")));
        }
    }
    Ok((n, dim, out))
}

#[derive(Debug, Clone)]
pub struct AnnBenchConfig {
    pub metric: Metric,
    pub k: usize,
    pub graph: AnnConfig,
    /// Search breadths to sweep.
    pub efs: Vec<usize>,
    pub threads: Vec<usize>,
    pub batches: Vec<usize>,
    /// Queries timed per setting (from the start of the query file; 0: all).
    pub max_queries: usize,
    /// Passes per setting; the fastest is reported.
    pub repeat: usize,
    /// Shares of the items that filters pass (0.5, 0.05, 0.005); cosine only.
    pub filters: Vec<f64>,
    /// Queries per filtered measurement (the first ones; 0: all).
    pub filter_queries: usize,
}

#[derive(Debug, Serialize)]
pub struct AnnPoint {
    pub ef: usize,
    pub recall: f64,
    pub threads: usize,
    pub batch: usize,
    pub qps: f64,
}

#[derive(Debug, Serialize)]
pub struct FilterPoint {
    pub share: f64,
    pub items_passing: usize,
    pub route: String,
    pub ef: usize,
    pub recall: f64,
    pub qps: f64,
}

#[derive(Debug, Serialize)]
pub struct AnnReport {
    pub engine: String,
    /// SIMD kernels in use, and the stored scalar type.
    pub hardware: String,
    pub quantization: vitrine_index::Quantization,
    /// Candidates per result rescored with f32 vectors (quantised graphs; 0: none).
    pub rescore: f64,
    /// Whether the graph asked for huge pages, and the system's THP mode.
    pub huge_pages: bool,
    pub thp: Option<String>,
    pub base: usize,
    pub dim: usize,
    pub queries: usize,
    pub metric: Metric,
    pub k: usize,
    /// Passes per point, the fastest reported.
    pub repeat: usize,
    pub connectivity: usize,
    pub expansion_add: usize,
    pub build_threads: usize,
    pub build_s: f64,
    pub graph_memory_mb: f64,
    pub points: Vec<AnnPoint>,
    pub filtered: Vec<FilterPoint>,
}

fn recall(found: &[Vec<u64>], truth: &[i32], k: usize, truth_k: usize) -> f64 {
    let mut hit = 0usize;
    for (q, f) in found.iter().enumerate() {
        let want = &truth[q * truth_k..q * truth_k + k];
        hit += f
            .iter()
            .take(k)
            .filter(|&&key| want.contains(&(key as i32)))
            .count();
    }
    hit as f64 / (found.len() * k) as f64
}

/// Runs `queries` on `threads` threads in groups of `batch`; returns (results per query,
/// queries/s). Batch 1: independent clients, each thread taking the next query. Larger
/// batches: one group at a time, its queries shared out the same way (dynamic scheduling,
/// so one slow query does not leave a thread idle), all threads meeting at a barrier
/// before the next group. The threads start once per pass, as faiss's OpenMP pool is up
/// before its timer starts, so a group costs two barrier waits, not thread starts.
fn timed(
    ann: &AnnIndex,
    base: &[f32],
    queries: &[f32],
    dim: usize,
    k: usize,
    threads: usize,
    batch: usize,
) -> Result<(Vec<Vec<u64>>, f64)> {
    let n = queries.len() / dim;
    let batch = if batch <= 1 { n.max(1) } else { batch };
    let threads = threads.max(1);
    let search = |q: usize| -> Result<Vec<u64>> {
        let vector_of = |key: u64| base.get(key as usize * dim..(key as usize + 1) * dim);
        let hits = ann.search_rescored(&queries[q * dim..(q + 1) * dim], k, None, vector_of)?;
        Ok(hits.into_iter().map(|h| h.0).collect())
    };
    // The group being served: queries `next..end`; `end` = usize::MAX tells workers to stop.
    let next = AtomicUsize::new(0);
    let end = AtomicUsize::new(0);
    let open = Barrier::new(threads);
    let closed = Barrier::new(threads);
    let work = |mine: &mut Vec<(usize, Vec<u64>)>| -> Result<()> {
        let to = end.load(Ordering::Acquire);
        loop {
            let q = next.fetch_add(1, Ordering::Relaxed);
            if q >= to {
                return Ok(());
            }
            mine.push((q, search(q)?));
        }
    };
    let start = Instant::now();
    let parts: Vec<Vec<(usize, Vec<u64>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (1..threads)
            .map(|_| {
                s.spawn(|| -> Result<Vec<(usize, Vec<u64>)>> {
                    let mut mine = Vec::new();
                    let mut failed = None;
                    loop {
                        open.wait();
                        if end.load(Ordering::Acquire) == usize::MAX {
                            return failed.map_or(Ok(mine), Err);
                        }
                        if failed.is_none() {
                            failed = work(&mut mine).err();
                        }
                        closed.wait();
                    }
                })
            })
            .collect();
        let mut mine = Vec::new();
        let mut failed = None;
        for from in (0..n).step_by(batch) {
            next.store(from, Ordering::Relaxed);
            end.store((from + batch).min(n), Ordering::Release);
            open.wait();
            if failed.is_none() {
                failed = work(&mut mine).err();
            }
            closed.wait();
        }
        end.store(usize::MAX, Ordering::Release);
        open.wait();
        let mut parts = vec![failed.map_or(Ok(mine), Err)];
        parts.extend(
            workers
                .into_iter()
                .map(|h| h.join().expect("a query thread panicked")),
        );
        parts.into_iter().collect::<Result<Vec<_>>>()
    })?;
    let qps = n as f64 / start.elapsed().as_secs_f64();
    let mut found = vec![Vec::new(); n];
    for (q, f) in parts.into_iter().flatten() {
        found[q] = f;
    }
    Ok((found, qps))
}

/// The benchmark on `base` / `queries` / `truth` files; filtered searches run through
/// [`Searcher`] on `device`.
pub fn run_ann<B: Backend>(
    base: &Path,
    queries: &Path,
    truth: &Path,
    c: &AnnBenchConfig,
    device: &B::Device,
) -> Result<AnnReport> {
    let (n, dim, vectors) = read_vecs(base, f32::from_le_bytes)?;
    let (nq, qdim, mut qs) = read_vecs(queries, f32::from_le_bytes)?;
    let (nt, truth_k, truth) = read_vecs(truth, i32::from_le_bytes)?;
    if qdim != dim || nt != nq {
        return Err(AnnBenchError::Invalid(format!(
            "base is {dim}-d, queries {qdim}-d; {nq} queries but {nt} truth rows"
        )));
    }
    if c.k == 0 || c.k > truth_k {
        return Err(AnnBenchError::Invalid(format!(
            "k = {}: the truth file holds {truth_k} neighbours per query",
            c.k
        )));
    }
    let nq = if c.max_queries > 0 {
        nq.min(c.max_queries)
    } else {
        nq
    };
    qs.truncate(nq * dim);
    let keys: Vec<u64> = (0..n as u64).collect();
    eprintln!("bench-ann: building the graph over {n} x {dim}");
    let start = Instant::now();
    let mut ann = AnnIndex::build(&vectors, &keys, dim, c.metric, &c.graph)?;
    let build_s = start.elapsed().as_secs_f64();
    let mut points = Vec::new();
    for &ef in &c.efs {
        ann.set_expansion_search(ef);
        for &threads in &c.threads {
            for &batch in &c.batches {
                // The fastest of `repeat` passes; the results are the same each pass.
                let (found, mut qps) = timed(&ann, &vectors, &qs, dim, c.k, threads, batch)?;
                for _ in 1..c.repeat {
                    qps = qps.max(timed(&ann, &vectors, &qs, dim, c.k, threads, batch)?.1);
                }
                let r = recall(&found, &truth, c.k, truth_k);
                eprintln!("bench-ann: ef {ef:>4}  threads {threads}  batch {batch:>3}  recall@{} {r:.4}  {qps:>9.0} q/s", c.k);
                points.push(AnnPoint {
                    ef,
                    recall: r,
                    threads,
                    batch,
                    qps,
                });
            }
        }
    }
    let filtered = if c.filters.is_empty() {
        Vec::new()
    } else {
        filtered_recall::<B>(&vectors, dim, &qs, c, device)?
    };
    Ok(AnnReport {
        engine: vitrine_index::ann::engine(),
        hardware: ann.hardware(),
        quantization: c.graph.quantization,
        rescore: c.graph.rescore,
        huge_pages: c.graph.huge_pages,
        thp: vitrine_index::hugepages::system_mode(),
        base: n,
        dim,
        queries: nq,
        metric: c.metric,
        k: c.k,
        repeat: c.repeat,
        connectivity: c.graph.connectivity,
        expansion_add: c.graph.expansion_add,
        build_threads: c.graph.build_threads,
        build_s,
        graph_memory_mb: ann.memory_bytes() as f64 / (1 << 20) as f64,
        points,
        filtered,
    })
}

/// Filtered search through [`Searcher`] (the serving path) against exact filtered search,
/// for filters passing each share of the items (cosine: vectors are normalised first).
fn filtered_recall<B: Backend>(
    vectors: &[f32],
    dim: usize,
    queries: &[f32],
    c: &AnnBenchConfig,
    device: &B::Device,
) -> Result<Vec<FilterPoint>> {
    let unit = |v: &[f32]| {
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        v.iter().map(|a| a / n).collect::<Vec<f32>>()
    };
    // Bucket b of 1000 by a hash of the row; a filter on buckets < share*1000 passes that share.
    let bucket = |r: usize| (r as u64).wrapping_mul(0x9E3779B97F4A7C15) >> 54;
    let mut index = Index::new(dim, Default::default());
    for (r, v) in vectors.chunks(dim).enumerate() {
        let item = IndexItem {
            id: r.to_string(),
            attrs: [("bucket".to_string(), (bucket(r) % 1000).to_string())].into(),
        };
        index.add(item, &unit(v))?;
    }
    index.ann = Some(c.graph.clone());
    let mut searcher = Searcher::<B> {
        exact: DeviceIndex::<B>::new(&index, device),
        ann: Some(AnnIndex::for_index(&index, &c.graph)?),
    };
    let exact = DeviceIndex::<B>::new(&index, device);
    let take = match c.filter_queries {
        0 => queries.len(),
        n => (n * dim).min(queries.len()),
    };
    let qs: Vec<f32> = queries[..take].chunks(dim).flat_map(unit).collect();
    let nq = qs.len() / dim;
    let mut out = Vec::new();
    for &share in &c.filters {
        let mut filter = Filter::default();
        for b in 0..((share * 1000.0).round() as usize).max(1) {
            filter.add("bucket", &b.to_string());
        }
        let passing = filter.allowed_rows(&index)?.map_or(0, |r| r.len());
        let want = exact.search(&index, &qs, c.k, c.k, &filter)?;
        // The configured route, then (when that is exact) the graph's own filtered walk.
        let routes = [c.graph.filter_exact_below, 0.0];
        for (pass, &below) in routes.iter().enumerate() {
            if let Some(ann) = searcher.ann.as_mut() {
                ann.config.filter_exact_below = below;
            }
            if pass == 1 && searcher.route(&index, Some(passing)) == out_route(&out) {
                break; // the configured route was the graph already
            }
            for &ef in &c.efs {
                if let Some(ann) = searcher.ann.as_mut() {
                    ann.set_expansion_search(ef);
                }
                let route = searcher.route(&index, Some(passing));
                let start = Instant::now();
                let mut hit = 0;
                for (q, want) in qs.chunks(dim).zip(&want) {
                    let got = searcher.search(&index, q, c.k, c.k, &filter)?;
                    hit += got[0]
                        .iter()
                        .filter(|h| want.iter().any(|w| w.row == h.row))
                        .count();
                }
                let qps = nq as f64 / start.elapsed().as_secs_f64();
                let recall = hit as f64 / (nq * c.k) as f64;
                eprintln!("bench-ann: filter {share}  ({passing} items, {route:?})  ef {ef}  recall@{} {recall:.4}  {qps:.0} q/s", c.k);
                out.push(FilterPoint {
                    share,
                    items_passing: passing,
                    route: format!("{route:?}"),
                    ef,
                    recall,
                    qps,
                });
                if route != Route::GraphFiltered {
                    break; // exact: the breadth does not matter
                }
            }
        }
    }
    Ok(out)
}

/// The route of the last point measured.
fn out_route(out: &[FilterPoint]) -> Route {
    match out.last().map(|p| p.route.as_str()) {
        Some("GraphFiltered") => Route::GraphFiltered,
        _ => Route::ExactFiltered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitrine_index::{AnnConfig, Quantization};

    fn points(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n * dim)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect()
    }

    #[test]
    fn every_thread_and_batch_layout_answers_each_query_once() {
        let (dim, k) = (8, 5);
        let base = points(400, dim, 1);
        let keys: Vec<u64> = (0..400).collect();
        let config = AnnConfig {
            quantization: Quantization::Bf16,
            rescore: 1.5,
            ..Default::default()
        };
        let ann = AnnIndex::build(&base, &keys, dim, Metric::L2, &config).unwrap();
        // 23 queries: batches of 4 leave a short last one.
        let queries = points(23, dim, 2);
        let (want, _) = timed(&ann, &base, &queries, dim, k, 1, 1).unwrap();
        assert_eq!(want.len(), 23);
        assert!(want.iter().all(|f| f.len() == k));
        for (threads, batch) in [(2, 1), (1, 4), (2, 4), (3, 64)] {
            let (found, qps) = timed(&ann, &base, &queries, dim, k, threads, batch).unwrap();
            assert_eq!(found, want, "{threads} threads, batch {batch}");
            assert!(qps > 0.0);
        }
    }

    #[test]
    fn recall_counts_true_neighbours_among_the_first_k() {
        // Two queries, truth rows of 3; k = 2 looks at the first two of each.
        let truth = [4, 7, 9, 1, 2, 3];
        let found = vec![vec![7, 5], vec![3, 2]];
        assert_eq!(recall(&found, &truth, 2, 3), 0.5);
    }
}
