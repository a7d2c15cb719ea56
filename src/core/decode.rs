//! Decoding JPEG, PNG and DICOM bytes to an upright 8-bit grayscale image.
//!
//! DICOM files go through [`crate::core::dicom`] (modality LUT, VOI LUT or window, MONOCHROME1
//! inversion); the rest of this module is about JPEG and PNG.
//!
//! Grayscale follows PIL `convert("L")`: ITU-R 601 luma `L = (19595 R + 38470 G + 7471 B + 2^15) >> 16`,
//! alpha ignored (not composited), palette expanded first, CMYK converted to RGB as PIL does.
//! 16-bit samples keep their high byte (PIL would clip `I;16` to 255 instead, which saturates
//! almost every 16-bit radiograph).

use std::cell::RefCell;
use std::io::Cursor;

use turbojpeg::{Colorspace, Decompressor, PixelFormat, ScalingFactor};

use crate::core::error::{RowError, RowResult};
use crate::core::exif::{orientation_from_tiff, scan_jpeg_markers};
// Re-exported for the modules that still name them here (the kernels).
use crate::core::image::{Decoded, GrayImage};
use crate::core::jpeg::{jpeg_scan_limit, segments, Stop, JPEG_SCAN_LIMIT};
use crate::core::limits::Limits;

/// Image container formats recognised from their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// JPEG (baseline, progressive, lossless; gray, YCbCr, RGB, CMYK, YCCK).
    Jpeg,
    /// PNG (1 to 16 bits, gray, RGB, palette, with or without alpha).
    Png,
    /// DICOM Part 10 (`DICM` after the 128-byte preamble), whatever the file name.
    Dicom,
}

/// Recognises the image format from magic bytes, or names the unsupported format found.
pub fn sniff_format(data: &[u8]) -> RowResult<ImageFormat> {
    if data.is_empty() {
        return Err(RowError::new("empty image data"));
    }
    if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(ImageFormat::Jpeg);
    }
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(ImageFormat::Png);
    }
    if crate::core::dicom::is_dicom(data) {
        return Ok(ImageFormat::Dicom);
    }
    let unsupported = if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some("GIF")
    } else if data.starts_with(b"BM") && data.len() >= 26 {
        Some("BMP")
    } else if data.starts_with(b"II*\0") || data.starts_with(b"MM\0*") {
        Some("TIFF")
    } else if data.len() >= 12 && &data[0..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some("WebP")
    } else if data.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
        || data.starts_with(b"\0\0\0\x0cjP  \r\n\x87\n")
    {
        Some("JPEG 2000")
    } else {
        None
    };
    Err(match unsupported {
        Some(name) => RowError::new(format!(
            "unsupported image format: {name} (JPEG, PNG and DICOM are decoded)"
        )),
        None => RowError::new("not an image (unknown format)"),
    })
}

/// Decodes `data` to upright grayscale.
///
/// `min_size = Some((w, h))` allows JPEG DCT-domain downscaling by 1/2, 1/4 or 1/8 as long as the
/// scaled upright image stays at least `2w x 2h`; `None` decodes at full resolution. The pixel
/// limit is checked from the header before any pixel buffer is allocated.
pub fn decode_gray(
    data: &[u8],
    limits: &Limits,
    min_size: Option<(u32, u32)>,
) -> RowResult<Decoded> {
    crate::core::failpoint::panic_if_marked(data);
    match sniff_format(data)? {
        ImageFormat::Jpeg => decode_jpeg(data, limits, min_size),
        ImageFormat::Png => decode_png(data, limits),
        ImageFormat::Dicom => crate::core::dicom::decode_dicom(data, limits, min_size),
    }
}

