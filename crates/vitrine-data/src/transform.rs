//! Preprocessing (resize, channel conversion, normalisation) and seeded
//! augmentation.
//!
//! Pixels are laid out channel-major (CHW). Augmentation always runs on the
//! already resized `channels x height x width` u8 pixels, so augmenting a
//! decoded image and augmenting its cached pixels give identical results for
//! the same seed:
//! `to_pixels(img, p, aug, Some(s)) == augment_pixels(&to_pixels(img, p, &Augment::default(), None), .., aug, s)`.

use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageBuffer, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Largest accepted target height/width.
pub const MAX_SIZE: u32 = 4096;

/// How an image is brought to the target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Resize to exactly `width x height`, ignoring the aspect ratio.
    #[default]
    Stretch,
    /// Letterbox: keep the aspect ratio and fill the border with the mean
    /// colour, which normalises to (nearly) 0.
    Pad,
    /// Keep the aspect ratio, scale until the image covers the target, cut the centre
    /// (CLIP's shortest-edge resize + centre crop).
    Crop,
}

/// Target geometry and normalisation of model inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Preprocess {
    pub height: u32,
    pub width: u32,
    /// 3 = RGB, 1 = grayscale.
    pub channels: u32,
    /// Per-channel mean on the 0..1 scale: one value for all channels, or one
    /// per channel.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, same shape rules as `mean`.
    pub std: Vec<f32>,
    pub resize: ResizeMode,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            height: 64,
            width: 64,
            channels: 3,
            mean: vec![0.5],
            std: vec![0.5],
            resize: ResizeMode::Stretch,
        }
    }
}

impl Preprocess {
    /// `channels` x `height` x `width`, otherwise the defaults.
    pub fn sized(channels: u32, height: u32, width: u32) -> Self {
        Self {
            channels,
            height,
            width,
            ..Self::default()
        }
    }

    /// Check every field; the error names the field and the allowed values.
    pub fn validate(&self) -> Result<()> {
        if self.channels != 1 && self.channels != 3 {
            return Err(DataError::Config(format!(
                "preprocess.channels = {}; allowed: 1 (grayscale) or 3 (RGB)",
                self.channels
            )));
        }
        for (name, v) in [("height", self.height), ("width", self.width)] {
            if !(1..=MAX_SIZE).contains(&v) {
                return Err(DataError::Config(format!(
                    "preprocess.{name} = {v}; allowed: 1..={MAX_SIZE}"
                )));
            }
        }
        for (name, values) in [("mean", &self.mean), ("std", &self.std)] {
            if values.len() != 1 && values.len() != self.channels as usize {
                return Err(DataError::Config(format!(
                    "preprocess.{name} has {} values; allowed: 1 (used for every channel) or {} (one per channel)",
                    values.len(),
                    self.channels
                )));
            }
            if let Some(v) = values.iter().find(|v| !v.is_finite()) {
                return Err(DataError::Config(format!(
                    "preprocess.{name} contains {v}; values must be finite"
                )));
            }
        }
        if let Some(s) = self.std.iter().find(|s| **s <= 0.0) {
            return Err(DataError::Config(format!(
                "preprocess.std contains {s}; every std must be > 0"
            )));
        }
        Ok(())
    }

    /// Number of values in one preprocessed image (`channels * height * width`).
    pub fn pixel_len(&self) -> usize {
        self.channels as usize * self.height as usize * self.width as usize
    }

    fn mean_of(&self, c: usize) -> f32 {
        channel_value(&self.mean, c, 0.0)
    }

    fn std_of(&self, c: usize) -> f32 {
        channel_value(&self.std, c, 1.0)
    }
}

/// One value for every channel, or the channel's own value.
fn channel_value(values: &[f32], c: usize, fallback: f32) -> f32 {
    match values {
        [v] => *v,
        _ => values.get(c).copied().unwrap_or(fallback),
    }
}

/// Random augmentation settings. All off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augment {
    /// Crop a random region (area fraction `crop_scale`, aspect ratio
    /// `crop_ratio`) and resize it back to the full size.
    pub random_resized_crop: bool,
    pub crop_scale: [f32; 2],
    pub crop_ratio: [f32; 2],
    /// Probability of a horizontal flip.
    pub hflip: f32,
    /// Brightness factor sampled in `[1 - b, 1 + b]`.
    pub brightness: f32,
    /// Contrast factor sampled in `[1 - c, 1 + c]`.
    pub contrast: f32,
    /// Saturation factor sampled in `[1 - s, 1 + s]` (RGB only).
    pub saturation: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            random_resized_crop: false,
            crop_scale: [0.6, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            hflip: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
        }
    }
}

impl Augment {
    /// True when no augmentation would change any pixel.
    pub fn is_identity(&self) -> bool {
        !self.random_resized_crop
            && self.hflip <= 0.0
            && self.brightness <= 0.0
            && self.contrast <= 0.0
            && self.saturation <= 0.0
    }

