//! Cross-backend parity (`vitrine bench --parity --device D`): the same weights and inputs
//! on the CPU reference and on device D must give the same outputs — embedding cosine per
//! image and the largest absolute logit difference — within the configured limits.

use std::fmt::Write as _;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vitrine_infer::run::{load_module_bytes, module_to_bytes};
use vitrine_models::ImageEncoderConfig;

use crate::workloads::{gpt_config, image_batch, noise, token_ids};
use crate::{BenchError, Precision, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParityConfig {
    /// Image-encoder presets to compare.
    pub encoders: Vec<String>,
    /// GPT presets to compare.
    pub decoders: Vec<String>,
    pub images: usize,
    pub tokens: usize,
    /// Smallest cosine allowed between an image's two embeddings.
    pub min_cosine: f64,
    /// Largest absolute difference allowed between two logits.
    pub max_logit_diff: f64,
}

impl Default for ParityConfig {
    /// No models: a config file compares exactly the models it lists.
    fn default() -> Self {
        Self {
            encoders: Vec::new(),
            decoders: Vec::new(),
            images: 4,
            tokens: 32,
            min_cosine: 0.999,
            max_logit_diff: 1e-3,
        }
    }
}

impl ParityConfig {
    /// Every encoder preset, the copy decoder and GPT-2 small.
    pub fn full() -> Self {
        Self {
            encoders: ImageEncoderConfig::PRESETS.map(String::from).to_vec(),
            decoders: vec!["nano-cpu".into(), "gpt2-124m".into()],
            ..Self::default()
        }
    }

    /// The most images / tokens per comparison (a parity check, not a benchmark).
    pub const MAX_INPUTS: usize = 256;

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(BenchError::Invalid(m));
        for (name, n) in [("images", self.images), ("tokens", self.tokens)] {
            if n == 0 || n > Self::MAX_INPUTS {
                return bad(format!(
                    "parity {name} = {n} (allowed 1..={})",
                    Self::MAX_INPUTS
                ));
            }
        }
        if !(-1.0..=1.0).contains(&self.min_cosine) {
            return bad(format!(
                "parity min_cosine = {} (allowed -1..=1)",
                self.min_cosine
            ));
        }
        if !(self.max_logit_diff >= 0.0 && self.max_logit_diff.is_finite()) {
            return bad(format!(
                "parity max_logit_diff = {} (a finite value >= 0)",
                self.max_logit_diff
            ));
        }
        for p in &self.encoders {
            ImageEncoderConfig::preset(p)?;
        }
        for p in &self.decoders {
            gpt_config(p, None)?;
        }
        Ok(())
    }

    /// Small models only: seconds even on a software GPU.
    pub fn quick() -> Self {
        Self {
            encoders: vec!["cnn-fmnist".into(), "vit-tiny".into()],
            decoders: vec!["tiny".into()],
            images: 2,
            tokens: 8,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityCheck {
    pub model: String,
    pub metric: String,
    /// None when the backend panicked.
    pub value: Option<f64>,
    pub limit: f64,
    pub pass: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityReport {
    pub reference: String,
    pub device: String,
    /// Float type on the device under test (the reference runs in f32).
    pub precision: Precision,
    pub checks: Vec<ParityCheck>,
}

impl ParityReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Parity of `{}` ({}) against `{}` (f32).\n\n| model | check | value | limit | |\n|---|---|---:|---:|---|\n",
            self.device, self.precision, self.reference
        );
        for c in &self.checks {
            // Cosines sit just under 1: show enough digits to see the gap.
            let value = match c.value {
                None => "-".to_string(),
                Some(v) if c.metric.contains("cosine") => format!("{v:.7}"),
                Some(v) => format!("{v:.2e}"),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {value} | {} | {} |",
                c.model,
                c.metric,
                c.limit,
                if c.pass { "ok" } else { "FAIL" }
            );
        }
        out
    }
}

/// Smallest cosine between matching rows of `a` and `b` ([rows, dim], row-major). A NaN
/// anywhere or a length mismatch is -inf: a broken output must never pass.
pub fn min_row_cosine(a: &[f32], b: &[f32], dim: usize) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NEG_INFINITY;
    }
    a.chunks(dim)
        .zip(b.chunks(dim))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
            let n = |v: &[f32]| v.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            let c = dot / (n(x) * n(y)).max(1e-30);
            if c.is_nan() {
                f64::NEG_INFINITY
            } else {
                c
            }
        })
        .fold(f64::INFINITY, f64::min)
}

/// Largest |a - b|; NaN anywhere or a length mismatch counts as infinitely far.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(p, q)| {
            let d = (*p as f64 - *q as f64).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f64::max)
}

