//! 12-bit lossy JPEG (JPEG Extended) frames through libjpeg-turbo's 12-bit API, which
//! dicom-rs's JPEG codec (jpeg-decoder, 8-bit lossy only) refuses.

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

use super::mapping::{stored_value, Mapping};
use crate::core::error::{RowError, RowResult};
use crate::core::image::{Decoded, GrayImage};
use crate::core::jpeg::{frame_header, jpeg_scan_limit};
use crate::core::limits::Limits;

/// JPEG lossy syntaxes. 12-bit codestreams (JPEG Extended, process 4) go to libjpeg-turbo's
/// 12-bit decompressor: jpeg-decoder, which dicom-pixeldata uses, decodes 8-bit lossy JPEG only.
pub(super) const JPEG_LOSSY_SYNTAXES: [&str; 2] =
    ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"];

/// The codestream of the first frame: every fragment for a single frame, else the fragments up
/// to the first that ends the JPEG (EOI, possibly followed by a padding byte).
fn first_jpeg_frame(object: &DefaultDicomObject, fragments: &[Vec<u8>]) -> Vec<u8> {
    let frames = object
        .get(tags::NUMBER_OF_FRAMES)
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1);
    let mut stream = Vec::new();
    for fragment in fragments {
        stream.extend_from_slice(fragment);
        let end = &fragment[..fragment.len() - usize::from(fragment.last() == Some(&0))];
        if frames > 1 && end.ends_with(&[0xFF, 0xD9]) {
            break;
        }
    }
    stream
}

/// Decodes the first frame of a DICOM file whose JPEG codestream has 12-bit samples, then maps it
/// like every other frame (stored values masked to Bits Stored, modality, VOI, inversion).
pub(super) fn decode_jpeg12(
    object: &DefaultDicomObject,
    pixel_data: &dicom_object::mem::InMemElement,
    samples: u32,
    cols: u32,
    rows: u32,
    limits: &Limits,
) -> RowResult<Decoded> {
    if samples != 1 {
        return Err(RowError::new(
            "unsupported DICOM image: colour JPEG with 12-bit samples",
        ));
    }
    let fragments = pixel_data
        .fragments()
        .ok_or_else(|| RowError::new("corrupt DICOM: JPEG pixel data without fragments"))?;
    let stream = first_jpeg_frame(object, fragments);
    let (width, height, raw) = decode_jpeg12_gray(&stream, limits)?;
    if (width, height) != (cols, rows) {
        return Err(RowError::new(format!(
            "corrupt DICOM: the JPEG frame is {width}x{height} but Columns x Rows say {cols}x{rows}"
        )));
    }
    let bits_stored = object
        .get(tags::BITS_STORED)
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(12)
        .clamp(1, 16);
    let signed = object
        .get(tags::PIXEL_REPRESENTATION)
        .and_then(|e| e.to_int::<u16>().ok())
        == Some(1);
    let values: Vec<i32> = raw
        .iter()
        .map(|&v| stored_value(v as u16 as u32, bits_stored, signed))
        .collect();
    let pixels = Mapping::from_object(object)?.apply(&values);
    Ok(Decoded {
        image: GrayImage {
            width,
            height,
            pixels,
        },
        full_width: width,
        full_height: height,
        acquisition: None,
    })
}

/// Decodes a 12-bit lossy JPEG codestream to grayscale samples (0..=4095) with libjpeg-turbo's
/// 12-bit API (`tj3Decompress12`). The pixel limit is checked from the header first, and
/// progressive scans are capped like 8-bit JPEG (`jpeg_scan_limit`).
fn decode_jpeg12_gray(stream: &[u8], limits: &Limits) -> RowResult<(u32, u32, Vec<i16>)> {
    use std::ffi::{c_int, CStr};
    use turbojpeg::raw;

    struct Handle(raw::tjhandle);
    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: the handle came from tj3Init and is destroyed once.
            unsafe { raw::tj3Destroy(self.0) }
        }
    }
    let message = |handle: &Handle| -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
        let text = unsafe { CStr::from_ptr(raw::tj3GetErrorStr(handle.0)) };
        text.to_string_lossy().trim().to_string()
    };
    if frame_header(stream).is_none() {
        return Err(RowError::new("truncated JPEG in DICOM pixel data"));
    }
    // SAFETY: plain FFI calls on a handle owned here; the buffers outlive the calls, and the
    // output buffer holds width x height samples, the size tj3Decompress12 writes for a gray
    // image with the default pitch (0).
    unsafe {
        let handle = Handle(raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as c_int));
        if handle.0.is_null() {
            return Err(RowError::new("cannot create the 12-bit JPEG decoder"));
        }
        if raw::tj3DecompressHeader(handle.0, stream.as_ptr(), stream.len() as _) != 0 {
            return Err(RowError::new(format!(
                "corrupt JPEG header in DICOM pixel data: {}",
                message(&handle)
            )));
        }
        let get = |param: raw::TJPARAM| raw::tj3Get(handle.0, param as c_int);
        let (width, height) = (
            get(raw::TJPARAM_TJPARAM_JPEGWIDTH),
            get(raw::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        if width <= 0 || height <= 0 {
            return Err(RowError::new(format!(
                "image has invalid size {width}x{height}"
            )));
        }
        let (width, height) = (width as u32, height as u32);
        limits.check_dimensions(width as u64, height as u64)?;
        let precision = get(raw::TJPARAM_TJPARAM_PRECISION);
        if precision != 12 || get(raw::TJPARAM_TJPARAM_LOSSLESS) != 0 {
            return Err(RowError::new(format!(
                "corrupt DICOM pixel data: expected a 12-bit lossy JPEG, found {precision}-bit"
            )));
        }
        let scan_limit = jpeg_scan_limit(width as u64, height as u64);
        raw::tj3Set(
            handle.0,
            raw::TJPARAM_TJPARAM_SCANLIMIT as c_int,
            scan_limit as c_int,
        );
        let mut samples = vec![0i16; width as usize * height as usize];
        let status = raw::tj3Decompress12(
            handle.0,
            stream.as_ptr(),
            stream.len() as _,
            samples.as_mut_ptr(),
            0,
            raw::TJPF_TJPF_GRAY as c_int,
        );
        if status != 0 {
            let text = message(&handle);
            let lower = text.to_ascii_lowercase();
            if lower.contains("scans") && lower.contains("progressive") {
                return Err(RowError::new(format!(
                    "JPEG has more than {scan_limit} progressive scans, the work limit for a \
                     {width}x{height} image (2e8 pixel-scans, at least 16 scans)"
                )));
            }
            if lower.contains("premature end") || lower.contains("unexpected end") {
                return Err(RowError::new("truncated JPEG in DICOM pixel data"));
            }
            // As for 8-bit JPEG, only the warning PIL also ignores leaves a usable image.
            if !lower.contains("extraneous bytes before marker") {
                return Err(RowError::new(format!(
                    "corrupt JPEG in DICOM pixel data: {text}"
                )));
            }
        }
        Ok((width, height, samples))
    }
}
