//! Bounded image decoding: the one place the project turns untrusted bytes
//! into pixels.
//!
//! Limits are checked in increasing order of cost: byte size, then the
//! dimensions declared in the header (read without decoding pixel data),
//! then the decoder's allocation budget. A tiny file that declares a huge
//! image is therefore refused before any pixel buffer is allocated.

use std::fs::File;
use std::io::{Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::error::{ImageError, LimitErrorKind};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Resource limits applied to every decoded image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeLimits {
    /// Largest accepted width in pixels.
    pub max_width: u32,
    /// Largest accepted height in pixels.
    pub max_height: u32,
    /// Largest accepted width × height (a long thin image can pass both side limits).
    pub max_pixels: u64,
    /// Most memory the decoder may allocate at once (pixel buffer included).
    pub max_alloc_bytes: u64,
    /// Largest accepted encoded size (file size) in bytes.
    pub max_file_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_width: 8192,
            max_height: 8192,
            max_pixels: 8192 * 8192,
            max_alloc_bytes: 256 * 1024 * 1024,
            max_file_bytes: 32 * 1024 * 1024,
        }
    }
}

impl DecodeLimits {
    /// Reject limits that would refuse every image.
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("limits.max_width", u64::from(self.max_width)),
            ("limits.max_height", u64::from(self.max_height)),
            ("limits.max_pixels", self.max_pixels),
            ("limits.max_alloc_bytes", self.max_alloc_bytes),
            ("limits.max_file_bytes", self.max_file_bytes),
        ];
        for (name, value) in fields {
            if value == 0 {
                return Err(DataError::Config(format!(
                    "{name} = 0; it must be at least 1"
                )));
            }
        }
        Ok(())
    }

    fn to_image_limits(&self, with_dimensions: bool) -> Limits {
        // Limits is non_exhaustive: start from the default and override.
        let mut l = Limits::default();
        l.max_alloc = Some(self.max_alloc_bytes);
        if with_dimensions {
            l.max_image_width = Some(self.max_width);
            l.max_image_height = Some(self.max_height);
        }
        l
    }
}

/// Decode an encoded image (PNG, JPEG, GIF, BMP or WebP; the format is
/// guessed from the content) within `limits`.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(DataError::FileTooLarge {
            bytes: bytes.len() as u64,
            max_bytes: limits.max_file_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(decode_error("empty input (0 bytes)"));
    }
    let format = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_error(e.to_string()))?
        .format()
        .ok_or_else(|| {
            decode_error("unrecognised image format (supported: PNG, JPEG, GIF, BMP, WebP)")
        })?;

    // Decoders are fuzzed upstream, but these bytes may come from anyone: a
    // decoder panic must become an error, not take the process down.
    catch_unwind(AssertUnwindSafe(|| decode_checked(bytes, format, limits))).unwrap_or_else(|_| {
        Err(decode_error(format!(
            "the {format:?} decoder failed on malformed data"
        )))
    })
}

fn decode_checked(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<DynamicImage> {
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes, limits);
    }
    // One decoder, two stages: its header tells the declared size before
    // any pixel buffer exists, so the size can be reported (the decoder's
    // own limit error does not say it); only then are pixels decoded.
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits.to_image_limits(false));
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    // As ImageReader::decode does: the output buffer counts against the
    // allocation budget left to the decoder.
    let mut full = limits.to_image_limits(true);
    full.reserve(decoder.total_bytes())
        .map_err(map_image_error)?;
    decoder.set_limits(full).map_err(map_image_error)?;
    DynamicImage::from_decoder(decoder).map_err(map_image_error)
}