thread_local! {
    // A TurboJPEG handle per worker thread: creating one costs more than decoding a small image.
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

fn decode_jpeg(data: &[u8], limits: &Limits, min_size: Option<(u32, u32)>) -> RowResult<Decoded> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut decompressor = Decompressor::new()
                .map_err(|e| RowError::new(format!("cannot create JPEG decoder: {e}")))?;
            decompressor
                .set_scan_limit(JPEG_SCAN_LIMIT)
                .map_err(|e| RowError::new(format!("cannot configure JPEG decoder: {e}")))?;
            *slot = Some(decompressor);
        }
        let decompressor = slot.as_mut().expect("decompressor initialised above");
        let result = decode_jpeg_with(decompressor, data, limits, min_size);
        if result.is_err() {
            // A failed decode can leave the libjpeg-turbo handle mid-stream, and the next image
            // on this thread would then fail with the previous image's error: start afresh.
            *slot = None;
        }
        result
    })
}

fn decode_jpeg_with(
    decompressor: &mut Decompressor,
    data: &[u8],
    limits: &Limits,
    min_size: Option<(u32, u32)>,
) -> RowResult<Decoded> {
    if !has_frame_header(data) {
        // TurboJPEG reads a missing frame header as garbage sizes ("integer value overflowed").
        return Err(RowError::new("truncated JPEG"));
    }
    let header = decompressor
        .read_header(data)
        .map_err(|e| jpeg_row_error(&e.to_string(), true))?;
    limits.check_dimensions(header.width as u64, header.height as u64)?;
    let scan_limit = jpeg_scan_limit(header.width as u64, header.height as u64);
    decompressor
        .set_scan_limit(scan_limit)
        .map_err(|e| RowError::new(format!("cannot configure JPEG decoder: {e}")))?;
    let markers = scan_jpeg_markers(data);
    let swaps_axes = markers.orientation >= 5;

    let mut factor = ScalingFactor::ONE;
    if let (Some((target_w, target_h)), false) = (min_size, header.is_lossless) {
        // Targets are upright; the JPEG is stored before orientation.
        let (need_w, need_h) = if swaps_axes {
            (2 * target_h as usize, 2 * target_w as usize)
        } else {
            (2 * target_w as usize, 2 * target_h as usize)
        };
        for denom in [8usize, 4, 2] {
            let candidate = ScalingFactor::new(1, denom);
            if candidate.scale(header.width) >= need_w && candidate.scale(header.height) >= need_h {
                factor = candidate;
                break;
            }
        }
    }
    decompressor
        .set_scaling_factor(factor)
        .map_err(|e| RowError::new(format!("cannot scale JPEG: {e}")))?;
    let width = factor.scale(header.width);
    let height = factor.scale(header.height);

    let cmyk = matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK);
    let format = if cmyk {
        PixelFormat::CMYK
    } else {
        PixelFormat::GRAY
    };
    let channels = format.size();
    let mut buffer = vec![0u8; width * height * channels];
    let image = turbojpeg::Image {
        pixels: buffer.as_mut_slice(),
        width,
        pitch: width * channels,
        height,
        format,
    };
    if let Err(e) = decompressor.decompress(data, image) {
        let message = e.to_string();
        if message.contains("scans") && message.to_ascii_lowercase().contains("progressive") {
            return Err(RowError::new(format!(
                "JPEG has more than {scan_limit} progressive scans, the work limit for a {}x{} image \
                 (2e8 pixel-scans, at least 16 scans)",
                header.width, header.height
            )));
        }
        // Warnings that PIL also ignores leave a complete image behind.
        if !is_benign_jpeg_warning(&message) {
            return Err(jpeg_row_error(&message, false));
        }
    }
    let pixels = if cmyk {
        cmyk_to_luma(&buffer, markers.adobe)
    } else {
        buffer
    };
    let image = apply_orientation(
        GrayImage {
            width: width as u32,
            height: height as u32,
            pixels,
        },
        markers.orientation,
    );
    let (full_width, full_height) = if swaps_axes {
        (header.height as u32, header.width as u32)
    } else {
        (header.width as u32, header.height as u32)
    };
    Ok(Decoded {
        image,
        full_width,
        full_height,
        acquisition: None,
    })
}

