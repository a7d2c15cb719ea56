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

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use dicom_core::dictionary::UidDictionary;
use dicom_core::header::{HasLength, Header};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, StandardSopClassDictionary};
use dicom_encoding::decode::Decode;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntax};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_parser::dataset::read::{DataSetReader, DataSetReaderOptions};
use dicom_parser::dataset::DataToken;
use dicom_pixeldata::{PixelDecoder, VoiLutFunction};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::core::decode::{Acquisition, Decoded, GrayImage};
use crate::core::error::{RowError, RowResult};
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
            sop_class_name(&object)
        )));
    };
    let rows = int_attribute(&object, tags::ROWS, "Rows")?;
    let cols = int_attribute(&object, tags::COLUMNS, "Columns")?;
    limits.check_dimensions(cols as u64, rows as u64)?;
    let samples = int_attribute(&object, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
    let bits_allocated = int_attribute(&object, tags::BITS_ALLOCATED, "BitsAllocated")?;
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
            check_codestream(&object, fragments, (cols, rows, samples, bits_allocated))?;
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
            .and_then(|f| jpeg_frame_header(f))
            .map(|h| h.precision);
        if precision == Some(12) {
            return decode_jpeg12(&object, pixel_data, samples, cols, rows, limits);
        }
    }
    if let (Some(target), 1) = (min_size, samples) {
        if let Some(decoded) = decode_j2k_reduced(&object, ts_uid, cols, rows, target) {
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
        Mapping::from_frame(&frame, &object)?.apply(&values)
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

/// The frame header (SOFn) of a JPEG codestream: sample precision in bits, width, height,
/// number of components.
struct JpegFrameHeader {
    precision: u8,
    width: u32,
    height: u32,
    components: u8,
}

/// Finds the frame header of a JPEG codestream by walking its marker segments.
fn jpeg_frame_header(stream: &[u8]) -> Option<JpegFrameHeader> {
    if !stream.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut pos = 2usize;
    while pos + 4 <= stream.len() {
        if stream[pos] != 0xFF {
            return None;
        }
        let marker = stream[pos + 1];
        if marker == 0xFF {
            pos += 1;
            continue;
        }
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            pos += 2;
            continue;
        }
        let length = u16::from_be_bytes([stream[pos + 2], stream[pos + 3]]) as usize;
        let is_sof = (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker);
        if is_sof {
            let header = stream.get(pos + 4..pos + 10)?;
            return Some(JpegFrameHeader {
                precision: header[0],
                height: u16::from_be_bytes([header[1], header[2]]) as u32,
                width: u16::from_be_bytes([header[3], header[4]]) as u32,
                components: header[5],
            });
        }
        if marker == 0xDA || length < 2 {
            return None;
        }
        pos += 2 + length;
    }
    None
}

/// Width and height announced by an embedded JPEG (SOF) or JPEG 2000 (SIZ) codestream.
pub fn codestream_size(fragment: &[u8]) -> Option<(u32, u32)> {
    if fragment.starts_with(&[0xFF, 0xD8]) {
        return jpeg_frame_header(fragment).map(|h| (h.width, h.height));
    }
    j2k_size(fragment).map(|siz| (siz.width, siz.height))
}

/// What a JPEG 2000 image size marker (SIZ) announces.
struct J2kSize {
    width: u32,
    height: u32,
    tiles: u64,
    components: u16,
}

fn j2k_size(fragment: &[u8]) -> Option<J2kSize> {
    // A raw J2K codestream starts with SOC + SIZ; a JP2 file wraps it in a `jp2c` box.
    let start = if fragment.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
        0
    } else {
        let window = &fragment[..fragment.len().min(4096)];
        window
            .windows(4)
            .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])?
    };
    let siz = fragment.get(start + 4..start + 42)?;
    let be32 = |i: usize| u32::from_be_bytes([siz[i], siz[i + 1], siz[i + 2], siz[i + 3]]);
    // Lsiz(2) Rsiz(2) Xsiz(4) Ysiz(4) XOsiz(4) YOsiz(4) XTsiz(4) YTsiz(4) XTOsiz(4) YTOsiz(4)
    // Csiz(2)
    let (xsiz, ysiz, xosiz, yosiz) = (be32(4), be32(8), be32(12), be32(16));
    let (xtsiz, ytsiz, xtosiz, ytosiz) = (be32(20), be32(24), be32(28), be32(32));
    let across = |size: u32, tile_origin: u32, tile: u32| -> u64 {
        if tile == 0 {
            return u64::MAX;
        }
        (size.saturating_sub(tile_origin) as u64).div_ceil(tile as u64)
    };
    Some(J2kSize {
        width: xsiz.saturating_sub(xosiz),
        height: ysiz.saturating_sub(yosiz),
        tiles: across(xsiz, xtosiz, xtsiz).saturating_mul(across(ysiz, ytosiz, ytsiz)),
        components: u16::from_be_bytes([siz[36], siz[37]]),
    })
}

