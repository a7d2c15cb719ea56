//! DICOM Part 10 files to an upright 8-bit grayscale image: the first frame, through the modality
//! LUT, the VOI LUT or window, and the MONOCHROME1 inversion.
//!
//! Parsing and pixel data decoding are dicom-rs (`dicom-object`, `dicom-pixeldata`); this module
//! adds what a batch of untrusted files needs around them:
//!
//! - a structural pre-scan ([`check_structure`]) that refuses any element whose declared length
//!   exceeds the bytes that follow it (dicom-rs allocates and zeroes a value's declared length
//!   before reading it, so a 200-byte file could otherwise cost 4 GiB), reading the file with
//!   dicom-rs's own header rules and token reader, inflating deflated data sets under a cap first;
//! - the pixel limit checked from Rows x Columns, and from the embedded JPEG / JPEG 2000 header,
//!   before any pixel buffer is allocated, and the codestream's work bounded (JPEG scans,
//!   JPEG 2000 tiles and components: `check_codestream`);
//! - 12-bit lossy JPEG (JPEG Extended) through libjpeg-turbo's 12-bit API, which dicom-rs's JPEG
//!   codec (jpeg-decoder, 8-bit lossy only) refuses;
//! - one explicit 8-bit mapping, reproducible in numpy, so tests compare against pydicom exactly.
//!
//! The mapping of a stored value `s` (masked to Bits Stored, sign-extended when Pixel
//! Representation is 1) to an output byte:
//!
//! 1. modality: the first item of the Modality LUT Sequence when present (PS3.3 C.11.1: entry
//!    `clamp(s - first mapped, 0, entries - 1)`, as pydicom's `apply_modality_lut`), otherwise
//!    `m = s * RescaleSlope + RescaleIntercept` (1 and 0 when absent);
//! 2. VOI: the first item of the VOI LUT Sequence when present (entries indexed by
//!    `m - first mapped`, clamped, then scaled from the LUT's own minimum..maximum to 0..255);
//!    otherwise the first Window Center / Width with its VOI LUT Function (LINEAR, LINEAR_EXACT,
//!    SIGMOID as PS3.3 C.11.2.1.2 and C.11.2.1.3, output range 0..255); otherwise the full range of
//!    the frame, `255 * (m - min) / (max - min)`;
//! 3. rounding `floor(v + 0.5)`, clamped to 0..=255, then `255 - v` for MONOCHROME1.
//!
//! Color images (3 samples per pixel, RGB or YBR after decoding) become luma as PIL `convert("L")`.
//!
//! One file per concern: this one parses and dispatches ([`decode_dicom`]); `structure` is the
//! pre-scan, `codestream` the checks on embedded JPEG / JPEG 2000 headers, `rle` the RLE frame
//! check, `jpeg12` the 12-bit JPEG path, `j2k` the reduced-resolution JPEG 2000 path, `mapping`
//! stored values to bytes, `color` colour frames to luma.

mod codestream;
mod color;
mod j2k;
mod jpeg12;
mod mapping;
mod rle;
mod structure;

use dicom_core::dictionary::UidDictionary;
use dicom_core::Tag;
use dicom_dictionary_std::{tags, StandardSopClassDictionary};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub use codestream::codestream_size;
pub use mapping::window_level;
pub use rle::check_rle;
pub use structure::check_structure;
#[cfg(test)]
pub(crate) use structure::tests::file_declaring_4_gib;

use codestream::check_codestream;
use color::color_to_luma;
use j2k::decode_j2k_reduced;
use jpeg12::{decode_jpeg12, JPEG_LOSSY_SYNTAXES};
use mapping::{stored_values, Mapping};

use crate::core::error::{RowError, RowResult};
use crate::core::image::{Acquisition, Decoded, GrayImage};
use crate::core::jpeg::frame_header;
use crate::core::limits::Limits;

