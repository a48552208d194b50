//! Fused CPU kernels for Flex, the CPU backend, with and without autodiff.
//!
//! Under autodiff Burn 0.21 builds layer normalisation, softmax, log-softmax and GPT-2's
//! GELU from their definitions: up to ten elementwise ops and reductions forward, each
//! allocating a tensor and each with its own backward step, with scalar libm calls (`expf`,
//! `tanhf`, `powf`, `erff`) per element; the gradients of a LayerNorm's scale and shift are
//! sums over every axis but the last, which Flex reduces slowly. Flex's own softmax and
//! GELU kernels call the same scalar functions. Here each is one op with a hand-written
//! backward, branch-free approximations of exp, tanh and erf (errors below 5e-7) that the
//! compiler vectorises, compiled for AVX2 + FMA where the CPU has them:
//!
//! ```text
//! layer_norm      y = x̂·γ + β, x̂ = (x − mean)·rstd       dx = rstd·(gγ − mean(gγ) − x̂·mean(gγ·x̂))
//!                                                       dγ = Σ g·x̂, dβ = Σ g (over rows)
//! softmax_last    y = exp(x − max) / Σ exp(x − max)     dx = y·(g − Σ g·y)
//! log_softmax_last y = x − max − ln Σ exp(x − max)      dx = g − exp(y)·Σ g
//! gelu_tanh, gelu_erf                                   dx = g·gelu'(x)
//! conv3x3_cbhw    y = relu?(W·im2col(x) + b)            dx = col2im(Wᵀ·gy), dW = gy·colsᵀ, db = Σ gy
//! max_pool_2x2    y = max of each 2x2 window            dx = g at the window's winning cell
//! merge_heads     [B, H, T, dk] -> [B, T, H·dk]          dx = the inverse permutation
//! attention_rows  softmax(q·kᵀ/√dk + bias)·v per head    (inference only)
//! linear_rows     act(x·W + b)                          dx = g·Wᵀ, dW = xᵀ·g, db = Σ g (act at inference only)
//! ```
//!
//! Every function takes and returns tensors of any backend `B`: the fused path runs when
//! `B` is `Autodiff<Flex>` or `Flex` and the data is f32 (layer norm: only under autodiff;
//! Flex's own forward kernel is already one pass), and Burn's op runs otherwise (GPU
//! backends, f16/bf16). The tests check values and gradients against Burn's ops.

use std::any::{Any, TypeId};
use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::{gelu, gelu_approximate, log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

type Ad = Autodiff<Flex, NoCheckpointing>;

/// Rows handed to one parallel task: large enough that scheduling is noise.
const ROWS_PER_TASK: usize = 64;

/// Runs `body` compiled for AVX2 + FMA where the CPU has them (the build targets baseline
/// x86-64, whose SSE2 vectors are half as wide), plainly elsewhere; `-> T` after the
/// arguments for a body that returns a value.
macro_rules! with_avx2 {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        with_avx2!($name, $body, ($($arg: $ty),*) -> ());
    };
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU was just found to have both features.
                    return unsafe { wide($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// Lanes of the reductions below: sixteen independent partial results, so the compiler
/// can keep them in vector registers (a single f32 accumulator is a serial chain it may
/// not reorder).
const LANES: usize = 16;

#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..LANES {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for k in 0..LANES {
            acc[k] = acc[k].max(c[k]);
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

/// `t` as a tensor of backend `To` when `From` is that very type; otherwise `t` back.
fn cast<From: Backend, To: Backend, const D: usize>(
    t: Tensor<From, D>,
) -> Result<Tensor<To, D>, Tensor<From, D>> {
    if TypeId::of::<From>() != TypeId::of::<To>() {
        return Err(t);
    }
    let boxed: Box<dyn Any> = Box::new(t.into_primitive());
    match boxed.downcast::<TensorPrimitive<To>>() {
        Ok(p) => Ok(Tensor::from_primitive(*p)),
        // Unreachable (same TypeId), but hand the tensor back rather than panic.
        Err(boxed) => match boxed.downcast::<TensorPrimitive<From>>() {
            Ok(p) => Err(Tensor::from_primitive(*p)),
            Err(_) => unreachable!("a boxed tensor primitive is one of its two types"),
        },
    }
}

/// `t` back to the caller's backend (the inverse of a successful [`cast`]).
fn uncast<From: Backend, To: Backend, const D: usize>(t: Tensor<From, D>) -> Tensor<To, D> {
    match cast::<From, To, D>(t) {
        Ok(t) => t,
        Err(_) => unreachable!("uncast follows a cast between the same two types"),
    }
}

/// `t` as backend `To`, which is known to be its own backend (the input's took that route).
fn same_backend<B: Backend, To: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<To, D> {
    match cast::<B, To, D>(t) {
        Ok(t) => t,
        Err(_) => unreachable!("the parameters live on the input's backend"),
    }
}

/// The autodiff tensor of an `Autodiff<Flex>` float tensor.
fn ad_prim<const D: usize>(t: Tensor<Ad, D>) -> FloatTensor<Ad> {
    t.into_primitive().tensor()
}

/// Which path a tensor takes: one of the fused kernels' two backends (f32 only), or Burn's
/// own ops.
enum Route<B: Backend, const D: usize> {
    Autodiff(FloatTensor<Ad>),
    Flex(FlexTensor),
    Burn(Tensor<B, D>),
}

fn route<B: Backend, const D: usize>(x: Tensor<B, D>) -> Route<B, D> {
    if x.dtype() != DType::F32 {
        return Route::Burn(x);
    }
    let x = match cast::<B, Ad, D>(x) {
        Ok(x) => return Route::Autodiff(ad_prim(x)),
        Err(x) => x,
    };
    match cast::<B, Flex, D>(x) {
        Ok(x) => Route::Flex(x.into_primitive().tensor()),
        Err(x) => Route::Burn(x),
    }
}

/// A fused kernel's output on the autodiff route, as the caller's tensor.
fn from_ad<B: Backend, const E: usize>(y: FloatTensor<Ad>) -> Tensor<B, E> {
    uncast::<Ad, B, E>(Tensor::from_primitive(TensorPrimitive::Float(y)))
}

/// A fused kernel's output on the Flex route, as the caller's tensor.
fn from_flex<B: Backend, const E: usize>(y: FlexTensor) -> Tensor<B, E> {
    uncast::<Flex, B, E>(Tensor::from_primitive(TensorPrimitive::Float(y)))
}

/// Contiguous f32 values of a Flex tensor (copied only when it is a strided view).
fn f32_values(t: &FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("f32_values returns a contiguous f32 tensor")
}

fn flex_f32(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `len` f32 slots left unzeroed, for an output that a kernel then writes in full: zeroing
/// maps of tens of MB first costs about as much as filling them.
fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit<f32> needs no initialisation, and the capacity is `len`.
    unsafe { v.set_len(len) };
    v
}

/// The values of a vector whose every element has been written.
///
/// # Safety
/// Every element of `v` must have been initialised.
unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: MaybeUninit<f32> has f32's layout, the allocation is handed over whole, and
    // the caller guarantees every element is initialised.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// A slice whose every element has been written, as values.
///
/// # Safety
/// Every element of `s` must have been initialised.
unsafe fn assume_init_mut(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: same layout; the caller guarantees initialisation.
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Writes `src` into `dst` (equal lengths).
#[inline(always)]
fn write_all(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v);
    }
}

#[inline(always)]
fn write_zeros(dst: &mut [MaybeUninit<f32>]) {
    for d in dst {
        d.write(0.0);
    }
}

// ---------------------------------------------------------------------------------------
// Layer normalisation over the last axis.

/// `ln(x)` with `ln`'s epsilon given as `eps` (Burn keeps it private): the fused op on
/// `Autodiff<Flex>` in f32, `ln.forward(x)` elsewhere.
pub fn layer_norm<B: Backend, const D: usize>(
    ln: &LayerNorm<B>,
    eps: f64,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let Some(beta) = &ln.beta else {
        return ln.forward(x);
    };
    match route(x) {
        Route::Autodiff(x) => {
            let gamma = ad_prim(same_backend::<B, Ad, 1>(ln.gamma.val()));
            let beta = ad_prim(same_backend::<B, Ad, 1>(beta.val()));
            from_ad(layer_norm_ad(x, gamma, beta, eps as f32))
        }
        Route::Flex(x) => ln.forward(from_flex(x)),
        Route::Burn(x) => ln.forward(x),
    }
}

#[derive(Debug)]
struct LayerNormBackward;

/// What the backward pass needs: x̂ [N, D] (as the input's shape), 1/σ per row, γ.
#[derive(Debug, Clone)]
struct LayerNormState {
    xhat: FlexTensor,
    rstd: Vec<f32>,
    gamma: FlexTensor,
}

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let LayerNormState { xhat, rstd, gamma } = ops.state;
        let shape = xhat.layout().shape().clone();
        let d = gamma.layout().shape().num_elements();
        let g = f32_values(&grad);
        let (g, xh, gm) = (slice(&g), slice(&xhat), slice(&f32_values(&gamma)).to_vec());
        let n = rstd.len();

        let mut dx = vec![0f32; n * d];
        // Per task: its rows' input gradient and its partial sums of dγ and dβ.
        let chunk = ROWS_PER_TASK * d;
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(chunk)
            .zip(g.par_chunks(chunk))
            .zip(xh.par_chunks(chunk))
            .zip(rstd.par_chunks(ROWS_PER_TASK))
            .map(|(((dx, g), xh), rs)| {
                let (mut dgamma, mut dbeta, mut tmp) =
                    (vec![0f32; d], vec![0f32; d], vec![0f32; d]);
                layer_norm_bwd_rows(g, xh, &gm, rs, dx, &mut dgamma, &mut dbeta, &mut tmp);
                (dgamma, dbeta)
            })
            .collect();
        let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
        for (pg, pb) in partial {
            dgamma.iter_mut().zip(pg).for_each(|(a, b)| *a += b);
            dbeta.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex_f32(dx, shape));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex_f32(dgamma, Shape::new([d])));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex_f32(dbeta, Shape::new([d])));
        }
    }
}