/// Checks an embedded JPEG or JPEG 2000 codestream against the data set and the work limits
/// before a codec runs. `frame` is Columns, Rows, SamplesPerPixel, BitsAllocated.
///
/// - Geometry: dicom-rs sizes the frame buffer from the data set's attributes and copies the
///   codec's output into it unchecked, so a codestream larger than Columns x Rows x
///   SamplesPerPixel made it panic (found by the decode_dicom fuzz target). Refused by name.
/// - Work and memory beyond the pixel count: each progressive JPEG scan is one more pass over the
///   image (jpeg-decoder has no scan limit of its own), and OpenJPEG keeps about 9 KB of state
///   per tile (56,595 tiles of 8x8 pixels took 530 MB for a 3.6-megapixel image) and a buffer per
///   component. Refused: a JPEG whose first frame has more scans than `jpeg_scan_limit` (the
///   budget of 8-bit JPEG files: 2e8 pixel-scans, at least 16 scans); a JPEG 2000 codestream with
///   more than 3 components, or more tiles than one per 4,096 pixels (64 x 64) when it has more
///   than 16.
fn check_codestream(
    object: &DefaultDicomObject,
    fragments: &[Vec<u8>],
    frame: (u32, u32, u32, u32),
) -> RowResult<()> {
    let (cols, rows, samples, bits_allocated) = frame;
    let frame_samples = cols as u64 * rows as u64 * samples as u64;
    let too_large = |what: String| {
        RowError::new(format!(
            "corrupt DICOM: the {what} is larger than Columns x Rows x SamplesPerPixel \
             ({cols}x{rows}x{samples} of {bits_allocated} bits)"
        ))
    };
    let first = &fragments[0];
    if let Some(header) = jpeg_frame_header(first) {
        let (width, height) = (header.width, header.height);
        let bytes = if header.precision > 8 { 2 } else { 1 };
        let decoded = width as u64 * height as u64 * header.components as u64 * bytes;
        if decoded > frame_samples * (bits_allocated as u64 / 8) {
            return Err(too_large(format!(
                "JPEG frame ({width}x{height}, {} components of {} bits)",
                header.components, header.precision
            )));
        }
        let scan_limit = crate::core::decode::jpeg_scan_limit(width as u64, height as u64);
        let scans = first_frame_scans(object, fragments);
        if scans > scan_limit as usize {
            return Err(RowError::new(format!(
                "JPEG has more than {scan_limit} progressive scans, the work limit for a \
                 {width}x{height} image (2e8 pixel-scans, at least 16 scans)"
            )));
        }
    } else if let Some(siz) = j2k_size(first) {
        let (width, height) = (siz.width, siz.height);
        if siz.components > 3 {
            return Err(RowError::new(format!(
                "unsupported DICOM image: JPEG 2000 codestream with {} components (at most 3)",
                siz.components
            )));
        }
        if siz.components as u32 > samples
            || width as u64 * height as u64 > cols as u64 * rows as u64
        {
            return Err(too_large(format!(
                "JPEG 2000 image ({width}x{height}, {} components)",
                siz.components
            )));
        }
        let pixels = width as u64 * height as u64;
        if siz.tiles > 16 && siz.tiles > pixels / 4096 {
            return Err(RowError::new(format!(
                "JPEG 2000 codestream has {} tiles for a {width}x{height} image, the limit is one \
                 per 4096 pixels (or 16)",
                siz.tiles
            )));
        }
    }
    Ok(())
}

/// Start-of-scan markers in the first frame's JPEG codestream (entropy-coded data stuffs every
/// 0xFF byte with 0x00, so `FF DA` only occurs as a marker).
fn first_frame_scans(object: &DefaultDicomObject, fragments: &[Vec<u8>]) -> usize {
    let frames = object
        .get(tags::NUMBER_OF_FRAMES)
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1);
    let mut scans = 0;
    let mut previous = 0u8;
    for fragment in fragments {
        for &byte in fragment {
            if previous == 0xFF && byte == 0xDA {
                scans += 1;
            }
            if frames > 1 && previous == 0xFF && byte == 0xD9 {
                return scans;
            }
            previous = byte;
        }
    }
    scans
}

