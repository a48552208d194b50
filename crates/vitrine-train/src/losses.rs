//! Metric-learning losses on L2-normalised embeddings. Masks are built on the host from the
//! batch labels (a few kilobytes) and uploaded once per step.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use vitrine_models::fused::log_softmax_last;

fn pair_masks(labels: &[u32]) -> (Vec<f32>, Vec<bool>, Vec<f32>) {
    let n = labels.len();
    let mut pos = vec![0f32; n * n];
    let mut diag = vec![false; n * n];
    let mut weight = vec![0f32; n];
    for i in 0..n {
        diag[i * n + i] = true;
        let mut count = 0;
        for j in 0..n {
            if i != j && labels[i] == labels[j] {
                pos[i * n + j] = 1.0;
                count += 1;
            }
        }
        if count > 0 {
            weight[i] = 1.0 / count as f32;
        }
    }
    (pos, diag, weight)
}

/// Supervised contrastive loss (Khosla et al. 2020, L_out): for each anchor with at least
/// one positive, the mean over its positives of -log softmax over all other items, at
/// temperature `tau`. Anchors without positives are left out. `z`: [N, D].
pub fn supcon<B: Backend>(z: Tensor<B, 2>, labels: &[u32], tau: f64) -> Tensor<B, 1> {
    let device = z.device();
    let n = labels.len();
    let (pos, diag, weight) = pair_masks(labels);
    let anchors = weight.iter().filter(|&&w| w > 0.0).count().max(1);
    let pos = Tensor::<B, 2>::from_data(TensorData::new(pos, [n, n]), &device);
    let diag = Tensor::<B, 2, Bool>::from_data(TensorData::new(diag, [n, n]), &device);
    let weight = Tensor::<B, 1>::from_data(TensorData::new(weight, [n]), &device);
    // [N, N] similarities; self-similarity removed from the softmax's denominator.
    let logits = z
        .clone()
        .matmul(z.transpose())
        .div_scalar(tau)
        .mask_fill(diag, -1e9);
    let log_prob = log_softmax_last(logits);
    let per_anchor = (log_prob * pos).sum_dim(1).reshape([n]) * weight;
    per_anchor.sum().neg().div_scalar(anchors as f64)
}

/// [N, C] rows with a 1 at each label's class.
fn one_hot<B: Backend>(labels: &[u32], c: usize, device: &B::Device) -> Tensor<B, 2> {
    let n = labels.len();
    let mut onehot = vec![0f32; n * c];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * c + l as usize] = 1.0;
    }
    Tensor::from_data(TensorData::new(onehot, [n, c]), device)
}

/// Proxy-Anchor loss (Kim et al. 2020). `z`: [N, D] normalised embeddings, `proxies`:
/// [C, D] (normalised here), `alpha` scale, `delta` margin.
pub fn proxy_anchor<B: Backend>(
    z: Tensor<B, 2>,
    proxies: Tensor<B, 2>,
    labels: &[u32],
    alpha: f64,
    delta: f64,
) -> Tensor<B, 1> {
    let c = proxies.dims()[0];
    let mut with_pos = vec![false; c];
    for &l in labels {
        with_pos[l as usize] = true;
    }
    let n_pos_classes = with_pos.iter().filter(|&&b| b).count().max(1);
    let pos = one_hot::<B>(labels, c, &z.device());
    let neg = pos.clone().neg().add_scalar(1.0);
    let cos = z.matmul(vitrine_models::l2_normalize(proxies).transpose()); // [N, C]
    let pos_exp = cos.clone().sub_scalar(delta).mul_scalar(-alpha).exp() * pos;
    let neg_exp = cos.add_scalar(delta).mul_scalar(alpha).exp() * neg;
    // Σ over proxies of log(1 + Σ over examples), averaged over `n` proxies.
    let term = |e: Tensor<B, 2>, n: usize| {
        e.sum_dim(0)
            .add_scalar(1.0)
            .log()
            .sum()
            .div_scalar(n as f64)
    };
    term(pos_exp, n_pos_classes) + term(neg_exp, c)
}