/// Input gradient of rows `g`, `xh` (x̂), `rs` (1/σ), adding their dγ and dβ; `tmp` is a
/// row of scratch.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn layer_norm_bwd_rows_body(
    g: &[f32],
    xh: &[f32],
    gamma: &[f32],
    rs: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    tmp: &mut [f32],
) {
    let d = gamma.len();
    for (((gr, xr), dr), &r) in g.chunks(d).zip(xh.chunks(d)).zip(dx.chunks_mut(d)).zip(rs) {
        for ((t, &gv), &gmv) in tmp.iter_mut().zip(gr).zip(gamma) {
            *t = gv * gmv;
        }
        let mean_gg = sum_lanes(tmp) / d as f32;
        let mean_ggx = dot_lanes(tmp, xr) / d as f32;
        for ((o, &t), &xv) in dr.iter_mut().zip(tmp.iter()).zip(xr) {
            *o = r * (t - mean_gg - xv * mean_ggx);
        }
        for (((dg, db), &gv), &xv) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(gr).zip(xr) {
            *dg += gv * xv;
            *db += gv;
        }
    }
}

with_avx2!(
    layer_norm_bwd_rows,
    layer_norm_bwd_rows_body,
    (
        g: &[f32],
        xh: &[f32],
        gamma: &[f32],
        rs: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
        tmp: &mut [f32]
    )
);

/// Rows of `x`: forward values into `y`, x̂ into `xh`, 1/σ into `rs`.
#[inline(always)]
fn layer_norm_fwd_rows_body(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
    xh: &mut [f32],
    rs: &mut [f32],
) {
    let d = gamma.len();
    for (((xr, yr), hr), r) in x
        .chunks(d)
        .zip(y.chunks_mut(d))
        .zip(xh.chunks_mut(d))
        .zip(rs)
    {
        let mean = sum_lanes(xr) / d as f32;
        for (h, &v) in hr.iter_mut().zip(xr) {
            *h = v - mean;
        }
        *r = 1.0 / (dot_lanes(hr, hr) / d as f32 + eps).sqrt();
        let rv = *r;
        for (((o, h), &gv), &bv) in yr.iter_mut().zip(hr.iter_mut()).zip(gamma).zip(beta) {
            *h *= rv;
            *o = *h * gv + bv;
        }
    }
}

with_avx2!(
    layer_norm_fwd_rows,
    layer_norm_fwd_rows_body,
    (
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        y: &mut [f32],
        xh: &mut [f32],
        rs: &mut [f32]
    )
);

/// Forward values, x̂ and 1/σ of every row of `x` (rows as long as `gamma`).
fn layer_norm_rows(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> [Vec<f32>; 3] {
    let d = gamma.len();
    let n = x.len() / d;
    let mut y = vec![0f32; n * d];
    let mut xhat = vec![0f32; n * d];
    let mut rstd = vec![0f32; n];
    let chunk = ROWS_PER_TASK * d;
    y.par_chunks_mut(chunk)
        .zip(xhat.par_chunks_mut(chunk))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(chunk))
        .for_each(|(((y, xh), rs), x)| layer_norm_fwd_rows(x, gamma, beta, eps, y, xh, rs));
    [y, xhat, rstd]
}

fn layer_norm_ad(
    x: FloatTensor<Ad>,
    gamma: FloatTensor<Ad>,
    beta: FloatTensor<Ad>,
    eps: f32,
) -> FloatTensor<Ad> {
    let shape = x.primitive.layout().shape().clone();
    let xv = f32_values(&x.primitive);
    let (gv, bv) = (f32_values(&gamma.primitive), f32_values(&beta.primitive));
    let [y, xhat, rstd] = layer_norm_rows(slice(&xv), slice(&gv), slice(&bv), eps);
    let y = flex_f32(y, shape.clone());
    match LayerNormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            LayerNormState {
                xhat: flex_f32(xhat, shape),
                rstd,
                gamma: gv,
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

// ---------------------------------------------------------------------------------------
// Softmax and log-softmax over the last axis: row-wise ops whose backward reads the output.

/// `softmax(x, D - 1)`: one pass with a vectorised exp on Flex (whose own kernel calls
/// scalar `expf`) and, with a one-pass backward, on `Autodiff<Flex>`, in f32; Burn's
/// elsewhere.
pub fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    rowwise(x, Saved::Output, softmax_rows, softmax_bwd_rows, |x| {
        softmax(x, D - 1)
    })
}

/// `log_softmax(x, D - 1)` (cross-entropy over a vocabulary): as [`softmax_last`]; Burn
/// composes it from five ops, with scalar `exp` twice forward and again backward. A row
/// whose entries are all −∞ gives NaN, as Burn's does.
pub fn log_softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let burn_op = |x| log_softmax(x, D - 1);
    rowwise(
        x,
        Saved::Output,
        log_softmax_rows,
        log_softmax_bwd_rows,
        burn_op,
    )
}

#[inline(always)]
fn softmax_rows_body(x: &[f32], y: &mut [f32], d: usize) {
    for (xr, yr) in x.chunks(d).zip(y.chunks_mut(d)) {
        let max = max_lanes(xr);
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = exp_poly(v - max);
        }
        let inv = 1.0 / sum_lanes(yr);
        yr.iter_mut().for_each(|o| *o *= inv);
    }
}

with_avx2!(softmax_rows, softmax_rows_body, (x: &[f32], y: &mut [f32], d: usize));

/// dx = y·(g − Σ g·y) per row.
#[inline(always)]
fn softmax_bwd_rows_body(y: &[f32], g: &[f32], dx: &mut [f32], d: usize) {
    for ((yr, gr), dr) in y.chunks(d).zip(g.chunks(d)).zip(dx.chunks_mut(d)) {
        let dot = dot_lanes(gr, yr);
        for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
            *o = yv * (gv - dot);
        }
    }
}

with_avx2!(
    softmax_bwd_rows,
    softmax_bwd_rows_body,
    (y: &[f32], g: &[f32], dx: &mut [f32], d: usize)
);

#[inline(always)]
fn log_softmax_rows_body(x: &[f32], y: &mut [f32], d: usize) {
    for (xr, yr) in x.chunks(d).zip(y.chunks_mut(d)) {
        let max = max_lanes(xr);
        // The row's exponentials go through the output, then the output is overwritten.
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = exp_poly(v - max);
        }
        let lse = max + sum_lanes(yr).ln();
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = v - lse;
        }
    }
}

/// dx = g − softmax(x)·Σg per row, softmax(x) = exp(y).
#[inline(always)]
fn log_softmax_bwd_rows_body(y: &[f32], g: &[f32], dx: &mut [f32], d: usize) {
    for ((yr, gr), dr) in y.chunks(d).zip(g.chunks(d)).zip(dx.chunks_mut(d)) {
        let total = sum_lanes(gr);
        for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
            *o = gv - exp_poly(yv) * total;
        }
    }
}

with_avx2!(log_softmax_rows, log_softmax_rows_body, (x: &[f32], y: &mut [f32], d: usize));
with_avx2!(
    log_softmax_bwd_rows,
    log_softmax_bwd_rows_body,
    (y: &[f32], g: &[f32], dx: &mut [f32], d: usize)
);

/// Forward over rows of `d`: `fwd(x, y, d)`.
type RowsForward = fn(&[f32], &mut [f32], usize);
/// Backward over rows of `d` from what the forward saved: `bwd(saved, grad, dx, d)`.
type RowsBackward = fn(&[f32], &[f32], &mut [f32], usize);

/// What a row-wise op's backward reads: its input (GELU) or its output (softmax).
#[derive(Debug, Clone, Copy)]
enum Saved {
    Input,
    Output,
}

fn rows_per_task(d: usize) -> usize {
    (ELEMS_PER_TASK / d.max(1)).max(1)
}

fn map_rows(x: &[f32], d: usize, fwd: RowsForward) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let chunk = rows_per_task(d) * d;
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(y, x)| fwd(x, y, d));
    y
}

/// A row-wise op over the last axis (an elementwise one is row-wise too), fused on Flex
/// and `Autodiff<Flex>` in f32, `burn_op` elsewhere.
fn rowwise<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    saved: Saved,
    fwd: RowsForward,
    bwd: RowsBackward,
    burn_op: fn(Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    let d = x.dims()[D - 1];
    match route(x) {
        Route::Autodiff(x) => from_ad(rowwise_ad(x, d, saved, fwd, bwd)),
        Route::Flex(x) => {
            let shape = x.layout().shape().clone();
            from_flex(flex_f32(map_rows(slice(&f32_values(&x)), d, fwd), shape))
        }
        Route::Burn(x) => burn_op(x),
    }
}

#[derive(Debug)]
struct RowwiseBackward {
    bwd: RowsBackward,
}

impl Backward<Flex, 1> for RowwiseBackward {
    /// The forward input or output ([`Saved`]), contiguous.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(node) = node_x else { return };
        let saved = ops.state;
        let shape = saved.layout().shape().clone();
        let d = shape[shape.num_dims() - 1];
        let g = f32_values(&grad);
        let (yv, gv) = (slice(&saved), slice(&g));
        let mut dx = vec![0f32; yv.len()];
        let chunk = rows_per_task(d) * d;
        let bwd = self.bwd;
        dx.par_chunks_mut(chunk)
            .zip(yv.par_chunks(chunk))
            .zip(gv.par_chunks(chunk))
            .for_each(|((dx, y), g)| bwd(y, g, dx, d));
        grads.register::<Flex>(node.id, flex_f32(dx, shape));
    }
}

fn rowwise_ad(
    x: FloatTensor<Ad>,
    d: usize,
    saved: Saved,
    fwd: RowsForward,
    bwd: RowsBackward,
) -> FloatTensor<Ad> {
    let shape = x.primitive.layout().shape().clone();
    let xv = f32_values(&x.primitive);
    let y = flex_f32(map_rows(slice(&xv), d, fwd), shape);
    match (RowwiseBackward { bwd })
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = match saved {
                Saved::Input => xv,
                Saved::Output => y.clone(),
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

// ---------------------------------------------------------------------------------------
// GELU, tanh approximation (GPT-2's `gelu_new`).

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;
/// Elements handed to one parallel task of an elementwise kernel.
const ELEMS_PER_TASK: usize = 1 << 14;

/// tanh as a [13/6] rational function on [-7.9053, 7.9053] (beyond it tanh is ±1 in
/// f32): branch-free, so it vectorises. Largest error over [-12, 12] in f32 arithmetic:
/// 3.4e-7 (libm's tanhf: 6e-8).
#[allow(clippy::excessive_precision)] // the coefficients as published, f32 rounds them
#[inline(always)]
fn tanh_rational(x: f32) -> f32 {
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = -2.760_768_5e-16_f32;
    p = p * x2 + 2.000_187_9e-13;
    p = p * x2 + -8.604_672e-11;
    p = p * x2 + 5.122_297e-8;
    p = p * x2 + 1.485_722_4e-5;
    p = p * x2 + 6.372_619_3e-4;
    p = p * x2 + 4.893_524_6e-3;
    let mut q = 1.198_258_4e-6_f32;
    q = q * x2 + 1.185_347_1e-4;
    q = q * x2 + 2.268_434_6e-3;
    q = q * x2 + 4.893_525_2e-3;
    x * p / q
}

/// GPT-2's GELU of one value (the forward kernels below map it over rows).
#[inline(always)]
fn gelu_tanh_one(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh_rational(SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)))
}