/// Whether the marker segments reach a complete frame header (SOFn) before the data ends.
/// Anything else that ends the header walk (a scan, EOI, a byte that is not a marker, a bad
/// length) is left for TurboJPEG to name.
fn has_frame_header(data: &[u8]) -> bool {
    let mut walk = segments(data);
    if let Some(frame) = walk.find(|s| s.is_frame_header()) {
        // The frame header must be complete: length, precision, height, width, components.
        return frame.offset + 2 + frame.length.max(8) <= data.len();
    }
    walk.stop() != Some(Stop::EndOfData)
}

fn is_benign_jpeg_warning(message: &str) -> bool {
    message.contains("extraneous bytes before marker")
}

fn jpeg_row_error(message: &str, in_header: bool) -> RowError {
    let detail = message.trim_start_matches("TurboJPEG error: ").trim();
    let lower = detail.to_ascii_lowercase();
    if lower.contains("premature end") || lower.contains("unexpected end") {
        RowError::new("truncated JPEG")
    } else if in_header {
        RowError::new(format!("corrupt JPEG header: {detail}"))
    } else {
        RowError::new(format!("corrupt JPEG: {detail}"))
    }
}

/// CMYK (Adobe-inverted when `adobe`) to luma, through RGB exactly as PIL's `cmyk2rgb` + `L`.
fn cmyk_to_luma(cmyk: &[u8], adobe: bool) -> Vec<u8> {
    cmyk.chunks_exact(4)
        .map(|px| {
            let (c, m, y, k) = if adobe {
                (255 - px[0], 255 - px[1], 255 - px[2], 255 - px[3])
            } else {
                (px[0], px[1], px[2], px[3])
            };
            let nk = 255 - k as i32;
            let channel = |v: u8| (nk - mul_div_255(v as i32, nk)).clamp(0, 255) as u32;
            luma(channel(c), channel(m), channel(y))
        })
        .collect()
}

/// PIL's `MULDIV255`: `a * b / 255` rounded, in integer arithmetic.
fn mul_div_255(a: i32, b: i32) -> i32 {
    let tmp = a * b + 128;
    ((tmp >> 8) + tmp) >> 8
}

