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

// ---------------------------------------------------------------------------------------------
// DICOM, on files built here (the pydicom comparisons live in tests/python/test_dicom.py)

/// One explicit VR little endian element; `long` VRs have a 4-byte length.
fn dicom_element(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        value.push(if vr == b"UI" || vr == b"OB" { 0 } else { b' ' });
    }
    let mut out = Vec::new();
    out.extend(group.to_le_bytes());
    out.extend(element.to_le_bytes());
    out.extend(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend([0, 0]);
        out.extend((value.len() as u32).to_le_bytes());
    } else {
        out.extend((value.len() as u16).to_le_bytes());
    }
    out.extend(value);
    out
}

/// A DICOM Part 10 file: preamble, meta group for `transfer_syntax`, then `dataset` elements.
fn dicom_file(transfer_syntax: &str, dataset: &[Vec<u8>]) -> Vec<u8> {
    let mut meta = Vec::new();
    meta.extend(dicom_element(0x0002, 0x0001, b"OB", &[0, 1]));
    meta.extend(dicom_element(
        0x0002,
        0x0002,
        b"UI",
        b"1.2.840.10008.5.1.4.1.1.1",
    ));
    meta.extend(dicom_element(0x0002, 0x0003, b"UI", b"1.2.3.4"));
    meta.extend(dicom_element(
        0x0002,
        0x0010,
        b"UI",
        transfer_syntax.as_bytes(),
    ));
    meta.extend(dicom_element(0x0002, 0x0012, b"UI", b"1.2.3.5"));
    let mut file = vec![0u8; 128];
    file.extend(b"DICM");
    file.extend(dicom_element(
        0x0002,
        0x0000,
        b"UL",
        &(meta.len() as u32).to_le_bytes(),
    ));
    file.extend(meta);
    for element in dataset {
        file.extend(element);
    }
    file
}

/// A 4x3 CR image, 12 of 16 bits, MONOCHROME1, rescaled and windowed.
fn cr_dicom(values: &[u16], window: Option<(&str, &str)>) -> Vec<u8> {
    let us = |v: u16| v.to_le_bytes().to_vec();
    let mut dataset = vec![
        dicom_element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.1"),
        dicom_element(0x0008, 0x0018, b"UI", b"1.2.3.4"),
        dicom_element(0x0028, 0x0002, b"US", &us(1)),
        dicom_element(0x0028, 0x0004, b"CS", b"MONOCHROME1"),
        dicom_element(0x0028, 0x0010, b"US", &us(3)),
        dicom_element(0x0028, 0x0011, b"US", &us(4)),
        dicom_element(0x0028, 0x0100, b"US", &us(16)),
        dicom_element(0x0028, 0x0101, b"US", &us(12)),
        dicom_element(0x0028, 0x0102, b"US", &us(11)),
        dicom_element(0x0028, 0x0103, b"US", &us(0)),
    ];
    if let Some((center, width)) = window {
        dataset.push(dicom_element(0x0028, 0x1050, b"DS", center.as_bytes()));
        dataset.push(dicom_element(0x0028, 0x1051, b"DS", width.as_bytes()));
    }
    dataset.push(dicom_element(0x0028, 0x1052, b"DS", b"-100"));
    dataset.push(dicom_element(0x0028, 0x1053, b"DS", b"2"));
    let pixels: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    dataset.push(dicom_element(0x7FE0, 0x0010, b"OW", &pixels));
    dicom_file("1.2.840.10008.1.2.1", &dataset)
}