#[inline(always)]
fn gelu_tanh_fwd_body(x: &[f32], y: &mut [f32], _rows_of: usize) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = gelu_tanh_one(x);
    }
}

#[inline(always)]
fn gelu_tanh_bwd_body(x: &[f32], g: &[f32], dx: &mut [f32], _rows_of: usize) {
    for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
        let t = tanh_rational(SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x));
        let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
        *dx = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
    }
}

with_avx2!(gelu_tanh_fwd, gelu_tanh_fwd_body, (x: &[f32], y: &mut [f32], d: usize));
with_avx2!(
    gelu_tanh_bwd,
    gelu_tanh_bwd_body,
    (x: &[f32], g: &[f32], dx: &mut [f32], d: usize)
);

/// GPT-2's GELU, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`: one fused pass forward and
/// one backward on Flex and `Autodiff<Flex>` in f32 (Burn composes it from eight ops, with
/// scalar `powf` and `tanh`); Burn's `gelu_approximate` elsewhere.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    rowwise(
        x,
        Saved::Input,
        gelu_tanh_fwd,
        gelu_tanh_bwd,
        gelu_approximate,
    )
}

// ---------------------------------------------------------------------------------------
// GELU, exact (erf): ViT, BERT.

/// erf as a [13/8] rational function on [-4, 4] (beyond it erf is ±1 in f32): branch-free,
/// so it vectorises, where Flex calls libm's scalar `erff` per element. Largest error
/// over [-8, 8]: 4.2e-7.
#[allow(clippy::excessive_precision)]
#[inline(always)]
fn erf_rational(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    x * p / q
}

/// e^x by range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial (Cephes' `expf`
/// coefficients), the power of two built in the exponent bits: branch-free. Inputs are
/// clamped to [-87, 88]; relative error 8e-8.
#[allow(clippy::excessive_precision)]
#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n without a float-to-int cast (Rust's `as` saturates, which compiles to a scalar
    // compare per lane): n + 127 is an integer in [1, 254], and adding 2^23 puts it in the
    // low mantissa bits, which the shift moves into the exponent field.
    let biased = (n + (127.0 + 8_388_608.0)).to_bits();
    y * f32::from_bits(biased << 23)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// The exact GELU of one value (the forward kernels below map it over rows).
#[inline(always)]
fn gelu_erf_one(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_rational(x * FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_erf_fwd_body(x: &[f32], y: &mut [f32], _rows_of: usize) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = gelu_erf_one(x);
    }
}

#[inline(always)]
fn gelu_erf_bwd_body(x: &[f32], g: &[f32], dx: &mut [f32], _rows_of: usize) {
    for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
        let cdf = 0.5 * (1.0 + erf_rational(x * FRAC_1_SQRT_2));
        let pdf = FRAC_1_SQRT_2PI * exp_poly(-0.5 * x * x);
        *dx = g * (cdf + x * pdf);
    }
}

with_avx2!(gelu_erf_fwd, gelu_erf_fwd_body, (x: &[f32], y: &mut [f32], d: usize));
with_avx2!(
    gelu_erf_bwd,
    gelu_erf_bwd_body,
    (x: &[f32], g: &[f32], dx: &mut [f32], d: usize)
);

/// The exact GELU, `0.5·x·(1 + erf(x/√2))`, vectorised on Flex and `Autodiff<Flex>` in
/// f32; Burn's `gelu` elsewhere.
pub fn gelu_erf<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    rowwise(x, Saved::Input, gelu_erf_fwd, gelu_erf_bwd, gelu)
}

// ---------------------------------------------------------------------------------------
// Layout copies: the 3x3 convolution's column matrix, attention heads.

/// A copy that rearranges a 4-D tensor into `out` dims, `fwd(values, dims)`, with the
/// gradient rearranged back by `bwd(grad, dims)`: fused on Flex and `Autodiff<Flex>` in
/// f32; `Err(x)` elsewhere, for the caller's Burn ops.
fn layout_op<B: Backend, const E: usize>(
    x: Tensor<B, 4>,
    out: [usize; E],
    fwd: LayoutFn,
    bwd: LayoutFn,
) -> Result<Tensor<B, E>, Tensor<B, 4>> {
    let dims = x.dims();
    match route(x) {
        Route::Autodiff(x) => {
            let y = flex_f32(fwd(slice(&f32_values(&x.primitive)), dims), Shape::new(out));
            let y = match (LayoutBackward { bwd })
                .prepare::<NoCheckpointing>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(dims, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Ok(from_ad(y))
        }
        Route::Flex(x) => Ok(from_flex(flex_f32(
            fwd(slice(&f32_values(&x)), dims),
            Shape::new(out),
        ))),
        Route::Burn(x) => Err(x),
    }
}

/// Rearranges contiguous values of a tensor whose input dims are given.
type LayoutFn = fn(&[f32], [usize; 4]) -> Vec<f32>;

#[derive(Debug)]
struct LayoutBackward {
    bwd: LayoutFn,
}

impl Backward<Flex, 1> for LayoutBackward {
    /// The input's dims.
    type State = [usize; 4];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(node) = node_x else { return };
        let dims = ops.state;
        let dx = (self.bwd)(slice(&f32_values(&grad)), dims);
        grads.register::<Flex>(node.id, flex_f32(dx, Shape::new(dims)));
    }
}

/// The valid output columns of tap offset `d` (−1, 0, 1) in a row of `w`: (first output
/// column, first input column, count).
fn tap_span(d: isize, w: usize) -> (usize, usize, usize) {
    match d {
        -1 => (1, 0, w.saturating_sub(1)),
        0 => (0, 0, w),
        _ => (0, 1, w.saturating_sub(1)),
    }
}

/// Column matrix of a 3x3, stride-1, zero-padded convolution over channel-major values
/// x [C, B, H, W] -> [C·9, B·H·W]: row c·9 + ky·3 + kx holds input (y + ky − 1, x + kx − 1)
/// at column (b, y, x), zero outside the image.
fn im2col_values(x: &[f32], [c, b, h, w]: [usize; 4]) -> Vec<f32> {
    let plane = b * h * w;
    let mut cols = uninit(c * 9 * plane);
    cols.par_chunks_mut(plane)
        .with_min_len(min_items(plane))
        .enumerate()
        .for_each(|(row, out)| {
            let (ch, ky, kx) = (row / 9, (row % 9) / 3, row % 3);
            let (dy, dx) = (ky as isize - 1, kx as isize - 1);
            let (o0, i0, n) = tap_span(dx, w);
            for bi in 0..b {
                let src = &x[(ch * b + bi) * h * w..(ch * b + bi + 1) * h * w];
                for y in 0..h {
                    let run = &mut out[(bi * h + y) * w..(bi * h + y + 1) * w];
                    let sy = y as isize + dy;
                    if sy < 0 || sy >= h as isize {
                        write_zeros(run);
                        continue;
                    }
                    let s = sy as usize * w;
                    // Zeros left of the copied span, the span, zeros right of it: all w.
                    write_zeros(&mut run[..o0]);
                    write_all(&mut run[o0..o0 + n], &src[s + i0..s + i0 + n]);
                    write_zeros(&mut run[o0 + n..]);
                }
            }
        });
    // SAFETY: every row of every plane was written in full above.
    unsafe { assume_init(cols) }
}

/// The input gradient of [`im2col_values`]: every column entry added back to the input cell
/// it was copied from.
fn col2im_values(cols: &[f32], [c, b, h, w]: [usize; 4]) -> Vec<f32> {
    let plane = b * h * w;
    let mut dx = uninit(c * plane);
    dx.par_chunks_mut(plane)
        .with_min_len(min_items(9 * plane))
        .enumerate()
        .for_each(|(ch, out)| {
            // The centre tap (dy = dx = 0) covers every cell: it initialises the plane.
            write_all(out, &cols[(ch * 9 + 4) * plane..(ch * 9 + 5) * plane]);
            // SAFETY: written in full just above.
            let out = unsafe { assume_init_mut(out) };
            for tap in (0..9).filter(|&t| t != 4) {
                let (dy, dxo) = ((tap / 3) as isize - 1, (tap % 3) as isize - 1);
                let (o0, i0, n) = tap_span(dxo, w);
                let rows = &cols[(ch * 9 + tap) * plane..(ch * 9 + tap + 1) * plane];
                for bi in 0..b {
                    for y in 0..h {
                        let sy = y as isize + dy;
                        if sy < 0 || sy >= h as isize {
                            continue;
                        }
                        let src = &rows[(bi * h + y) * w + o0..(bi * h + y) * w + o0 + n];
                        let base = (bi * h + sy as usize) * w + i0;
                        for (d, s) in out[base..base + n].iter_mut().zip(src) {
                            *d += s;
                        }
                    }
                }
            }
        });
    // SAFETY: every plane was initialised by its centre tap.
    unsafe { assume_init(dx) }
}

// ---------------------------------------------------------------------------------------
// A whole 3x3 convolution (column matrix, matrix product, bias, ReLU) as one op.