fn host<const D: usize, B: Backend>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| BenchError::Backend(format!("reading output: {e:?}")))
}

/// A model config that builds the same architecture on any backend.
trait Build {
    type Model<B: Backend>: burn::module::Module<B>;
    fn build<B: Backend>(&self, device: &B::Device) -> Result<Self::Model<B>>;
}

impl Build for ImageEncoderConfig {
    type Model<B: Backend> = vitrine_models::ImageEncoder<B>;
    fn build<B: Backend>(&self, device: &B::Device) -> Result<Self::Model<B>> {
        Ok(self.init::<B>(device)?)
    }
}

impl Build for vitrine_models::gpt::GptConfig {
    type Model<B: Backend> = vitrine_models::gpt::Gpt<B>;
    fn build<B: Backend>(&self, device: &B::Device) -> Result<Self::Model<B>> {
        Ok(self.init::<B>(device)?)
    }
}

/// One comparison: the reference backend `R` and the checked one `B`.
struct Pair<'a, R: Backend, B: Backend> {
    cfg: &'a ParityConfig,
    reference: &'a R::Device,
    device: &'a B::Device,
    precision: Precision,
}

impl<R: Backend, B: Backend> Pair<'_, R, B> {
    /// One set of random weights of `config` loaded on both backends. Both sides load the
    /// same saved bytes: cloning a freshly initialised module is not enough, since a clone
    /// of a not yet materialised (lazy) parameter draws its own values.
    fn same_weights<C: Build>(&self, config: &C) -> Result<(C::Model<R>, C::Model<B>)> {
        let bytes = module_to_bytes(config.build::<R>(self.reference)?);
        let path = Path::new("(parity weights)");
        let on_ref = config.build::<R>(self.reference)?;
        let on_dev = config.build::<B>(self.device)?;
        Ok((
            load_module_bytes(on_ref, bytes.clone(), path, self.reference)?,
            load_module_bytes(on_dev, bytes, path, self.device)?,
        ))
    }

    /// Lowest cosine between the two backends' embeddings of the same images.
    fn encoder(&self, preset: &str) -> Result<f64> {
        let (cfg, reference, device, precision) =
            (self.cfg, self.reference, self.device, self.precision);
        let config = ImageEncoderConfig::preset(preset)?;
        let (on_ref, on_dev) = self.same_weights(&config)?;
        let [c, h, w] = config.input_shape();
        let shape = [cfg.images, c, h, w];
        let pixels = noise(cfg.images * c * h * w, 31);
        let want =
            host(on_ref.forward(image_batch::<R>(&pixels, shape, Precision::F32, reference)))?;
        let got = host(
            precision
                .apply(on_dev)
                .forward(image_batch::<B>(&pixels, shape, precision, device)),
        )?;
        Ok(min_row_cosine(&want, &got, config.embed_dim()))
    }

    /// Largest logit difference between the two backends on the same tokens.
    fn decoder(&self, preset: &str) -> Result<f64> {
        let config = gpt_config(preset, None)?;
        let t = self.cfg.tokens.min(config.n_ctx);
        let ids: Vec<i64> = token_ids(2 * t, config.vocab_size, 37)
            .into_iter()
            .map(i64::from)
            .collect();
        let (on_ref, on_dev) = self.same_weights(&config)?;
        let on_dev = self.precision.apply(on_dev);
        let tokens = || TensorData::new(ids.clone(), [2, t]);
        let want = host(on_ref.forward(Tensor::<R, 2, Int>::from_data(tokens(), self.reference))?)?;
        let got = host(on_dev.forward(Tensor::<B, 2, Int>::from_data(tokens(), self.device))?)?;
        Ok(max_abs_diff(&want, &got))
    }
}

fn check(model: String, metric: &str, value: Option<f64>, limit: f64, pass: bool) -> ParityCheck {
    ParityCheck {
        model,
        metric: match value {
            Some(_) => metric.into(),
            None => format!("{metric}: the backend panicked (message above)"),
        },
        value,
        limit,
        pass,
    }
}

/// Runs one comparison; a panic inside the backend (e.g. a tensor over a software GPU's
/// buffer-size limit) is a failed check (`None`), not the end of the report.
fn guarded(f: impl FnOnce() -> Result<f64>) -> Result<Option<f64>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}

