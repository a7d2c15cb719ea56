//! RLE Lossless frames (PS3.5 Annex G), checked before dicom-rs decodes them.

use crate::core::error::{RowError, RowResult};

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