/// Checks an RLE Lossless frame (PS3.5 G.3, G.5) before dicom-rs decodes it: its header must list
/// one segment per byte plane in increasing order inside the fragment, and every segment must
/// unpack (PackBits) to at least `rows x cols` bytes. dicom-rs 0.10 indexes past the end of a
/// short segment (a panic; found by the decode_dicom fuzz target) and slices the header by the
/// declared segment count.
pub fn check_rle(fragment: &[u8], rows: u32, cols: u32, planes: u32) -> RowResult<()> {
    let corrupt = |what: &str| RowError::new(format!("corrupt DICOM RLE data: {what}"));
    if fragment.len() < 64 {
        return Err(corrupt("header shorter than 64 bytes"));
    }
    let u32_at = |i: usize| {
        u32::from_le_bytes([
            fragment[i],
            fragment[i + 1],
            fragment[i + 2],
            fragment[i + 3],
        ])
    };
    let segments = u32_at(0);
    if segments != planes || segments > 15 {
        return Err(corrupt(&format!(
            "{segments} segments for {planes} byte planes"
        )));
    }
    let mut offsets: Vec<usize> = (1..=segments as usize)
        .map(|i| u32_at(4 * i) as usize)
        .collect();
    offsets.push(fragment.len());
    let needed = rows as usize * cols as usize;
    for window in offsets.windows(2) {
        let (start, end) = (window[0], window[1]);
        if start < 64 || start > end || end > fragment.len() {
            return Err(corrupt(
                "segment offsets out of order or outside the fragment",
            ));
        }
        if packbits_len(&fragment[start..end], needed) < needed {
            return Err(RowError::new("truncated DICOM RLE segment"));
        }
    }
    Ok(())
}

/// Bytes a PackBits segment unpacks to, counting up to `limit`.
fn packbits_len(segment: &[u8], limit: usize) -> usize {
    let (mut pos, mut out) = (0usize, 0usize);
    while pos < segment.len() && out < limit {
        let n = segment[pos] as i8;
        pos += 1;
        if n >= 0 {
            let literal = n as usize + 1;
            out += literal.min(segment.len().saturating_sub(pos));
            pos += literal;
        } else if n != -128 {
            if pos < segment.len() {
                out += (1 - n as isize) as usize;
            }
            pos += 1;
        }
    }
    out
}

/// A stored value (masked to Bits Stored, sign-extended when Pixel Representation is 1).
fn stored_value(raw: u32, bits_stored: u32, signed: bool) -> i32 {
    let bits = bits_stored.clamp(1, 32);
    let v = if bits >= 32 {
        raw
    } else {
        raw & ((1u32 << bits) - 1)
    };
    if signed && bits < 32 {
        let shift = 32 - bits;
        ((v << shift) as i32) >> shift
    } else {
        v as i32
    }
}

/// Stored sample values of a single-sample frame, masked to Bits Stored and sign-extended.
fn stored_values(frame: &dicom_pixeldata::DecodedPixelData<'_>) -> RowResult<Vec<i32>> {
    let bits_stored = frame.bits_stored().clamp(1, 16) as u32;
    let signed = frame.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    let count = frame.rows() as usize * frame.columns() as usize;
    let data = frame.data();
    let values: Vec<i32> = match frame.bits_allocated() {
        8 => data
            .iter()
            .take(count)
            .map(|&b| stored_value(b as u32, bits_stored, signed))
            .collect(),
        16 => data
            .chunks_exact(2)
            .take(count)
            .map(|b| stored_value(u16::from_le_bytes([b[0], b[1]]) as u32, bits_stored, signed))
            .collect(),
        other => {
            return Err(RowError::new(format!(
                "unsupported DICOM image: {other} bits allocated (8 or 16 are decoded)"
            )))
        }
    };
    if values.len() != count {
        return Err(RowError::new(format!(
            "truncated DICOM pixel data: {} of {count} pixels",
            values.len()
        )));
    }
    Ok(values)
}

/// How modality values become output bytes.
enum Voi {
    Lut {
        first: i64,
        entries: Vec<u16>,
        low: f64,
        high: f64,
    },
    Window {
        center: f64,
        width: f64,
        function: VoiLutFunction,
    },
    FullRange {
        low: f64,
        high: f64,
    },
}

impl Voi {
    /// The output level (0.0 ..= 255.0, before rounding) of modality value `m`.
    fn level(&self, m: f64) -> f64 {
        match self {
            Voi::Lut {
                first,
                entries,
                low,
                high,
            } => {
                let index = (m.floor() as i64 - first).clamp(0, entries.len() as i64 - 1);
                let v = entries[index as usize] as f64;
                if high > low {
                    255.0 * (v - low) / (high - low)
                } else {
                    0.0
                }
            }
            Voi::Window {
                center,
                width,
                function,
            } => window_level(m, *center, *width, *function),
            Voi::FullRange { low, high } => {
                if high > low {
                    255.0 * (m - low) / (high - low)
                } else {
                    0.0
                }
            }
        }
    }
}

/// PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3 (SIGMOID), output range 0..255.
pub fn window_level(m: f64, center: f64, width: f64, function: VoiLutFunction) -> f64 {
    match function {
        VoiLutFunction::Linear => {
            let (c, w) = (center - 0.5, width - 1.0);
            if m <= c - w / 2.0 {
                0.0
            } else if m > c + w / 2.0 {
                255.0
            } else {
                ((m - c) / w + 0.5) * 255.0
            }
        }
        VoiLutFunction::LinearExact => {
            if m <= center - width / 2.0 {
                0.0
            } else if m > center + width / 2.0 {
                255.0
            } else {
                ((m - center) / width + 0.5) * 255.0
            }
        }
        VoiLutFunction::Sigmoid => 255.0 / (1.0 + (-4.0 * (m - center) / width).exp()),
    }
}