/// `relu?(conv(x) + bias)` for a 3x3, stride-1, zero-padded convolution on channel-major
/// maps: x [C, B, H, W], `weight` [Cout, C, 3, 3], `bias` [Cout] -> [Cout, B, H, W]. On Flex
/// and `Autodiff<Flex>` in f32 it is one op: the column matrix, one matrix product and one
/// pass for the bias and ReLU forward; backward, one pass for the ReLU mask and the bias
/// gradient, the weight gradient with the long inner dimension split across the cores
/// (gemm parallelises over the output only, which is one tile here), and the input
/// gradient only when the input needs one (never for the images themselves). `Err(x)`
/// elsewhere, for the caller's Burn ops.
pub fn conv3x3_cbhw<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    relu: bool,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [cout, cin, kh, kw] = weight.dims();
    let [c, b, h, w] = x.dims();
    if [kh, kw] != [3, 3] || cin != c || weight.dtype() != DType::F32 {
        return Err(x);
    }
    if bias.as_ref().is_some_and(|t| t.dtype() != DType::F32) {
        return Err(x);
    }
    let dims = ConvDims { c, b, h, w, cout };
    match route(x) {
        Route::Autodiff(x) => {
            let weight = ad_prim(same_backend::<B, Ad, 4>(weight));
            let bias = match bias {
                Some(t) => ad_prim(same_backend::<B, Ad, 1>(t)),
                None => ad_prim(Tensor::<Ad, 1>::zeros([cout], &Default::default())),
            };
            Ok(from_ad(conv3x3_ad(x, weight, bias, dims, relu)))
        }
        Route::Flex(x) => {
            let weight = same_backend::<B, Flex, 4>(weight).into_primitive().tensor();
            let bias = bias.map(|t| same_backend::<B, Flex, 1>(t).into_primitive().tensor());
            let bias = bias.as_ref().map(f32_values);
            let (y, _) = conv3x3_forward(
                slice(&f32_values(&x)),
                slice(&f32_values(&weight)),
                bias.as_ref().map(slice),
                dims,
                relu,
            );
            Ok(from_flex(flex_f32(y, dims.out_shape())))
        }
        Route::Burn(x) => Err(x),
    }
}

#[derive(Debug, Clone, Copy)]
struct ConvDims {
    c: usize,
    b: usize,
    h: usize,
    w: usize,
    cout: usize,
}

impl ConvDims {
    /// Output positions, the columns of every matrix here.
    fn n(&self) -> usize {
        self.b * self.h * self.w
    }
    fn out_shape(&self) -> Shape {
        Shape::new([self.cout, self.b, self.h, self.w])
    }
}

/// Multiply-adds from which a matrix product is split across the cores (Flex's threshold).
const PARALLEL_GEMM_OPS: usize = 192 * 192 * 192;

/// Parallel tasks of `item`-sized pieces hold at least this many of them, so small maps
/// (a batch of one) run as one task instead of one per channel.
fn min_items(item: usize) -> usize {
    (ELEMS_PER_TASK / item.max(1)).max(1)
}

/// `dst` (m×n, row-major) = lhs (m×k) · rhs (k×n), the operands given with their row and
/// column strides; every element of `dst` is written (it need not be initialised). The
/// bounds of both operands are checked before gemm reads them through raw pointers.
fn gemm_into(
    dst: &mut [MaybeUninit<f32>],
    [m, n, k]: [usize; 3],
    lhs: &[f32],
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: &[f32],
    [rhs_rs, rhs_cs]: [usize; 2],
    parallel: bool,
) {
    assert_eq!(dst.len(), m * n, "gemm destination size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        write_zeros(dst);
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, lhs_rs, k, lhs_cs) < lhs.len(), "gemm lhs bounds");
    assert!(last(k, rhs_rs, n, rhs_cs) < rhs.len(), "gemm rhs bounds");
    // Below Flex's own threshold a product runs on one core: handing a batch-1 layer's
    // product to the thread pool costs more than it saves.
    let parallelism = if parallel && m * n * k >= PARALLEL_GEMM_OPS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index gemm forms lies inside the slices, as checked above; `dst` is a
    // distinct, exclusively borrowed m×n buffer; read_dst = false, so it is only written,
    // every element of it (dst = 1.0 · lhs · rhs).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The output (after bias and ReLU) and the column matrix the backward pass needs.
fn conv3x3_forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    d: ConvDims,
    relu: bool,
) -> (Vec<f32>, Vec<f32>) {
    let (n, k) = (d.n(), d.c * 9);
    let cols = im2col_values(x, [d.c, d.b, d.h, d.w]);
    let mut y = uninit(d.cout * n);
    gemm_into(&mut y, [d.cout, n, k], weight, [k, 1], &cols, [n, 1], true);
    // SAFETY: gemm_into writes every element.
    let mut y = unsafe { assume_init(y) };
    let chunk = ELEMS_PER_TASK;
    if bias.is_some() || relu {
        // Row o of y is channel o: split each row into tasks so a few wide channels still
        // spread over the cores.
        y.par_chunks_mut(n)
            .with_min_len(min_items(n))
            .enumerate()
            .for_each(|(o, row)| {
                let add = bias.map_or(0.0, |bv| bv[o]);
                row.par_chunks_mut(chunk)
                    .for_each(|part| bias_act(part, add, relu));
            });
    }
    (y, cols)
}

#[inline(always)]
fn bias_act_body(row: &mut [f32], add: f32, relu: bool) {
    if relu {
        row.iter_mut().for_each(|v| *v = (*v + add).max(0.0));
    } else {
        row.iter_mut().for_each(|v| *v += add);
    }
}
with_avx2!(bias_act, bias_act_body, (row: &mut [f32], add: f32, relu: bool));

/// g masked by the ReLU (where the output is positive) written into `gy` (all of it);
/// returns the part's sum, its share of the bias gradient of its channel.
#[inline(always)]
fn relu_mask_sum_body(g: &[f32], y: &[f32], gy: &mut [MaybeUninit<f32>], relu: bool) -> f32 {
    assert!(g.len() == gy.len() && y.len() == gy.len());
    if relu {
        for ((d, &gv), &yv) in gy.iter_mut().zip(g).zip(y) {
            d.write(if yv > 0.0 { gv } else { 0.0 });
        }
    } else {
        write_all(gy, g);
    }
    // SAFETY: every element was written above (the lengths are equal).
    sum_lanes(unsafe { assume_init_mut(gy) })
}

with_avx2!(
    relu_mask_sum,
    relu_mask_sum_body,
    (g: &[f32], y: &[f32], gy: &mut [MaybeUninit<f32>], relu: bool) -> f32
);

#[derive(Debug)]
struct ConvBackward {
    dims: ConvDims,
    relu: bool,
}

/// What the backward pass needs: the column matrix, the weights and the output (for the
/// ReLU mask).
#[derive(Debug, Clone)]
struct ConvState {
    cols: FlexTensor,
    weight: FlexTensor,
    y: FlexTensor,
}

impl Backward<Flex, 3> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let ConvState { cols, weight, y } = ops.state;
        let d = self.dims;
        let (n, k) = (d.n(), d.c * 9);
        let g = f32_values(&grad);
        let (g, y, cols, weight) = (slice(&g), slice(&y), slice(&cols), slice(&weight));

        // The gradient at the pre-activation, and its row sums (the bias gradient).
        let chunk = ELEMS_PER_TASK;
        let mut gy = uninit(d.cout * n);
        let db: Vec<f32> = gy
            .par_chunks_mut(n)
            .zip(g.par_chunks(n))
            .zip(y.par_chunks(n))
            .with_min_len(min_items(n))
            .map(|((gy, g), y)| {
                gy.par_chunks_mut(chunk)
                    .zip(g.par_chunks(chunk))
                    .zip(y.par_chunks(chunk))
                    .map(|((gy, g), y)| relu_mask_sum(g, y, gy, self.relu))
                    .sum::<f32>()
            })
            .collect();
        // SAFETY: relu_mask_sum wrote every element, chunk by chunk.
        let gy = unsafe { assume_init(gy) };

        if let Some(node) = node_w {
            // dW [Cout, C·9] = gy · colsᵀ over n, in one slice of n per core, then summed.
            let parts = rayon::current_num_threads().clamp(1, n.div_ceil(4096).max(1));
            let span = n.div_ceil(parts);
            let partial: Vec<Vec<f32>> = (0..parts)
                .into_par_iter()
                .map(|p| {
                    let (lo, hi) = (p * span, ((p + 1) * span).min(n));
                    let mut dw = uninit(d.cout * k);
                    gemm_into(
                        &mut dw,
                        [d.cout, k, hi.saturating_sub(lo)],
                        &gy[lo.min(n)..],
                        [n, 1],
                        &cols[lo.min(n)..],
                        [1, n],
                        false,
                    );
                    // SAFETY: gemm_into writes every element (zeros for an empty slice).
                    unsafe { assume_init(dw) }
                })
                .collect();
            let mut dw = vec![0f32; d.cout * k];
            for part in partial {
                dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
            }
            grads.register::<Flex>(node.id, flex_f32(dw, Shape::new([d.cout, d.c, 3, 3])));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, flex_f32(db, Shape::new([d.cout])));
        }
        if let Some(node) = node_x {
            // dcols [C·9, n] = Wᵀ · gy, then each column entry back to its input cell.
            let mut dcols = uninit(k * n);
            gemm_into(
                &mut dcols,
                [k, n, d.cout],
                weight,
                [1, k],
                &gy,
                [n, 1],
                true,
            );
            // SAFETY: gemm_into writes every element.
            let dcols = unsafe { assume_init(dcols) };
            let dx = col2im_values(&dcols, [d.c, d.b, d.h, d.w]);
            grads.register::<Flex>(node.id, flex_f32(dx, Shape::new([d.c, d.b, d.h, d.w])));
        }
    }
}

