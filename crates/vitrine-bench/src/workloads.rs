//! The four workload kinds. Each times the production code path (the models' `forward`,
//! the trainer's optimiser, the index's exact search) on synthetic inputs of real shapes,
//! and ends every timed call by reading a result back to the host, so asynchronous
//! backends (wgpu, CUDA) are timed to completion.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use vitrine_index::{DeviceIndex, Filter, Index, IndexItem, ModelInfo};
use vitrine_infer::config::LoopConfig;
use vitrine_infer::copy::{masked_cross_entropy, HostBatch};
use vitrine_models::bert::BertConfig;
use vitrine_models::captioner::CaptionerConfig;
use vitrine_models::gpt::{Gpt, GptConfig};
use vitrine_models::ImageEncoderConfig;
use vitrine_train::losses::supcon;
use vitrine_train::trainer::optimizer;

use crate::timing::{measure, median, Stats, TimingConfig};
use crate::{
    BenchError, EncoderCase, GenerateCase, Group, Measurement, Precision, Result, SearchCase,
    TextEncoderCase, TrainCase, TrainModel,
};

type Push<'a> = dyn FnMut(Measurement) + 'a;

/// What every workload shares: how it is timed, the float type of inference, and where
/// its rows go.
pub(crate) struct Work<'a, 'p> {
    pub timing: &'a TimingConfig,
    pub precision: Precision,
    pub push: &'a mut Push<'p>,
}

/// Deterministic xorshift values in [-1, 1): inputs need the right shape, not realism.
pub(crate) fn noise(n: usize, seed: u64) -> Vec<f32> {
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

pub(crate) fn token_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    noise(n, seed)
        .into_iter()
        .map(|x| (((x + 1.0) * 0.5 * vocab as f32) as usize).min(vocab - 1) as u32)
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

pub(crate) fn gpt_config(preset: &str, vocab: Option<usize>) -> Result<GptConfig> {
    let mut c = GptConfig::preset(preset)?;
    if let Some(v) = vocab {
        c.vocab_size = v;
    }
    c.validate()?;
    Ok(c)
}

pub(crate) fn captioner_config(preset: &str, vocab: Option<usize>) -> Result<CaptionerConfig> {
    let mut c = CaptionerConfig::preset(preset)?;
    if let Some(v) = vocab {
        c.decoder.vocab_size = v;
    }
    c.validate()?;
    Ok(c)
}

/// The model really is in the requested precision (the row is labelled with it).
fn expect_dtype(got: burn::tensor::DType, precision: Precision) -> Result<()> {
    if got == precision.dtype() {
        Ok(())
    } else {
        Err(BenchError::Backend(format!(
            "model parameters are {got:?}, {precision} was asked for"
        )))
    }
}

fn sync<B: Backend>(device: &B::Device) -> Result<()> {
    B::sync(device).map_err(|e| BenchError::Backend(format!("{e:?}")))
}

/// A row whose throughput is `items` per call.
fn row(
    group: Group,
    workload: String,
    batch: usize,
    unit: &str,
    items: f64,
    stats: &Stats,
    precision: Precision,
) -> Measurement {
    Measurement {
        group,
        workload,
        batch,
        unit: unit.into(),
        throughput: items / stats.median,
        median_ms: stats.median * 1e3,
        min_ms: stats.min * 1e3,
        max_ms: stats.max * 1e3,
        reps: stats.reps,
        precision,
        extra: Default::default(),
    }
}

pub(crate) fn image_batch<B: Backend>(
    host: &[f32],
    shape: [usize; 4],
    precision: Precision,
    device: &B::Device,
) -> Tensor<B, 4> {
    let x = Tensor::<B, 4>::from_data(TensorData::new(host.to_vec(), shape), device);
    match precision {
        Precision::F32 => x,
        p => x.cast(p.dtype()),
    }
}

pub(crate) fn encoder<B: Backend>(c: &EncoderCase, w: &mut Work, device: &B::Device) -> Result<()> {
    let (timing, precision, push) = (w.timing, w.precision, &mut *w.push);
    let config = ImageEncoderConfig::preset(&c.preset)?;
    let model = precision.apply(config.init::<B>(device)?);
    expect_dtype(model.float_dtype(), precision)?;
    let [ch, h, w] = config.input_shape();
    for &batch in &c.batches {
        let host = noise(batch * ch * h * w, 7);
        let (stats, _) = measure(timing, || {
            let x = image_batch::<B>(&host, [batch, ch, h, w], precision, device);
            let _ = model.forward(x).into_data();
            Ok(())
        })?;
        push(row(
            Group::Encoder,
            format!("{} {h}x{w} inference", c.preset),
            batch,
            "images/s",
            batch as f64,
            &stats,
            precision,
        ));
    }
    Ok(())
}

/// Sentence embeddings (forward, pooling, normalisation) of `batch` rows of `seq_len`
/// tokens each: `[CLS]`, random ids, `[SEP]`.
pub(crate) fn text_encoder<B: Backend>(
    c: &TextEncoderCase,
    w: &mut Work,
    device: &B::Device,
) -> Result<()> {
    let (timing, precision, push) = (w.timing, w.precision, &mut *w.push);
    let config = BertConfig::preset(&c.preset)?;
    let model = precision.apply(config.init::<B>(device)?);
    expect_dtype(model.word.weight.val().dtype(), precision)?;
    let t = c.seq_len;
    for &batch in &c.batches {
        let mut ids: Vec<i64> = token_ids(batch * t, config.vocab_size, 11)
            .into_iter()
            .map(i64::from)
            .collect();
        // BERT's [CLS] (101) and [SEP] (102) where the vocabulary has them.
        let v = config.vocab_size as i64;
        for r in 0..batch {
            ids[r * t] = 101.min(v - 2);
            ids[r * t + t - 1] = 102.min(v - 1);
        }
        let lengths = vec![t; batch];
        let (stats, _) = measure(timing, || {
            let x =
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [batch, t]), device);
            let _ = model.embed(x, &lengths)?.into_data();
            Ok(())
        })?;
        push(row(
            Group::Encoder,
            format!("{} text inference, {t} tokens", c.preset),
            batch,
            "sentences/s",
            batch as f64,
            &stats,
            precision,
        ));
    }
    Ok(())
}