    /// Check every field; the error names the field and the allowed values.
    pub fn validate(&self) -> Result<()> {
        let [s0, s1] = self.crop_scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return Err(DataError::Config(format!(
                "augment.crop_scale = [{s0}, {s1}]; allowed: 0 < min <= max <= 1 (fractions of the image area)"
            )));
        }
        let [r0, r1] = self.crop_ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(DataError::Config(format!(
                "augment.crop_ratio = [{r0}, {r1}]; allowed: 0 < min <= max (width/height aspect ratios)"
            )));
        }
        for (name, v) in [
            ("hflip", self.hflip),
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(DataError::Config(format!(
                    "augment.{name} = {v}; allowed: 0..=1"
                )));
            }
        }
        Ok(())
    }
}

/// Decoded image -> normalised CHW f32 of length `channels * height * width`.
///
/// `aug_seed`: `Some(seed)` applies `aug` deterministically from that seed
/// (same seed, same output); `None` applies no augmentation. Equal to
/// [`normalize_into`] applied to [`to_pixels`]. `p` should have passed
/// [`Preprocess::validate`].
pub fn preprocess(
    img: &DynamicImage,
    p: &Preprocess,
    aug: &Augment,
    aug_seed: Option<u64>,
) -> Vec<f32> {
    let pixels = to_pixels(img, p, aug, aug_seed);
    let mut out = Vec::with_capacity(pixels.len());
    normalize_into(&pixels, p, &mut out);
    out
}

/// Like [`preprocess`] but stops before normalisation: u8 CHW pixels of
/// length `channels * height * width`, compact enough to cache.
///
/// Images with alpha are composited over white first. `p` should have
/// passed [`Preprocess::validate`] (any `channels` other than 1 gives RGB).
pub fn to_pixels(
    img: &DynamicImage,
    p: &Preprocess,
    aug: &Augment,
    aug_seed: Option<u64>,
) -> Vec<u8> {
    let (w, h) = (p.width.max(1), p.height.max(1));
    let gray = p.channels == 1;
    // Work through DynamicImage's own (non-generic) methods: they are
    // compiled, optimised, inside the image crate, while generic imageops
    // would be instantiated here, unoptimised in dev builds (several times slower).
    let base = match (gray, img.color().has_alpha()) {
        (true, false) => DynamicImage::ImageLuma8(img.to_luma8()),
        (true, true) => {
            DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(flatten_alpha(img)).to_luma8())
        }
        (false, false) => DynamicImage::ImageRgb8(img.to_rgb8()),
        (false, true) => DynamicImage::ImageRgb8(flatten_alpha(img)),
    };
    let fill: Vec<u8> = (0..if gray { 1 } else { 3 })
        .map(|c| mean_byte(p, c))
        .collect();
    let hwc = fit(base, w, h, p.resize, &fill);
    let pixels = hwc_to_chw(&hwc, fill.len());
    match aug_seed {
        Some(seed) if !aug.is_identity() => {
            augment_pixels(&pixels, fill.len() as u32, h, w, aug, seed)
        }
        _ => pixels,
    }
}

/// Normalise CHW u8 pixels (one image or several, concatenated) to f32 as
/// `(x / 255 - mean) / std`, appending to `out` so a batch buffer can be filled without
/// reallocating.
pub fn normalize_into(pixels: &[u8], p: &Preprocess, out: &mut Vec<f32>) {
    let plane = (p.height as usize * p.width as usize).max(1);
    let channels = (p.channels as usize).max(1);
    out.reserve(pixels.len());
    for (i, chunk) in pixels.chunks(plane).enumerate() {
        // Plane i of a batch is channel i % C of its image.
        let c = i % channels;
        let (mean, std) = (p.mean_of(c), p.std_of(c));
        out.extend(chunk.iter().map(|&x| (f32::from(x) / 255.0 - mean) / std));
    }
}

/// The mean colour as a byte, used to fill letterbox borders.
fn mean_byte(p: &Preprocess, c: usize) -> u8 {
    (p.mean_of(c) * 255.0).round().clamp(0.0, 255.0) as u8
}

/// RGB view of any image; transparent pixels are composited over white
/// (the usual product-photo background) instead of exposing whatever colour
/// happens to sit under alpha 0.
fn flatten_alpha(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    ImageBuffer::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = u32::from(a);
        let mix = |v: u8| ((u32::from(v) * a + 255 * (255 - a) + 127) / 255) as u8;
        Rgb([mix(r), mix(g), mix(b)])
    })
}