/// A lookup table from a Modality LUT or VOI LUT Sequence item (PS3.3 C.11.1, C.11.2): input
/// values below `first` map to the first entry, values past the end to the last.
struct Lut {
    first: i64,
    entries: Vec<u16>,
}

impl Lut {
    fn get(&self, input: i64) -> u16 {
        let index = (input.saturating_sub(self.first)).clamp(0, self.entries.len() as i64 - 1);
        self.entries[index as usize]
    }
}

/// The Modality LUT of the data set: the first item of the Modality LUT Sequence (0028,3000), read
/// as PS3.3 C.11.1.1 and pydicom's `apply_modality_lut` read it. LUT Descriptor: number of
/// entries (0 means 65,536), first stored value mapped (signed when Pixel Representation is 1,
/// whether the descriptor is written as US or SS), bits per entry (8 or 16). A present but
/// unusable sequence is a row error: guessing a rescale instead would give wrong intensities.
fn modality_lut(object: &DefaultDicomObject) -> RowResult<Option<Lut>> {
    let Some(sequence) = object.get(tags::MODALITY_LUT_SEQUENCE) else {
        return Ok(None);
    };
    let bad = |what: &str| RowError::new(format!("corrupt DICOM Modality LUT Sequence: {what}"));
    let item = sequence
        .items()
        .and_then(|items| items.first())
        .ok_or_else(|| bad("no item"))?;
    let descriptor: Vec<i64> = item
        .get(tags::LUT_DESCRIPTOR)
        .and_then(|e| e.to_multi_int::<i64>().ok())
        .filter(|d| d.len() == 3)
        .ok_or_else(|| bad("LUT Descriptor is not 3 numbers"))?;
    let count = match descriptor[0] {
        0 => 65_536,
        n @ 1..=65_535 => n as usize,
        // Written as SS: entries past 32,767 read negative.
        n @ -32_768..=-1 => (n + 65_536) as usize,
        n => return Err(bad(&format!("{n} entries"))),
    };
    let signed = object
        .get(tags::PIXEL_REPRESENTATION)
        .and_then(|e| e.to_int::<u16>().ok())
        == Some(1);
    let first = match descriptor[1] {
        v if signed && v > 32_767 => v - 65_536,
        v => v,
    };
    let entries: Vec<u16> = item
        .get(tags::LUT_DATA)
        .and_then(|e| e.to_multi_int::<u16>().ok())
        .ok_or_else(|| bad("no LUT Data"))?;
    if entries.len() < count {
        return Err(bad(&format!(
            "{} LUT Data entries for {count} in the descriptor",
            entries.len()
        )));
    }
    let mut entries = entries;
    entries.truncate(count);
    Ok(Some(Lut { first, entries }))
}

/// The first item of the VOI LUT Sequence, read like dicom-pixeldata reads it for the full
/// decoding path (descriptor: entries, first value mapped, bits; data as many entries); `None`
/// when absent or unusable (then the window or the full range applies, as on that path).
fn voi_lut(object: &DefaultDicomObject) -> Option<Lut> {
    let item = object.get(tags::VOILUT_SEQUENCE)?.items()?.first()?;
    let descriptor = item.get(tags::LUT_DESCRIPTOR)?.to_multi_int::<i32>().ok()?;
    if descriptor.len() != 3 || descriptor[0] <= 0 || !(0..=16).contains(&descriptor[2]) {
        return None;
    }
    let entries = item.get(tags::LUT_DATA)?.to_multi_int::<u16>().ok()?;
    (entries.len() == descriptor[0] as usize).then_some(Lut {
        first: descriptor[1] as i64,
        entries,
    })
}

/// How stored values become output bytes: the modality step (Modality LUT or rescale), the VOI
/// step, the inversion.
struct Mapping {
    slope: f64,
    intercept: f64,
    /// Modality LUT Sequence (0028,3000): replaces the rescale when present (PS3.3 C.11.1).
    modality_lut: Option<Lut>,
    /// First item of the VOI LUT Sequence.
    lut: Option<Lut>,
    /// First window: centre, width, function.
    window: Option<(f64, f64, VoiLutFunction)>,
    invert: bool,
}

fn usable_window(center: f64, width: f64, function: VoiLutFunction) -> bool {
    center.is_finite()
        && width.is_finite()
        && match function {
            VoiLutFunction::Linear => width >= 1.0,
            _ => width > 0.0,
        }
}

fn usable_rescale(slope: f64, intercept: f64) -> (f64, f64) {
    if slope.is_finite() && intercept.is_finite() && slope != 0.0 {
        (slope, intercept)
    } else {
        (1.0, 0.0)
    }
}