/// PIL's `L24`: ITU-R 601 luma in 16-bit fixed point, rounded.
#[inline]
fn luma(r: u32, g: u32, b: u32) -> u8 {
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// Bytes the png crate may allocate beyond the encoded size (one output row of up to 8 bytes per
/// pixel for a 100,000-pixel-wide image, plus its inflate state).
const PNG_DECODER_SLACK: usize = 1 << 20;

/// Upper bound of the memory one PNG decode holds at once, in bytes, for `encoded` input bytes and
/// a `width x height` header: the input, the png crate's chunk copies and row (at most
/// `encoded + 1 MiB`), the unfiltering buffer (at most 8 bytes per pixel plus a byte per row, for
/// interlaced 16-bit RGBA), the expanded output (at most 4 bytes per pixel after STRIP_16) and the
/// gray result (1 byte per pixel): `2 * encoded + 13 * width * height + height + 1 MiB`.
pub fn png_memory_bound(encoded: u64, width: u64, height: u64) -> u64 {
    let pixels = width.saturating_mul(height);
    encoded
        .saturating_mul(2)
        .saturating_add(pixels.saturating_mul(13))
        .saturating_add(height)
        .saturating_add(PNG_DECODER_SLACK as u64)
}

fn decode_png(data: &[u8], limits: &Limits) -> RowResult<Decoded> {
    // IHDR is always the first chunk: check the pixel limit from it before the png crate sizes
    // anything, so every oversized PNG gets the same message as a JPEG (the crate's own memory
    // limit would otherwise answer first for the largest ones).
    if let Some(ihdr) = data.get(8..24).filter(|h| &h[4..8] == b"IHDR") {
        let width = u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]);
        let height = u32::from_be_bytes([ihdr[12], ihdr[13], ihdr[14], ihdr[15]]);
        if width > 0 && height > 0 {
            limits.check_dimensions(width as u64, height as u64)?;
        }
    }
    let mut decoder = png::Decoder::new(Cursor::new(data));
    // Memory per PNG is bounded by png_memory_bound(): ancillary chunks are never inflated (iCCP
    // and text chunks are skipped; an iCCP could otherwise inflate 1 MB into 1 GiB), and the png
    // crate's own allocations (chunk copies, one output row) stay under the file size plus slack.
    decoder.set_ignore_iccp_chunk(true);
    decoder.set_ignore_text_chunk(true);
    decoder.set_limits(png::Limits {
        bytes: data.len().saturating_add(PNG_DECODER_SLACK),
    });
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(png_row_error)?;
    let (width, height, orientation) = {
        let info = reader.info();
        // png 0.18 accepts a PLTE whose length is not a multiple of 3 and then panics while
        // expanding it (found by the decode_png fuzz target): refuse it here.
        if let Some(palette) = info.palette.as_deref() {
            if palette.len() % 3 != 0 || palette.len() > 3 * 256 {
                return Err(RowError::new(format!(
                    "corrupt PNG: palette of {} bytes (must be 3 per entry, at most 256 entries)",
                    palette.len()
                )));
            }
        }
        let orientation = info
            .exif_metadata
            .as_deref()
            .map(orientation_from_tiff)
            .unwrap_or(1);
        (info.width, info.height, orientation)
    };
    limits.check_dimensions(width as u64, height as u64)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| RowError::new(format!("image {width}x{height} is too large to decode")))?;
    let mut buffer = vec![0u8; size];
    let frame = reader.next_frame(&mut buffer).map_err(png_row_error)?;
    // An eXIf chunk may follow the image data (PIL applies it): read the chunks after IDAT. A
    // damaged tail after a complete image is ignored, as PIL does.
    let orientation = if orientation == 1 && reader.finish().is_ok() {
        reader
            .info()
            .exif_metadata
            .as_deref()
            .map(orientation_from_tiff)
            .unwrap_or(1)
    } else {
        orientation
    };
    let line = frame.line_size;
    let samples = frame.color_type.samples();
    let mut pixels = Vec::with_capacity(width as usize * height as usize);
    for row in buffer.chunks_exact(line).take(height as usize) {
        let row = &row[..width as usize * samples];
        match frame.color_type {
            png::ColorType::Grayscale => pixels.extend_from_slice(row),
            png::ColorType::GrayscaleAlpha => pixels.extend(row.chunks_exact(2).map(|p| p[0])),
            png::ColorType::Rgb => pixels.extend(
                row.chunks_exact(3)
                    .map(|p| luma(p[0] as u32, p[1] as u32, p[2] as u32)),
            ),
            png::ColorType::Rgba => pixels.extend(
                row.chunks_exact(4)
                    .map(|p| luma(p[0] as u32, p[1] as u32, p[2] as u32)),
            ),
            png::ColorType::Indexed => {
                return Err(RowError::new("corrupt PNG: palette was not expanded"));
            }
        }
    }
    if pixels.len() != width as usize * height as usize {
        return Err(RowError::new("truncated PNG"));
    }
    let image = apply_orientation(
        GrayImage {
            width,
            height,
            pixels,
        },
        orientation,
    );
    Ok(Decoded {
        full_width: image.width,
        full_height: image.height,
        image,
        acquisition: None,
    })
}

fn png_row_error(error: png::DecodingError) -> RowError {
    match error {
        png::DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            RowError::new("truncated PNG")
        }
        png::DecodingError::LimitsExceeded => {
            RowError::new("corrupt PNG: exceeds the decoder memory limit")
        }
        other => {
            let text = other.to_string();
            if text.to_ascii_lowercase().contains("eof") || text.contains("unexpected end") {
                RowError::new("truncated PNG")
            } else {
                RowError::new(format!("corrupt PNG: {text}"))
            }
        }
    }
}

