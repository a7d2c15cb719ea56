//! Colour frames (3 samples per pixel) to 8-bit luma.

use crate::core::error::{RowError, RowResult};

/// 3-sample frames (already RGB after codec decoding, or native RGB / YBR_FULL) to luma.
pub(super) fn color_to_luma(frame: &dicom_pixeldata::DecodedPixelData<'_>) -> RowResult<Vec<u8>> {
    use dicom_pixeldata::PhotometricInterpretation as Pi;
    let count = frame.rows() as usize * frame.columns() as usize;
    let bytes_per_sample = frame.bits_allocated().div_ceil(8) as usize;
    let data = frame.data();
    if data.len() < count * 3 * bytes_per_sample {
        return Err(RowError::new("truncated DICOM pixel data"));
    }
    // High byte of 16-bit samples, as the JPEG/PNG decoders keep 8 bits.
    let sample = |i: usize| -> u32 {
        if bytes_per_sample == 2 {
            data[2 * i + 1] as u32
        } else {
            data[i] as u32
        }
    };
    let planar = frame.planar_configuration() == dicom_pixeldata::PlanarConfiguration::PixelFirst;
    let at = |p: usize, c: usize| {
        if planar {
            sample(c * count + p)
        } else {
            sample(3 * p + c)
        }
    };
    let ybr = matches!(
        frame.photometric_interpretation(),
        Pi::YbrFull | Pi::YbrFull422
    );
    Ok((0..count)
        .map(|p| {
            if ybr {
                // Y is the luma already (PS3.3 C.7.6.3.1.2).
                at(p, 0) as u8
            } else {
                ((at(p, 0) * 19595 + at(p, 1) * 38470 + at(p, 2) * 7471 + 0x8000) >> 16) as u8
            }
        })
        .collect())
}