fn check_dimensions(width: u32, height: u32, limits: &DecodeLimits) -> Result<()> {
    if width > limits.max_width || height > limits.max_height {
        return Err(DataError::ImageTooLarge {
            width,
            height,
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(DataError::TooManyPixels {
            width,
            height,
            max_pixels: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(decode_error(format!(
            "image declares {width}x{height} pixels"
        )));
    }
    Ok(())
}

/// JPEG through the same decoder `image` uses (zune-jpeg), made to refuse a scan that stops
/// early. A lenient decoder fills what is missing: a cut-off upload would silently become a
/// partly grey photo, even when an end-of-image marker was appended after the cut. Two
/// things catch it: strict mode (data that ends without an end marker, and codes that do
/// not decode, are errors), and [`ONE_BITS`] put just before the end marker. A complete
/// scan never reads them; a scan that stops early goes on reading bits there, where a run
/// of 1-bits longer than any Huffman code is an invalid code, an error in strict mode.
/// The output colour types are those `image` gives (RGB, RGBA, L, LA; anything else as
/// RGB).
fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;

    let Some(end) = jpeg_end(bytes) else {
        return Err(decode_error(
            "truncated JPEG: no end-of-image marker after the image data",
        ));
    };
    // The decoder's own size limits stay at JPEG's maximum so that our check below, which
    // names the declared size, is the one that refuses.
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX));
    let probed = with_one_bits_at(bytes, end);
    let mut decoder =
        zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(probed.as_slice()), options);
    decoder.decode_headers().map_err(jpeg_error)?;
    let (Some((width, height)), Some(input)) = (decoder.dimensions(), decoder.input_colorspace())
    else {
        return Err(decode_error("JPEG header without dimensions"));
    };
    // JPEG sides are 16-bit, so these conversions cannot fail.
    let (width, height) = (width as u32, height as u32);
    check_dimensions(width, height, limits)?;
    let out = match input {
        ColorSpace::RGB | ColorSpace::RGBA | ColorSpace::Luma | ColorSpace::LumaA => input,
        _ => ColorSpace::RGB,
    };
    let needed = u64::from(width) * u64::from(height) * out.num_components() as u64;
    if needed > limits.max_alloc_bytes {
        return Err(decode_error(format!(
            "decoding needs {needed} bytes, more than limits.max_alloc_bytes = {} allows",
            limits.max_alloc_bytes
        )));
    }
    decoder.set_options(decoder.options().jpeg_set_out_colorspace(out));
    let pixels = decoder.decode().map_err(jpeg_error)?;
    let image = match out {
        ColorSpace::RGBA => {
            image::RgbaImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgba8)
        }
        ColorSpace::Luma => {
            image::GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8)
        }
        ColorSpace::LumaA => {
            image::GrayAlphaImage::from_raw(width, height, pixels).map(DynamicImage::ImageLumaA8)
        }
        _ => image::RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8),
    };
    image.ok_or_else(|| decode_error("the JPEG decoder returned fewer pixels than declared"))
}

fn jpeg_error(e: zune_jpeg::errors::DecodeErrors) -> DataError {
    decode_error(format!("JPEG: {e} (is the file cut short or damaged?)"))
}

/// 64 stuffed 1-bits (`FF 00` is a data byte 0xFF inside a scan): no Huffman code is that
/// long, and an all-ones code is reserved.
const ONE_BITS: [u8; 16] = [
    0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00,
];

/// `bytes` with [`ONE_BITS`] inserted at `end` ([`jpeg_end`]).
fn with_one_bits_at(bytes: &[u8], end: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + ONE_BITS.len());
    out.extend_from_slice(&bytes[..end]);
    out.extend_from_slice(&ONE_BITS);
    out.extend_from_slice(&bytes[end..]);
    out
}

/// Where the scan data ends: the position of the end-of-image marker that follows the last
/// scan (the input's length when there is no scan at all: the decoder reports what is
/// missing). None when the last scan has no end marker after it: a scan cut off before its
/// end. Within entropy-coded data 0xFF is always escaped, so the last start-of-scan marker
/// (FF DA) must be followed by an end-of-image marker (FF D9). Bytes after the end marker
/// are tolerated, as decoders do.
fn jpeg_end(bytes: &[u8]) -> Option<usize> {
    let is_sos = |w: &[u8]| w == [0xFF, 0xDA];
    // The end marker is normally within the last few bytes: search backwards.
    match bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]) {
        Some(eoi) => (!bytes[eoi..].windows(2).any(is_sos)).then_some(eoi),
        None => (!bytes.windows(2).any(is_sos)).then_some(bytes.len()),
    }
}