/// Whether `data` is a DICOM Part 10 file: a 128-byte preamble followed by `DICM`.
pub fn is_dicom(data: &[u8]) -> bool {
    data.len() >= 132 && &data[128..132] == b"DICM"
}

const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Transfer syntaxes decoded here, by UID, with the names used in error messages.
const SUPPORTED_SYNTAXES: &[(&str, &str)] = &[
    (IMPLICIT_VR_LE, "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    (
        DEFLATED_EXPLICIT_VR_LE,
        "Deflated Explicit VR Little Endian",
    ),
    (EXPLICIT_VR_BE, "Explicit VR Big Endian"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline"),
    ("1.2.840.10008.1.2.4.51", "JPEG Extended"),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless"),
    ("1.2.840.10008.1.2.4.70", "JPEG Lossless SV1"),
    ("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless"),
    ("1.2.840.10008.1.2.4.91", "JPEG 2000"),
];

/// Decodes the first frame of a DICOM Part 10 file to 8-bit grayscale (see the module docs for
/// the mapping). `limits.max_pixels` is checked from the header before pixels are allocated.
///
/// `min_size = Some((w, h))` lets a JPEG 2000 file decode at a reduced resolution level (1/2 to
/// 1/32) as long as the image stays at least `2w x 2h`, like the JPEG DCT scaling; `None` decodes
/// at full resolution.
pub fn decode_dicom(
    data: &[u8],
    limits: &Limits,
    min_size: Option<(u32, u32)>,
) -> RowResult<Decoded> {
    let object = parse(data, limits)?;
    let mut decoded = decode_object(&object, limits, min_size)?;
    decoded.acquisition = Some(acquisition(&object));
    Ok(decoded)
}

/// Modality and ViewPosition of a data set (trimmed, upper case; `None` when absent or empty).
fn acquisition(object: &DefaultDicomObject) -> Acquisition {
    let text = |tag: Tag| {
        object
            .get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|t| t.trim_end_matches('\0').trim().to_ascii_uppercase())
            .filter(|t| !t.is_empty())
    };
    Acquisition {
        modality: text(tags::MODALITY),
        view_position: text(tags::VIEW_POSITION),
    }
}