#[test]
fn dicom_goes_through_rescale_window_and_monochrome1() {
    // Stored values; the top nibble is overlay garbage that Bits Stored (12) masks away.
    let stored: [u16; 12] = [
        0, 50, 100, 1000, 1050, 1100, 2000, 3000, 4095, 0xF000, 0xF7FF, 7,
    ];
    let data = cr_dicom(&stored, Some(("2000", "4001")));
    let decoded = decode_gray(&data, &Limits::default(), None).unwrap();
    assert_eq!((decoded.image.width, decoded.image.height), (4, 3));
    let expected: Vec<u8> = stored
        .iter()
        .map(|&s| {
            let m = (s & 0x0FFF) as f64 * 2.0 - 100.0;
            // PS3.3 C.11.2.1.2.1, c = 2000, w = 4001.
            let (c, w) = (2000.0 - 0.5, 4000.0);
            let level = if m <= c - w / 2.0 {
                0.0
            } else if m > c + w / 2.0 {
                255.0
            } else {
                ((m - c) / w + 0.5) * 255.0
            };
            255 - (level + 0.5).floor() as u8
        })
        .collect();
    assert_eq!(decoded.image.pixels, expected);
    // Without a window, the frame's own range spans 0..255 (inverted: darkest value is white).
    let full = decode_gray(&cr_dicom(&stored, None), &Limits::default(), None).unwrap();
    assert_eq!(full.image.pixels[0], 255);
    assert_eq!(full.image.pixels[8], 0);
}

#[test]
fn dicom_errors_name_the_object_and_the_limit() {
    let limits = Limits::default();
    let no_pixels = dicom_file(
        "1.2.840.10008.1.2.1",
        &[dicom_element(
            0x0008,
            0x0016,
            b"UI",
            b"1.2.840.10008.5.1.4.1.1.481.5",
        )],
    );
    assert_eq!(
        decode_gray(&no_pixels, &limits, None).unwrap_err().0,
        "DICOM file has no pixel data (SOP class RT Plan Storage (1.2.840.10008.5.1.4.1.1.481.5))"
    );
    let jpeg_ls = dicom_file("1.2.840.10008.1.2.4.80", &[]);
    assert_eq!(
        decode_gray(&jpeg_ls, &limits, None).unwrap_err().0,
        "unsupported DICOM transfer syntax: JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)"
    );
    let strict = Limits {
        max_pixels: 10,
        ..Limits::default()
    };
    let small = cr_dicom(&[0; 12], None);
    assert_eq!(
        decode_gray(&small, &strict, None).unwrap_err().0,
        "image 4x3 exceeds 10 pixel limit"
    );
}

#[test]
fn dicom_rle_with_a_short_segment_is_an_error_not_a_panic() {
    // Found by the decode_dicom fuzz target: dicom-rs indexed past a segment that unpacks to
    // fewer than rows x cols bytes.
    let us = |v: u16| v.to_le_bytes().to_vec();
    let mut fragment = vec![0u8; 64];
    fragment[0..4].copy_from_slice(&1u32.to_le_bytes());
    fragment[4..8].copy_from_slice(&64u32.to_le_bytes());
    fragment.extend([3u8, 1, 2, 3, 4]); // a literal run of 4 bytes, for a 4x3 image of 12
    let mut pixel_data = vec![
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    pixel_data.extend([0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]); // empty offset table
    pixel_data.extend([0xFE, 0xFF, 0x00, 0xE0]);
    let padded = fragment.len() + fragment.len() % 2;
    pixel_data.extend((padded as u32).to_le_bytes());
    pixel_data.extend(&fragment);
    pixel_data.resize(pixel_data.len() + padded - fragment.len(), 0);
    pixel_data.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    let dataset = vec![
        dicom_element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.1"),
        dicom_element(0x0028, 0x0002, b"US", &us(1)),
        dicom_element(0x0028, 0x0004, b"CS", b"MONOCHROME2"),
        dicom_element(0x0028, 0x0010, b"US", &us(3)),
        dicom_element(0x0028, 0x0011, b"US", &us(4)),
        dicom_element(0x0028, 0x0100, b"US", &us(8)),
        dicom_element(0x0028, 0x0101, b"US", &us(8)),
        dicom_element(0x0028, 0x0102, b"US", &us(7)),
        dicom_element(0x0028, 0x0103, b"US", &us(0)),
        pixel_data,
    ];
    let data = dicom_file("1.2.840.10008.1.2.5", &dataset);
    assert_eq!(
        decode_gray(&data, &Limits::default(), None).unwrap_err().0,
        "truncated DICOM RLE segment"
    );
}
