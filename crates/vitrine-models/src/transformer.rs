//! Pre-LayerNorm transformer blocks shared by the ViT encoder and the GPT decoder.
//!
//! ```text
//! x [B, T, D]
//!   x = x + attn(ln_1(x))              multi-head self-attention, separate q/k/v projections
//!   x = x + cross(ln_cross(x), memory) optional: attention over an encoder's tokens [B, S, D]
//!   x = x + mlp(ln_2(x))               Linear(D -> ratio*D), GELU, Linear(ratio*D -> D)
//! ```
//! The cross-attention sub-layer sits where GPT-2 with `add_cross_attention` puts it
//! (`crossattention` + `ln_cross_attn`, between self-attention and the MLP), so a
//! VisionEncoderDecoder checkpoint maps onto it.
//! Separate q/k/v projections map one-to-one onto ViT/CLIP checkpoints; GPT-2's fused
//! `c_attn` splits into three along its output axis. [`Block::forward_kv`] takes and returns
//! the keys/values of earlier positions, for incremental decoding with a KV cache.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{check_range, invalid, ModelError};
use crate::fused;
use crate::hf::{Layout, Weights};

/// `lin` applied to every position of x [B, T, Din] -> [B, T, Dout], as one [B*T, Din]
/// product. Burn 0.21's linear backward on a 3-D input forms a [B, Din, Dout] weight
/// gradient (one small product per row, K = T) and then sums it over B: on CPU that is
/// hundreds of MB written and summed per layer per step. Flattening first makes the weight
/// gradient a single product with K = B*T; the forward values are the same.
/// On the CPU (Flex, with or without autodiff) the product and bias are one fused op.
pub(crate) fn linear_rows<B: Backend>(lin: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    if let Some(y) = fused::linear_rows(lin, &x, fused::Act::None) {
        return y;
    }
    let [b, t, d] = x.dims();
    let y = lin.forward(x.reshape([b * t, d])); // [B*T, Dout]
    let out = y.dims()[1];
    y.reshape([b, t, out])
}

/// Hyper-parameters of one block (no serde: the owning model's config carries them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockConfig {
    pub d_model: usize,
    pub n_heads: usize,
    pub mlp_ratio: usize,
    pub dropout: f64,
    /// Dropout on the attention probabilities while training (BERT's
    /// `attention_probs_dropout_prob`; 0 elsewhere).
    pub attn_dropout: f64,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    /// Adds a cross-attention sub-layer (decoder of an encoder-decoder).
    pub cross_attention: bool,
}

/// The MLP's non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// Exact (erf) GELU, as in ViT.
    Gelu,
    /// tanh approximation (`gelu_new`): GPT-2.
    GeluTanh,
    /// `x * sigmoid(1.702 x)`: CLIP.
    QuickGelu,
}

impl BlockConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        check_range("d_model", self.d_model, 65536)?;
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return Err(invalid(
                "n_heads",
                self.n_heads,
                format!("a positive divisor of d_model ({})", self.d_model),
            ));
        }
        check_range("mlp_ratio", self.mlp_ratio, 16)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid("dropout", self.dropout, "0.0 <= dropout < 1.0"));
        }
        if !(0.0..1.0).contains(&self.attn_dropout) {
            return Err(invalid(
                "attn_dropout",
                self.attn_dropout,
                "0.0 <= attn_dropout < 1.0",
            ));
        }
        Ok(())
    }

    pub(crate) fn layer_norm<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNormConfig::new(self.d_model)
            .with_epsilon(self.layer_norm_eps)
            .init(device)
    }

    /// Self- or cross-attention with separate q/k/v projections.
    pub(crate) fn attention<B: Backend>(&self, device: &B::Device) -> Attention<B> {
        let d = self.d_model;
        let lin = || LinearConfig::new(d, d).init(device);
        Attention {
            query: lin(),
            key: lin(),
            value: lin(),
            out: lin(),
            n_heads: self.n_heads,
            probs_dropout: DropoutConfig::new(self.attn_dropout).init(),
        }
    }

    pub(crate) fn mlp<B: Backend>(&self, device: &B::Device) -> Mlp<B> {
        let (d, inner) = (self.d_model, self.d_model * self.mlp_ratio);
        Mlp {
            fc_in: LinearConfig::new(d, inner).init(device),
            fc_out: LinearConfig::new(inner, d).init(device),
            gelu_tanh: self.activation == Activation::GeluTanh,
            quick_gelu: self.activation == Activation::QuickGelu,
        }
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Block<B> {
        Block {
            ln_1: self.layer_norm(device),
            attn: self.attention(device),
            cross: self.cross_attention.then(|| CrossLayer {
                ln: self.layer_norm(device),
                attn: self.attention(device),
            }),
            ln_2: self.layer_norm(device),
            mlp: self.mlp(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            ln_eps: self.layer_norm_eps,
        }
    }
}

/// Multi-head attention; self-attention through [`Attention::forward_kv`], cross-attention
/// over precomputed encoder keys/values through [`Attention::forward_cross`].
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub out: Linear<B>,
    pub n_heads: usize,
    /// Holds no weights, so records saved before it existed still load.
    pub probs_dropout: Dropout,
}