/// Bring `img` (Luma8 or Rgb8) to exactly `w x h`, stretching or
/// letterboxing; returns the raw interleaved (HWC) bytes.
fn fit(img: DynamicImage, w: u32, h: u32, mode: ResizeMode, fill: &[u8]) -> Vec<u8> {
    let c = fill.len();
    let (iw, ih) = (img.width(), img.height());
    let resized = |img: DynamicImage, nw: u32, nh: u32| {
        let out = if (nw, nh) == (iw, ih) {
            img
        } else {
            img.resize_exact(nw, nh, FilterType::Triangle)
        };
        if c == 1 {
            out.into_luma8().into_raw()
        } else {
            out.into_rgb8().into_raw()
        }
    };
    let canvas = || fill.repeat(w as usize * h as usize);
    if iw == 0 || ih == 0 {
        return canvas();
    }
    match mode {
        ResizeMode::Stretch => resized(img, w, h),
        ResizeMode::Pad => {
            let scale = (f64::from(w) / f64::from(iw)).min(f64::from(h) / f64::from(ih));
            let nw = ((f64::from(iw) * scale).round() as u32).clamp(1, w);
            let nh = ((f64::from(ih) * scale).round() as u32).clamp(1, h);
            let inner = resized(img, nw, nh);
            let mut out = canvas();
            let (ox, oy) = (((w - nw) / 2) as usize, ((h - nh) / 2) as usize);
            let (row_out, row_in) = (w as usize * c, nw as usize * c);
            for (y, src) in inner.chunks_exact(row_in).enumerate() {
                let start = (oy + y) * row_out + ox * c;
                if let Some(dst) = out.get_mut(start..start + row_in) {
                    dst.copy_from_slice(src);
                }
            }
            out
        }
        ResizeMode::Crop => {
            let scale = (f64::from(w) / f64::from(iw)).max(f64::from(h) / f64::from(ih));
            let nw = ((f64::from(iw) * scale).round() as u32).max(w);
            let nh = ((f64::from(ih) * scale).round() as u32).max(h);
            let inner = resized(img, nw, nh);
            let (ox, oy) = (((nw - w) / 2) as usize, ((nh - h) / 2) as usize);
            let (row_in, row_out) = (nw as usize * c, w as usize * c);
            let mut out = Vec::with_capacity(h as usize * row_out);
            for y in 0..h as usize {
                let start = (oy + y) * row_in + ox * c;
                out.extend_from_slice(&inner[start..start + row_out]);
            }
            out
        }
    }
}

/// Interleaved HWC bytes with `c` channels -> channel planes (CHW).
fn hwc_to_chw(raw: &[u8], c: usize) -> Vec<u8> {
    let plane = raw.len() / c.max(1);
    if c <= 1 || plane == 0 {
        return raw.to_vec();
    }
    let mut out = vec![0u8; raw.len()];
    for (k, dst) in out.chunks_exact_mut(plane).enumerate() {
        for (d, px) in dst.iter_mut().zip(raw.chunks_exact(c)) {
            *d = px[k];
        }
    }
    out
}