fn conv3x3_ad(
    x: FloatTensor<Ad>,
    weight: FloatTensor<Ad>,
    bias: FloatTensor<Ad>,
    dims: ConvDims,
    relu: bool,
) -> FloatTensor<Ad> {
    let wv = f32_values(&weight.primitive);
    let bv = f32_values(&bias.primitive);
    let (y, cols) = conv3x3_forward(
        slice(&f32_values(&x.primitive)),
        slice(&wv),
        Some(slice(&bv)),
        dims,
        relu,
    );
    let y = flex_f32(y, dims.out_shape());
    match (ConvBackward { dims, relu })
        .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let cols = flex_f32(cols, Shape::new([dims.c * 9, dims.n()]));
            let state = ConvState {
                cols,
                weight: wv,
                y: y.clone(),
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

// ---------------------------------------------------------------------------------------
// 2x2, stride-2 max pooling.

/// 2x2, stride-2 max pooling over the last two axes, [A, B, H, W] -> [A, B, H/2, W/2]
/// (even H and W), in one pass that records which cell of each window won; the gradient
/// goes back to that cell. Ties go to the first maximum in row-major order, as Burn's
/// kernel sends them. On Flex and `Autodiff<Flex>` in f32; `Err(x)` elsewhere or for odd
/// sides.
pub fn max_pool_2x2<B: Backend>(x: Tensor<B, 4>) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let dims = x.dims();
    let [a, b, h, w] = dims;
    if h % 2 != 0 || w % 2 != 0 {
        return Err(x);
    }
    let out = Shape::new([a, b, h / 2, w / 2]);
    match route(x) {
        Route::Autodiff(x) => {
            let (y, arg) = pool_forward(slice(&f32_values(&x.primitive)), dims);
            let y = flex_f32(y, out);
            let y = match PoolBackward
                .prepare::<NoCheckpointing>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((dims, std::sync::Arc::new(arg)), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Ok(from_ad(y))
        }
        Route::Flex(x) => Ok(from_flex(flex_f32(
            pool_forward(slice(&f32_values(&x)), dims).0,
            out,
        ))),
        Route::Burn(x) => Err(x),
    }
}

/// Pooled values and, per output cell, the winning cell of its window (0 top left,
/// 1 top right, 2 bottom left, 3 bottom right).
fn pool_forward(x: &[f32], [_, _, _, w]: [usize; 4]) -> (Vec<f32>, Vec<u8>) {
    let ow = w / 2;
    let mut y = uninit(x.len() / 4);
    let mut arg = vec![0u8; y.len()];
    // Tasks of whole output rows: one row of windows reads two input rows.
    let rows = (ELEMS_PER_TASK / (2 * w).max(1)).max(1);
    y.par_chunks_mut(rows * ow)
        .zip(arg.par_chunks_mut(rows * ow))
        .zip(x.par_chunks(rows * 2 * w))
        .for_each(|((y, arg), x)| {
            for ((y, arg), pair) in y
                .chunks_mut(ow)
                .zip(arg.chunks_mut(ow))
                .zip(x.chunks(2 * w))
            {
                let (top, bottom) = pair.split_at(w);
                for (ox, (yv, at)) in y.iter_mut().zip(arg.iter_mut()).enumerate() {
                    let cells = [
                        top[2 * ox],
                        top[2 * ox + 1],
                        bottom[2 * ox],
                        bottom[2 * ox + 1],
                    ];
                    let (mut best, mut win) = (cells[0], 0u8);
                    for (i, &v) in cells.iter().enumerate().skip(1) {
                        // A NaN wins, so a window holding one pools to NaN.
                        if v > best || (v.is_nan() && !best.is_nan()) {
                            best = v;
                            win = i as u8;
                        }
                    }
                    yv.write(best);
                    *at = win;
                }
            }
        });
    // SAFETY: each output row was written in full (rows of ow cells, one per window).
    (unsafe { assume_init(y) }, arg)
}

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    /// The input's dims and the winning cell of every window.
    type State = ([usize; 4], std::sync::Arc<Vec<u8>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(node) = node_x else { return };
        let (dims, arg) = ops.state;
        let w = dims[3];
        let ow = w / 2;
        let g = f32_values(&grad);
        let g = slice(&g);
        let mut dx = uninit(g.len() * 4);
        let rows = (ELEMS_PER_TASK / (2 * w).max(1)).max(1);
        dx.par_chunks_mut(rows * 2 * w)
            .zip(g.par_chunks(rows * ow))
            .zip(arg.par_chunks(rows * ow))
            .for_each(|((dx, g), arg)| {
                for ((pair, g), arg) in dx.chunks_mut(2 * w).zip(g.chunks(ow)).zip(arg.chunks(ow)) {
                    let (top, bottom) = pair.split_at_mut(w);
                    for (ox, (&gv, &at)) in g.iter().zip(arg).enumerate() {
                        // Every cell of the window is written: g at the winner, 0 elsewhere.
                        let pick = |cell: u8| if at == cell { gv } else { 0.0 };
                        top[2 * ox].write(pick(0));
                        top[2 * ox + 1].write(pick(1));
                        bottom[2 * ox].write(pick(2));
                        bottom[2 * ox + 1].write(pick(3));
                    }
                }
            });
        // SAFETY: every window of every row pair was written in full.
        let dx = unsafe { assume_init(dx) };
        grads.register::<Flex>(node.id, flex_f32(dx, Shape::new(dims)));
    }
}

// ---------------------------------------------------------------------------------------
// Attention for inference, one op per batch row.

/// Softmax attention for inference on Flex in f32, on rows before the heads are split:
/// q [B, T, D], k and v [B, S, D], `heads` heads of D / heads, an optional additive bias per
/// key, `key_bias` [B, S] (−∞ hides a padded key) -> the context [B, T, D], heads side by
/// side (what the output projection reads). Per batch row and head: the scores
/// q·kᵀ/√dk in one product read straight from the rows (no split or merge copies), the bias
/// and softmax in one pass, and the context written into its columns of the output.
/// `None` on other backends, under autodiff (training keeps Burn's ops, with their
/// gradients) and in half precision.
pub fn attention_rows<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    heads: usize,
    key_bias: Option<&Tensor<B, 2>>,
) -> Option<Tensor<B, 3>> {
    let [b, t, d] = q.dims();
    let s = k.dims()[1];
    let f32_all = [q, k, v].iter().all(|x| x.dtype() == DType::F32)
        && key_bias.is_none_or(|x| x.dtype() == DType::F32);
    if !f32_all || heads == 0 || d % heads != 0 || k.dims() != [b, s, d] || v.dims() != [b, s, d] {
        return None;
    }
    if key_bias.is_some_and(|x| x.dims() != [b, s]) {
        return None;
    }
    let flex = |x: &Tensor<B, 3>| -> Option<FlexTensor> {
        cast::<B, Flex, 3>(x.clone())
            .ok()
            .map(|x| f32_values(&x.into_primitive().tensor()))
    };
    let (qv, kv, vv) = (flex(q)?, flex(k)?, flex(v)?);
    let bias = key_bias.map(|x| {
        f32_values(
            &same_backend::<B, Flex, 2>(x.clone())
                .into_primitive()
                .tensor(),
        )
    });
    let dims = AttnDims { t, s, d, heads };
    let ctx = attention_values(
        slice(&qv),
        slice(&kv),
        slice(&vv),
        bias.as_ref().map(slice),
        b,
        dims,
    );
    Some(from_flex(flex_f32(ctx, Shape::new([b, t, d]))))
}

#[derive(Debug, Clone, Copy)]
struct AttnDims {
    t: usize,
    s: usize,
    d: usize,
    heads: usize,
}

fn attention_values(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    b: usize,
    AttnDims { t, s, d, heads }: AttnDims,
) -> Vec<f32> {
    let dk = d / heads;
    let scale = 1.0 / (dk as f32).sqrt();
    // One task per (batch row, head), so a single image's heads still spread over the cores.
    let ctxs: Vec<Vec<f32>> = (0..b * heads)
        .into_par_iter()
        .map(|i| {
            let (bi, h) = (i / heads, i % heads);
            let (q, k, v) = (
                &q[bi * t * d + h * dk..(bi + 1) * t * d],
                &k[bi * s * d + h * dk..(bi + 1) * s * d],
                &v[bi * s * d + h * dk..(bi + 1) * s * d],
            );
            // scores [T, S] = q_h · k_hᵀ, both read with row stride D.
            let mut scores = uninit(t * s);
            gemm_into(&mut scores, [t, s, dk], q, [d, 1], k, [1, d], false);
            // SAFETY: gemm_into writes every element.
            let mut scores = unsafe { assume_init(scores) };
            for row in scores.chunks_mut(s) {
                match bias {
                    Some(kb) => {
                        let kb = &kb[bi * s..(bi + 1) * s];
                        row.iter_mut()
                            .zip(kb)
                            .for_each(|(x, &c)| *x = *x * scale + c);
                    }
                    None => row.iter_mut().for_each(|x| *x *= scale),
                }
            }
            let mut probs = vec![0f32; t * s];
            softmax_rows(&scores, &mut probs, s);
            // ctx [T, dk] = probs · v_h, v read with row stride D.
            let mut ctx = uninit(t * dk);
            gemm_into(&mut ctx, [t, dk, s], &probs, [s, 1], v, [d, 1], false);
            // SAFETY: gemm_into writes every element.
            unsafe { assume_init(ctx) }
        })
        .collect();
    let mut out = uninit(b * t * d);
    out.par_chunks_mut(t * d).enumerate().for_each(|(bi, out)| {
        for (h, ctx) in ctxs[bi * heads..(bi + 1) * heads].iter().enumerate() {
            for (row, src) in out.chunks_mut(d).zip(ctx.chunks(dk)) {
                write_all(&mut row[h * dk..(h + 1) * dk], src);
            }
        }
    });
    // SAFETY: each head wrote its dk columns of every row, and the heads cover all D.
    unsafe { assume_init(out) }
}

// ---------------------------------------------------------------------------------------
// Linear layers: product and bias in one op (at inference, the activation too).

/// What a fused linear applies after its bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    /// The exact GELU (ViT, BERT).
    GeluErf,
    /// GPT-2's tanh GELU.
    GeluTanh,
}

/// `lin` on every row of x [B, T, Din] -> [B, T, Dout], then `act`. On Flex in f32 the
/// product goes straight into the output (Flex computes it into a zeroed buffer, copies
/// that into the tensor, then adds the bias in a second op and the activation in a third),
/// and each block of rows gets its bias and activation while it is still in cache. On
/// `Autodiff<Flex>` (`act` = `Act::None` only) it is one op with a hand-written backward:
/// dx = g·Wᵀ, dW = xᵀ·g, db = Σ g over rows. The weight is read through its strides, so a
/// transposed checkpoint weight is not copied per call. `None` on other backends, for an
/// activation under autodiff, and in half precision.
pub fn linear_rows<B: Backend>(
    lin: &Linear<B>,
    x: &Tensor<B, 3>,
    act: Act,
) -> Option<Tensor<B, 3>> {
    let [b, t, k] = x.dims();
    let weight = lin.weight.val();
    let [wk, n] = weight.dims();
    if weight.dtype() != DType::F32 || wk != k {
        return None;
    }
    if let Some(p) = &lin.bias {
        if p.val().dtype() != DType::F32 || p.val().dims() != [n] {
            return None;
        }
    }
    let dims = [b * t, k, n];
    match route(x.clone()) {
        Route::Autodiff(x) if act == Act::None => {
            let w = ad_prim(same_backend::<B, Ad, 2>(weight));
            strided_2d(&w.primitive)?;
            let bias = match &lin.bias {
                Some(p) => ad_prim(same_backend::<B, Ad, 1>(p.val())),
                None => ad_prim(Tensor::<Ad, 1>::zeros([n], &Default::default())),
            };
            Some(from_ad(linear_ad(x, w, bias, dims, Shape::new([b, t, n]))))
        }
        Route::Flex(x) => {
            let x = f32_values(&x);
            let w = same_backend::<B, Flex, 2>(weight).into_primitive().tensor();
            let bias = lin.bias.as_ref().map(|p| {
                f32_values(
                    &same_backend::<B, Flex, 1>(p.val())
                        .into_primitive()
                        .tensor(),
                )
            });
            let (wv, w_strides) = strided_2d(&w)?;
            let y = linear_values(
                slice(&x),
                wv,
                w_strides,
                bias.as_ref().map(slice),
                dims,
                act,
            );
            Some(from_flex(flex_f32(y, Shape::new([b, t, n]))))
        }
        _ => None,
    }
}

