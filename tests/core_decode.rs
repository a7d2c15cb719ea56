//! Decoding real chest X-rays and generated good and bad inputs through the core.

mod common;

use cxrlake::core::decode::decode_gray;
use cxrlake::core::limits::Limits;

use common::*;

#[test]
fn decodes_every_fullres_image_with_dct_scaling_at_least_twice_the_target() {
    let limits = Limits::default();
    for path in fullres_images() {
        let data = std::fs::read(&path).unwrap();
        let full =
            decode_gray(&data, &limits, None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(full.image.width, full.full_width);
        assert_eq!(
            full.image.pixels.len(),
            (full.image.width * full.image.height) as usize
        );
        let scaled = decode_gray(&data, &limits, Some((224, 224))).unwrap();
        assert_eq!(
            (scaled.full_width, scaled.full_height),
            (full.full_width, full.full_height)
        );
        assert!(
            scaled.image.width >= 448.min(full.full_width),
            "{}",
            path.display()
        );
        assert!(
            scaled.image.height >= 448.min(full.full_height),
            "{}",
            path.display()
        );
        assert!(scaled.image.width <= full.image.width);
        // The scaled image is the same picture: its mean brightness stays within 1 gray level.
        let mean = |p: &[u8]| p.iter().map(|&v| v as f64).sum::<f64>() / p.len() as f64;
        assert!(
            (mean(&full.image.pixels) - mean(&scaled.image.pixels)).abs() < 1.0,
            "{}",
            path.display()
        );
    }
}

#[test]
fn truncated_jpeg_is_reported_as_truncated() {
    let data = std::fs::read(&fullres_images()[0]).unwrap();
    for keep in [data.len() / 2, data.len() - 100] {
        let err = decode_gray(&data[..keep], &Limits::default(), None).unwrap_err();
        assert_eq!(
            err.0,
            "truncated JPEG",
            "kept {keep} of {} bytes",
            data.len()
        );
    }
}

#[test]
fn header_only_jpeg_fails_cleanly() {
    let data = std::fs::read(&fullres_images()[0]).unwrap();
    let err = decode_gray(&data[..600], &Limits::default(), None).unwrap_err();
    assert!(err.0.contains("JPEG"), "{err}");
}

#[test]
fn empty_and_non_image_inputs_are_named() {
    assert_eq!(
        decode_gray(b"", &Limits::default(), None).unwrap_err().0,
        "empty image data"
    );
    assert_eq!(
        decode_gray(b"just some text\n", &Limits::default(), None)
            .unwrap_err()
            .0,
        "not an image (unknown format)"
    );
}

#[test]
fn bomb_headers_are_refused_before_decoding() {
    let png = png_header_only(60_000, 60_000);
    assert_eq!(
        decode_gray(&png, &Limits::default(), None).unwrap_err().0,
        "image 60000x60000 exceeds 100 megapixel limit"
    );
    let jpeg = std::fs::read(&fullres_images()[0]).unwrap();
    let bomb = jpeg_with_size(&jpeg, 65_000, 65_000);
    assert_eq!(
        decode_gray(&bomb, &Limits::default(), Some((224, 224)))
            .unwrap_err()
            .0,
        "image 65000x65000 exceeds 100 megapixel limit"
    );
    // The limit is configurable and named in the error.
    let strict = Limits {
        max_pixels: 1_000_000,
        ..Limits::default()
    };
    let err = decode_gray(&jpeg, &strict, None).unwrap_err();
    assert!(err.0.ends_with("exceeds 1 megapixel limit"), "{err}");
}

#[test]
fn png_variants_decode_to_pil_luma() {
    let limits = Limits::default();
    // 8-bit gray.
    let gray = encode_png(
        2,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[10, 200],
        None,
    );
    assert_eq!(
        decode_gray(&gray, &limits, None).unwrap().image.pixels,
        vec![10, 200]
    );
    // 16-bit gray keeps the high byte.
    let gray16 = encode_png(
        2,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &[0x12, 0x34, 0xFF, 0x00],
        None,
    );
    assert_eq!(
        decode_gray(&gray16, &limits, None).unwrap().image.pixels,
        vec![0x12, 0xFF]
    );
    // RGBA: alpha ignored, ITU-R 601 luma (PIL L24): red 255 -> 76, green 255 -> 150.
    let rgba = encode_png(
        2,
        1,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &[255, 0, 0, 0, 0, 255, 0, 128],
        None,
    );
    assert_eq!(
        decode_gray(&rgba, &limits, None).unwrap().image.pixels,
        vec![76, 150]
    );
    // Gray + alpha.
    let gray_alpha = encode_png(
        1,
        1,
        png::ColorType::GrayscaleAlpha,
        png::BitDepth::Eight,
        &[99, 0],
        None,
    );
    assert_eq!(
        decode_gray(&gray_alpha, &limits, None)
            .unwrap()
            .image
            .pixels,
        vec![99]
    );
    // Palette: index 1 -> blue (luma 29).
    let indexed = encode_png(
        2,
        1,
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        &[0, 1],
        Some(&[255, 255, 255, 0, 0, 255]),
    );
    assert_eq!(
        decode_gray(&indexed, &limits, None).unwrap().image.pixels,
        vec![255, 29]
    );
    // 1-bit gray expands to 0/255.
    let bilevel = encode_png(
        8,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::One,
        &[0b1010_0000],
        None,
    );
    assert_eq!(
        decode_gray(&bilevel, &limits, None).unwrap().image.pixels,
        vec![255, 0, 255, 0, 0, 0, 0, 0]
    );
}

#[test]
fn truncated_png_is_reported_as_truncated() {
    let pixels: Vec<u8> = (0..64 * 64).map(|i| (i * 7 % 251) as u8).collect();
    let png = encode_png(
        64,
        64,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &pixels,
        None,
    );
    let err = decode_gray(&png[..png.len() / 2], &Limits::default(), None).unwrap_err();
    assert_eq!(err.0, "truncated PNG");
}
