//! Image preparation for 2G: a camera photo of a paper (a 12 MP JPEG or PNG) becomes a JPEG of
//! about [`PrepareOptions::target_bytes`], upright, at most [`PrepareOptions::max_long_side`]
//! pixels long, in gray for paper documents if asked.
//!
//! Bounds: the decoder refuses an image over [`PrepareOptions::max_decode_bytes`] of pixels or
//! [`MAX_DIMENSION`] pixels on a side (what the sender claims in the header is checked before
//! any allocation); the full-size image is dropped as soon as it is downscaled (orientation and
//! gray are applied to the small one); the quality search encodes at most
//! [`MAX_ENCODE_ATTEMPTS`] times.

use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use crate::{Error, Result};

/// Largest width or height accepted (a 12 MP camera gives 4000 x 3000; a 50 MP one 8160 x 6120).
pub const MAX_DIMENSION: u32 = 12_000;
/// Most JPEG encodings of one preparation (the quality search and the extra downscales).
pub const MAX_ENCODE_ATTEMPTS: usize = 10;

/// How to prepare an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOptions {
    /// Longest side of the result, in pixels (1600 by default: an A4 page at ~190 dpi, readable
    /// text).
    pub max_long_side: u32,
    /// Whether to turn it gray (paper documents: a third of the bytes at the same quality).
    pub grayscale: bool,
    /// Byte size to stay under (150 KB by default): the highest JPEG quality that fits is used.
    pub target_bytes: usize,
    /// Lowest JPEG quality tried; below it the image is made smaller instead.
    pub min_quality: u8,
    /// Highest JPEG quality tried.
    pub max_quality: u8,
    /// Most bytes the decoder may allocate (the decoded pixels count): 96 MiB by default, which
    /// a 12 MP colour photo (36 MB of pixels) fits in.
    pub max_decode_bytes: u64,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            max_long_side: 1600,
            grayscale: false,
            target_bytes: 150_000,
            min_quality: 30,
            max_quality: 90,
            max_decode_bytes: 96 * 1024 * 1024,
        }
    }
}

/// A prepared image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The JPEG bytes.
    pub bytes: Vec<u8>,
    /// Its width in pixels (upright).
    pub width: u32,
    /// Its height in pixels (upright).
    pub height: u32,
    /// The JPEG quality used.
    pub quality: u8,
    /// Whether it fits [`PrepareOptions::target_bytes`] (an image that does not even at the
    /// lowest quality and after the extra downscales is returned at its smallest).
    pub within_target: bool,
}

impl Prepared {
    /// Its MIME type (always JPEG).
    pub fn mime(&self) -> &'static str {
        "image/jpeg"
    }
}

/// Prepares the image in `bytes`.
pub fn prepare_bytes(bytes: &[u8], options: &PrepareOptions) -> Result<Prepared> {
    prepare(Cursor::new(bytes), options)
}

/// Prepares the image in the file at `path` (read through a buffer, not whole).
pub fn prepare_file(path: &Path, options: &PrepareOptions) -> Result<Prepared> {
    let file = std::fs::File::open(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    prepare(std::io::BufReader::new(file), options)
}

fn image_error(e: impl std::fmt::Display) -> Error {
    Error::invalid("image", e.to_string())
}

/// Prepares the JPEG or PNG `input` yields.
pub fn prepare(input: impl BufRead + Seek, options: &PrepareOptions) -> Result<Prepared> {
    if options.max_long_side < 16 || options.target_bytes < 1024 {
        return Err(Error::invalid(
            "options",
            "long side at least 16 pixels, target at least 1 KB",
        ));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(options.max_decode_bytes);
    let mut reader = ImageReader::new(input)
        .with_guessed_format()
        .map_err(image_error)?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png) => {}
        _ => return Err(image_error("not a JPEG or PNG image")),
    }
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) * u64::from(decoder.color_type().bytes_per_pixel())
        > options.max_decode_bytes
    {
        return Err(image_error(format!(
            "{width} x {height} pixels is more than this device decodes"
        )));
    }
    let orientation = decoder.orientation().map_err(image_error)?;
    let full = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    // Downscale first, then orient and turn gray: only the small image is copied again.
    let mut image = downscale(full, options.max_long_side);
    image.apply_orientation(orientation);
    if options.grayscale {
        image = DynamicImage::ImageLuma8(image.into_luma8());
    } else if image.color() != image::ColorType::Rgb8 && image.color() != image::ColorType::L8 {
        image = DynamicImage::ImageRgb8(image.into_rgb8());
    }
    fit_to_target(image, options)
}