#[derive(Debug)]
struct LinearBackward {
    dims: [usize; 3],
}

/// What the linear backward reads: the input rows (contiguous) and the weight as stored.
#[derive(Debug, Clone)]
struct LinearState {
    x: FlexTensor,
    w: FlexTensor,
}

impl Backward<Flex, 3> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let LinearState { x, w } = ops.state;
        let [m, k, n] = self.dims;
        let g = f32_values(&grad);
        let g = slice(&g);
        if let Some(node) = node_b {
            // db [N] = column sums of g, one partial sum per block of rows.
            let db = g
                .par_chunks(rows_per_task(n) * n)
                .map(|rows| {
                    let mut sum = vec![0f32; n];
                    for row in rows.chunks(n) {
                        sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
                    }
                    sum
                })
                .reduce(
                    || vec![0f32; n],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(s, &v)| *s += v);
                        a
                    },
                );
            grads.register::<Flex>(node.id, flex_f32(db, Shape::new([n])));
        }
        if let Some(node) = node_w {
            // dW [K, N] = xᵀ · g, x read column-wise in place.
            let mut dw = uninit(k * n);
            gemm_into(&mut dw, [k, n, m], slice(&x), [1, k], g, [n, 1], true);
            // SAFETY: gemm_into writes every element.
            let dw = unsafe { assume_init(dw) };
            grads.register::<Flex>(node.id, flex_f32(dw, Shape::new([k, n])));
        }
        if let Some(node) = node_x {
            // dx [M, K] = g · Wᵀ, W read through its strides, transposed.
            let (wv, [rs, cs]) = strided_2d(&w).expect("checked before the forward");
            let mut dx = uninit(m * k);
            gemm_into(&mut dx, [m, k, n], g, [n, 1], wv, [cs, rs], true);
            // SAFETY: gemm_into writes every element.
            let dx = unsafe { assume_init(dx) };
            grads.register::<Flex>(node.id, flex_f32(dx, x.layout().shape().clone()));
        }
    }
}