/// Keys and values of one attention layer for the positions seen so far: [B, H, S, dk].
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
}

impl<B: Backend> Attention<B> {
    /// [B, T, D] -> [B, H, T, dk]
    fn split_heads(&self, y: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, t, d] = y.dims();
        let h = self.n_heads;
        y.reshape([b, t, h, d / h]).swap_dims(1, 2)
    }

    /// Softmax attention of queries [B, H, T, dk] over keys/values [B, H, S, dk], with an
    /// optional mask [T, S] (true = hidden) and an optional additive bias broadcast to
    /// [B, H, T, S] (e.g. [B, 1, 1, S] hiding padded keys): -> [B, T, D] after the output
    /// projection.
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: Option<Tensor<B, 2, burn::tensor::Bool>>,
        bias: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        let [_, _, t, dk] = q.dims();
        let s = k.dims()[2];
        // [B, H, T, S]
        let mut scores = q.matmul(k.swap_dims(2, 3)).div_scalar((dk as f64).sqrt());
        if let Some(mask) = mask {
            scores = scores.mask_fill(mask.reshape([1, 1, t, s]), f32::NEG_INFINITY);
        }
        if let Some(bias) = bias {
            scores = scores + bias;
        }
        let attn = self.probs_dropout.forward(fused::softmax_last(scores));
        // [B, H, T, dk] -> [B, T, D]
        let ctx = fused::merge_heads(attn.matmul(v));
        linear_rows(&self.out, ctx)
    }

    /// Keys and values of an encoder's tokens, computed once per input and reused at every
    /// decoding step: [B, S, D] -> [B, H, S, dk] each.
    pub fn memory_kv(&self, memory: Tensor<B, 3>) -> LayerKv<B> {
        LayerKv {
            k: self.split_heads(linear_rows(&self.key, memory.clone())),
            v: self.split_heads(linear_rows(&self.value, memory)),
        }
    }

    /// Cross-attention of x [B, T, D] over `memory` (from [`Attention::memory_kv`]).
    pub fn forward_cross(&self, x: Tensor<B, 3>, memory: &LayerKv<B>) -> Tensor<B, 3> {
        let q = self.split_heads(linear_rows(&self.query, x));
        self.attend(q, memory.k.clone(), memory.v.clone(), None, None)
    }

    /// Bidirectional self-attention with an additive `bias` on the scores (broadcast to
    /// [B, H, T, T]; BERT's key-padding mask): [B, T, D] -> [B, T, D].
    pub fn forward_biased(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let q = linear_rows(&self.query, x.clone());
        let k = linear_rows(&self.key, x.clone());
        let v = linear_rows(&self.value, x);
        // A bias per key ([B, 1, 1, S]) runs fused on the CPU at inference.
        if let [b, 1, 1, s] = bias.dims() {
            let key_bias = bias.clone().reshape([b, s]);
            if let Some(ctx) = fused::attention_rows(&q, &k, &v, self.n_heads, Some(&key_bias)) {
                return linear_rows(&self.out, ctx);
            }
        }
        let (q, k, v) = (
            self.split_heads(q),
            self.split_heads(k),
            self.split_heads(v),
        );
        self.attend(q, k, v, None, Some(bias))
    }

    /// [B, T, D] -> [B, T, D]. `causal` masks attention to later positions.
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        self.forward_kv(x, None, causal).0
    }

    /// Attention of the T new positions over `past` (S positions) and themselves:
    /// [B, T, D] -> ([B, T, D], keys/values of all S + T positions).
    pub fn forward_kv(
        &self,
        x: Tensor<B, 3>,
        past: Option<LayerKv<B>>,
        causal: bool,
    ) -> (Tensor<B, 3>, LayerKv<B>) {
        let t = x.dims()[1];
        let q = linear_rows(&self.query, x.clone());
        let (k, v) = (
            linear_rows(&self.key, x.clone()),
            linear_rows(&self.value, x),
        );
        // Bidirectional attention over the input alone (encoders) runs fused on the CPU at
        // inference.
        if past.is_none() && !causal {
            if let Some(ctx) = fused::attention_rows(&q, &k, &v, self.n_heads, None) {
                let kv = LayerKv {
                    k: self.split_heads(k),
                    v: self.split_heads(v),
                };
                return (linear_rows(&self.out, ctx), kv);
            }
        }
        let q = self.split_heads(q);
        let (mut k, mut v) = (self.split_heads(k), self.split_heads(v));
        if let Some(p) = past {
            k = Tensor::cat(vec![p.k, k], 2);
            v = Tensor::cat(vec![p.v, v], 2);
        }
        let s = k.dims()[2];
        // New position i sits at S - T + i: it sees keys 0..=S-T+i.
        let mask = (causal && t > 1).then(|| {
            Tensor::<B, 2, burn::tensor::Bool>::tril_mask([t, s], (s - t) as i64, &q.device())
        });
        let y = self.attend(q, k.clone(), v.clone(), mask, None);
        (y, LayerKv { k, v })
    }
}