impl Mapping {
    /// The mapping of a frame dicom-pixeldata decoded (which reads rescale, windows and VOI LUTs
    /// from the data set or its functional groups), plus the data set's Modality LUT.
    fn from_frame(
        frame: &dicom_pixeldata::DecodedPixelData<'_>,
        object: &DefaultDicomObject,
    ) -> RowResult<Self> {
        let (slope, intercept) = match frame.rescale() {
            Ok(rescale) => rescale
                .first()
                .map(|r| (r.slope, r.intercept))
                .unwrap_or((1.0, 0.0)),
            Err(_) => (1.0, 0.0),
        };
        let lut = match frame.voi_lut_sequence() {
            Ok(Some(luts)) => luts.first().filter(|l| !l.data.is_empty()).map(|l| Lut {
                first: l.min_pixel_value as i64,
                entries: l.data.clone(),
            }),
            _ => None,
        };
        let function = frame
            .voi_lut_function()
            .ok()
            .flatten()
            .and_then(|f| f.first().copied())
            .unwrap_or_default();
        let window = match frame.window() {
            Ok(Some(windows)) => windows
                .first()
                .map(|w| (w.center, w.width, function))
                .filter(|&(c, w, f)| usable_window(c, w, f)),
            _ => None,
        };
        let (slope, intercept) = usable_rescale(slope, intercept);
        Ok(Mapping {
            slope,
            intercept,
            modality_lut: modality_lut(object)?,
            lut,
            window,
            invert: matches!(
                frame.photometric_interpretation(),
                dicom_pixeldata::PhotometricInterpretation::Monochrome1
            ),
        })
    }