/// Augment CHW u8 pixels of size `channels x height x width` directly (for
/// cached images, without re-decoding): random resized crop resampled back
/// to `height x width` (bilinear), horizontal flip, brightness, contrast and
/// (with 3 channels) saturation. Deterministic from `seed`.
///
/// If `pixels.len()` does not equal `channels * height * width` the pixels
/// are returned unchanged.
pub fn augment_pixels(
    pixels: &[u8],
    channels: u32,
    height: u32,
    width: u32,
    aug: &Augment,
    seed: u64,
) -> Vec<u8> {
    let (c, h, w) = (channels as usize, height as usize, width as usize);
    if aug.is_identity() || c == 0 || h == 0 || w == 0 || pixels.len() != c * h * w {
        return pixels.to_vec();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf: Vec<f32> = pixels.iter().map(|&x| f32::from(x)).collect();

    if aug.random_resized_crop {
        let (x0, y0, cw, ch) = sample_crop(&mut rng, w, h, aug);
        if (x0, y0, cw, ch) != (0, 0, w, h) {
            buf = crop_resize(&buf, c, h, w, (x0, y0, cw, ch));
        }
    }
    if aug.hflip > 0.0 && rng.random::<f32>() < aug.hflip {
        for row in buf.chunks_exact_mut(w) {
            row.reverse();
        }
    }
    let plane = h * w;
    if aug.brightness > 0.0 {
        let f = jitter_factor(&mut rng, aug.brightness);
        buf.iter_mut().for_each(|v| *v *= f);
    }
    if aug.contrast > 0.0 {
        let f = jitter_factor(&mut rng, aug.contrast);
        // Blend towards the mean grey level, as torchvision does.
        let mean = if c == 3 {
            (0..plane).map(|i| luma(&buf, plane, i)).sum::<f32>() / plane as f32
        } else {
            buf.iter().sum::<f32>() / buf.len() as f32
        };
        buf.iter_mut().for_each(|v| *v = (*v - mean) * f + mean);
    }
    if aug.saturation > 0.0 && c == 3 {
        let f = jitter_factor(&mut rng, aug.saturation);
        for i in 0..plane {
            let g = luma(&buf, plane, i);
            for k in 0..3 {
                let v = &mut buf[k * plane + i];
                *v = (*v - g) * f + g;
            }
        }
    }
    buf.iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect()
}

fn luma(buf: &[f32], plane: usize, i: usize) -> f32 {
    0.299 * buf[i] + 0.587 * buf[plane + i] + 0.114 * buf[2 * plane + i]
}

fn jitter_factor(rng: &mut StdRng, amount: f32) -> f32 {
    let lo = (1.0 - amount).max(0.0);
    let hi = 1.0 + amount;
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

/// Crop box `(x0, y0, width, height)` sampled as in torchvision's
/// RandomResizedCrop: up to 10 tries for a box with the sampled area and
/// aspect ratio, then a centre crop with the ratio clamped into range.
fn sample_crop(
    rng: &mut StdRng,
    w: usize,
    h: usize,
    aug: &Augment,
) -> (usize, usize, usize, usize) {
    let area = (w * h) as f32;
    let [s0, s1] = aug.crop_scale;
    let [r0, r1] = aug.crop_ratio;
    let sample = |rng: &mut StdRng, lo: f32, hi: f32| {
        if hi > lo {
            rng.random_range(lo..hi)
        } else {
            lo
        }
    };
    if s0 > 0.0 && s1 >= s0 && r0 > 0.0 && r1 >= r0 {
        let (lr0, lr1) = (r0.ln(), r1.ln());
        for _ in 0..10 {
            let target = area * sample(rng, s0, s1);
            let ratio = sample(rng, lr0, lr1).exp();
            let cw = (target * ratio).sqrt().round() as usize;
            let ch = (target / ratio).sqrt().round() as usize;
            if cw > 0 && ch > 0 && cw <= w && ch <= h {
                let x0 = rng.random_range(0..=w - cw);
                let y0 = rng.random_range(0..=h - ch);
                return (x0, y0, cw, ch);
            }
        }
    }
    let in_ratio = w as f32 / h as f32;
    let (cw, ch) = if r0 > 0.0 && in_ratio < r0 {
        (w, ((w as f32 / r0).round() as usize).clamp(1, h))
    } else if r1 > 0.0 && in_ratio > r1 {
        (((h as f32 * r1).round() as usize).clamp(1, w), h)
    } else {
        (w, h)
    };
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

/// Bilinear resample of the crop box back to `w x h` (pixel centres aligned,
/// edges clamped).
fn crop_resize(
    buf: &[f32],
    c: usize,
    h: usize,
    w: usize,
    (x0, y0, cw, ch): (usize, usize, usize, usize),
) -> Vec<f32> {
    let sx = cw as f32 / w as f32;
    let sy = ch as f32 / h as f32;
    // Precompute the two source columns/rows and weights once per axis.
    let axis = |n: usize, scale: f32, start: usize, len: usize| -> Vec<(usize, usize, f32)> {
        (0..n)
            .map(|i| {
                let s = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (len - 1) as f32);
                let i0 = s.floor() as usize;
                let i1 = (i0 + 1).min(len - 1);
                (start + i0, start + i1, s - i0 as f32)
            })
            .collect()
    };
    let xs = axis(w, sx, x0, cw);
    let ys = axis(h, sy, y0, ch);
    let plane = h * w;
    let mut out = vec![0f32; c * plane];
    for k in 0..c {
        let src = &buf[k * plane..(k + 1) * plane];
        let dst = &mut out[k * plane..(k + 1) * plane];
        for (y, &(ya, yb, fy)) in ys.iter().enumerate() {
            let (ra, rb) = (&src[ya * w..ya * w + w], &src[yb * w..yb * w + w]);
            for (x, &(xa, xb, fx)) in xs.iter().enumerate() {
                let top = ra[xa] + (ra[xb] - ra[xa]) * fx;
                let bot = rb[xa] + (rb[xb] - rb[xa]) * fx;
                dst[y * w + x] = top + (bot - top) * fy;
            }
        }
    }
    out
}

/// Convert CHW u8 pixels back to an image (handy for previews and tests).
pub fn pixels_to_image(
    pixels: &[u8],
    channels: u32,
    height: u32,
    width: u32,
) -> Option<DynamicImage> {
    let plane = height as usize * width as usize;
    if pixels.len() != channels as usize * plane {
        return None;
    }
    match channels {
        1 => GrayImage::from_raw(width, height, pixels.to_vec()).map(DynamicImage::ImageLuma8),
        3 => {
            let mut hwc = vec![0u8; pixels.len()];
            for i in 0..plane {
                for k in 0..3 {
                    hwc[i * 3 + k] = pixels[k * plane + i];
                }
            }
            RgbImage::from_raw(width, height, hwc).map(DynamicImage::ImageRgb8)
        }
        _ => None,
    }
}

/// Older processor configs (the original CLIP, ViT and ViT-GPT2 uploads) give `size` and
/// `crop_size` as one integer: the shortest edge when a centre crop follows, else a square.
fn legacy_sizes(mut v: serde_json::Value) -> serde_json::Value {
    let crop = v
        .get("do_center_crop")
        .and_then(|x| x.as_bool())
        .unwrap_or(false);
    if let Some(n) = v.get("size").and_then(|x| x.as_u64()) {
        v["size"] = if crop {
            serde_json::json!({ "shortest_edge": n })
        } else {
            serde_json::json!({ "height": n, "width": n })
        };
    }
    if let Some(n) = v.get("crop_size").and_then(|x| x.as_u64()) {
        v["crop_size"] = serde_json::json!({ "height": n, "width": n });
    }
    v
}

impl Preprocess {
    /// The preprocessing a Hugging Face image processor (`preprocessor_config.json`)
    /// describes: target size (`size.height/width`, or `shortest_edge` + `crop_size` as
    /// CLIP's resize-and-centre-crop), `image_mean`, `image_std`. Pixels are rescaled by
    /// 1/255 as every supported processor does; resampling is bilinear here whatever
    /// `resample` says, so resized images differ from PIL's slightly (same-size images
    /// match exactly).
    pub fn from_hf(path: &std::path::Path) -> Result<Self> {
        let bad = |m: String| DataError::Config(format!("{}: {m}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let v = legacy_sizes(v);
        let flag = |k: &str, default: bool| v.get(k).and_then(|x| x.as_bool()).unwrap_or(default);
        let dim =
            |t: &serde_json::Value, k: &str| t.get(k).and_then(|x| x.as_u64()).map(|x| x as u32);
        let size = v.get("size").cloned().unwrap_or_default();
        let (height, width, resize) = if let Some(edge) = dim(&size, "shortest_edge") {
            let crop = v.get("crop_size").cloned().unwrap_or_default();
            match (
                flag("do_center_crop", false),
                dim(&crop, "height"),
                dim(&crop, "width"),
            ) {
                (true, Some(h), Some(w)) => (h, w, ResizeMode::Crop),
                _ => (edge, edge, ResizeMode::Crop),
            }
        } else {
            match (dim(&size, "height"), dim(&size, "width")) {
                (Some(h), Some(w)) => (h, w, ResizeMode::Stretch),
                _ => return Err(bad("no size.height/width or size.shortest_edge".into())),
            }
        };
        let rescale = v
            .get("rescale_factor")
            .and_then(|x| x.as_f64())
            .unwrap_or(1.0 / 255.0);
        if flag("do_rescale", true) && (rescale * 255.0 - 1.0).abs() > 1e-6 {
            return Err(bad(format!(
                "rescale_factor = {rescale}: only 1/255 is supported"
            )));
        }
        let list = |k: &str, default: f32| -> Result<Vec<f32>> {
            match v.get(k) {
                None => Ok(vec![default]),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_f64()
                            .map(|f| f as f32)
                            .ok_or_else(|| bad(format!("{k} holds a non-number")))
                    })
                    .collect(),
                Some(x) => x
                    .as_f64()
                    .map(|f| vec![f as f32])
                    .ok_or_else(|| bad(format!("{k} is not a number or list"))),
            }
        };
        let (mean, std) = if flag("do_normalize", true) {
            (list("image_mean", 0.5)?, list("image_std", 0.5)?)
        } else {
            (vec![0.0], vec![1.0])
        };
        let p = Preprocess {
            height,
            width,
            channels: 3,
            mean,
            std,
            resize,
        };
        p.validate().map_err(|e| bad(e.to_string()))?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 x `width` RGB with a different mean and std per channel.
    fn per_channel(width: u32) -> Preprocess {
        Preprocess {
            height: 1,
            width,
            channels: 3,
            mean: vec![0.0, 0.5, 1.0],
            std: vec![1.0, 0.5, 0.25],
            resize: ResizeMode::Stretch,
        }
    }
    use image::{Luma, Rgba};

    fn gradient(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
            let r = (x * 255 / (w - 1).max(1)) as u8;
            let g = (y * 255 / (h - 1).max(1)) as u8;
            Rgb([r, g, 255 - r])
        }))
    }

    fn full_aug() -> Augment {
        Augment {
            random_resized_crop: true,
            hflip: 0.5,
            brightness: 0.3,
            contrast: 0.3,
            saturation: 0.3,
            ..Augment::default()
        }
    }

    fn small(channels: u32) -> Preprocess {
        Preprocess {
            height: 12,
            width: 16,
            channels,
            ..Preprocess::default()
        }
    }

    #[test]
    fn output_length_and_range() {
        for channels in [1, 3] {
            let p = small(channels);
            let out = preprocess(&gradient(40, 30), &p, &Augment::default(), None);
            assert_eq!(out.len(), (channels * 12 * 16) as usize);
            assert_eq!(out.len(), p.pixel_len());
            // mean 0.5, std 0.5 maps 0..=255 onto -1..=1
            assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
            assert!(out.iter().any(|v| *v < -0.5) && out.iter().any(|v| *v > 0.5));
        }
    }

    #[test]
    fn normalisation_is_exact_per_channel() {
        let p = per_channel(2);
        let mut out = vec![42.0]; // existing contents are kept
        normalize_into(&[0, 255, 255, 0, 51, 51], &p, &mut out);
        let expect = [42.0, 0.0, 1.0, 1.0, -1.0, -3.2, -3.2];
        assert_eq!(out.len(), expect.len());
        for (a, b) in out.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn preprocess_equals_normalised_pixels() {
        let img = gradient(33, 21);
        let p = small(3);
        for seed in [None, Some(3)] {
            let pixels = to_pixels(&img, &p, &full_aug(), seed);
            let mut expect = Vec::new();
            normalize_into(&pixels, &p, &mut expect);
            assert_eq!(preprocess(&img, &p, &full_aug(), seed), expect);
        }
    }

    #[test]
    fn augmentation_is_deterministic_per_seed() {
        let img = gradient(40, 30);
        let p = small(3);
        let a = to_pixels(&img, &p, &full_aug(), Some(7));
        assert_eq!(a, to_pixels(&img, &p, &full_aug(), Some(7)));
        let plain = to_pixels(&img, &p, &full_aug(), None);
        assert_ne!(a, plain);
        let differing = (0..20)
            .map(|s| to_pixels(&img, &p, &full_aug(), Some(100 + s)))
            .filter(|b| *b != a)
            .count();
        assert_eq!(differing, 20);
    }

    #[test]
    fn identity_augmentation_equals_none() {
        let img = gradient(40, 30);
        let p = small(3);
        let aug = Augment::default();
        assert!(aug.is_identity());
        assert!(!full_aug().is_identity());
        assert_eq!(
            to_pixels(&img, &p, &aug, Some(5)),
            to_pixels(&img, &p, &aug, None)
        );
    }

    #[test]
    fn cached_and_direct_augmentation_agree() {
        let img = gradient(40, 30);
        let p = small(3);
        let cached = to_pixels(&img, &p, &Augment::default(), None);
        assert_eq!(
            augment_pixels(&cached, 3, 12, 16, &full_aug(), 9),
            to_pixels(&img, &p, &full_aug(), Some(9))
        );
    }

    #[test]
    fn hflip_with_probability_one_flips() {
        let (h, w) = (3usize, 4usize);
        // a distinct value at every position
        let pixels: Vec<u8> = (0..(3 * h * w) as u8).collect();
        let aug = Augment {
            hflip: 1.0,
            ..Augment::default()
        };
        let out = augment_pixels(&pixels, 3, h as u32, w as u32, &aug, 1);
        for k in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let base = k * h * w + y * w;
                    assert_eq!(out[base + x], pixels[base + w - 1 - x]);
                }
            }
        }
        // Through the image path: left half black, right half white.
        let img = DynamicImage::ImageLuma8(ImageBuffer::from_fn(8, 8, |x, _| {
            Luma([if x < 4 { 0 } else { 255 }])
        }));
        let p = Preprocess {
            height: 8,
            width: 8,
            channels: 1,
            ..Preprocess::default()
        };
        let flipped = to_pixels(&img, &p, &aug, Some(0));
        assert_eq!(flipped[0], 255);
        assert_eq!(flipped[7], 0);
    }

    #[test]
    fn zero_probability_flip_never_flips() {
        let pixels: Vec<u8> = (0..12).collect();
        let aug = Augment {
            hflip: 0.0,
            brightness: 0.0,
            ..Augment::default()
        };
        for seed in 0..10 {
            assert_eq!(augment_pixels(&pixels, 1, 3, 4, &aug, seed), pixels);
        }
    }

    #[test]
    fn pad_mode_keeps_aspect() {
        // A white 40x20 image into a 16x16 box: 16x8 content, 4 rows of
        // mean-coloured border above and below.
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(40, 20, Rgb([255, 255, 255])));
        let p = Preprocess {
            height: 16,
            width: 16,
            channels: 3,
            resize: ResizeMode::Pad,
            mean: vec![0.0, 0.5, 1.0],
            std: vec![1.0],
        };
        let px = to_pixels(&img, &p, &Augment::default(), None);
        let fill = [0u8, 128, 255];
        for (k, &f) in fill.iter().enumerate() {
            let plane = &px[k * 256..(k + 1) * 256];
            for y in 0..16 {
                let row = &plane[y * 16..(y + 1) * 16];
                let expect = if (4..12).contains(&y) { 255 } else { f };
                assert!(
                    row.iter().all(|&v| v == expect),
                    "channel {k} row {y}: {row:?}"
                );
            }
        }
        // Stretch fills everything with content.
        let stretched = to_pixels(
            &img,
            &Preprocess {
                resize: ResizeMode::Stretch,
                ..p
            },
            &Augment::default(),
            None,
        );
        assert!(stretched.iter().all(|&v| v == 255));
    }

    #[test]
    fn alpha_is_composited_over_white_and_gray_is_luma() {
        let img = DynamicImage::ImageRgba8(ImageBuffer::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgba([0, 0, 0, 0])
            } else {
                Rgba([10, 20, 30, 255])
            }
        }));
        let p = Preprocess {
            height: 1,
            width: 2,
            channels: 3,
            ..Preprocess::default()
        };
        let px = to_pixels(&img, &p, &Augment::default(), None);
        assert_eq!(px, vec![255, 10, 255, 20, 255, 30]);

        let gray = Preprocess { channels: 1, ..p };
        let g = to_pixels(&gradient(2, 1), &gray, &Augment::default(), None);
        assert_eq!(g, gradient(2, 1).to_luma8().into_raw());
    }

    #[test]
    fn crop_changes_content_but_keeps_size() {
        let pixels: Vec<u8> = (0..28 * 28).map(|i| (i % 251) as u8).collect();
        let aug = Augment {
            random_resized_crop: true,
            crop_scale: [0.3, 0.5],
            ..Augment::default()
        };
        let out = augment_pixels(&pixels, 1, 28, 28, &aug, 11);
        assert_eq!(out.len(), pixels.len());
        assert_ne!(out, pixels);
        // Wrong length: returned unchanged rather than panicking.
        assert_eq!(
            augment_pixels(&pixels[..10], 1, 28, 28, &aug, 11),
            &pixels[..10]
        );
    }

    #[test]
    fn brightness_scales_pixels() {
        let pixels = vec![100u8; 3 * 4 * 4];
        let aug = Augment {
            brightness: 0.5,
            ..Augment::default()
        };
        let outs: Vec<u8> = (0..20)
            .map(|s| augment_pixels(&pixels, 3, 4, 4, &aug, s)[0])
            .collect();
        assert!(outs.iter().all(|&v| (50..=150).contains(&v)), "{outs:?}");
        assert!(
            outs.iter().any(|&v| v < 95) && outs.iter().any(|&v| v > 105),
            "{outs:?}"
        );
        // A uniform image stays uniform.
        let one = augment_pixels(&pixels, 3, 4, 4, &aug, 3);
        assert!(one.iter().all(|&v| v == one[0]));
    }

    #[test]
    fn saturation_keeps_gray_pixels_gray() {
        let gray_rgb = vec![77u8; 3 * 2 * 2];
        let aug = Augment {
            saturation: 1.0,
            contrast: 0.0,
            ..Augment::default()
        };
        assert_eq!(augment_pixels(&gray_rgb, 3, 2, 2, &aug, 4), gray_rgb);
    }

    #[test]
    fn validate_rejects_bad_configs() {
        assert!(Preprocess::default().validate().is_ok());
        assert!(Augment::default().validate().is_ok());
        assert!(full_aug().validate().is_ok());
        let bad_pre = [
            Preprocess {
                channels: 2,
                ..Preprocess::default()
            },
            Preprocess {
                height: 0,
                ..Preprocess::default()
            },
            Preprocess {
                width: 5000,
                ..Preprocess::default()
            },
            Preprocess {
                std: vec![0.0],
                ..Preprocess::default()
            },
            Preprocess {
                mean: vec![0.5, 0.5],
                ..Preprocess::default()
            },
            Preprocess {
                mean: vec![f32::NAN],
                ..Preprocess::default()
            },
        ];
        for p in bad_pre {
            let msg = p.validate().unwrap_err().to_string();
            assert!(msg.contains("preprocess."), "{msg}");
        }
        assert!(Preprocess {
            channels: 1,
            mean: vec![0.1],
            std: vec![0.3],
            ..Preprocess::default()
        }
        .validate()
        .is_ok());
        let bad_aug = [
            Augment {
                hflip: 1.5,
                ..Augment::default()
            },
            Augment {
                brightness: -0.1,
                ..Augment::default()
            },
            Augment {
                crop_scale: [0.0, 1.0],
                ..Augment::default()
            },
            Augment {
                crop_scale: [0.8, 0.5],
                ..Augment::default()
            },
            Augment {
                crop_ratio: [2.0, 1.0],
                ..Augment::default()
            },
            Augment {
                saturation: f32::NAN,
                ..Augment::default()
            },
        ];
        for a in bad_aug {
            let msg = a.validate().unwrap_err().to_string();
            assert!(msg.contains("augment."), "{msg}");
        }
    }

    #[test]
    fn config_serde() {
        let p: Preprocess =
            serde_json::from_str(r#"{"height": 28, "width": 28, "channels": 1, "resize": "pad"}"#)
                .unwrap();
        assert_eq!((p.height, p.channels, p.resize), (28, 1, ResizeMode::Pad));
        assert_eq!(p.mean, vec![0.5]);
        assert!(serde_json::from_str::<Preprocess>(r#"{"heigth": 28}"#).is_err());
        let a: Augment = serde_json::from_str(r#"{"hflip": 0.5}"#).unwrap();
        assert_eq!(a.hflip, 0.5);
        assert_eq!(a.crop_scale, [0.6, 1.0]);
    }

    #[test]
    fn pixels_round_trip_to_image() {
        let img = gradient(5, 4);
        let p = Preprocess {
            height: 4,
            width: 5,
            ..Preprocess::default()
        };
        let px = to_pixels(&img, &p, &Augment::default(), None);
        let back = pixels_to_image(&px, 3, 4, 5).unwrap();
        assert_eq!(back.to_rgb8(), img.to_rgb8());
        assert!(pixels_to_image(&px, 3, 4, 4).is_none());
    }
    /// Crop keeps the aspect ratio and cuts the centre: a 4x2 image at 2x2 needs no
    /// scaling and keeps columns 1..3.
    #[test]
    fn crop_cuts_the_centre() {
        let img =
            DynamicImage::ImageLuma8(GrayImage::from_fn(4, 2, |x, y| Luma([(10 * x + y) as u8])));
        let p = Preprocess {
            height: 2,
            width: 2,
            channels: 1,
            resize: ResizeMode::Crop,
            ..Preprocess::default()
        };
        assert_eq!(
            to_pixels(&img, &p, &Augment::default(), None),
            [10, 20, 11, 21]
        );
        // A tall image is scaled to cover the width, then cut vertically: 4x8 -> 2x4 -> 2x2.
        let tall =
            DynamicImage::ImageLuma8(GrayImage::from_fn(4, 8, |_, y| Luma([(30 * y) as u8])));
        let px = to_pixels(&tall, &p, &Augment::default(), None);
        assert_eq!(px.len(), 4);
        assert!(px[0] > 30 && px[2] < 200 && px[2] > px[0], "{px:?}");
    }

    #[test]
    fn hf_processor_configs() {
        let dir = std::env::temp_dir().join(format!("vitrine-hfproc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let clip = write(
            "clip.json",
            r#"{"size": {"shortest_edge": 224}, "do_center_crop": true,
            "crop_size": {"height": 224, "width": 224}, "image_mean": [0.48, 0.45, 0.40],
            "image_std": [0.26, 0.26, 0.27], "rescale_factor": 0.00392156862745098}"#,
        );
        let p = Preprocess::from_hf(&clip).unwrap();
        assert_eq!((p.height, p.width, p.resize), (224, 224, ResizeMode::Crop));
        assert_eq!(p.mean, [0.48, 0.45, 0.40]);
        let legacy_clip = write(
            "legacy.json",
            r#"{"size": 224, "crop_size": 224, "do_center_crop": true}"#,
        );
        let p = Preprocess::from_hf(&legacy_clip).unwrap();
        assert_eq!((p.height, p.width, p.resize), (224, 224, ResizeMode::Crop));
        let legacy_vit = write("legacyvit.json", r#"{"size": 224}"#);
        let p = Preprocess::from_hf(&legacy_vit).unwrap();
        assert_eq!(
            (p.height, p.width, p.resize),
            (224, 224, ResizeMode::Stretch)
        );
        let vit = write(
            "vit.json",
            r#"{"size": {"height": 32, "width": 48}, "image_mean": 0.5}"#,
        );
        let p = Preprocess::from_hf(&vit).unwrap();
        assert_eq!((p.height, p.width, p.resize), (32, 48, ResizeMode::Stretch));
        assert_eq!((p.mean.clone(), p.std.clone()), (vec![0.5], vec![0.5]));
        for (name, text, want) in [
            ("nosize.json", "{}", "size"),
            (
                "rescale.json",
                r#"{"size": {"height": 8, "width": 8}, "rescale_factor": 1.0}"#,
                "rescale_factor",
            ),
            (
                "big.json",
                r#"{"size": {"height": 9000, "width": 8}}"#,
                "height",
            ),
            ("json.json", "{", "JSON"),
        ] {
            let err = Preprocess::from_hf(&write(name, text))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    /// Per-channel statistics apply to every image of a batch, not only the first.
    #[test]
    fn per_channel_normalisation_repeats_across_a_batch() {
        let p = per_channel(1);
        let one = [255u8, 255, 255];
        let mut single = Vec::new();
        normalize_into(&one, &p, &mut single);
        assert_eq!(single, [1.0, 1.0, 0.0]);
        let mut batch = Vec::new();
        normalize_into(&[one, one].concat(), &p, &mut batch);
        assert_eq!(batch, [single.clone(), single].concat());
    }
}
