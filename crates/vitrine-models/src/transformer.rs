//! Pre-LayerNorm transformer blocks shared by the ViT encoder and the GPT decoder.
//!
//! ```text
//! x [B, T, D]
//!   x = x + attn(ln_1(x))      multi-head self-attention, separate q/k/v projections
//!   x = x + mlp(ln_2(x))       Linear(D -> ratio*D), GELU, Linear(ratio*D -> D)
//! ```
//! Separate q/k/v projections map one-to-one onto ViT/CLIP checkpoints; GPT-2's fused
//! `c_attn` splits into three along its output axis. [`Block::forward_kv`] takes and returns
//! the keys/values of earlier positions, for incremental decoding with a KV cache.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, gelu_approximate, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, ModelError};

/// Hyper-parameters of one block (no serde: the owning model's config carries them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockConfig {
    pub d_model: usize,
    pub n_heads: usize,
    pub mlp_ratio: usize,
    pub dropout: f64,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

/// The MLP's non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// Exact (erf) GELU, as in ViT.
    Gelu,
    /// tanh approximation (`gelu_new`): GPT-2.
    GeluTanh,
}

impl BlockConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.d_model == 0 || self.d_model > 65536 {
            return Err(invalid("d_model", self.d_model, "1..=65536"));
        }
        if self.n_heads == 0 || self.d_model % self.n_heads != 0 {
            return Err(invalid(
                "n_heads",
                self.n_heads,
                format!("a positive divisor of d_model ({})", self.d_model),
            ));
        }
        if self.mlp_ratio == 0 || self.mlp_ratio > 16 {
            return Err(invalid("mlp_ratio", self.mlp_ratio, "1..=16"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid("dropout", self.dropout, "0.0 <= dropout < 1.0"));
        }
        Ok(())
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Block<B> {
        let d = self.d_model;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        Block {
            ln_1: ln(),
            attn: SelfAttention {
                query: lin(d, d),
                key: lin(d, d),
                value: lin(d, d),
                out: lin(d, d),
                n_heads: self.n_heads,
            },
            ln_2: ln(),
            mlp: Mlp {
                fc_in: lin(d, d * self.mlp_ratio),
                fc_out: lin(d * self.mlp_ratio, d),
                gelu_tanh: self.activation == Activation::GeluTanh,
            },
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub out: Linear<B>,
    pub n_heads: usize,
}

/// Keys and values of one attention layer for the positions seen so far: [B, H, S, dk].
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
}

impl<B: Backend> SelfAttention<B> {
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
        let [b, t, d] = x.dims();
        let h = self.n_heads;
        let dk = d / h;
        // [B, T, D] -> [B, H, T, dk]
        let split = |y: Tensor<B, 3>| y.reshape([b, t, h, dk]).swap_dims(1, 2);
        let q = split(self.query.forward(x.clone()));
        let mut k = split(self.key.forward(x.clone()));
        let mut v = split(self.value.forward(x));
        if let Some(p) = past {
            k = Tensor::cat(vec![p.k, k], 2);
            v = Tensor::cat(vec![p.v, v], 2);
        }
        let s = k.dims()[2];
        // [B, H, T, S]
        let mut scores = q
            .matmul(k.clone().swap_dims(2, 3))
            .div_scalar((dk as f64).sqrt());
        if causal && t > 1 {
            // New position i sits at S - T + i: it sees keys 0..=S-T+i.
            let mask = Tensor::<B, 2, burn::tensor::Bool>::tril_mask(
                [t, s],
                (s - t) as i64,
                &scores.device(),
            );
            scores = scores.mask_fill(mask.reshape([1, 1, t, s]), f32::NEG_INFINITY);
        }
        let attn = softmax(scores, 3);
        // [B, H, T, dk] -> [B, T, D]
        let ctx = attn.matmul(v.clone()).swap_dims(1, 2).reshape([b, t, d]);
        (self.out.forward(ctx), LayerKv { k, v })
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc_in: Linear<B>,
    pub fc_out: Linear<B>,
    pub gelu_tanh: bool,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.fc_in.forward(x);
        let h = if self.gelu_tanh {
            gelu_approximate(h)
        } else {
            gelu(h)
        };
        self.fc_out.forward(h)
    }
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: SelfAttention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub dropout: Dropout,
}

impl<B: Backend> Block<B> {
    /// [B, T, D] -> [B, T, D]
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        self.forward_kv(x, None, causal).0
    }

    /// As [`Block::forward`], continuing the positions in `past` (see
    /// [`SelfAttention::forward_kv`]).
    pub fn forward_kv(
        &self,
        x: Tensor<B, 3>,
        past: Option<LayerKv<B>>,
        causal: bool,
    ) -> (Tensor<B, 3>, LayerKv<B>) {
        let (a, kv) = self
            .attn
            .forward_kv(self.ln_1.forward(x.clone()), past, causal);
        let x = x + self.dropout.forward(a);
        let y = x.clone() + self.dropout.forward(self.mlp.forward(self.ln_2.forward(x)));
        (y, kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    fn cfg() -> BlockConfig {
        BlockConfig {
            d_model: 8,
            n_heads: 2,
            mlp_ratio: 2,
            dropout: 0.0,
            layer_norm_eps: 1e-5,
            activation: Activation::Gelu,
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
        assert!(BlockConfig {
            n_heads: 3,
            ..cfg()
        }
        .validate()
        .is_err());
        assert!(BlockConfig {
            dropout: 1.0,
            ..cfg()
        }
        .validate()
        .is_err());
    }
}