/// The image with its long side at most `long_side` (area-averaged: text stays sharp without
/// aliasing), or unchanged when it is already small enough.
fn downscale(image: DynamicImage, long_side: u32) -> DynamicImage {
    let (w, h) = (image.width(), image.height());
    let long = w.max(h);
    if long <= long_side {
        return image;
    }
    let scale = f64::from(long_side) / f64::from(long);
    let nw = ((f64::from(w) * scale).round() as u32).max(1);
    let nh = ((f64::from(h) * scale).round() as u32).max(1);
    image.thumbnail_exact(nw, nh)
}

fn encode(image: &DynamicImage, quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(image)
        .map_err(image_error)?;
    Ok(out)
}

/// The highest quality whose JPEG fits the target (binary search); if even the lowest does
/// not, the image is made smaller by a quarter and searched again, within
/// [`MAX_ENCODE_ATTEMPTS`] encodings in all.
fn fit_to_target(mut image: DynamicImage, options: &PrepareOptions) -> Result<Prepared> {
    let min_q = options.min_quality.clamp(1, 100);
    let max_q = options.max_quality.clamp(min_q, 100);
    let mut attempts = 0;
    let mut smallest: Option<(Vec<u8>, u8)> = None;
    loop {
        let (mut lo, mut hi) = (min_q, max_q);
        let mut best: Option<(Vec<u8>, u8)> = None;
        while lo <= hi && attempts < MAX_ENCODE_ATTEMPTS {
            let q = lo + (hi - lo) / 2;
            let bytes = encode(&image, q)?;
            attempts += 1;
            if bytes.len() <= options.target_bytes {
                best = Some((bytes, q));
                lo = q + 1;
            } else {
                if smallest.as_ref().is_none_or(|(s, _)| bytes.len() < s.len()) {
                    smallest = Some((bytes, q));
                }
                if q == min_q {
                    break;
                }
                hi = q - 1;
            }
        }
        if let Some((bytes, quality)) = best {
            return Ok(Prepared {
                bytes,
                width: image.width(),
                height: image.height(),
                quality,
                within_target: true,
            });
        }
        let long = image.width().max(image.height());
        if attempts >= MAX_ENCODE_ATTEMPTS || long <= 64 {
            let (bytes, quality) = match smallest {
                Some(found) => found,
                None => (encode(&image, min_q)?, min_q),
            };
            return Ok(Prepared {
                bytes,
                width: image.width(),
                height: image.height(),
                quality,
                within_target: false,
            });
        }
        image = downscale(image, long * 3 / 4);
        smallest = None;
    }
}

