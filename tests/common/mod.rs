//! Shared helpers of the Rust integration tests: the real images and generated bad inputs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `../shared/data` (or env `CXRLAKE_SHARED_DATA`).
pub fn shared_data() -> PathBuf {
    std::env::var_os("CXRLAKE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// The 200 full-resolution JPEGs, sorted; panics with a clear message when the data is missing.
pub fn fullres_images() -> Vec<PathBuf> {
    let root = shared_data().join("chest_xray_fullres");
    let mut paths: Vec<PathBuf> = ["NORMAL", "PNEUMONIA"]
        .iter()
        .flat_map(|label| {
            std::fs::read_dir(root.join(label))
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.join(label).display()))
                .map(|entry| entry.unwrap().path())
        })
        .filter(|p| p.extension().is_some_and(|e| e == "jpeg"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 100,
        "expected the full-resolution images under {}",
        root.display()
    );
    paths
}

/// The shipped model (python/cxrlake/models/cxrlake_pneumonia.onnx).
pub fn shipped_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cxrlake/models/cxrlake_pneumonia.onnx")
}

/// Loads ONNX Runtime from env ORT_DYLIB_PATH (`make test-rust` sets it from the venv).
pub fn init_runtime() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        panic!("set ORT_DYLIB_PATH to libonnxruntime (make test-rust does it from .venv)");
    }
    cxrlake::core::init_runtime(None).expect("ONNX Runtime loads");
}

/// CRC-32 (IEEE) as PNG chunks use it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header announces `width x height` 8-bit gray pixels, followed by a tiny IDAT.
pub fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

/// `jpeg` with the frame header (SOF0/1/2) patched to announce `width x height`.
pub fn jpeg_with_size(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let mut pos = 2;
    while pos + 9 < out.len() {
        assert_eq!(out[pos], 0xFF, "marker expected at {pos}");
        let marker = out[pos + 1];
        let length = u16::from_be_bytes([out[pos + 2], out[pos + 3]]) as usize;
        if matches!(marker, 0xC0..=0xC2) {
            out[pos + 5..pos + 7].copy_from_slice(&height.to_be_bytes());
            out[pos + 7..pos + 9].copy_from_slice(&width.to_be_bytes());
            return out;
        }
        pos += 2 + length;
    }
    panic!("no SOF marker found");
}

/// Encodes an 8-bit PNG with the `png` crate.
pub fn encode_png(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if let Some(palette) = palette {
            encoder.set_palette(palette.to_vec());
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
    }
    out
}