/// Times optimiser steps of `model` under `loss` (scalar loss, examples, tokens).
fn time_steps<B, M>(
    model: M,
    timing: &TimingConfig,
    device: &B::Device,
    loss: impl Fn(&M) -> Result<Tensor<B, 1>>,
) -> Result<(Stats, M)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let mut optim = optimizer::<B, M>(&LoopConfig::default());
    let mut model = Some(model);
    let (stats, _) = measure(timing, || {
        let m = model
            .take()
            .expect("the model is put back after every step");
        let l = loss(&m)?;
        let value: f32 = l.clone().into_scalar().elem();
        if !value.is_finite() {
            return Err(BenchError::Backend(format!("training loss is {value}")));
        }
        let grads = GradientsParams::from_grads(l.backward(), &m);
        model = Some(optim.step(1e-4, m, grads));
        sync::<B>(device)
    })?;
    Ok((stats, model.expect("put back by the last step")))
}

fn token_batch(rows: usize, seq_len: usize, vocab: usize, seed: u64) -> HostBatch {
    let ids = token_ids(rows * seq_len, vocab, seed);
    HostBatch::from_rows(ids.chunks(seq_len).collect())
}

fn inputs<B: Backend>(hb: &HostBatch, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(hb.inputs.clone(), [hb.rows, hb.t]), device)
}