fn decode_object(
    object: &DefaultDicomObject,
    limits: &Limits,
    min_size: Option<(u32, u32)>,
) -> RowResult<Decoded> {
    let ts_uid = object
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .trim();
    if !SUPPORTED_SYNTAXES.iter().any(|(uid, _)| *uid == ts_uid) {
        return Err(RowError::new(format!(
            "unsupported DICOM transfer syntax: {}",
            syntax_name(ts_uid)
        )));
    }
    let Some(pixel_data) = object.get(tags::PIXEL_DATA) else {
        return Err(RowError::new(format!(
            "DICOM file has no pixel data ({})",
            sop_class_name(object)
        )));
    };
    let rows = int_attribute(object, tags::ROWS, "Rows")?;
    let cols = int_attribute(object, tags::COLUMNS, "Columns")?;
    limits.check_dimensions(cols as u64, rows as u64)?;
    let samples = int_attribute(object, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
    let bits_allocated = int_attribute(object, tags::BITS_ALLOCATED, "BitsAllocated")?;
    if samples != 1 && samples != 3 {
        return Err(RowError::new(format!(
            "unsupported DICOM image: {samples} samples per pixel (1 or 3 are decoded)"
        )));
    }
    if bits_allocated != 8 && bits_allocated != 16 {
        return Err(RowError::new(format!(
            "unsupported DICOM image: {bits_allocated} bits allocated (8 or 16 are decoded)"
        )));
    }
    let photometric = object
        .get(tags::PHOTOMETRIC_INTERPRETATION)
        .and_then(|e| e.to_str().ok())
        .map(|t| t.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default();
    let known = match samples {
        1 => ["MONOCHROME1", "MONOCHROME2"].contains(&photometric.as_str()),
        _ => ["RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"]
            .contains(&photometric.as_str()),
    };
    if !known {
        return Err(RowError::new(format!(
            "unsupported DICOM photometric interpretation: {photometric:?} with {samples} samples per pixel"
        )));
    }
    if let Some(fragments) = pixel_data.fragments() {
        // The codec sizes its buffer from the embedded stream's own header, not from Rows and
        // Columns: check that header too.
        if let Some((width, height)) = fragments.first().and_then(|f| codestream_size(f)) {
            limits.check_dimensions(width as u64, height as u64)?;
            check_codestream(object, fragments, (cols, rows, samples, bits_allocated))?;
        }
    }

    if ts_uid == RLE_LOSSLESS {
        let fragment = pixel_data
            .fragments()
            .and_then(|f| f.first())
            .ok_or_else(|| RowError::new("corrupt DICOM: RLE pixel data without fragments"))?;
        check_rle(fragment, rows, cols, samples * bits_allocated / 8)?;
    }
    if JPEG_LOSSY_SYNTAXES.contains(&ts_uid) {
        let precision = pixel_data
            .fragments()
            .and_then(|f| f.first())
            .and_then(|f| frame_header(f))
            .map(|h| h.precision);
        if precision == Some(12) {
            return decode_jpeg12(object, pixel_data, samples, cols, rows, limits);
        }
    }
    if let (Some(target), 1) = (min_size, samples) {
        if let Some(decoded) = decode_j2k_reduced(object, ts_uid, cols, rows, target) {
            return Ok(decoded);
        }
    }
    let frame = object
        .decode_pixel_data_frame(0)
        .map_err(|e| RowError::new(format!("corrupt DICOM pixel data: {}", one_line(&e))))?;
    let (width, height) = (frame.columns(), frame.rows());
    let pixels = if frame.samples_per_pixel() == 3 {
        color_to_luma(&frame)?
    } else {
        let values = stored_values(&frame)?;
        Mapping::from_frame(&frame, object)?.apply(&values)
    };
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

/// Parses a DICOM file held in memory after [`check_structure`] has vetted its element lengths.
fn parse(data: &[u8], limits: &Limits) -> RowResult<DefaultDicomObject> {
    check_structure(data, limits)?;
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(data)
        .map_err(|e| RowError::new(format!("corrupt DICOM: {}", one_line(&e))))
}

fn one_line(error: &dyn std::error::Error) -> String {
    // dicom-rs errors chain their causes; the innermost says what was wrong with the bytes.
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace(['\n', '\r'], " ")
}

fn syntax_name(uid: &str) -> String {
    if let Some((_, name)) = SUPPORTED_SYNTAXES.iter().find(|(u, _)| *u == uid) {
        return format!("{name} ({uid})");
    }
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) => format!("{} ({uid})", ts.name()),
        None => format!("unknown ({uid})"),
    }
}

fn sop_class_name(object: &DefaultDicomObject) -> String {
    // The data set's own SOP Class UID, else the one the file meta group announces.
    let from_dataset = object
        .get(tags::SOP_CLASS_UID)
        .and_then(|e| e.to_str().ok())
        .map(|t| t.to_string());
    let uid = from_dataset
        .as_deref()
        .unwrap_or(&object.meta().media_storage_sop_class_uid)
        .trim_end_matches('\0')
        .trim();
    match StandardSopClassDictionary.by_uid(uid) {
        Some(entry) => format!("SOP class {} ({uid})", entry.name),
        None => format!("SOP class {uid}"),
    }
}

fn int_attribute(object: &DefaultDicomObject, tag: Tag, name: &str) -> RowResult<u32> {
    let element = object
        .get(tag)
        .ok_or_else(|| RowError::new(format!("DICOM image without {name}")))?;
    element
        .to_int::<u32>()
        .map_err(|_| RowError::new(format!("corrupt DICOM: {name} is not a number")))
}
