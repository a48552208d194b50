use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, Tensor};
use std::time::Instant;
use vitrine_models::cnn::*;
use vitrine_models::vit::*;
use vitrine_models::ImageEncoderConfig;

type B = Autodiff<Flex>;

fn probe(name: &str, cfg: ImageEncoderConfig, batch: usize) {
    let device = Default::default();
    let mut model = cfg.init::<B>(&device).unwrap();
    let mut optim = AdamWConfig::new().init();
    let [c, h, w] = cfg.input_shape();
    let x = Tensor::<B, 4>::random([batch, c, h, w], Distribution::Normal(0.0, 1.0), &device);
    let mut times = vec![];
    for i in 0..6 {
        let t = Instant::now();
        let z = model.forward(x.clone());
        let loss = z.clone().matmul(z.transpose()).mean();
        let g = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, g);
        if i > 0 { times.push(t.elapsed().as_secs_f64()); }
    }
    let train = times.iter().sum::<f64>() / times.len() as f64;
    let inner = model.valid();
    let xi = Tensor::<Flex, 4>::random([batch, c, h, w], Distribution::Normal(0.0, 1.0), &device);
    let t = Instant::now();
    for _ in 0..3 { let _ = inner.forward(xi.clone()).into_data(); }
    let inf = t.elapsed().as_secs_f64() / 3.0;
    println!("{name:40} train {:7.0} img/s   infer {:7.0} img/s", batch as f64 / train, batch as f64 / inf);
}

fn main() {
    let cnn = |w: Vec<usize>, d: Vec<usize>, ds, norm| ImageEncoderConfig::Cnn(CnnConfig { in_channels: 1, input_size: [28, 28], widths: w, depths: d, downsample: ds, norm, embed_dim: 128 });
    let arg = std::env::args().nth(1).unwrap_or_default();
    if arg.is_empty() || arg == "cnn" {
    probe("cnn 32/64/128 d0,0,0 pool", cnn(vec![32, 64, 128], vec![0, 0, 0], Downsample::MaxPool, Norm::None), 256);
    probe("cnn 32/64/128 d0,1,1 pool", cnn(vec![32, 64, 128], vec![0, 1, 1], Downsample::MaxPool, Norm::None), 256);
    probe("cnn 32/64/128 d0,1,1 strided", cnn(vec![32, 64, 128], vec![0, 1, 1], Downsample::StridedConv, Norm::None), 256);
    probe("cnn 32/64/128 d0,1,1 pool bn", cnn(vec![32, 64, 128], vec![0, 1, 1], Downsample::MaxPool, Norm::Batch), 256);
    probe("cnn 32/64/128 d1,1,1 pool", cnn(vec![32, 64, 128], vec![1, 1, 1], Downsample::MaxPool, Norm::None), 256);
    }
    if arg == "small" {
    probe("cnn 16/32/64 d0,0,0 pool b256", cnn(vec![16, 32, 64], vec![0, 0, 0], Downsample::MaxPool, Norm::None), 256);
    probe("cnn 24/48/96 d0,0,0 pool b256", cnn(vec![24, 48, 96], vec![0, 0, 0], Downsample::MaxPool, Norm::None), 256);
    probe("cnn 32/64/128 d0,0,0 pool b128", cnn(vec![32, 64, 128], vec![0, 0, 0], Downsample::MaxPool, Norm::None), 128);
    probe("cnn 32/64/128 d0,0,0 strided b256", cnn(vec![32, 64, 128], vec![0, 0, 0], Downsample::StridedConv, Norm::None), 256);
    probe("cnn 32/64 d0,0 pool b256", cnn(vec![32, 64], vec![0, 0], Downsample::MaxPool, Norm::None), 256);
    }
    if arg.is_empty() || arg == "vit" {
    probe("vit p4 d128 L4", ImageEncoderConfig::Vit(VitConfig { in_channels: 1, input_size: [28, 28], patch_size: 4, d_model: 128, n_layers: 4, n_heads: 4, ..Default::default() }), 256);
    probe("vit p7 d128 L4", ImageEncoderConfig::Vit(VitConfig { in_channels: 1, input_size: [28, 28], patch_size: 7, d_model: 128, n_layers: 4, n_heads: 4, ..Default::default() }), 256);
    }
}
