//! Training batches of images: cached pixels, augmented per item from a seed, uploaded.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use vitrine_data::split::mix;
use vitrine_data::transform::{augment_pixels, normalize_into, Augment, Preprocess};

/// A task's training images, decoded once: CHW u8 pixels with the preprocessing that made
/// them and the augmentation each batch gets.
pub struct Images {
    pub pixels: Vec<u8>,
    pub preprocess: Preprocess,
    pub augment: Augment,
}

impl Images {
    /// Items `idx`, augmented for the epoch whose seed is `epoch_seed` ([`augmented_batch`]).
    pub fn batch<B: Backend>(
        &self,
        idx: &[usize],
        epoch_seed: u64,
        device: &B::Device,
    ) -> Tensor<B, 4> {
        augmented_batch(
            &self.pixels,
            idx,
            &self.preprocess,
            &self.augment,
            epoch_seed,
            device,
        )
    }
}

/// Items `idx` of cached CHW u8 pixels, each augmented from its own seed
/// (`mix(epoch_seed, item)`) unless `aug` is the identity, normalised and uploaded:
/// -> [idx.len(), C, H, W]. Training batches of every image task come from here.
pub fn augmented_batch<B: Backend>(
    pixels: &[u8],
    idx: &[usize],
    p: &Preprocess,
    aug: &Augment,
    epoch_seed: u64,
    device: &B::Device,
) -> Tensor<B, 4> {
    let (c, h, w) = (p.channels as usize, p.height as usize, p.width as usize);
    let item_len = c * h * w;
    let mut data = Vec::with_capacity(idx.len() * item_len);
    for &i in idx {
        let px = &pixels[i * item_len..(i + 1) * item_len];
        if aug.is_identity() {
            normalize_into(px, p, &mut data);
        } else {
            let augmented = augment_pixels(
                px,
                p.channels,
                p.height,
                p.width,
                aug,
                mix(epoch_seed, i as u64),
            );
            normalize_into(&augmented, p, &mut data);
        }
    }
    Tensor::from_data(TensorData::new(data, [idx.len(), c, h, w]), device)
}
