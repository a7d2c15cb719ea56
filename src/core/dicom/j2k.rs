//! JPEG 2000 frames decoded at a reduced resolution level, like the JPEG DCT scaling.

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

use super::mapping::Mapping;
use crate::core::image::{Decoded, GrayImage};

/// JPEG 2000 transfer syntaxes, whose codestream can be decoded at a lower resolution level.
const J2K_SYNTAXES: [&str; 2] = ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"];

/// Decodes a single-frame, single-sample JPEG 2000 file at the lowest resolution level that
/// keeps it at least twice `target`; `None` when that is not possible (any other case, or a
/// codestream OpenJPEG will not reduce), so the caller decodes at full resolution.
pub(super) fn decode_j2k_reduced(
    object: &DefaultDicomObject,
    ts_uid: &str,
    cols: u32,
    rows: u32,
    target: (u32, u32),
) -> Option<Decoded> {
    if !J2K_SYNTAXES.contains(&ts_uid) {
        return None;
    }
    let frames = object
        .get(tags::NUMBER_OF_FRAMES)
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1);
    if frames > 1 {
        return None;
    }
    let (need_w, need_h) = (2 * target.0.max(1), 2 * target.1.max(1));
    let reduce = (1..=5u32)
        .rev()
        .find(|&r| cols.div_ceil(1 << r) >= need_w && rows.div_ceil(1 << r) >= need_h)?;
    if object.get(tags::VOILUT_SEQUENCE).is_some() {
        // The full decoding path reads VOI LUTs (dicom-pixeldata, functional groups included).
        return None;
    }
    let mapping = Mapping::from_object(object).ok()?;
    let fragments = object.get(tags::PIXEL_DATA)?.fragments()?;
    let stream: Vec<u8> = fragments.iter().flatten().copied().collect();
    let image =
        jpeg2k::Image::from_bytes_with(&stream, jpeg2k::DecodeParameters::new().reduce(reduce))
            .ok()?;
    let component = image.components().first()?;
    if component.precision() > 16 {
        return None;
    }
    let (width, height) = (component.width(), component.height());
    let data = component.data();
    if width == 0 || height == 0 || data.len() != width as usize * height as usize {
        return None;
    }
    Some(Decoded {
        image: GrayImage {
            width,
            height,
            pixels: mapping.apply(data),
        },
        full_width: cols,
        full_height: rows,
        acquisition: None,
    })
}