/// Read and decode the image file at `path`. The file size is checked
/// against `limits.max_file_bytes` before reading; errors name the path.
pub fn load_image(path: &Path, limits: &DecodeLimits) -> Result<DynamicImage> {
    load_image_inner(path, limits).map_err(|source| DataError::Image {
        path: path.to_path_buf(),
        row: None,
        source: Box::new(source),
    })
}

/// [`load_image`] without the path context, for callers that add their own.
pub(crate) fn load_image_inner(path: &Path, limits: &DecodeLimits) -> Result<DynamicImage> {
    let bytes = read_bounded(path, limits.max_file_bytes)?;
    decode_image(&bytes, limits)
}

/// Read a whole file, refusing files over `max_bytes` without reading them.
/// The read is capped too, in case the file grows after the size check.
fn read_bounded(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let size = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    if size > max_bytes {
        return Err(DataError::FileTooLarge {
            bytes: size,
            max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(DataError::FileTooLarge {
            bytes: bytes.len() as u64,
            max_bytes,
        });
    }
    Ok(bytes)
}

fn decode_error(reason: impl Into<String>) -> DataError {
    DataError::Decode {
        reason: reason.into(),
    }
}

fn map_image_error(e: ImageError) -> DataError {
    match &e {
        ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::InsufficientMemory => decode_error(format!(
                "decoding needs more memory than limits.max_alloc_bytes allows ({e})"
            )),
            LimitErrorKind::DimensionError => decode_error(format!(
                "image exceeds limits.max_width / limits.max_height ({e})"
            )),
            _ => decode_error(e.to_string()),
        },
        _ => decode_error(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn gradient(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
            Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        }))
    }

    /// Pseudo-random pixels: enough entropy that the JPEG scan is long.
    fn noise(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
            let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).rotate_left(x % 7);
            Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        }))
    }

    fn small_limits() -> DecodeLimits {
        DecodeLimits {
            max_width: 20,
            max_height: 10,
            ..DecodeLimits::default()
        }
    }

    /// Standard CRC-32 (IEEE, reflected), as PNG chunks use.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        crc.sum()
    }

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut typed = kind.to_vec();
        typed.extend_from_slice(data);
        out.extend_from_slice(&typed);
        out.extend_from_slice(&crc32(&typed).to_be_bytes());
    }

    /// A PNG whose header claims `w`x`h` RGB but whose body is a few bytes.
    fn png_bomb(w: u32, h: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
        png_chunk(&mut out, b"IHDR", &ihdr);
        png_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
        png_chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn crc32_matches_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn decodes_valid_png_and_jpeg() {
        let img = gradient(16, 9);
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Bmp] {
            let out = decode_image(&encode(&img, format), &DecodeLimits::default()).unwrap();
            assert_eq!((out.width(), out.height()), (16, 9), "{format:?}");
        }
        let png = decode_image(&encode(&img, ImageFormat::Png), &DecodeLimits::default()).unwrap();
        assert_eq!(png.to_rgb8(), img.to_rgb8());
    }

    #[test]
    fn dimensions_at_limit_accepted_one_past_refused() {
        let limits = small_limits();
        let ok = encode(&gradient(20, 10), ImageFormat::Png);
        assert!(decode_image(&ok, &limits).is_ok());

        let wide = encode(&gradient(21, 10), ImageFormat::Png);
        match decode_image(&wide, &limits) {
            Err(DataError::ImageTooLarge {
                width: 21,
                height: 10,
                max_width: 20,
                max_height: 10,
            }) => {}
            other => panic!("expected ImageTooLarge, got {other:?}"),
        }
        let tall = encode(&gradient(20, 11), ImageFormat::Jpeg);
        assert!(matches!(
            decode_image(&tall, &limits),
            Err(DataError::ImageTooLarge {
                width: 20,
                height: 11,
                ..
            })
        ));
    }

    #[test]
    fn huge_declared_png_refused_from_header() {
        let bytes = png_bomb(100_000, 100_000);
        assert!(bytes.len() < 100);
        let err = decode_image(&bytes, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::ImageTooLarge {
                    width: 100_000,
                    height: 100_000,
                    max_width: 8192,
                    max_height: 8192
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("100000x100000"), "{err}");
    }

    #[test]
    fn allocation_limit_is_enforced() {
        // Within the dimension limits but over the memory budget.
        let limits = DecodeLimits {
            max_alloc_bytes: 1000,
            ..DecodeLimits::default()
        };
        let bytes = encode(&gradient(100, 100), ImageFormat::Png);
        let err = decode_image(&bytes, &limits).unwrap_err();
        assert!(matches!(err, DataError::Decode { .. }), "{err:?}");
        assert!(err.to_string().contains("max_alloc_bytes"), "{err}");
    }

    #[test]
    fn truncated_images_are_errors() {
        let img = gradient(32, 32);
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let bytes = encode(&img, format);
            // The last cut keeps everything but the end of the pixel data
            // (PNG: the 12-byte IEND chunk and a few bytes of IDAT).
            let mut cuts = vec![8, 30, bytes.len() / 2, bytes.len() - 16];
            if format == ImageFormat::Jpeg {
                // Every cut inside the scan data, down to the last byte.
                cuts.extend(bytes.len() - 100..bytes.len());
            }
            for cut in cuts {
                let res = decode_image(&bytes[..cut], &DecodeLimits::default());
                assert!(
                    matches!(res, Err(DataError::Decode { .. })),
                    "{format:?} cut at {cut} of {}: {:?}",
                    bytes.len(),
                    res.map(|i| (i.width(), i.height()))
                );
            }
        }
    }

    /// A header declaring the full size, data cut inside the scan, and an end-of-image
    /// marker appended: what a cut-off transfer repaired by some tool looks like.
    #[test]
    fn jpeg_whose_data_stops_early_is_an_error_even_with_an_end_marker() {
        let bytes = encode(&noise(256, 256), ImageFormat::Jpeg);
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        assert_cut_refused(
            "baseline",
            &bytes,
            &[sos + 40, (sos + bytes.len()) / 2, bytes.len() - 200],
        );
    }

    /// `bytes` cut at each of `cuts` with an end-of-image marker appended fails to decode.
    fn assert_cut_refused(name: &str, bytes: &[u8], cuts: &[usize]) {
        for &cut in cuts {
            let mut cut_bytes = bytes[..cut].to_vec();
            cut_bytes.extend_from_slice(&[0xFF, 0xD9]);
            let res = decode_image(&cut_bytes, &DecodeLimits::default());
            assert!(
                matches!(res, Err(DataError::Decode { .. })),
                "{name} cut at {cut} of {}: {:?}",
                bytes.len(),
                res.map(|i| (i.width(), i.height()))
            );
        }
    }

    const JPEG_FIXTURES: [(&str, &[u8]); 4] = [
        (
            "progressive",
            include_bytes!("../fixtures/jpeg/progressive.jpg"),
        ),
        ("restart", include_bytes!("../fixtures/jpeg/restart.jpg")),
        ("grey", include_bytes!("../fixtures/jpeg/grey.jpg")),
        (
            "optimized444",
            include_bytes!("../fixtures/jpeg/optimized444.jpg"),
        ),
    ];

    /// Progressive, restart markers, greyscale, optimised tables: whole, each decodes as
    /// `image` decodes it; cut inside its first or last scan (end marker appended), each is
    /// an error.
    #[test]
    fn jpeg_variants_whole_and_cut() {
        for (name, bytes) in JPEG_FIXTURES {
            let ours = decode_image(bytes, &DecodeLimits::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let theirs = image::load_from_memory(bytes).unwrap();
            assert_eq!(ours.as_bytes(), theirs.as_bytes(), "{name}");
            let scans: Vec<usize> = bytes
                .windows(2)
                .enumerate()
                .filter(|(_, w)| *w == [0xFF, 0xDA])
                .map(|(i, _)| i)
                .collect();
            let (first, last) = (scans[0], *scans.last().unwrap());
            let end = bytes.len() - 2;
            assert_cut_refused(name, bytes, &[first + 30, (last + end) / 2, end - 8]);
        }
    }

    /// The strict decoder gives what `image`'s own JPEG path gives, colour and grey.
    #[test]
    fn jpeg_pixels_match_the_image_crate() {
        let colour = encode(&noise(40, 24), ImageFormat::Jpeg);
        let grey = encode(
            &DynamicImage::ImageLuma8(noise(24, 40).to_luma8()),
            ImageFormat::Jpeg,
        );
        for bytes in [colour, grey] {
            let ours = decode_image(&bytes, &DecodeLimits::default()).unwrap();
            let theirs = image::load_from_memory(&bytes).unwrap();
            assert_eq!(ours.color(), theirs.color());
            assert_eq!(ours.as_bytes(), theirs.as_bytes());
        }
    }

    #[test]
    fn jpeg_with_bytes_after_the_end_marker_is_accepted() {
        let mut bytes = encode(&gradient(8, 8), ImageFormat::Jpeg);
        bytes.extend_from_slice(b"trailing data appended by some tool");
        assert!(decode_image(&bytes, &DecodeLimits::default()).is_ok());
    }

    #[test]
    fn garbage_and_empty_are_errors() {
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let err = decode_image(&garbage, &DecodeLimits::default()).unwrap_err();
        assert!(
            err.to_string().contains("unrecognised image format"),
            "{err}"
        );
        let err = decode_image(&[], &DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        // Valid signature, garbage after it.
        let mut fake = b"\x89PNG\r\n\x1a\n".to_vec();
        fake.extend_from_slice(&garbage[..100]);
        assert!(matches!(
            decode_image(&fake, &DecodeLimits::default()),
            Err(DataError::Decode { .. })
        ));
    }

    #[test]
    fn byte_size_limit() {
        let bytes = encode(&gradient(16, 16), ImageFormat::Png);
        let limits = DecodeLimits {
            max_file_bytes: bytes.len() as u64 - 1,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_image(&bytes, &limits),
            Err(DataError::FileTooLarge { .. })
        ));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        std::fs::write(&path, &bytes).unwrap();
        let err = load_image(&path, &limits).unwrap_err();
        assert!(
            matches!(err.root(), DataError::FileTooLarge { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("big.png"), "{err}");
        assert!(err.to_string().contains("max_file_bytes"), "{err}");

        let ok = load_image(&path, &DecodeLimits::default()).unwrap();
        assert_eq!(ok.width(), 16);
    }

    #[test]
    fn load_missing_file_names_path() {
        let err = load_image(Path::new("no/such/file.jpg"), &DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("no/such/file.jpg"), "{err}");
        assert!(matches!(err.root(), DataError::Io { .. }));
    }

    #[test]
    fn limits_config_defaults_and_validation() {
        let l: DecodeLimits = serde_json::from_str(r#"{"max_width": 100}"#).unwrap();
        assert_eq!(l.max_width, 100);
        assert_eq!(l.max_height, 8192);
        assert!(serde_json::from_str::<DecodeLimits>(r#"{"max_widht": 1}"#).is_err());
        assert!(l.validate().is_ok());
        let bad = DecodeLimits {
            max_file_bytes: 0,
            ..DecodeLimits::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_file_bytes"));
    }

    #[test]
    fn pixel_count_limit_at_and_past() {
        let bytes = encode(&gradient(10, 10), ImageFormat::Png);
        let at = DecodeLimits {
            max_pixels: 100,
            ..DecodeLimits::default()
        };
        assert!(decode_image(&bytes, &at).is_ok());
        let past = DecodeLimits {
            max_pixels: 99,
            ..DecodeLimits::default()
        };
        let err = decode_image(&bytes, &past).unwrap_err();
        assert!(matches!(err, DataError::TooManyPixels { .. }), "{err:?}");
        assert!(err.to_string().contains("limits.max_pixels"), "{err}");
    }
}
