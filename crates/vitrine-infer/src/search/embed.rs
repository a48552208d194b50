//! Batched inference of an image encoder over cached pixels or a catalogue.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use indicatif::ProgressBar;
use vitrine_data::catalog::LoadReport;
use vitrine_data::catalog::{decode_pixels, Catalog};
use vitrine_data::image_io::DecodeLimits;
use vitrine_data::transform::{normalize_into, Preprocess};
use vitrine_models::ImageEncoder;

use crate::error::Result;

/// Normalises a batch of CHW u8 images and uploads it: -> [n, C, H, W].
pub fn batch_tensor<B: Backend>(pixels: &[u8], p: &Preprocess, device: &B::Device) -> Tensor<B, 4> {
    let (c, h, w) = (p.channels as usize, p.height as usize, p.width as usize);
    let n = pixels.len() / (c * h * w);
    let mut data = Vec::with_capacity(pixels.len());
    normalize_into(pixels, p, &mut data);
    Tensor::from_data(TensorData::new(data, [n, c, h, w]), device)
}

/// Embeds `n` cached images (CHW u8, concatenated): -> row-major [n, embed_dim].
pub fn embed_pixels<B: Backend>(
    encoder: &ImageEncoder<B>,
    pixels: &[u8],
    p: &Preprocess,
    batch_size: usize,
    device: &B::Device,
    progress: Option<&ProgressBar>,
) -> Vec<f32> {
    let item = (p.channels * p.height * p.width) as usize;
    let dtype = encoder.float_dtype();
    let mut out = Vec::new();
    for chunk in pixels.chunks(item * batch_size.max(1)) {
        let mut x = batch_tensor::<B>(chunk, p, device);
        // A half-precision encoder takes half-precision images.
        if x.dtype() != dtype {
            x = x.cast(dtype);
        }
        out.extend(encoder.forward(x).into_data().iter::<f32>());
        if let Some(bar) = progress {
            bar.inc((chunk.len() / item) as u64);
        }
    }
    out
}

/// Decodes and embeds catalogue items in chunks (bounded memory for big catalogues).
/// Returns the kept item indices and their embeddings; bad images are errors, or skipped
/// and counted in `report` with `skip_bad`.
#[allow(clippy::too_many_arguments)]
pub fn embed_catalog<B: Backend>(
    encoder: &ImageEncoder<B>,
    catalog: &Catalog,
    indices: &[usize],
    p: &Preprocess,
    limits: &DecodeLimits,
    batch_size: usize,
    skip_bad: bool,
    report: &mut LoadReport,
    device: &B::Device,
    progress: Option<&ProgressBar>,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let mut kept = Vec::with_capacity(indices.len());
    let mut embeddings = Vec::new();
    for chunk in indices.chunks(batch_size.max(1) * 8) {
        let (ok, pixels) = decode_pixels(catalog, chunk, p, limits, skip_bad, report, None)?;
        embeddings.extend(embed_pixels(encoder, &pixels, p, batch_size, device, None));
        kept.extend(ok);
        if let Some(bar) = progress {
            bar.inc(chunk.len() as u64);
        }
    }
    Ok((kept, embeddings))
}
