//! What every reader of a JPEG codestream shares: the walk over its header's marker segments
//! ([`segments`]), the frame header (SOFn) and the progressive-scan work limit.
//!
//! The EXIF and Adobe reader ([`crate::core::exif`]), the 8-bit JPEG decoder
//! ([`crate::core::decode`]) and the DICOM checks on embedded codestreams
//! ([`crate::core::dicom`]) all walk the header with [`segments`]; each decides from
//! [`Segments::stop`] what the end of the walk means to it (the decoder lets TurboJPEG name a
//! corruption, the DICOM checks want the frame header's values or nothing).

/// Maximum number of progressive scans accepted for any image (libjpeg-turbo's recommended guard
/// against scan-bomb JPEGs).
pub const JPEG_SCAN_LIMIT: u32 = 500;

/// Progressive work budget: scans x pixels. Each scan costs up to one entropy-decoding pass over
/// the image (a 100-megapixel progressive JPEG takes about 0.15 s per scan on one core), so the
/// worst case is 16 scans of the largest allowed image, about 2.5 s. Ordinary progressive
/// encoders write 10 scans or fewer.
const JPEG_SCAN_PIXEL_BUDGET: u64 = 200_000_000;

/// At least this many scans are always allowed, whatever the image size.
const JPEG_MIN_SCAN_LIMIT: u32 = 16;

/// The number of progressive scans allowed for a `width x height` JPEG:
/// `clamp(2e8 / (width * height), 16, 500)`.
pub fn jpeg_scan_limit(width: u64, height: u64) -> u32 {
    let pixels = width.saturating_mul(height).max(1);
    (JPEG_SCAN_PIXEL_BUDGET / pixels).clamp(JPEG_MIN_SCAN_LIMIT as u64, JPEG_SCAN_LIMIT as u64)
        as u32
}

/// One marker segment of a JPEG header: a marker followed by a 16-bit big-endian length.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// The marker byte after 0xFF (e.g. 0xE1 for APP1, 0xC0 for a baseline frame header).
    pub marker: u8,
    /// Offset of the segment's 0xFF in the stream, in bytes.
    pub offset: usize,
    /// The declared length in bytes, the two length bytes included (below 2 is corrupt, and
    /// ends the walk after this segment).
    pub length: usize,
    /// The stream from the segment's 0xFF to its end.
    rest: &'a [u8],
}

impl<'a> Segment<'a> {
    /// The bytes after the length field, up to the declared end or the end of the stream.
    pub fn payload(&self) -> &'a [u8] {
        let end = (self.length + 2).min(self.rest.len());
        self.rest.get(4..end).unwrap_or(&[])
    }

    /// Whether this is a frame header (SOF0..SOF15, except DHT, JPG and DAC).
    pub fn is_frame_header(&self) -> bool {
        (0xC0..=0xCF).contains(&self.marker) && ![0xC4, 0xC8, 0xCC].contains(&self.marker)
    }

    /// The frame header's values, read from the six bytes after the length field whatever the
    /// declared length; `None` when this is not a frame header or the stream ends first.
    pub fn frame_header(&self) -> Option<FrameHeader> {
        if !self.is_frame_header() {
            return None;
        }
        let header = self.rest.get(4..10)?;
        Some(FrameHeader {
            precision: header[0],
            height: u16::from_be_bytes([header[1], header[2]]) as u32,
            width: u16::from_be_bytes([header[3], header[4]]) as u32,
            components: header[5],
        })
    }
}

/// The frame header (SOFn) of a JPEG codestream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Sample precision in bits (8 or 12 for lossy JPEG, 2..16 for lossless).
    pub precision: u8,
    /// Width in pixels, before EXIF orientation.
    pub width: u32,
    /// Height in pixels, before EXIF orientation.
    pub height: u32,
    /// Number of components (1 gray, 3 YCbCr or RGB, 4 CMYK or YCCK).
    pub components: u8,
}

/// Why a walk over the header's segments ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The stream does not start with SOI (FF D8).
    NoStartOfImage,
    /// A start of scan (SOS): the header is over, entropy-coded data follows.
    StartOfScan,
    /// An end of image (EOI) before any scan.
    EndOfImage,
    /// A byte other than 0xFF where a marker should be.
    NotAMarker,
    /// The segment just yielded declares a length below 2.
    BadLength,
    /// The stream ends before a marker and its length.
    EndOfData,
}