/// Applies an EXIF orientation (1..=8) so the image is upright, as PIL `ImageOps.exif_transpose`.
pub fn apply_orientation(image: GrayImage, orientation: u8) -> GrayImage {
    if !(2..=8).contains(&orientation) {
        return image;
    }
    let (w, h) = (image.width as usize, image.height as usize);
    let (out_w, out_h) = if orientation >= 5 { (h, w) } else { (w, h) };
    let src = &image.pixels;
    let mut out = vec![0u8; w * h];
    for y_out in 0..out_h {
        let row = &mut out[y_out * out_w..(y_out + 1) * out_w];
        for (x_out, px) in row.iter_mut().enumerate() {
            let (x, y) = match orientation {
                2 => (w - 1 - x_out, y_out),
                3 => (w - 1 - x_out, h - 1 - y_out),
                4 => (x_out, h - 1 - y_out),
                5 => (y_out, x_out),
                6 => (y_out, h - 1 - x_out),
                7 => (w - 1 - y_out, h - 1 - x_out),
                _ => (w - 1 - y_out, x_out), // 8
            };
            *px = src[y * w + x];
        }
    }
    GrayImage {
        width: out_w as u32,
        height: out_h as u32,
        pixels: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_2x3() -> GrayImage {
        // 1 2
        // 3 4
        // 5 6
        GrayImage {
            width: 2,
            height: 3,
            pixels: vec![1, 2, 3, 4, 5, 6],
        }
    }

    #[test]
    fn orientation_matches_pil_transposes() {
        let cases: [(u8, u32, &[u8]); 8] = [
            (1, 2, &[1, 2, 3, 4, 5, 6]),
            (2, 2, &[2, 1, 4, 3, 6, 5]),
            (3, 2, &[6, 5, 4, 3, 2, 1]),
            (4, 2, &[5, 6, 3, 4, 1, 2]),
            (5, 3, &[1, 3, 5, 2, 4, 6]),
            (6, 3, &[5, 3, 1, 6, 4, 2]),
            (7, 3, &[6, 4, 2, 5, 3, 1]),
            (8, 3, &[2, 4, 6, 1, 3, 5]),
        ];
        for (orientation, width, expected) in cases {
            let out = apply_orientation(image_2x3(), orientation);
            assert_eq!(out.width, width, "orientation {orientation}");
            assert_eq!(out.pixels, expected, "orientation {orientation}");
        }
    }

    #[test]
    fn names_unsupported_formats() {
        assert_eq!(sniff_format(b"").unwrap_err().0, "empty image data");
        assert_eq!(
            sniff_format(b"hello world").unwrap_err().0,
            "not an image (unknown format)"
        );
        assert!(sniff_format(b"GIF89a......").unwrap_err().0.contains("GIF"));
        let mut dicom = vec![0u8; 140];
        dicom[128..132].copy_from_slice(b"DICM");
        assert_eq!(sniff_format(&dicom), Ok(ImageFormat::Dicom));
        assert!(sniff_format(b"II*\0....").unwrap_err().0.contains("TIFF"));
    }

    #[test]
    fn cmyk_conversion_matches_pil_for_primaries() {
        // Non-inverted CMYK: white paper, full black, pure cyan.
        assert_eq!(cmyk_to_luma(&[0, 0, 0, 0], false), vec![255]);
        assert_eq!(cmyk_to_luma(&[0, 0, 0, 255], false), vec![0]);
        assert_eq!(
            cmyk_to_luma(&[255, 0, 0, 0], false),
            vec![luma(0, 255, 255)]
        );
        // Adobe stores inverted values.
        assert_eq!(cmyk_to_luma(&[255, 255, 255, 255], true), vec![255]);
    }
}