/// A generated camera photo of a typed page (for tests and the bench): off-white paper with
/// uneven light and sensor noise, lines of dark word-like strokes. `seed` varies the page.
#[cfg(any(test, feature = "sample"))]
pub fn sample_page_photo(width: u32, height: u32, seed: u64) -> image::RgbImage {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let line_height = (height / 40).max(4);
    let margin = width / 10;
    // Word boxes per text line: (start, end) in x.
    let mut words: Vec<Vec<(u32, u32)>> = Vec::new();
    for _ in 0..(height / line_height) {
        let mut line = Vec::new();
        let mut x = margin;
        let end = width - margin - (next() % u64::from(margin.max(1))) as u32;
        while x < end {
            let w = (line_height / 2) + (next() % u64::from(line_height * 3)) as u32;
            line.push((x, (x + w).min(end)));
            x += w + line_height / 2;
        }
        words.push(line);
    }
    image::RgbImage::from_fn(width, height, |x, y| {
        let noise = (next() % 13) as i32 - 6;
        let light = 225 - (i64::from(x) * 30 / i64::from(width.max(1))) as i32;
        let row = (y / line_height) as usize;
        let in_band = y % line_height > line_height / 4 && y % line_height < line_height * 3 / 4;
        let ink = in_band
            && y > height / 12
            && y < height - height / 12
            && words.get(row).is_some_and(|line| {
                line.iter()
                    .any(|&(a, b)| x >= a && x < b && (x + y) % 3 != 0)
            });
        let v = if ink { 40 + noise } else { light + noise };
        // Sensor colour noise, a little on each channel.
        let tint = next();
        let channel = |shift: u32, base: i32| {
            (v + base + ((tint >> shift) % 7) as i32 - 3).clamp(0, 255) as u8
        };
        image::Rgb([channel(0, 0), channel(8, -3), channel(16, -8)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    fn photo_jpeg(width: u32, height: u32, exif_orientation: Option<u16>) -> Vec<u8> {
        let page = sample_page_photo(width, height, 7);
        let mut out = Vec::new();
        let mut encoder = JpegEncoder::new_with_quality(&mut out, 92);
        if let Some(value) = exif_orientation {
            // A TIFF header and one IFD entry: orientation (0x0112), SHORT, 1 value.
            let mut exif = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
            exif.extend_from_slice(&value.to_le_bytes());
            exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            encoder.set_exif_metadata(exif).unwrap();
        }
        encoder
            .write_image(page.as_raw(), width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn a_camera_photo_becomes_a_small_upright_jpeg() {
        let photo = photo_jpeg(1200, 900, None);
        let options = PrepareOptions {
            max_long_side: 800,
            target_bytes: 120_000,
            ..Default::default()
        };
        let prepared = prepare_bytes(&photo, &options).unwrap();
        assert_eq!((prepared.width, prepared.height), (800, 600));
        assert!(prepared.within_target);
        assert!(prepared.bytes.len() <= 120_000, "{}", prepared.bytes.len());
        assert!(prepared.bytes.len() < photo.len());
        let back = image::load_from_memory(&prepared.bytes).unwrap();
        assert_eq!((back.width(), back.height()), (800, 600));
    }

    #[test]
    fn exif_orientation_is_applied() {
        // Orientation 6: the camera was held upright, the sensor wrote it lying: rotate 90.
        let photo = photo_jpeg(1200, 900, Some(6));
        let prepared = prepare_bytes(
            &photo,
            &PrepareOptions {
                max_long_side: 400,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((prepared.width, prepared.height), (300, 400));
    }

    #[test]
    fn grayscale_is_smaller_at_the_same_target_quality() {
        let photo = photo_jpeg(1200, 900, None);
        let base = PrepareOptions {
            max_long_side: 1200,
            target_bytes: 10_000_000,
            max_quality: 80,
            ..Default::default()
        };
        let colour = prepare_bytes(&photo, &base).unwrap();
        let gray = prepare_bytes(
            &photo,
            &PrepareOptions {
                grayscale: true,
                ..base
            },
        )
        .unwrap();
        assert_eq!(colour.quality, 80);
        assert_eq!(gray.quality, 80);
        assert!(gray.bytes.len() < colour.bytes.len());
        let back = image::load_from_memory(&gray.bytes).unwrap().into_rgb8();
        assert!(back.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn a_tight_target_lowers_quality_then_size_within_bounded_attempts() {
        let photo = photo_jpeg(1200, 900, None);
        let prepared = prepare_bytes(
            &photo,
            &PrepareOptions {
                max_long_side: 1200,
                target_bytes: 8_000,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(prepared.bytes.len() <= 8_000 || !prepared.within_target);
        assert!(prepared.width < 1200, "made smaller: {}", prepared.width);
    }

    #[test]
    fn hostile_inputs_are_refused_before_allocating() {
        assert!(prepare_bytes(b"not an image at all", &PrepareOptions::default()).is_err());
        // A PNG header claiming 60000 x 60000 pixels: refused by the limits, nothing allocated.
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&[0u8; 3], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        // IHDR width and height are at bytes 16..24; the CRC no longer matches, which is also
        // a refusal, but the dimensions are read first.
        png[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        assert!(prepare_bytes(&png, &PrepareOptions::default()).is_err());
        // Over the decode budget.
        let photo = photo_jpeg(1200, 900, None);
        let small_budget = PrepareOptions {
            max_decode_bytes: 1024 * 1024,
            ..Default::default()
        };
        let err = prepare_bytes(&photo, &small_budget).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }
}
