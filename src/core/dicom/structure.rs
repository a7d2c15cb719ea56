//! The structural pre-scan: no element or item may declare more bytes than follow it, read the
//! way dicom-rs reads the file (see [`check_structure`]).

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use dicom_core::header::{HasLength, Header};
use dicom_core::{Tag, VR};
use dicom_encoding::decode::Decode;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntax};
use dicom_encoding::TransferSyntaxIndex;
use dicom_parser::dataset::read::{DataSetReader, DataSetReaderOptions};
use dicom_parser::dataset::DataToken;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::{is_dicom, IMPLICIT_VR_LE};
use crate::core::error::{RowError, RowResult};
use crate::core::limits::Limits;

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