/// The cross-attention sub-layer of a decoder block.
#[derive(Module, Debug)]
pub struct CrossLayer<B: Backend> {
    pub ln: LayerNorm<B>,
    pub attn: Attention<B>,
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc_in: Linear<B>,
    pub fc_out: Linear<B>,
    pub gelu_tanh: bool,
    pub quick_gelu: bool,
}

impl<B: Backend> Mlp<B> {
    /// Copies the two projections from the checkpoint tensors `fc_in` and `fc_out`.
    pub fn load_hf(&mut self, w: &mut Weights, [fc_in, fc_out]: [&str; 2], layout: Layout) {
        w.linear(&mut self.fc_in, fc_in, layout);
        w.linear(&mut self.fc_out, fc_out, layout);
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // At inference on the CPU the first projection, its bias and the GELU are one op.
        let act = match (self.quick_gelu, self.gelu_tanh) {
            (true, _) => None,
            (false, true) => Some(fused::Act::GeluTanh),
            (false, false) => Some(fused::Act::GeluErf),
        };
        if let Some(h) = act.and_then(|act| fused::linear_rows(&self.fc_in, &x, act)) {
            return linear_rows(&self.fc_out, h);
        }
        let h = linear_rows(&self.fc_in, x);
        let h = if self.quick_gelu {
            h.clone() * sigmoid(h.mul_scalar(1.702))
        } else if self.gelu_tanh {
            fused::gelu_tanh(h)
        } else {
            fused::gelu_erf(h)
        };
        linear_rows(&self.fc_out, h)
    }
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: Attention<B>,
    /// Present in decoder blocks of an encoder-decoder. Records written before this field
    /// existed load with `None`.
    pub cross: Option<CrossLayer<B>>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub dropout: Dropout,
    /// The LayerNorms' epsilon (Burn keeps theirs private; [`fused::layer_norm`] needs it).
    /// Not a weight: records saved before it existed still load.
    pub ln_eps: f64,
}

impl<B: Backend> Block<B> {
    /// Copies a block whose attention has separate query/key/value projections. `names`
    /// lists its tensors relative to `prefix`, separated by spaces, in the order ln_1,
    /// query, key, value, out, ln_2, fc_in, fc_out.
    pub fn load_hf(&mut self, w: &mut Weights, prefix: &str, names: &str, layout: Layout) {
        let names: Vec<String> = names
            .split_whitespace()
            .map(|n| format!("{prefix}.{n}"))
            .collect();
        let [ln_1, query, key, value, out, ln_2, fc_in, fc_out] = names.as_slice() else {
            panic!("a block's HF names are 8 tensors, got {names:?}");
        };
        w.layer_norm(&mut self.ln_1, ln_1);
        for (lin, name) in [
            (&mut self.attn.query, query),
            (&mut self.attn.key, key),
            (&mut self.attn.value, value),
            (&mut self.attn.out, out),
        ] {
            w.linear(lin, name, layout);
        }
        w.layer_norm(&mut self.ln_2, ln_2);
        self.mlp.load_hf(w, [fc_in, fc_out], layout);
    }
}