    /// The same mapping read from the data set's top-level attributes, for pixels decoded
    /// outside dicom-pixeldata (12-bit JPEG, reduced-resolution JPEG 2000).
    fn from_object(object: &DefaultDicomObject) -> RowResult<Self> {
        let float = |tag: Tag| object.get(tag).and_then(|e| e.to_float64().ok());
        let first = |tag: Tag| {
            object
                .get(tag)
                .and_then(|e| e.to_multi_float64().ok())
                .and_then(|v| v.first().copied())
        };
        let text = |tag: Tag| {
            object
                .get(tag)
                .and_then(|e| e.to_str().ok())
                .map(|t| t.trim_end_matches(['\0', ' ']).to_string())
                .unwrap_or_default()
        };
        let function = match text(tags::VOILUT_FUNCTION).as_str() {
            "LINEAR_EXACT" => VoiLutFunction::LinearExact,
            "SIGMOID" => VoiLutFunction::Sigmoid,
            _ => VoiLutFunction::Linear,
        };
        let window = match (first(tags::WINDOW_CENTER), first(tags::WINDOW_WIDTH)) {
            (Some(c), Some(w)) if usable_window(c, w, function) => Some((c, w, function)),
            _ => None,
        };
        let (slope, intercept) = usable_rescale(
            float(tags::RESCALE_SLOPE).unwrap_or(1.0),
            float(tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        );
        Ok(Mapping {
            slope,
            intercept,
            modality_lut: modality_lut(object)?,
            lut: voi_lut(object),
            window,
            invert: text(tags::PHOTOMETRIC_INTERPRETATION) == "MONOCHROME1",
        })
    }

    fn voi(&self, m_low: f64, m_high: f64) -> Voi {
        if let Some(lut) = &self.lut {
            let low = *lut.entries.iter().min().expect("non-empty") as f64;
            let high = *lut.entries.iter().max().expect("non-empty") as f64;
            return Voi::Lut {
                first: lut.first,
                entries: lut.entries.clone(),
                low,
                high,
            };
        }
        if let Some((center, width, function)) = self.window {
            return Voi::Window {
                center,
                width,
                function,
            };
        }
        Voi::FullRange {
            low: m_low,
            high: m_high,
        }
    }

    /// The modality value of stored value `s`: the Modality LUT entry, else the rescale.
    fn modality(&self, s: i32) -> f64 {
        match &self.modality_lut {
            Some(lut) => lut.get(s as i64) as f64,
            None => s as f64 * self.slope + self.intercept,
        }
    }

    /// Maps stored values to output bytes through a table over the values present (at most
    /// 65,536 entries for 16-bit samples).
    fn apply(&self, values: &[i32]) -> Vec<u8> {
        if values.is_empty() {
            return Vec::new();
        }
        let (raw_min, raw_max) = values
            .iter()
            .fold((i32::MAX, i32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        // The full range is over the modality values present: the rescale is monotonic, a
        // Modality LUT need not be.
        let (m_low, m_high) = if self.modality_lut.is_some() {
            values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| {
                let m = self.modality(v);
                (lo.min(m), hi.max(m))
            })
        } else {
            let (a, b) = (self.modality(raw_min), self.modality(raw_max));
            (a.min(b), a.max(b))
        };
        let voi = self.voi(m_low, m_high);
        let byte = |s: i32| {
            let byte = (voi.level(self.modality(s)) + 0.5)
                .floor()
                .clamp(0.0, 255.0) as u8;
            if self.invert {
                255 - byte
            } else {
                byte
            }
        };
        let span = (raw_max as i64 - raw_min as i64 + 1) as usize;
        if span > 1 << 16 {
            // Wider than 16-bit samples (a JPEG 2000 codestream may declare up to 38 bits).
            return values.iter().map(|&v| byte(v)).collect();
        }
        let table: Vec<u8> = (0..span)
            .map(|i| byte((raw_min as i64 + i as i64) as i32))
            .collect();
        values
            .iter()
            .map(|&v| table[(v as i64 - raw_min as i64) as usize])
            .collect()
    }
}

/// JPEG lossy syntaxes. 12-bit codestreams (JPEG Extended, process 4) go to libjpeg-turbo's
/// 12-bit decompressor: jpeg-decoder, which dicom-pixeldata uses, decodes 8-bit lossy JPEG only.
const JPEG_LOSSY_SYNTAXES: [&str; 2] = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"];

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
fn decode_jpeg12(
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
    if jpeg_frame_header(stream).is_none() {
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
        let scan_limit = crate::core::decode::jpeg_scan_limit(width as u64, height as u64);
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

/// JPEG 2000 transfer syntaxes, whose codestream can be decoded at a lower resolution level.
const J2K_SYNTAXES: [&str; 2] = ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"];

/// Decodes a single-frame, single-sample JPEG 2000 file at the lowest resolution level that
/// keeps it at least twice `target`; `None` when that is not possible (any other case, or a
/// codestream OpenJPEG will not reduce), so the caller decodes at full resolution.
fn decode_j2k_reduced(
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

/// 3-sample frames (already RGB after codec decoding, or native RGB / YBR_FULL) to luma.
fn color_to_luma(frame: &dicom_pixeldata::DecodedPixelData<'_>) -> RowResult<Vec<u8>> {
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

/// Refuses a DICOM file whose structure would make the parser allocate more than the file holds.
///
/// dicom-rs allocates and zeroes a value's declared length before reading it, so every declared
/// length must be checked against the bytes that follow it, and checked the way dicom-rs will
/// read the file: the file meta group as `FileMetaTable` reads it (element by element until the
/// group length is consumed, a VR it does not know read as UN with a 32-bit length), and the data
/// set with dicom-parser's own token reader, which reports each element and item header before
/// reading its value. (A hand-written walker disagreed with dicom-rs on unknown VRs and on
/// undefined-length UN elements, whose items are implicit VR: the decode_dicom fuzz target found
/// 40 KB files that made dicom-rs allocate 1.4 to 1.9 GB.) Deflated data sets are inflated under
/// a cap first.
pub fn check_structure(data: &[u8], limits: &Limits) -> RowResult<()> {
    if !is_dicom(data) {
        return Err(RowError::new(
            "not a DICOM file (no DICM prefix at byte 128)",
        ));
    }
    let (ts_uid, body_start) = check_meta_group(data)?;
    let Some(ts) = TransferSyntaxRegistry.get(&ts_uid) else {
        // dicom-rs refuses an unknown transfer syntax without reading the data set.
        return Ok(());
    };
    let body = &data[body_start.min(data.len())..];
    match ts.codec() {
        Codec::Dataset(Some(_)) => {
            // Deflated data set. The inflated data set holds at most the pixel data (4 bytes per
            // pixel covers 3 samples of 8 bits or 2 of 16) plus the encoded file again for every
            // other attribute.
            let cap = limits
                .max_pixels
                .saturating_mul(4)
                .saturating_add(limits.max_file_bytes);
            let mut inflated = Vec::new();
            flate2::read::DeflateDecoder::new(body)
                .take(cap.saturating_add(1))
                .read_to_end(&mut inflated)
                .map_err(|e| RowError::new(format!("corrupt DICOM: deflated data set: {e}")))?;
            if inflated.len() as u64 > cap {
                return Err(RowError::new(format!(
                    "DICOM deflated data set inflates beyond {} MiB",
                    cap >> 20
                )));
            }
            let explicit_le = TransferSyntaxRegistry
                .get("1.2.840.10008.1.2.1")
                .expect("explicit VR little endian is always registered");
            check_dataset(&inflated, explicit_le)
        }
        // Another data set codec: dicom-rs refuses it without reading the data set.
        Codec::Dataset(None) => Ok(()),
        _ => {
            let explicit = ts_uid != IMPLICIT_VR_LE;
            if explicit && body.len() >= 6 && VR::from_binary([body[4], body[5]]).is_none() {
                // Some writers put an implicit VR data set under an explicit transfer syntax.
                // pydicom guesses; dicom-rs reads the VR bytes as part of a length: refuse by name.
                return Err(RowError::new(
                    "corrupt DICOM: implicit VR data set under an explicit VR transfer syntax",
                ));
            }
            check_dataset(body, ts)
        }
    }
}

/// Walks the file meta group as `FileMetaTable::from_reader` reads it, checking each length
/// against the bytes left; returns the transfer syntax UID and where the data set starts.
///
/// dicom-rs requires (0002,0000) first and then reads elements, whatever their group, until their
/// sizes add up to the group length. Without a group length (dicom-rs then refuses the file) the
/// group-0002 elements are walked, so the message still names an impossible length.
fn check_meta_group(data: &[u8]) -> RowResult<(String, usize)> {
    let decoder = dicom_encoding::decode::file_header_decoder();
    let mut pos = 132usize;
    let mut ts_uid = String::new();
    let mut group_length: Option<u32> = None;
    let mut consumed = 0u32;
    while pos + 8 <= data.len() {
        match group_length {
            Some(length) if consumed >= length => break,
            None if u16::from_le_bytes([data[pos], data[pos + 1]]) != 0x0002 => break,
            _ => {}
        }
        let mut source = &data[pos..];
        let Ok((header, header_len)) = decoder.decode_header(&mut source) else {
            break; // dicom-rs fails on the same bytes, with its own message
        };
        let tag = header.tag();
        let Some(length) = header.length().get() else {
            return Err(RowError::new(format!(
                "corrupt DICOM: file meta element ({:04X},{:04X}) of undefined length",
                tag.0, tag.1
            )));
        };
        let start = pos + header_len;
        check_length(tag, length, data.len() - start)?;
        let value = &data[start..start + length as usize];
        if pos == 132 && tag == Tag(0x0002, 0x0000) && length == 4 {
            group_length = Some(u32::from_le_bytes([value[0], value[1], value[2], value[3]]));
        } else {
            consumed = consumed
                .saturating_add(header_len as u32)
                .saturating_add(length);
        }
        if tag == Tag(0x0002, 0x0010) {
            ts_uid = String::from_utf8_lossy(value)
                .trim_end_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string();
        }
        pos = start + length as usize;
    }
    if ts_uid.is_empty() {
        return Err(RowError::new(
            "corrupt DICOM: the file meta group has no transfer syntax",
        ));
    }
    Ok((ts_uid, pos))
}

fn check_length(tag: Tag, length: u32, remaining: usize) -> RowResult<()> {
    if length as usize > remaining {
        return Err(RowError::new(format!(
            "truncated DICOM: element ({:04X},{:04X}) declares {length} bytes but only {remaining} remain",
            tag.0, tag.1
        )));
    }
    Ok(())
}

/// A byte slice reader that shares how far it has read.
struct CountingReader<'a> {
    data: &'a [u8],
    read: Rc<Cell<usize>>,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = self.read.get();
        let n = buf.len().min(self.data.len() - start);
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        self.read.set(start + n);
        Ok(n)
    }
}

/// Reads the data set with dicom-parser's token reader (the one dicom-object builds its object
/// from, with the same options) and refuses the first element or item header that declares more
/// bytes than remain. Values within the bytes left are read and dropped. A parse error ends the
/// walk: dicom-rs stops at the same place and reports it.
fn check_dataset(body: &[u8], ts: &TransferSyntax) -> RowResult<()> {
    let read = Rc::new(Cell::new(0usize));
    let source = CountingReader {
        data: body,
        read: Rc::clone(&read),
    };
    let Ok(reader) =
        DataSetReader::new_with_ts_options(source, ts, DataSetReaderOptions::default())
    else {
        return Ok(());
    };
    let mut last_tag = Tag(0xFFFE, 0xE000);
    for token in reader {
        let Ok(token) = token else {
            break;
        };
        let remaining = body.len() - read.get();
        match token {
            DataToken::ElementHeader(header) => {
                last_tag = header.tag();
                if let Some(length) = header.length().get() {
                    check_length(header.tag(), length, remaining)?;
                }
            }
            DataToken::SequenceStart { tag, len } => {
                last_tag = tag;
                if let Some(length) = len.get() {
                    check_length(tag, length, remaining)?;
                }
            }
            DataToken::ItemStart { len } => {
                if let Some(length) = len.get() {
                    if length as usize > remaining {
                        return Err(RowError::new(format!(
                            "truncated DICOM: an item of ({:04X},{:04X}) declares {length} bytes but only {remaining} remain",
                            last_tag.0, last_tag.1
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn linear_window_follows_ps3_3() {
        // c = 2048, w = 4096: the ends map to 0 and 255, the centre to the middle.
        let f = VoiLutFunction::Linear;
        assert_eq!(window_level(0.0, 2048.0, 4096.0, f), 0.0);
        assert_eq!(window_level(4095.0, 2048.0, 4096.0, f), 255.0);
        assert!((window_level(2047.5, 2048.0, 4096.0, f) - 127.5).abs() < 1e-9);
        // Width 1 is a threshold at c - 0.5.
        assert_eq!(window_level(99.5, 100.0, 1.0, f), 0.0);
        assert_eq!(window_level(99.6, 100.0, 1.0, f), 255.0);
    }

    #[test]
    fn finds_codestream_sizes() {
        let mut jpeg = vec![
            0xFF, 0xD8, 0xFF, 0xC3, 0x00, 0x0B, 16, 0x01, 0x00, 0x02, 0x00, 1,
        ];
        jpeg.extend([0u8; 8]);
        assert_eq!(codestream_size(&jpeg), Some((512, 256)));
        let mut j2k = vec![0xFF, 0x4F, 0xFF, 0x51, 0x00, 0x29, 0x00, 0x00];
        j2k.extend(1000u32.to_be_bytes());
        j2k.extend(800u32.to_be_bytes());
        j2k.extend(0u32.to_be_bytes());
        j2k.extend(0u32.to_be_bytes());
        // 256 x 256 tiles from the origin, one component.
        j2k.extend(256u32.to_be_bytes());
        j2k.extend(256u32.to_be_bytes());
        j2k.extend([0u8; 8]);
        j2k.extend(1u16.to_be_bytes());
        assert_eq!(codestream_size(&j2k), Some((1000, 800)));
        let siz = j2k_size(&j2k).unwrap();
        assert_eq!((siz.tiles, siz.components), (4 * 4, 1));
    }

    /// A 170-byte DICOM file whose element (0009,0010) OB declares 4 GiB - 2 bytes.
    pub(crate) fn file_declaring_4_gib() -> Vec<u8> {
        let mut file = vec![0u8; 128];
        file.extend(b"DICM");
        let ts = b"1.2.840.10008.1.2.1\0";
        file.extend([0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        file.extend((ts.len() as u16).to_le_bytes());
        file.extend(ts);
        file.extend([0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0]);
        file.extend(0xFFFF_FFFEu32.to_le_bytes());
        file.extend([0u8; 16]);
        file
    }

    #[test]
    fn refuses_a_length_beyond_the_file() {
        let file = file_declaring_4_gib();
        let err = check_structure(&file, &Limits::default()).unwrap_err();
        assert!(err.0.contains("declares 4294967294 bytes"), "{}", err.0);
    }

    /// A Part 10 file: preamble, `DICM`, a meta group with its group length and an explicit VR
    /// little endian transfer syntax, then `dataset`.
    fn explicit_le_file(dataset: &[u8]) -> Vec<u8> {
        let ts = b"1.2.840.10008.1.2.1\0";
        let mut meta = vec![0x02, 0x00, 0x10, 0x00, b'U', b'I'];
        meta.extend((ts.len() as u16).to_le_bytes());
        meta.extend(ts);
        let mut file = vec![0u8; 128];
        file.extend(b"DICM");
        file.extend([0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        file.extend((meta.len() as u32).to_le_bytes());
        file.extend(meta);
        file.extend(dataset);
        file
    }

    #[test]
    fn an_unknown_vr_is_read_with_a_32_bit_length_as_dicom_rs_does() {
        // dicom-rs reads a VR it does not know as UN: 2 reserved bytes, then a 32-bit length.
        // The first pre-scan read a 16-bit length (0) here, and dicom-rs then allocated 4 GiB
        // (the decode_dicom fuzz target's out-of-memory and slow inputs were this case).
        let mut dataset = vec![0x08, 0x00, 0x60, 0x00, b'C', b'S', 2, 0, b'C', b'T'];
        dataset.extend([0x09, 0x00, 0x10, 0x00, b'Z', b'Z', 0, 0]);
        dataset.extend(0xFFFF_FFF0u32.to_le_bytes());
        dataset.extend([0u8; 16]);
        let file = explicit_le_file(&dataset);
        let err = check_structure(&file, &Limits::default()).unwrap_err();
        assert_eq!(
            err.0,
            "truncated DICOM: element (0009,0010) declares 4294967280 bytes but only 16 remain"
        );
        // The same file with a plausible length passes the pre-scan.
        let mut fine = dataset.clone();
        fine[18..22].copy_from_slice(&16u32.to_le_bytes());
        let result = check_structure(&explicit_le_file(&fine), &Limits::default());
        assert!(result.is_ok(), "{:?}", result.err());
    }

    #[test]
    fn the_meta_group_is_read_to_its_group_length_as_dicom_rs_does() {
        // A group length covering an element of another group: dicom-rs reads it as part of the
        // meta group, so its length is checked there too.
        let mut file = explicit_le_file(&[]);
        let group_length = u32::from_le_bytes(file[140..144].try_into().unwrap());
        file[140..144].copy_from_slice(&(group_length + 12).to_le_bytes());
        file.extend([0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0]);
        file.extend(0x7FFF_0000u32.to_le_bytes());
        let err = check_structure(&file, &Limits::default()).unwrap_err();
        assert!(
            err.0.contains("(0009,0010) declares 2147418112 bytes"),
            "{}",
            err.0
        );
    }
}