/// Compares every configured model on `device` (backend `B`) with the reference `R`.
pub fn parity<R: Backend, B: Backend>(
    cfg: &ParityConfig,
    reference: &R::Device,
    device: &B::Device,
    device_label: &str,
    precision: Precision,
) -> Result<ParityReport> {
    cfg.validate()?;
    let pair = Pair::<R, B> {
        cfg,
        reference,
        device,
        precision,
    };
    // Encoders must agree in direction (cosine at least the limit), decoders in value
    // (difference at most the limit).
    let models =
        (cfg.encoders.iter().map(|p| (true, p))).chain(cfg.decoders.iter().map(|p| (false, p)));
    let mut checks = Vec::new();
    for (encoder, preset) in models {
        let (model, metric, limit) = if encoder {
            (
                format!("encoder {preset}"),
                "min embedding cosine",
                cfg.min_cosine,
            )
        } else {
            (
                format!("gpt {preset}"),
                "max abs logit difference",
                cfg.max_logit_diff,
            )
        };
        let value = guarded(|| {
            if encoder {
                pair.encoder(preset)
            } else {
                pair.decoder(preset)
            }
        })?;
        let pass = value.is_some_and(|v| if encoder { v >= limit } else { v <= limit });
        checks.push(check(model, metric, value, limit, pass));
    }
    Ok(ParityReport {
        reference: "cpu".into(),
        device: device_label.into(),
        precision,
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn comparisons_on_hand_made_vectors() {
        // Row 0 identical (cosine 1), row 1 at 90 degrees (cosine 0).
        let a = [1.0, 0.0, 0.0, 1.0];
        let b = [2.0, 0.0, 1.0, 0.0];
        assert!((min_row_cosine(&a, &b, 2) - 0.0).abs() < 1e-12);
        assert!((min_row_cosine(&a, &a, 2) - 1.0).abs() < 1e-12);
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 1.0]), 1.0);
        assert_eq!(max_abs_diff(&[1.0], &[f32::NAN]), f64::INFINITY);
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        // One NaN row fails the whole comparison, even when the other row is perfect.
        assert_eq!(
            min_row_cosine(&a, &[1.0, 0.0, f32::NAN, 1.0], 2),
            f64::NEG_INFINITY
        );
        assert_eq!(
            min_row_cosine(&[f32::NAN; 4], &[f32::NAN; 4], 2),
            f64::NEG_INFINITY
        );
        assert_eq!(min_row_cosine(&a, &a[..2], 2), f64::NEG_INFINITY);
    }

    #[test]
    fn config_limits_at_and_past() {
        let mut cfg = ParityConfig::quick();
        cfg.images = ParityConfig::MAX_INPUTS;
        cfg.tokens = ParityConfig::MAX_INPUTS;
        cfg.validate().unwrap();
        cfg.images += 1;
        assert!(cfg.validate().unwrap_err().to_string().contains("images"));
        cfg.images = 0;
        assert!(cfg.validate().is_err());
        let mut cfg = ParityConfig::quick();
        cfg.max_logit_diff = f64::NAN;
        assert!(cfg.validate().is_err());
        let mut cfg = ParityConfig::quick();
        cfg.decoders = vec!["gpt-5".into()];
        assert!(cfg.validate().is_err());
        ParityConfig::full().validate().unwrap();
        assert!(
            ParityConfig::default().encoders.is_empty(),
            "a file lists its models"
        );
    }

    #[test]
    fn same_backend_is_exact_and_limits_decide_pass() {
        let dev = Default::default();
        let cfg = ParityConfig::quick();
        let r = parity::<Flex, Flex>(&cfg, &dev, &dev, "cpu", Precision::F32).unwrap();
        assert_eq!(r.checks.len(), 3);
        for c in &r.checks {
            // The weights travelled through the saved-record bytes: nothing may change.
            let exact = if c.metric.contains("cosine") {
                1.0
            } else {
                0.0
            };
            assert!((c.value.unwrap() - exact).abs() < 1e-6, "{c:?}");
        }
        assert!(r.passed());
        // Half precision on the "device".
        let r = parity::<Flex, Flex>(&cfg, &dev, &dev, "cpu", Precision::F16).unwrap();
        let gpt = |r: &ParityReport| {
            r.checks
                .iter()
                .find(|c| c.model.starts_with("gpt"))
                .cloned()
        };
        let logits = gpt(&r).unwrap();
        let v = logits.value.unwrap();
        assert!(
            v > 0.0 && v < 0.05,
            "f16 is close but not exact: {logits:?}"
        );
        // The limit decides: with no tolerance the rounding fails the check.
        let strict = ParityConfig {
            max_logit_diff: 0.0,
            ..cfg.clone()
        };
        let r2 = parity::<Flex, Flex>(&strict, &dev, &dev, "cpu", Precision::F16).unwrap();
        let l2 = gpt(&r2).unwrap();
        assert!(
            l2.value.unwrap() > 0.0 && !l2.pass && !r2.passed(),
            "{l2:?}"
        );
        let enc = r.checks.iter().find(|c| c.model.contains("vit")).unwrap();
        assert!(enc.value.unwrap() > 0.99, "{enc:?}");
    }
}