impl<B: Backend> Block<B> {
    /// [B, T, D] -> [B, T, D]
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        self.forward_kv(x, None, causal, None).0
    }

    /// As [`Block::forward`], continuing the positions in `past` (see
    /// [`Attention::forward_kv`]); `memory` feeds the cross-attention sub-layer (ignored by
    /// blocks without one; the owning model checks that it is given when needed).
    pub fn forward_kv(
        &self,
        x: Tensor<B, 3>,
        past: Option<LayerKv<B>>,
        causal: bool,
        memory: Option<&LayerKv<B>>,
    ) -> (Tensor<B, 3>, LayerKv<B>) {
        let ln = |norm: &LayerNorm<B>, x: Tensor<B, 3>| fused::layer_norm(norm, self.ln_eps, x);
        let (a, kv) = self
            .attn
            .forward_kv(ln(&self.ln_1, x.clone()), past, causal);
        let mut x = x + self.dropout.forward(a);
        if let (Some(c), Some(m)) = (&self.cross, memory) {
            x = x.clone() + self.dropout.forward(c.attn.forward_cross(ln(&c.ln, x), m));
        }
        let y = x.clone() + self.dropout.forward(self.mlp.forward(ln(&self.ln_2, x)));
        (y, kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::B;
    use burn::tensor::Distribution;

    fn cfg() -> BlockConfig {
        BlockConfig {
            d_model: 8,
            n_heads: 2,
            mlp_ratio: 2,
            dropout: 0.0,
            attn_dropout: 0.0,
            layer_norm_eps: 1e-5,
            activation: Activation::Gelu,
            cross_attention: false,
        }
    }

    #[test]
    fn causal_attention_ignores_the_future() {
        let device = Default::default();
        let block = cfg().init::<B>(&device);
        let x = Tensor::<B, 3>::random([1, 5, 8], Distribution::Normal(0.0, 1.0), &device);
        let full = block.forward(x.clone(), true);
        // Changing the last position must not change earlier outputs.
        let mut y = x.clone();
        y = y.slice_assign([0..1, 4..5, 0..8], Tensor::ones([1, 1, 8], &device));
        let changed = block.forward(y, true);
        let a = full.clone().slice([0..1, 0..4, 0..8]);
        let b = changed.clone().slice([0..1, 0..4, 0..8]);
        let diff: f32 = (a - b).abs().max().into_scalar();
        assert!(diff < 1e-6, "earlier positions changed by {diff}");
        let last: f32 = (full.slice([0..1, 4..5, 0..8]) - changed.slice([0..1, 4..5, 0..8]))
            .abs()
            .max()
            .into_scalar();
        assert!(last > 1e-4, "last position should change");
    }

    #[test]
    fn validate() {
        assert!(cfg().validate().is_ok());
        let base = cfg();
        let valid = |change| crate::testing::valid_with(&base, change, BlockConfig::validate);
        assert!(!valid(|c| c.n_heads = 3));
        assert!(!valid(|c| c.dropout = 1.0));
        assert!(valid(|c| c.attn_dropout = 0.99));
        assert!(!valid(|c| c.attn_dropout = 1.0));
        assert!(!valid(|c| c.attn_dropout = -0.1));
    }

    /// Dropout on the attention probabilities changes a training forward pass and leaves
    /// inference untouched.
    #[test]
    fn attention_dropout_acts_only_while_training() {
        use burn::module::AutodiffModule;
        type A = burn::backend::Autodiff<B>;
        let device = Default::default();
        let attn = BlockConfig {
            attn_dropout: 0.5,
            ..cfg()
        }
        .attention::<A>(&device);
        let x = Tensor::<A, 3>::random([2, 6, 8], Distribution::Normal(0.0, 1.0), &device);
        // Weights are initialised lazily, and a clone made before that would draw its own.
        let _ = attn.forward(x.clone(), false);
        let mut plain = attn.clone();
        plain.probs_dropout = DropoutConfig::new(0.0).init();
        let train = (attn.forward(x.clone(), false) - plain.forward(x.clone(), false))
            .abs()
            .max()
            .into_scalar();
        assert!(
            train > 1e-3,
            "training forward unchanged by dropout ({train})"
        );
        let xv = x.inner();
        let infer = (attn.valid().forward(xv.clone(), false) - plain.valid().forward(xv, false))
            .abs()
            .max()
            .into_scalar();
        assert_eq!(infer, 0.0);
    }

    /// [`Attention`] as it was before it had `probs_dropout`.
    #[derive(Module, Debug)]
    struct AttentionBeforeDropout<B: Backend> {
        query: Linear<B>,
        key: Linear<B>,
        value: Linear<B>,
        out: Linear<B>,
        n_heads: usize,
    }

    /// Runs saved before attention dropout existed hold no `probs_dropout` entry; their
    /// records still load, with every weight.
    #[test]
    fn records_without_attention_dropout_still_load() {
        use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
        let device = Default::default();
        let a = cfg().attention::<B>(&device);
        let x = Tensor::<B, 3>::random([1, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        // Initialises the lazy weights, so the clones below share them.
        let want = a.forward(x.clone(), false);
        let old = AttentionBeforeDropout {
            query: a.query.clone(),
            key: a.key.clone(),
            value: a.value.clone(),
            out: a.out.clone(),
            n_heads: a.n_heads,
        };
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = recorder.record(old.into_record(), ()).unwrap();
        let record = recorder.load(bytes, &device).unwrap();
        let loaded = cfg().attention::<B>(&device).load_record(record);
        let diff = (want - loaded.forward(x, false)).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    /// [`Block`] as it was before it had `ln_eps`.
    #[derive(Module, Debug)]
    struct BlockBeforeEps<B: Backend> {
        ln_1: LayerNorm<B>,
        attn: Attention<B>,
        cross: Option<CrossLayer<B>>,
        ln_2: LayerNorm<B>,
        mlp: Mlp<B>,
        dropout: Dropout,
    }

    /// Runs saved before blocks had `ln_eps` load, and keep the configured epsilon (the
    /// fused layer norm reads it).
    #[test]
    fn records_without_layer_norm_epsilon_still_load() {
        use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
        let device = Default::default();
        let config = BlockConfig {
            layer_norm_eps: 1e-3,
            ..cfg()
        };
        let block = config.init::<B>(&device);
        let x = Tensor::<B, 3>::random([1, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let want = block.forward(x.clone(), false);
        let old = BlockBeforeEps {
            ln_1: block.ln_1.clone(),
            attn: block.attn.clone(),
            cross: None,
            ln_2: block.ln_2.clone(),
            mlp: block.mlp.clone(),
            dropout: block.dropout.clone(),
        };
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = recorder.record(old.into_record(), ()).unwrap();
        let record = recorder.load(bytes, &device).unwrap();
        let loaded = config.init::<B>(&device).load_record(record);
        assert_eq!(loaded.ln_eps, 1e-3);
        let diff = (want - loaded.forward(x, false)).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    /// The flattened product gives the 3-D linear's outputs and the same weight and bias
    /// gradients.
    #[test]
    fn linear_rows_matches_the_3d_linear_and_its_gradients() {
        type A = burn::backend::Autodiff<B>;
        let device = Default::default();
        let lin = LinearConfig::new(6, 5).init::<A>(&device);
        let x = Tensor::<A, 3>::random([3, 4, 6], Distribution::Default, &device);
        let grads_of = |y: Tensor<A, 3>| {
            let g = (y.clone() * y).sum().backward();
            let w = lin.weight.val().grad(&g).unwrap();
            let b = lin.bias.as_ref().unwrap().val().grad(&g).unwrap();
            (w, b)
        };
        let (plain, flat) = (lin.forward(x.clone()), linear_rows(&lin, x));
        let diff = (plain.clone() - flat.clone()).abs().max().into_scalar();
        assert!(diff < 1e-6, "outputs differ by {diff}");
        let ((wa, ba), (wb, bb)) = (grads_of(plain), grads_of(flat));
        assert!((wa - wb).abs().max().into_scalar() < 1e-5);
        assert!((ba - bb).abs().max().into_scalar() < 1e-5);
    }
}