fn linear_ad(
    x: FloatTensor<Ad>,
    w: FloatTensor<Ad>,
    bias: FloatTensor<Ad>,
    dims: [usize; 3],
    out: Shape,
) -> FloatTensor<Ad> {
    let xv = f32_values(&x.primitive);
    let bv = f32_values(&bias.primitive);
    let wt = w.primitive.clone();
    let (wv, w_strides) = strided_2d(&wt).expect("checked by the caller");
    let y = linear_values(slice(&xv), wv, w_strides, Some(slice(&bv)), dims, Act::None);
    let y = flex_f32(y, out);
    match (LinearBackward { dims })
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(LinearState { x: xv, w: wt }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// A 2-D f32 Flex tensor's storage from its first element, with its row and column
/// strides; `None` for negative strides or another dtype.
fn strided_2d(t: &FlexTensor) -> Option<(&[f32], [usize; 2])> {
    let layout = t.layout();
    let (_, _, rs, cs) = layout.as_2d_strides()?;
    if t.dtype() != DType::F32 || !layout.has_positive_strides() {
        return None;
    }
    let values = &t.storage::<f32>()[layout.start_offset()..];
    Some((values, [rs as usize, cs as usize]))
}

/// Rows of one parallel task of a fused linear: enough that packing the weight again per
/// task is small next to the product.
const LINEAR_ROWS_PER_TASK: usize = 64;

fn linear_values(
    x: &[f32],
    w: &[f32],
    w_strides: [usize; 2],
    bias: Option<&[f32]>,
    [m, k, n]: [usize; 3],
    act: Act,
) -> Vec<f32> {
    let mut y = uninit(m * n);
    let threads = rayon::current_num_threads();
    let block = |y: &mut [MaybeUninit<f32>], rows: usize, row0: usize, parallel: bool| {
        let x = &x[row0 * k..(row0 + rows) * k];
        gemm_into(y, [rows, n, k], x, [k, 1], w, w_strides, parallel);
        // SAFETY: gemm_into writes every element.
        let y = unsafe { assume_init_mut(y) };
        y.chunks_mut(n).for_each(|row| bias_gelu(row, bias, act));
    };
    if m * n * k < PARALLEL_GEMM_OPS || n == 0 {
        block(&mut y, m, 0, false);
    } else if m >= 2 * LINEAR_ROWS_PER_TASK * threads {
        // Enough rows: split them, each task's product on one core.
        let rows = m.div_ceil(threads * 4).max(LINEAR_ROWS_PER_TASK);
        y.par_chunks_mut(rows * n)
            .enumerate()
            .for_each(|(i, y)| block(y, y.len() / n, i * rows, false));
    } else {
        // Few rows (a batch of one): gemm splits the product itself; the epilogue follows.
        gemm_into(&mut y, [m, n, k], x, [k, 1], w, w_strides, true);
        // SAFETY: gemm_into writes every element.
        let mut y = unsafe { assume_init(y) };
        y.par_chunks_mut(n)
            .with_min_len(min_items(n))
            .for_each(|row| bias_gelu(row, bias, act));
        return y;
    }
    // SAFETY: every block was written in full.
    unsafe { assume_init(y) }
}

#[inline(always)]
fn bias_gelu_body(row: &mut [f32], bias: Option<&[f32]>, act: Act) {
    if let Some(bias) = bias {
        row.iter_mut().zip(bias).for_each(|(y, &c)| *y += c);
    }
    match act {
        Act::None => {}
        Act::GeluErf => row.iter_mut().for_each(|y| *y = gelu_erf_one(*y)),
        Act::GeluTanh => row.iter_mut().for_each(|y| *y = gelu_tanh_one(*y)),
    }
}

with_avx2!(bias_gelu, bias_gelu_body, (row: &mut [f32], bias: Option<&[f32]>, act: Act));

// ---------------------------------------------------------------------------------------
// Attention heads back into rows.

/// [B, H, T, dk] -> [B, T, H·dk]: the attention context's heads side by side again. On
/// Flex and `Autodiff<Flex>` in f32 it copies runs of dk values (Flex copies this permuted
/// view one element at a time); `x.swap_dims(1, 2).reshape(..)` elsewhere.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, t, dk] = x.dims();
    match layout_op(x, [b, t, h * dk], merge_values, split_values) {
        Ok(y) => y,
        Err(x) => x.swap_dims(1, 2).reshape([b, t, h * dk]),
    }
}

/// [B, H, T, dk] values (dims given) -> [B, T, H, dk].
fn merge_values(x: &[f32], dims: [usize; 4]) -> Vec<f32> {
    permute_bhtd(x, dims, false)
}

/// [B, T, H, dk] values -> [B, H, T, dk] (dims given as [B, H, T, dk]).
fn split_values(x: &[f32], dims: [usize; 4]) -> Vec<f32> {
    permute_bhtd(x, dims, true)
}

/// Swaps the middle axes of contiguous [B, H, T, dk] values (`back` = false) or of
/// [B, T, H, dk] values back to [B, H, T, dk] (`back` = true), in runs of dk.
fn permute_bhtd(x: &[f32], [_, h, t, dk]: [usize; 4], back: bool) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    // One task per (batch row, output position along the new second axis).
    let (outer, inner) = if back { (h, t) } else { (t, h) };
    y.par_chunks_mut(inner * dk)
        .enumerate()
        .for_each(|(i, out)| {
            let (bi, o) = (i / outer, i % outer);
            for (k, run) in out.chunks_mut(dk).enumerate() {
                // Output [bi, o, k] reads input [bi, k, o].
                let src = ((bi * inner + k) * outer + o) * dk;
                run.copy_from_slice(&x[src..src + dk]);
            }
        });
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LayerNormConfig;
    use burn::tensor::Distribution;

    type A = Autodiff<Flex>;

    fn max_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
        (a - b).abs().max().into_scalar().to_f32_lossy()
    }

    trait Lossy {
        fn to_f32_lossy(self) -> f32;
    }
    impl<T: burn::tensor::ElementConversion> Lossy for T {
        fn to_f32_lossy(self) -> f32 {
            self.elem()
        }
    }

    /// `f(x0)` and the gradient of Σ f(x0)·w with respect to x0.
    fn values_and_grad<const D: usize, const E: usize>(
        x0: &Tensor<A, D>,
        w: &Tensor<A, E>,
        f: impl Fn(Tensor<A, D>) -> Tensor<A, E>,
    ) -> (Tensor<Flex, E>, Tensor<Flex, D>) {
        let x = x0.clone().require_grad();
        let y = f(x.clone());
        let g = (y.clone() * w.clone()).sum().backward();
        (y.inner(), x.grad(&g).unwrap())
    }

    /// Values and every gradient (input, γ, β) of the fused layer norm match Burn's, on a
    /// strided input, with a non-trivial γ and β.
    #[test]
    fn layer_norm_matches_burn_with_gradients() {
        let device = Default::default();
        let mut ln = LayerNormConfig::new(24)
            .with_epsilon(1e-5)
            .init::<A>(&device);
        ln.gamma = ln
            .gamma
            .map(|_| Tensor::random([24], Distribution::Normal(1.0, 0.3), &device).require_grad());
        ln.beta = ln.beta.map(|b| {
            b.map(|_| Tensor::random([24], Distribution::Normal(0.0, 0.3), &device).require_grad())
        });
        // 150 rows: more than two tasks' worth, the last one partial.
        let x0 = Tensor::<A, 3>::random([24, 3, 50], Distribution::Normal(0.5, 2.0), &device);
        let w = Tensor::<A, 3>::random([3, 50, 24], Distribution::Default, &device);
        let run = |fused: bool| {
            let x = x0.clone().require_grad();
            // A strided view: [3, 50, 24] from [24, 3, 50].
            let xs = x.clone().permute([1, 2, 0]);
            let y = if fused {
                layer_norm(&ln, 1e-5, xs)
            } else {
                ln.forward(xs)
            };
            let g = (y.clone() * w.clone()).sum().backward();
            let beta = ln.beta.as_ref().unwrap().val();
            (
                y.inner(),
                x.grad(&g).unwrap(),
                ln.gamma.val().grad(&g).unwrap(),
                beta.grad(&g).unwrap(),
            )
        };
        let (ya, xa, ga, ba) = run(false);
        let (yb, xb, gb, bb) = run(true);
        assert!(max_diff(ya, yb) < 1e-5);
        assert!(max_diff(xa, xb) < 1e-4);
        assert!(max_diff(ga, gb) < 1e-3);
        assert!(max_diff(ba, bb) < 1e-3);
    }

    #[test]
    fn softmax_matches_burn_with_gradients() {
        let device = Default::default();
        let x0 = Tensor::<A, 4>::random([2, 3, 70, 9], Distribution::Normal(0.0, 3.0), &device);
        let w = Tensor::<A, 4>::random([2, 3, 9, 70], Distribution::Default, &device);
        let (ya, ga) = values_and_grad(&x0, &w, |x| softmax(x.swap_dims(2, 3), 3));
        let (yb, gb) = values_and_grad(&x0, &w, |x| softmax_last(x.swap_dims(2, 3)));
        assert!(max_diff(ya, yb) < 1e-6);
        assert!(max_diff(ga, gb) < 1e-5);
    }

    /// Inputs that need no gradient take the untracked route and still compute.
    #[test]
    fn untracked_inputs_compute_the_same_values() {
        let device = Default::default();
        let ln = burn::module::Module::no_grad(LayerNormConfig::new(8).init::<A>(&device));
        let x = Tensor::<A, 2>::random([5, 8], Distribution::Default, &device);
        assert!(max_diff(ln.forward(x.clone()), layer_norm(&ln, 1e-5, x.clone())) < 1e-5);
        assert!(max_diff(softmax(x.clone(), 1), softmax_last(x)) < 1e-6);
    }

    /// On plain Flex, too, the fused softmax matches Burn's, masked (−∞) entries included.
    #[test]
    fn softmax_on_flex_matches_burn() {
        let device = Default::default();
        let x = Tensor::<Flex, 3>::random([7, 9, 65], Distribution::Normal(0.0, 4.0), &device);
        let mask =
            Tensor::<Flex, 3>::random([7, 9, 65], Distribution::Default, &device).lower_elem(0.3);
        let x = x.mask_fill(mask, f32::NEG_INFINITY);
        assert!(max_diff(softmax(x.clone(), 2), softmax_last(x)) < 1e-6);
    }

    #[test]
    fn tanh_rational_is_within_4e7_of_tanh() {
        let worst = (-120_000..=120_000)
            .map(|i| i as f32 * 1e-4)
            .map(|x| ((tanh_rational(x) as f64) - (x as f64).tanh()).abs())
            .fold(0f64, f64::max);
        assert!(worst < 4e-7, "worst error {worst}");
        assert_eq!(tanh_rational(0.0), 0.0);
        assert_eq!(tanh_rational(50.0), tanh_rational(8.0));
    }

    /// The fused GELU matches Burn's composition in value and gradient, under autodiff and
    /// on plain Flex, over a range that reaches both clamped tails.
    #[test]
    fn gelu_tanh_matches_burn_with_gradients() {
        use burn::tensor::activation::gelu_approximate;
        let device = Default::default();
        let x0 = Tensor::<A, 2>::random([300, 130], Distribution::Normal(0.0, 4.0), &device);
        let w = Tensor::<A, 2>::random([300, 130], Distribution::Default, &device);
        let (ya, ga) = values_and_grad(&x0, &w, gelu_approximate);
        let (yb, gb) = values_and_grad(&x0, &w, gelu_tanh);
        assert!(max_diff(ya.clone(), yb) < 1e-5);
        assert!(max_diff(ga, gb) < 1e-5);
        let plain = gelu_tanh(x0.inner());
        assert!(max_diff(ya, plain) < 1e-5);
    }

    #[test]
    fn erf_and_exp_approximations_are_close() {
        let mut worst_erf = 0f64;
        let mut worst_exp = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            let erf_ref = libm_erf(x as f64);
            worst_erf = worst_erf.max((erf_rational(x) as f64 - erf_ref).abs());
        }
        for i in -8_700..=8_800 {
            let x = i as f32 * 1e-2;
            let e = (x as f64).exp();
            worst_exp = worst_exp.max(((exp_poly(x) as f64) - e).abs() / e);
        }
        assert!(worst_erf < 5e-7, "erf: {worst_erf}");
        assert!(worst_exp < 2e-7, "exp: {worst_exp}");
        assert_eq!(exp_poly(-1000.0), exp_poly(-87.0));
    }

    /// erf by its Maclaurin series below 3 and its asymptotic expansion above: a
    /// double-precision reference (std has no erf).
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 3.0 {
            let z = x.abs();
            let mut term = 1.0;
            let mut sum = 1.0;
            for n in 1..12 {
                term *= -((2 * n - 1) as f64) / (2.0 * z * z);
                sum += term;
            }
            let v = 1.0 - (-z * z).exp() / (z * std::f64::consts::PI.sqrt()) * sum;
            return v.copysign(x);
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn gelu_erf_matches_burn_with_gradients() {
        use burn::tensor::activation::gelu;
        let device = Default::default();
        let x0 = Tensor::<A, 2>::random([300, 130], Distribution::Normal(0.0, 4.0), &device);
        let w = Tensor::<A, 2>::random([300, 130], Distribution::Default, &device);
        let run = |fused: bool| {
            let x = x0.clone().require_grad();
            let y = if fused {
                gelu_erf(x.clone())
            } else {
                gelu(x.clone())
            };
            let g = (y.clone() * w.clone()).sum().backward();
            (y.inner(), x.grad(&g).unwrap())
        };
        let (ya, ga) = run(false);
        let (yb, gb) = run(true);
        assert!(max_diff(ya.clone(), yb) < 2e-6);
        assert!(max_diff(ga, gb) < 2e-6);
        assert!(max_diff(ya, gelu_erf(x0.inner())) < 2e-6);
    }

    /// The fused convolution (column matrix, product, bias, ReLU) computes Burn's conv2d and
    /// its gradients for the input, weights and bias: with and without bias and ReLU, on a
    /// strided input, with odd sides, width 1, and more than 4,096 output positions (the
    /// weight gradient then sums slices of the batch computed apart).
    #[test]
    fn conv3x3_matches_burn_with_gradients() {
        use burn::tensor::module::conv2d;
        use burn::tensor::ops::ConvOptions;
        let device = Default::default();
        let cases = [
            ([3, 2, 5, 7], 4, true, true),
            ([2, 3, 4, 1], 3, false, true),
            ([1, 1, 1, 3], 2, true, false),
            ([4, 4, 32, 40], 8, true, true),
        ];
        for ([c, b, h, w], cout, with_bias, relu) in cases {
            let x0 = Tensor::<A, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let w0 =
                Tensor::<A, 4>::random([cout, c, 3, 3], Distribution::Normal(0.0, 0.5), &device);
            let b0 = Tensor::<A, 1>::random([cout], Distribution::Normal(0.0, 0.5), &device);
            let up = Tensor::<A, 4>::random([cout, b, h, w], Distribution::Default, &device);
            let run = |fused: bool| {
                let (x, wt, bias) = (
                    x0.clone().require_grad(),
                    w0.clone().require_grad(),
                    b0.clone().require_grad(),
                );
                let bias_opt = with_bias.then(|| bias.clone());
                // Channel-major, as the CNN keeps it: a strided view of [B, C, H, W].
                let y = if fused {
                    conv3x3_cbhw(x.clone().swap_dims(0, 1), wt.clone(), bias_opt, relu)
                        .expect("fused path on Autodiff<Flex>")
                } else {
                    let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
                    let y = conv2d(x.clone(), wt.clone(), bias_opt, opts).swap_dims(0, 1);
                    if relu {
                        burn::tensor::activation::relu(y)
                    } else {
                        y
                    }
                };
                let g = (y.clone() * up.clone()).sum().backward();
                let gb = with_bias.then(|| bias.grad(&g).expect("bias gradient"));
                (y.inner(), x.grad(&g).unwrap(), wt.grad(&g).unwrap(), gb)
            };
            let (ya, gxa, gwa, gba) = run(false);
            let (yb, gxb, gwb, gbb) = run(true);
            let case = ([c, b, h, w], cout, with_bias, relu);
            assert!(max_diff(ya, yb) < 1e-4, "{case:?}");
            assert!(max_diff(gxa, gxb) < 1e-4, "{case:?}");
            // Sums over up to 5,120 positions: compare relative to their size.
            let scale = gwa.clone().abs().max().into_scalar().max(1.0);
            assert!(max_diff(gwa, gwb) / scale < 1e-5, "{case:?}");
            if let (Some(a), Some(b)) = (gba, gbb) {
                let scale = a.clone().abs().max().into_scalar().max(1.0);
                assert!(max_diff(a, b) / scale < 1e-5, "{case:?}");
            }
        }
    }

    /// Inference on plain Flex gives the autodiff path's values.
    #[test]
    fn conv3x3_on_flex_matches_autodiff() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([3, 2, 6, 5], Distribution::Normal(0.0, 1.0), &device);
        let wt = Tensor::<Flex, 4>::random([5, 3, 3, 3], Distribution::Normal(0.0, 0.5), &device);
        let bias = Tensor::<Flex, 1>::random([5], Distribution::Normal(0.0, 0.5), &device);
        let flex = conv3x3_cbhw(x.clone(), wt.clone(), Some(bias.clone()), true).unwrap();
        let ad = conv3x3_cbhw(
            Tensor::<A, 4>::from_inner(x),
            Tensor::from_inner(wt),
            Some(Tensor::from_inner(bias)),
            true,
        )
        .unwrap()
        .inner();
        assert_eq!(max_diff(flex, ad), 0.0);
    }

    /// Fused inference attention equals Burn's ops (split heads, scaled scores, bias,
    /// softmax, context, merged heads), with and without a key bias that hides padded keys,
    /// with queries and keys of different lengths; it declines under autodiff.
    #[test]
    fn attention_rows_matches_burn_ops() {
        use burn::tensor::activation::softmax;
        let device = Default::default();
        let (b, t, s, d, heads) = (3, 5, 7, 12, 3);
        let q = Tensor::<Flex, 3>::random([b, t, d], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<Flex, 3>::random([b, s, d], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<Flex, 3>::random([b, s, d], Distribution::Normal(0.0, 1.0), &device);
        let mut bias = vec![0f32; b * s];
        for (r, len) in [7usize, 3, 1].into_iter().enumerate() {
            bias[r * s + len..(r + 1) * s].fill(f32::NEG_INFINITY);
        }
        let bias = Tensor::<Flex, 2>::from_data(TensorData::new(bias, [b, s]), &device);
        let split =
            |x: Tensor<Flex, 3>, n: usize| x.reshape([b, n, heads, d / heads]).swap_dims(1, 2);
        for key_bias in [None, Some(&bias)] {
            let mut scores = split(q.clone(), t)
                .matmul(split(k.clone(), s).swap_dims(2, 3))
                .div_scalar(((d / heads) as f64).sqrt());
            if let Some(kb) = key_bias {
                scores = scores + kb.clone().reshape([b, 1, 1, s]);
            }
            let want = softmax(scores, 3)
                .matmul(split(v.clone(), s))
                .swap_dims(1, 2)
                .reshape([b, t, d]);
            let got = attention_rows(&q, &k, &v, heads, key_bias).expect("fused on Flex");
            assert!(max_diff(want, got) < 1e-5, "bias: {}", key_bias.is_some());
        }
        let qa = Tensor::<A, 3>::from_inner(q.clone());
        let ka = Tensor::<A, 3>::from_inner(k);
        let va = Tensor::<A, 3>::from_inner(v);
        assert!(attention_rows(&qa, &ka, &va, heads, None).is_none());
        assert!(
            attention_rows(&q, &q, &q, 5, None).is_none(),
            "12 is not divisible by 5"
        );
    }

    /// The fused linear matches Linear + activation on Flex, with the weight contiguous and
    /// as a transposed view, on shapes that take each of its three paths (one block; rows
    /// split over tasks; gemm's own split for few rows).
    #[test]
    fn linear_rows_matches_burn_ops() {
        use burn::module::Param;
        use burn::nn::LinearConfig;
        use burn::tensor::activation::{gelu, gelu_approximate};
        let device = Default::default();
        for (b, t, k, n) in [(2, 3, 5, 7), (3, 100, 160, 160), (1, 40, 256, 768)] {
            let x = Tensor::<Flex, 3>::random([b, t, k], Distribution::Normal(0.0, 1.0), &device);
            let mut lin = LinearConfig::new(k, n).init::<Flex>(&device);
            let transposed =
                Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 0.1), &device);
            for weight in [lin.weight.val(), transposed.transpose()] {
                lin.weight = Param::from_tensor(weight);
                let plain = lin.forward(x.clone());
                for (act, want) in [
                    (Act::None, plain.clone()),
                    (Act::GeluErf, gelu(plain.clone())),
                    (Act::GeluTanh, gelu_approximate(plain.clone())),
                ] {
                    let got = linear_rows(&lin, &x, act).expect("fused on Flex");
                    let err = max_diff(want, got);
                    assert!(err < 1e-4, "{:?} {act:?}: {err}", [b, t, k, n]);
                }
            }
            let mut no_bias = lin.clone();
            no_bias.bias = None;
            let err = max_diff(
                no_bias.forward(x.clone()),
                linear_rows(&no_bias, &x, Act::None).unwrap(),
            );
            assert!(err < 1e-4, "no bias: {err}");
        }
        let lin = LinearConfig::new(4, 3).init::<A>(&device);
        let xa = Tensor::<A, 3>::zeros([1, 2, 4], &device);
        assert!(
            linear_rows(&lin, &xa, Act::GeluErf).is_none(),
            "no fused activation under autodiff"
        );
        let lin = LinearConfig::new(5, 3).init::<Flex>(&device);
        let x = Tensor::<Flex, 3>::zeros([1, 2, 4], &device);
        assert!(
            linear_rows(&lin, &x, Act::None).is_none(),
            "4 inputs for a 5-input layer"
        );
    }

    /// Under autodiff the fused linear's output and its gradients for the input, weight
    /// and bias match Burn's Linear, with the weight contiguous and as a transposed view,
    /// with and without bias, on shapes small and large enough to split across the cores.
    #[test]
    fn linear_rows_gradients_match_burn() {
        use burn::module::Param;
        use burn::nn::LinearConfig;
        let device = Default::default();
        for (b, t, k, n) in [(2, 3, 5, 7), (3, 100, 160, 160)] {
            let x = Tensor::<Flex, 3>::random([b, t, k], Distribution::Normal(0.0, 1.0), &device);
            let probe = Tensor::<A, 3>::from_inner(Tensor::random(
                [b, t, n],
                Distribution::Normal(0.0, 1.0),
                &device,
            ));
            let base = LinearConfig::new(k, n).init::<A>(&device);
            let transposed =
                Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 0.1), &device);
            for (weight, with_bias) in [
                (base.weight.val().inner(), true),
                (transposed.transpose(), true),
                (base.weight.val().inner(), false),
            ] {
                let mut lin = base.clone();
                lin.weight = Param::from_tensor(Tensor::from_inner(weight).require_grad());
                if !with_bias {
                    lin.bias = None;
                }
                let run = |fused: bool| {
                    let xa = Tensor::<A, 3>::from_inner(x.clone()).require_grad();
                    let y = if fused {
                        linear_rows(&lin, &xa, Act::None).expect("fused under autodiff")
                    } else {
                        lin.forward(xa.clone())
                    };
                    let g = (y.clone() * probe.clone()).sum().backward();
                    let dx = xa.grad(&g).unwrap();
                    let dw = lin.weight.val().grad(&g).unwrap();
                    let db = lin.bias.as_ref().map(|p| p.val().grad(&g).unwrap());
                    (y.inner(), dx, dw, db)
                };
                let (y0, dx0, dw0, db0) = run(false);
                let (y1, dx1, dw1, db1) = run(true);
                let case = format!("{:?} bias {with_bias}", [b, t, k, n]);
                assert!(max_diff(y0, y1) < 1e-4, "{case}: y");
                assert!(max_diff(dx0, dx1) < 1e-4, "{case}: dx");
                assert!(max_diff(dw0, dw1) < 1e-3, "{case}: dW");
                match (db0, db1) {
                    (Some(a), Some(b)) => assert!(max_diff(a, b) < 1e-3, "{case}: db"),
                    (None, None) => {}
                    _ => panic!("{case}: bias gradient on one side only"),
                }
            }
        }
    }

    /// Max pooling matches Burn's max_pool2d with its gradient; on an all-zero map (a ReLU's
    /// dead region) every window's gradient goes to its top-left cell, as Burn sends it.
    #[test]
    fn max_pool_2x2_matches_burn_with_gradients() {
        use burn::tensor::module::max_pool2d;
        let device = Default::default();
        for (shape, zeros) in [
            ([3, 2, 6, 8], false),
            ([2, 40, 16, 30], false),
            ([2, 2, 4, 4], true),
        ] {
            let x0 = if zeros {
                Tensor::<A, 4>::zeros(shape, &device)
            } else {
                Tensor::<A, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device)
            };
            let [a, b, h, w] = shape;
            let up = Tensor::<A, 4>::random([a, b, h / 2, w / 2], Distribution::Default, &device);
            let burn_pool = |x: Tensor<A, 4>| max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false);
            let (ya, ga) = values_and_grad(&x0, &up, burn_pool);
            let (yb, gb) = values_and_grad(&x0, &up, |x| max_pool_2x2(x).unwrap());
            assert_eq!(max_diff(ya, yb), 0.0, "{shape:?}");
            assert_eq!(max_diff(ga, gb), 0.0, "{shape:?}");
        }
        let odd = Tensor::<A, 4>::zeros([1, 1, 3, 4], &device);
        assert!(
            max_pool_2x2(odd).is_err(),
            "odd sides are left to the caller"
        );
    }

    /// Values and gradients match Burn's log-softmax, on rows longer than one task and on a
    /// strided input; a −∞ entry (a masked logit) keeps its row finite.
    #[test]
    fn log_softmax_matches_burn_with_gradients() {
        use burn::tensor::activation::log_softmax;
        let device = Default::default();
        let x0 = Tensor::<A, 3>::random([40, 3, 2100], Distribution::Normal(0.0, 5.0), &device);
        let w = Tensor::<A, 3>::random([3, 40, 2100], Distribution::Default, &device);
        let (ya, ga) = values_and_grad(&x0, &w, |x| log_softmax(x.swap_dims(0, 1), 2));
        let (yb, gb) = values_and_grad(&x0, &w, |x| log_softmax_last(x.swap_dims(0, 1)));
        assert!(max_diff(ya.clone(), yb) < 1e-4);
        // Row sums of the upstream gradient reach ~1,000 here and multiply exp(y), where y
        // carries the log-sum-exp's f32 rounding (~2e-6 at 20): compare relative to them.
        let scale = ga.clone().abs().max().into_scalar().to_f32_lossy();
        let diff = max_diff(ga, gb);
        assert!(
            diff < 1e-5 * scale.max(1.0),
            "gradients differ by {diff} (scale {scale})"
        );
        let plain = log_softmax_last(x0.inner().swap_dims(0, 1));
        assert!(max_diff(ya, plain) < 1e-4);
        let masked = Tensor::<Flex, 2>::from_floats([[0.0, f32::NEG_INFINITY, 1.0]], &device);
        let lp: Vec<f32> = log_softmax_last(masked).into_data().to_vec().unwrap();
        assert!(
            lp[0].is_finite() && lp[2].is_finite() && lp[1] == f32::NEG_INFINITY,
            "{lp:?}"
        );
    }

    /// Merging heads equals swap + reshape, on Flex and under autodiff with its gradient.
    #[test]
    fn merge_heads_matches_swap_and_reshape() {
        let device = Default::default();
        let [b, h, t, dk] = [2, 3, 5, 4];
        let x0 = Tensor::<A, 4>::random([b, h, t, dk], Distribution::Default, &device);
        let w = Tensor::<A, 3>::random([b, t, h * dk], Distribution::Default, &device);
        let (ya, ga) = values_and_grad(&x0, &w, |x| x.swap_dims(1, 2).reshape([b, t, h * dk]));
        let (yb, gb) = values_and_grad(&x0, &w, merge_heads);
        assert_eq!(max_diff(ya.clone(), yb), 0.0);
        assert_eq!(max_diff(ga, gb), 0.0);
        assert_eq!(max_diff(ya, merge_heads(x0.inner())), 0.0);
    }

    /// Layer norm on plain Flex (inference) is Burn's own fused op.
    #[test]
    fn layer_norm_on_flex_is_burns() {
        let device = Default::default();
        let ln = LayerNormConfig::new(8).init::<Flex>(&device);
        let x = Tensor::<Flex, 2>::random([5, 8], Distribution::Default, &device);
        assert_eq!(
            max_diff(ln.forward(x.clone()), layer_norm(&ln, 1e-5, x)),
            0.0
        );
    }
}
