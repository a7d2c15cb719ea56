//! Minimal, bounds-checked EXIF reader: only the orientation tag (0x0112) of IFD0 is needed.

use crate::core::jpeg::segments;

/// The EXIF orientation (1..=8) stored in a TIFF-structured EXIF blob, or 1 when absent/invalid.
pub fn orientation_from_tiff(tiff: &[u8]) -> u8 {
    parse_orientation(tiff).unwrap_or(1)
}

fn parse_orientation(tiff: &[u8]) -> Option<u8> {
    let little_endian = match tiff.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |pos: usize| -> Option<u16> {
        let b = tiff.get(pos..pos.checked_add(2)?)?;
        Some(if little_endian {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |pos: usize| -> Option<u32> {
        let b = tiff.get(pos..pos.checked_add(4)?)?;
        Some(if little_endian {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        })
    };
    if u16_at(2)? != 42 {
        return None;
    }
    let ifd = u32_at(4)? as usize;
    let entries = u16_at(ifd)? as usize;
    for i in 0..entries {
        let entry = ifd.checked_add(2)?.checked_add(i.checked_mul(12)?)?;
        if u16_at(entry)? == 0x0112 {
            // Type SHORT (3), count 1: the value sits in the first two bytes of the value field.
            if u16_at(entry + 2)? != 3 {
                return None;
            }
            let value = u16_at(entry + 8)?;
            return (1..=8).contains(&value).then_some(value as u8);
        }
    }
    None
}

/// What a JPEG's marker segments tell before decoding: EXIF orientation and the Adobe APP14 flag
/// (Adobe CMYK JPEGs store inverted CMYK values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegMarkers {
    /// EXIF orientation, 1..=8 (1 when absent).
    pub orientation: u8,
    /// Whether an Adobe APP14 segment is present.
    pub adobe: bool,
}

/// Scans the JPEG marker segments up to the first scan (SOS) for APP1 EXIF and APP14 Adobe.
pub fn scan_jpeg_markers(data: &[u8]) -> JpegMarkers {
    let mut markers = JpegMarkers {
        orientation: 1,
        adobe: false,
    };
    for segment in segments(data) {
        let payload = segment.payload();
        if segment.marker == 0xE1 && payload.starts_with(b"Exif\0\0") && markers.orientation == 1 {
            markers.orientation = orientation_from_tiff(&payload[6..]);
        } else if segment.marker == 0xEE && payload.starts_with(b"Adobe") {
            markers.adobe = true;
        }
    }
    markers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiff_with_orientation(value: u16, little_endian: bool) -> Vec<u8> {
        let mut t = Vec::new();
        let w16 = |t: &mut Vec<u8>, v: u16| {
            t.extend(if little_endian {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            })
        };
        let w32 = |t: &mut Vec<u8>, v: u32| {
            t.extend(if little_endian {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            })
        };
        t.extend(if little_endian { b"II" } else { b"MM" });
        w16(&mut t, 42);
        w32(&mut t, 8);
        w16(&mut t, 1);
        w16(&mut t, 0x0112);
        w16(&mut t, 3);
        w32(&mut t, 1);
        w16(&mut t, value);
        w16(&mut t, 0);
        w32(&mut t, 0);
        t
    }

    #[test]
    fn reads_orientation_in_both_byte_orders() {
        assert_eq!(orientation_from_tiff(&tiff_with_orientation(6, true)), 6);
        assert_eq!(orientation_from_tiff(&tiff_with_orientation(8, false)), 8);
    }

    #[test]
    fn invalid_or_truncated_exif_means_upright() {
        assert_eq!(orientation_from_tiff(&tiff_with_orientation(9, true)), 1);
        let full = tiff_with_orientation(3, true);
        // The orientation value ends at byte 20: any shorter prefix must read as upright.
        for cut in 0..20 {
            assert_eq!(orientation_from_tiff(&full[..cut]), 1, "cut at {cut}");
        }
        assert_eq!(orientation_from_tiff(b"garbage"), 1);
    }

    #[test]
    fn finds_exif_and_adobe_segments_in_a_jpeg_header() {
        let tiff = tiff_with_orientation(5, false);
        let mut jpeg = vec![0xFF, 0xD8];
        let app1_len = (2 + 6 + tiff.len()) as u16;
        jpeg.extend([0xFF, 0xE1]);
        jpeg.extend(app1_len.to_be_bytes());
        jpeg.extend(b"Exif\0\0");
        jpeg.extend(&tiff);
        jpeg.extend([0xFF, 0xEE, 0x00, 0x07]);
        jpeg.extend(b"Adobe");
        jpeg.extend([0xFF, 0xDA, 0x00, 0x02]);
        let markers = scan_jpeg_markers(&jpeg);
        assert_eq!(markers.orientation, 5);
        assert!(markers.adobe);
    }
}