pub(crate) fn train_step<B: AutodiffBackend>(
    c: &TrainCase,
    w: &mut Work,
    device: &B::Device,
) -> Result<()> {
    let (timing, push) = (w.timing, &mut *w.push);
    let (name, stats, tokens) = match c.model {
        TrainModel::Search => {
            let config = ImageEncoderConfig::preset(&c.preset)?;
            let [ch, h, w] = config.input_shape();
            let host = noise(c.batch * ch * h * w, 11);
            // Four views per class, as the balanced sampler of the search recipes draws.
            let labels: Vec<u32> = (0..c.batch as u32).map(|i| i / 4).collect();
            let (stats, _) = time_steps(config.init::<B>(device)?, timing, device, |m| {
                let x = image_batch::<B>(&host, [c.batch, ch, h, w], Precision::F32, device);
                Ok(supcon(m.forward(x), &labels, 0.1))
            })?;
            (format!("search {} supcon step", c.preset), stats, 0)
        }
        TrainModel::Copy => {
            let config = gpt_config(&c.preset, c.vocab)?;
            let hb = token_batch(c.batch, c.seq_len, config.vocab_size, 13);
            let (stats, _) = time_steps(config.init::<B>(device)?, timing, device, |m| {
                let logits = m.forward(inputs::<B>(&hb, device))?;
                Ok(masked_cross_entropy(logits, &hb, device))
            })?;
            (
                format!("copy {} step, {} tokens/row", c.preset, hb.t),
                stats,
                hb.tokens(),
            )
        }
        TrainModel::Caption => {
            let config = captioner_config(&c.preset, c.vocab)?;
            let [ch, h, w] = config.encoder.input_shape();
            let host = noise(c.batch * ch * h * w, 17);
            let hb = token_batch(c.batch, c.seq_len, config.decoder.vocab_size, 19);
            let (stats, _) = time_steps(config.init::<B>(device)?, timing, device, |m| {
                let x = image_batch::<B>(&host, [c.batch, ch, h, w], Precision::F32, device);
                let logits = m.forward(x, inputs::<B>(&hb, device))?;
                Ok(masked_cross_entropy(logits, &hb, device))
            })?;
            (
                format!("caption {} step, {} tokens/row", c.preset, hb.t),
                stats,
                hb.tokens(),
            )
        }
    };
    let mut m = row(
        Group::Train,
        name,
        c.batch,
        "examples/s",
        c.batch as f64,
        &stats,
        Precision::F32,
    );
    if tokens > 0 {
        m.extra
            .insert("tokens/s".into(), tokens as f64 / stats.median);
    }
    push(m);
    Ok(())
}

/// Prefills `prompt` ([rows, p]) and greedy-decodes `new_tokens` with the KV cache, reading
/// each step's logits to the host and choosing there, as `vitrine generate` does. Returns
/// the time to the first new token and the new tokens ([rows, new_tokens], row-major).
fn generate_once<B: Backend>(
    model: &Gpt<B>,
    prompt: &[i64],
    rows: usize,
    new_tokens: usize,
    device: &B::Device,
) -> Result<(f64, Vec<i64>)> {
    let start = Instant::now();
    let p = prompt.len() / rows;
    let mut cache = model.new_cache();
    let tokens =
        Tensor::<B, 2, Int>::from_data(TensorData::new(prompt.to_vec(), [rows, p]), device);
    let h = model.forward_hidden(tokens, &mut cache, true)?;
    let d = h.dims()[2];
    let mut logits = model.logits(h.slice([0..rows, p - 1..p, 0..d]));
    let mut ttft = 0.0;
    let mut out = vec![0i64; rows * new_tokens];
    for step in 0..new_tokens {
        let v = logits.dims()[2];
        let host: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| BenchError::Backend(format!("reading logits: {e:?}")))?;
        let next: Vec<i64> = host
            .chunks(v)
            .map(|l| {
                l.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i as i64)
            })
            .collect();
        if step == 0 {
            ttft = start.elapsed().as_secs_f64();
        }
        for (r, &t) in next.iter().enumerate() {
            out[r * new_tokens + step] = t;
        }
        if step + 1 == new_tokens {
            break;
        }
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(next, [rows, 1]), device);
        logits = model.forward_cached(t, &mut cache)?;
    }
    Ok((ttft, out))
}

pub(crate) fn generate<B: Backend>(
    c: &GenerateCase,
    w: &mut Work,
    device: &B::Device,
) -> Result<()> {
    let (timing, precision, push) = (w.timing, w.precision, &mut *w.push);
    let config = gpt_config(&c.preset, c.vocab)?;
    let model = precision.apply(config.init::<B>(device)?);
    expect_dtype(model.wte.weight.val().dtype(), precision)?;
    for &rows in &c.batches {
        let prompt: Vec<i64> = token_ids(rows * c.prompt_tokens, config.vocab_size, 23)
            .into_iter()
            .map(i64::from)
            .collect();
        let (stats, ttfts) = measure(timing, || {
            generate_once(&model, &prompt, rows, c.new_tokens, device).map(|(ttft, _)| ttft)
        })?;
        let new = (rows * c.new_tokens) as f64;
        let mut m = row(
            Group::Generate,
            format!(
                "{} greedy, {} prompt + {} new tokens, KV cache",
                c.preset, c.prompt_tokens, c.new_tokens
            ),
            rows,
            "tokens/s",
            new,
            &stats,
            precision,
        );
        let ttft = median(&ttfts);
        m.extra.insert("TTFT ms".into(), ttft * 1e3);
        // Steady-state decode speed, prefill excluded.
        if c.new_tokens > 1 {
            m.extra.insert(
                "decode tokens/s".into(),
                (rows * (c.new_tokens - 1)) as f64 / (stats.median - ttft).max(1e-12),
            );
        }
        push(m);
    }
    Ok(())
}

