//! hnsw_rs (the other Rust HNSW library the ANN issue names) on the files of
//! scripts/ann_data.py, single-threaded, batch 1: build time, recall@10 and queries/s per
//! efSearch, the fastest of 3 passes. Prints one JSON report like ann_faiss.py's points.
//!   cargo run --release --manifest-path scripts/peers/hnsw_rs/Cargo.toml -- runs/ann/index 10,12,16,24,32
use hnsw_rs::prelude::*;
use std::time::Instant;

fn read_vecs(path: &str) -> Vec<Vec<u32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let d = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let row = bytes[at + 4..at + 4 + 4 * d]
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.push(row);
        at += 4 + 4 * d;
    }
    out
}

fn floats(rows: Vec<Vec<u32>>) -> Vec<Vec<f32>> {
    rows.into_iter()
        .map(|r| r.into_iter().map(f32::from_bits).collect())
        .collect()
}

fn run<D: Distance<f32> + Send + Sync>(dir: &str, efs: &[usize], dist: D, metric: &str) {
    let base = floats(read_vecs(&format!("{dir}/base.fvecs")));
    let queries = floats(read_vecs(&format!("{dir}/queries.fvecs")));
    let truth = read_vecs(&format!("{dir}/truth.ivecs"));
    let t0 = Instant::now();
    // M = 32 (hnsw_rs keeps 2 M links on layer 0, like faiss and USearch), efConstruction 128.
    let mut hnsw = Hnsw::<f32, D>::new(32, base.len(), 16, 128, dist);
    let data: Vec<(&Vec<f32>, usize)> = base.iter().zip(0..).collect();
    hnsw.parallel_insert(&data);
    hnsw.set_searching_mode(true);
    let build_s = t0.elapsed().as_secs_f64();
    let mut points = Vec::new();
    for &ef in efs {
        let mut found = vec![Vec::new(); queries.len()];
        let mut best = 0f64;
        for _ in 0..3 {
            let t = Instant::now();
            for (q, f) in queries.iter().zip(found.iter_mut()) {
                *f = hnsw.search(q, 10, ef).iter().map(|n| n.d_id).collect::<Vec<_>>();
            }
            best = best.max(queries.len() as f64 / t.elapsed().as_secs_f64());
        }
        let hit: usize = found
            .iter()
            .zip(&truth)
            .map(|(f, t)| f.iter().filter(|i| t[..10].contains(&(**i as u32))).count())
            .sum();
        let recall = hit as f64 / (10 * queries.len()) as f64;
        eprintln!("hnsw_rs: ef {ef:>4}  recall@10 {recall:.4}  {best:>9.0} q/s");
        points.push(format!(
            "{{\"ef\": {ef}, \"recall\": {recall}, \"threads\": 1, \"batch\": 1, \"qps\": {best}}}"
        ));
    }
    println!(
        "{{\"engine\": \"hnsw_rs 0.3.5\", \"metric\": \"{metric}\", \"base\": {}, \"queries\": {}, \"k\": 10, \"connectivity\": 32, \"expansion_add\": 128, \"build_s\": {build_s}, \"points\": [{}]}}",
        base.len(),
        queries.len(),
        points.join(", ")
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).expect("usage: hnsw-rs-peer DATA_DIR [EF,EF,…]");
    let efs: Vec<usize> = args
        .get(2)
        .map(|s| s.split(',').map(|x| x.parse().expect("efSearch")).collect())
        .unwrap_or_else(|| vec![10, 12, 16, 24, 32, 48, 64]);
    let meta = std::fs::read_to_string(format!("{dir}/meta.json")).expect("meta.json");
    if meta.contains("\"cosine\"") {
        // Unit vectors: 1 - dot orders like cosine distance.
        run(dir, &efs, DistDot, "cosine");
    } else {
        run(dir, &efs, DistL2, "l2");
    }
}