/// Normalised softmax loss (Zhai & Wu 2019): mean over examples of the cross-entropy of
/// cos(z, proxy_c) / `tau` over the C proxies. `z`: [N, D] normalised, `proxies`: [C, D]
/// (normalised here). Per-example, unlike SupCon and Proxy-Anchor, so a batch split across
/// workers gives the same mean gradient.
pub fn norm_softmax<B: Backend>(
    z: Tensor<B, 2>,
    proxies: Tensor<B, 2>,
    labels: &[u32],
    tau: f64,
) -> Tensor<B, 1> {
    let n = labels.len();
    let target = one_hot::<B>(labels, proxies.dims()[0], &z.device());
    let logits = z
        .matmul(vitrine_models::l2_normalize(proxies).transpose())
        .div_scalar(tau); // [N, C]
    (log_softmax_last(logits) * target)
        .sum()
        .neg()
        .div_scalar(n.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn t(rows: &[[f32; 2]]) -> Tensor<B, 2> {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), 2]), &Default::default())
    }

    /// Two anchors of one class and one of another, by hand:
    /// z0=(1,0), z1=(1,0), z2=(0,1), labels [0,0,1], tau=1.
    /// Anchor 0: logits to (z1,z2) = (1,0): -log(e/(e+1)) = log(1+e^-1). Same for anchor 1.
    /// Anchor 2 has no positive: left out. Loss = log(1 + e^-1).
    #[test]
    fn supcon_known_value() {
        let loss: f32 =
            supcon(t(&[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), &[0, 0, 1], 1.0).into_scalar();
        let expected = (1.0 + (-1.0f32).exp()).ln();
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    }

    #[test]
    fn supcon_prefers_clustered_embeddings() {
        let good: f32 = supcon(
            t(&[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]),
            &[0, 0, 1, 1],
            0.1,
        )
        .into_scalar();
        let bad: f32 = supcon(
            t(&[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]),
            &[0, 0, 1, 1],
            0.1,
        )
        .into_scalar();
        assert!(good < bad, "{good} !< {bad}");
    }

    /// z0 at proxy 0, z1 orthogonal to both proxies; tau = 1.
    /// Example 0: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1); example 1 (class 1): logits
    /// (0, 0): log 2. Mean of the two.
    #[test]
    fn norm_softmax_known_value_and_split_mean() {
        let z = t(&[[1.0, 0.0], [0.0, 0.0]]);
        let p = t(&[[2.0, 0.0], [0.0, -3.0]]);
        let whole: f32 = norm_softmax(z.clone(), p.clone(), &[0, 1], 1.0).into_scalar();
        let expected = ((1.0 + (-1.0f32).exp()).ln() + 2f32.ln()) / 2.0;
        assert!((whole - expected).abs() < 1e-5, "{whole} vs {expected}");
        // The mean of the halves' losses is the whole batch's: what data-parallel needs.
        let a: f32 = norm_softmax(t(&[[1.0, 0.0]]), p.clone(), &[0], 1.0).into_scalar();
        let b: f32 = norm_softmax(t(&[[0.0, 0.0]]), p, &[1], 1.0).into_scalar();
        assert!(((a + b) / 2.0 - whole).abs() < 1e-6);
    }

    /// One sample of class 0 at its proxy, C = 2 proxies (1,0) and (0,1), alpha=1, delta=0:
    /// pos: log(1 + e^{-1}) over 1 class with positives; neg: class 1 gets e^{0} = 1 ->
    /// log 2, class 0 has no negatives -> log 1 = 0; averaged over C = 2.
    #[test]
    fn proxy_anchor_known_value() {
        let loss: f32 = proxy_anchor(
            t(&[[1.0, 0.0]]),
            t(&[[2.0, 0.0], [0.0, 3.0]]),
            &[0],
            1.0,
            0.0,
        )
        .into_scalar();
        let expected = (1.0 + (-1.0f32).exp()).ln() + 2f32.ln() / 2.0;
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    }
}
