//! Visual-search hot paths on the CPU backend: encoder inference (images/s) for the
//! Fashion-MNIST CNN and a small ViT, and exact top-10 cosine search (queries/s) over random
//! unit embeddings. `cargo bench --bench search`; medians of timed repeats after warm-up.

use std::time::Instant;

use burn::backend::flex::FlexDevice;
use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use vitrine_index::{DeviceIndex, Filter, Index, IndexItem, ModelInfo};
use vitrine_models::ImageEncoderConfig;

type B = Flex;

/// Median seconds of `reps` timed calls after one warm-up call.
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Deterministic pseudo-random values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn unit_rows(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut v = noise(rows * dim, seed);
    for r in v.chunks_mut(dim) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|x| *x /= n);
    }
    v
}

fn encoder_throughput(name: &str, model_toml: &str) {
    let config: ImageEncoderConfig = toml::from_str(model_toml).expect("bench model config");
    let device = FlexDevice;
    let encoder = config.init::<B>(&device).expect("init encoder");
    let [c, h, w] = config.input_shape();
    for batch in [1usize, 32, 128] {
        let data = TensorData::new(noise(batch * c * h * w, 7), [batch, c, h, w]);
        let images = Tensor::<B, 4>::from_data(data, &device);
        let reps = if batch == 1 { 50 } else { 10 };
        let secs = median_secs(reps, || {
            let out = encoder.forward(images.clone());
            let _ = out.into_data();
        });
        println!(
            "encoder {name:<14} batch {batch:>4}: {:>9.0} images/s  ({:.2} ms/batch)",
            batch as f64 / secs,
            secs * 1e3
        );
    }
}

fn search_throughput(rows: usize, dim: usize) {
    let device = FlexDevice;
    let mut index = Index::new(dim, ModelInfo::default());
    let embeddings = unit_rows(rows, dim, 1);
    let start = Instant::now();
    for (r, e) in embeddings.chunks(dim).enumerate() {
        let item = IndexItem {
            id: r.to_string(),
            attrs: Default::default(),
        };
        index.add(item, e).expect("add");
    }
    let on_device = DeviceIndex::<B>::new(&index, &device);
    println!(
        "index  {rows:>8} x {dim}: built in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let filter = Filter::default();
    for batch in [1usize, 64] {
        let queries = unit_rows(batch, dim, 2);
        let secs = median_secs(10, || {
            let hits = on_device
                .search(&index, &queries, 10, 10, &filter)
                .expect("search");
            assert_eq!(hits.len(), batch);
        });
        println!(
            "search {rows:>8} x {dim} top-10, {batch:>3} queries/call: {:>9.0} queries/s  ({:.2} ms/call)",
            batch as f64 / secs,
            secs * 1e3
        );
    }
}

fn main() {
    // The shipped Fashion-MNIST recipe's encoder.
    encoder_throughput(
        "cnn-fmnist",
        r#"arch = "cnn"
in_channels = 1
input_size = [28, 28]
widths = [16, 32, 64]
depths = [0, 0, 0]
downsample = "max-pool"
norm = "none"
head_pool = "flatten"
embed_dim = 128"#,
    );
    encoder_throughput(
        "vit-tiny-32px",
        r#"arch = "vit"
in_channels = 3
input_size = [32, 32]
patch_size = 4
d_model = 96
n_layers = 4
n_heads = 3
embed_dim = 128"#,
    );
    search_throughput(100_000, 256);
}
