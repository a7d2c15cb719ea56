//! Embedded JPEG and JPEG 2000 codestreams, read before a codec runs: the size they announce
//! (for the pixel limit) and the work they would cost (JPEG scans, JPEG 2000 tiles and
//! components), checked against the data set.

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

use crate::core::error::{RowError, RowResult};
use crate::core::jpeg::{frame_header, jpeg_scan_limit};

/// Width and height announced by an embedded JPEG (SOF) or JPEG 2000 (SIZ) codestream.
pub fn codestream_size(fragment: &[u8]) -> Option<(u32, u32)> {
    if fragment.starts_with(&[0xFF, 0xD8]) {
        return frame_header(fragment).map(|h| (h.width, h.height));
    }
    j2k_size(fragment).map(|siz| (siz.width, siz.height))
}

/// What a JPEG 2000 image size marker (SIZ) announces.
pub(super) struct J2kSize {
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) tiles: u64,
    pub(super) components: u16,
}

pub(super) fn j2k_size(fragment: &[u8]) -> Option<J2kSize> {
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
pub(super) fn check_codestream(
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
    if let Some(header) = frame_header(first) {
        let (width, height) = (header.width, header.height);
        let bytes = if header.precision > 8 { 2 } else { 1 };
        let decoded = width as u64 * height as u64 * header.components as u64 * bytes;
        if decoded > frame_samples * (bits_allocated as u64 / 8) {
            return Err(too_large(format!(
                "JPEG frame ({width}x{height}, {} components of {} bits)",
                header.components, header.precision
            )));
        }
        let scan_limit = jpeg_scan_limit(width as u64, height as u64);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
