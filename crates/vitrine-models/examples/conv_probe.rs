use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor, backend::Backend};
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use std::time::Instant;

type B = Autodiff<Flex>;

fn im2col_conv<B: Backend>(x: Tensor<B, 4>, w: Tensor<B, 2>) -> Tensor<B, 4> {
    // x [N,C,H,W], w [9C, O] -> [N,O,H,W]
    let [n, c, h, wd] = x.dims();
    let xp = x.pad((1, 1, 1, 1), burn::tensor::ops::PadMode::Constant(0.0));
    let mut cols = Vec::with_capacity(9);
    for dy in 0..3 { for dx in 0..3 { cols.push(xp.clone().slice([0..n, 0..c, dy..dy + h, dx..dx + wd])); } }
    let col = Tensor::cat(cols, 1); // [N, 9C, H, W]
    let col = col.permute([0, 2, 3, 1]).reshape([n * h * wd, 9 * c]);
    let o = w.dims()[1];
    col.matmul(w).reshape([n, h, wd, o]).permute([0, 3, 1, 2])
}

fn time<F: FnMut()>(name: &str, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..3 { f(); }
    println!("{name:50} {:8.1} ms", t.elapsed().as_secs_f64() * 1000.0 / 3.0);
}

fn main() {
    let d = Default::default();
    for (c, o, hw) in [(1usize, 32usize, 28usize), (32, 64, 14), (64, 128, 7)] {
        let x = Tensor::<B, 4>::random([256, c, hw, hw], Distribution::Normal(0.0, 1.0), &d).require_grad();
        let w4 = Tensor::<B, 4>::random([o, c, 3, 3], Distribution::Normal(0.0, 0.1), &d).require_grad();
        let w2 = Tensor::<B, 2>::random([9 * c, o], Distribution::Normal(0.0, 0.1), &d).require_grad();
        time(&format!("native conv {c}->{o} @{hw} fwd"), || { let _ = conv2d(x.clone(), w4.clone(), None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1)).into_data(); });
        time(&format!("native conv {c}->{o} @{hw} fwd+bwd"), || { let y = conv2d(x.clone(), w4.clone(), None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1)); let _ = y.sum().backward(); });
        time(&format!("im2col conv {c}->{o} @{hw} fwd"), || { let _ = im2col_conv(x.clone(), w2.clone()).into_data(); });
        time(&format!("im2col conv {c}->{o} @{hw} fwd+bwd"), || { let y = im2col_conv(x.clone(), w2.clone()); let _ = y.sum().backward(); });
        let y = Tensor::<B, 4>::random([256, o, hw, hw], Distribution::Normal(0.0, 1.0), &d).require_grad();
        time(&format!("maxpool {o} @{hw} fwd+bwd"), || { let p = max_pool2d(y.clone(), [2, 2], [2, 2], [0, 0], [1, 1], false); let _ = p.sum().backward(); });
        time(&format!("relu {o} @{hw} fwd+bwd"), || { let p = burn::tensor::activation::relu(y.clone()); let _ = p.sum().backward(); });
    }
}