/// Walks the marker segments of a JPEG header from SOI to the first scan. Fill bytes (FF FF) and
/// the markers without a length (TEM, RST0..7) are skipped; SOS and EOI end the walk without
/// being yielded. Every other marker is yielded with its declared length, even a corrupt one, so
/// a reader sees the segment the walk stopped at.
pub fn segments(data: &[u8]) -> Segments<'_> {
    let stop = (!data.starts_with(&[0xFF, 0xD8])).then_some(Stop::NoStartOfImage);
    Segments { data, pos: 2, stop }
}

/// Iterator returned by [`segments`].
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    data: &'a [u8],
    pos: usize,
    stop: Option<Stop>,
}

impl Segments<'_> {
    /// Why the walk ended; `None` while segments remain.
    pub fn stop(&self) -> Option<Stop> {
        self.stop
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    fn next(&mut self) -> Option<Segment<'a>> {
        let data = self.data;
        while self.stop.is_none() {
            let pos = self.pos;
            if pos + 4 > data.len() {
                self.stop = Some(Stop::EndOfData);
                break;
            }
            if data[pos] != 0xFF {
                self.stop = Some(Stop::NotAMarker);
                break;
            }
            let marker = data[pos + 1];
            match marker {
                0xFF => self.pos += 1, // fill byte
                0x01 | 0xD0..=0xD7 => self.pos += 2,
                0xDA => self.stop = Some(Stop::StartOfScan),
                0xD9 => self.stop = Some(Stop::EndOfImage),
                _ => {
                    let length = u16::from_be_bytes([data[pos + 2], data[pos + 3]]) as usize;
                    if length < 2 {
                        self.stop = Some(Stop::BadLength);
                    }
                    self.pos = pos + 2 + length;
                    return Some(Segment {
                        marker,
                        offset: pos,
                        length,
                        rest: &data[pos..],
                    });
                }
            }
        }
        None
    }
}

/// The frame header of a JPEG codestream: the first SOFn segment of its header.
pub fn frame_header(stream: &[u8]) -> Option<FrameHeader> {
    segments(stream)
        .find(Segment::is_frame_header)
        .and_then(|segment| segment.frame_header())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_segments_to_the_first_scan() {
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xFF, 0xFF, 0xE0, 0x00, 0x04, 1, 2];
        jpeg.extend([0xFF, 0xD0]); // RST0: no length
        jpeg.extend([
            0xFF, 0xC2, 0x00, 0x0B, 8, 0x01, 0x00, 0x02, 0x00, 3, 0, 0, 0,
        ]);
        jpeg.extend([0xFF, 0xDA, 0x00, 0x08]);
        let mut walk = segments(&jpeg);
        let found: Vec<(u8, usize, Vec<u8>)> = walk
            .by_ref()
            .map(|s| (s.marker, s.offset, s.payload().to_vec()))
            .collect();
        assert_eq!(found[0], (0xE0, 4, vec![1, 2]));
        assert_eq!(found[1].0, 0xC2);
        assert_eq!(walk.stop(), Some(Stop::StartOfScan));
        assert_eq!(
            frame_header(&jpeg),
            Some(FrameHeader {
                precision: 8,
                width: 512,
                height: 256,
                components: 3
            })
        );
    }

    #[test]
    fn names_why_the_walk_ended() {
        let stop = |data: &[u8]| {
            let mut walk = segments(data);
            walk.by_ref().count();
            walk.stop()
        };
        assert_eq!(stop(b"GIF89a"), Some(Stop::NoStartOfImage));
        assert_eq!(stop(&[0xFF, 0xD8, 0xFF]), Some(Stop::EndOfData));
        assert_eq!(
            stop(&[0xFF, 0xD8, 0x00, 0x00, 0x00, 0x00]),
            Some(Stop::NotAMarker)
        );
        assert_eq!(
            stop(&[0xFF, 0xD8, 0xFF, 0xD9, 0, 0]),
            Some(Stop::EndOfImage)
        );
        // A length below 2 is yielded (a reader sees the segment), then ends the walk.
        let bad = [0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x01, 0xFF, 0xE2, 0x00, 0x02];
        let mut walk = segments(&bad);
        assert_eq!(walk.next().map(|s| (s.marker, s.length)), Some((0xE1, 1)));
        assert!(walk.next().is_none());
        assert_eq!(walk.stop(), Some(Stop::BadLength));
        // A payload is cut at the end of the stream.
        let cut = [0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x40, 7, 8];
        assert_eq!(segments(&cut).next().unwrap().payload(), &[7, 8]);
    }
}
