//! Invariants shared by the fuzz targets: beyond "does not crash", every result must be
//! well-formed (pixel buffers of the announced size, limits respected, one-line error messages).
// Each target uses a different subset of these helpers.
#![allow(dead_code)]

use cxrlake::core::decode::{decode_gray, Decoded};
use cxrlake::core::limits::Limits;
use cxrlake::core::preprocess::Preprocessing;
use cxrlake::core::quality::measure_quality;

/// Limits small enough that a fuzz input can never make one execution allocate more than
/// ~16 MiB of pixels (4 megapixels x 4 CMYK channels), so runs stay fast under ASan while every
/// limit check is still exercised.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_pixels: 4_000_000,
        max_file_bytes: 1 << 20,
    }
}

/// A small model geometry: JPEGs of 256 px and more take the DCT-scaled decoding path.
pub fn fuzz_preprocessing() -> Preprocessing {
    Preprocessing::new(
        64,
        48,
        3,
        vec![0.485, 0.456, 0.406],
        vec![0.229, 0.224, 0.225],
    )
    .expect("valid preprocessing")
}

/// A row error must be a non-empty single line (it lands in one cell of the `error` column).
pub fn check_row_error(message: &str) {
    assert!(!message.is_empty(), "empty row error");
    assert!(!message.contains('\n'), "multi-line row error: {message:?}");
}

/// Decodes at full resolution and checks the image, its quality features and the limits.
pub fn check_full_decode(data: &[u8]) {
    let limits = fuzz_limits();
    match decode_gray(data, &limits, None) {
        Ok(decoded) => {
            check_image(&decoded, &limits);
            // Unscaled decoding keeps the full upright size.
            assert_eq!(
                (decoded.full_width, decoded.full_height),
                (decoded.image.width, decoded.image.height)
            );
            let quality = measure_quality(&decoded.image);
            assert!((0.0..=255.0).contains(&quality.mean), "{quality:?}");
            assert!(quality.std.is_finite() && quality.std >= 0.0, "{quality:?}");
            assert!((0.0..=1.0).contains(&quality.score), "{quality:?}");
        }
        Err(error) => check_row_error(&error.0),
    }
}

/// Decodes through the model preprocessing (DCT scaling allowed) and checks the tensor.
pub fn check_preprocess(data: &[u8]) {
    let prep = fuzz_preprocessing();
    let mut tensor = vec![f32::NAN; prep.tensor_len()];
    match prep.encoded_into(data, &fuzz_limits(), &mut tensor) {
        Ok(()) => assert!(
            tensor.iter().all(|x| x.is_finite()),
            "non-finite tensor value"
        ),
        Err(error) => check_row_error(&error.0),
    }
}

fn check_image(decoded: &Decoded, limits: &Limits) {
    let image = &decoded.image;
    assert!(image.width > 0 && image.height > 0, "empty image decoded");
    assert_eq!(
        image.pixels.len() as u64,
        image.width as u64 * image.height as u64,
        "pixel buffer does not match {}x{}",
        image.width,
        image.height
    );
    assert!(
        decoded.full_width as u64 * decoded.full_height as u64 <= limits.max_pixels,
        "{}x{} decoded despite the {} pixel limit",
        decoded.full_width,
        decoded.full_height,
        limits.max_pixels
    );
}