pub(crate) fn search<B: Backend>(c: &SearchCase, w: &mut Work, device: &B::Device) -> Result<()> {
    let (timing, push) = (w.timing, &mut *w.push);
    let embeddings = unit_rows(c.rows, c.dim, 1);
    let start = Instant::now();
    let mut index = Index::new(c.dim, ModelInfo::default());
    for (r, e) in embeddings.chunks(c.dim).enumerate() {
        let item = IndexItem {
            id: r.to_string(),
            attrs: Default::default(),
        };
        index.add(item, e)?;
    }
    drop(embeddings);
    let on_device = DeviceIndex::<B>::new(&index, device);
    sync::<B>(device)?;
    let build_secs = start.elapsed().as_secs_f64();
    let filter = Filter::default();
    for &batch in &c.query_batches {
        let queries = unit_rows(batch, c.dim, 2);
        let (stats, _) = measure(timing, || {
            let hits = on_device.search(&index, &queries, c.k, c.k, &filter)?;
            if hits.len() != batch || hits.iter().any(|h| h.len() != c.k) {
                return Err(BenchError::Backend(format!(
                    "search returned {} result lists for {batch} queries",
                    hits.len()
                )));
            }
            Ok(())
        })?;
        let mut m = row(
            Group::Search,
            format!("exact top-{} over {} x {}", c.k, c.rows, c.dim),
            batch,
            "queries/s",
            batch as f64,
            &stats,
            Precision::F32,
        );
        m.extra.insert("index build s".into(), build_secs);
        push(m);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    fn argmax(l: &[f32]) -> i64 {
        l.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as i64)
    }

    #[test]
    fn cached_batched_decode_matches_full_recompute() {
        type B = Flex;
        let device = Default::default();
        let config = gpt_config("tiny", None).unwrap();
        let model = config.init::<B>(&device).unwrap();
        let prompts = [vec![1i64, 5, 7], vec![2, 2, 9]];
        let flat: Vec<i64> = prompts.concat();
        let (ttft, got) = generate_once(&model, &flat, 2, 6, &device).unwrap();
        assert!(ttft > 0.0);
        for (r, prompt) in prompts.iter().enumerate() {
            // Reference: argmax of an uncached forward pass over the whole sequence.
            let mut seq = prompt.clone();
            for _ in 0..6 {
                let n = seq.len();
                let t =
                    Tensor::<B, 2, Int>::from_data(TensorData::new(seq.clone(), [1, n]), &device);
                let logits = model.forward(t).unwrap();
                let v = logits.dims()[2];
                let last: Vec<f32> = logits
                    .slice([0..1, n - 1..n, 0..v])
                    .into_data()
                    .to_vec()
                    .unwrap();
                seq.push(argmax(&last));
            }
            assert_eq!(&got[r * 6..(r + 1) * 6], &seq[3..], "row {r}");
        }
    }

    #[test]
    fn timed_training_steps_update_the_model() {
        type B = Autodiff<Flex>;
        let device = Default::default();
        let config = gpt_config("tiny", None).unwrap();
        let model = config.init::<B>(&device).unwrap();
        let probe = |m: &Gpt<B>| -> Vec<f32> {
            m.logits(Tensor::ones([1, 1, config.d_model], &device))
                .into_data()
                .to_vec()
                .unwrap()
        };
        let before = probe(&model);
        let hb = token_batch(2, 8, config.vocab_size, 3);
        assert_eq!((hb.rows, hb.t, hb.tokens()), (2, 7, 14));
        let timing = TimingConfig {
            warmup: 1,
            min_reps: 2,
            max_reps: 2,
            min_secs: 0.0,
        };
        let (stats, model) = time_steps(model, &timing, &device, |m| {
            Ok(masked_cross_entropy(
                m.forward(inputs::<B>(&hb, &device))?,
                &hb,
                &device,
            ))
        })
        .unwrap();
        assert_eq!(stats.reps, 2);
        assert_ne!(probe(&model), before, "three optimiser steps ran");
    }

    #[test]
    fn token_ids_stay_inside_the_vocabulary() {
        let ids = token_ids(10_000, 7, 5);
        assert!(ids.iter().all(|&t| t < 7));
        assert_eq!(
            ids.iter().collect::<std::collections::HashSet<_>>().len(),
            7
        );
    }
}
