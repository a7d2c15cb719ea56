//! DICOM metadata as the DICOM JSON model (PS3.18 F.2), without bulk data: what bronze keeps of
//! each DICOM file (`bronze.kaggle_xray_metadata.dicom_metadata`).
//!
//! The file goes through the same structure pre-scan as the pixel decoder
//! ([`crate::core::dicom::check_structure`]: no declared length beyond the bytes left), then
//! dicom-rs parses it up to, not including, the Pixel Data element. Each attribute becomes
//! `"GGGGEEEE": {"vr": "XX", "Value": [...]}` (PS3.18 F.2.2), file meta group included, tags in
//! ascending order:
//!
//! - text VRs as strings (multiple values split at `\`, trailing padding removed), PN as
//!   `{"Alphabetic", "Ideographic", "Phonetic"}` objects, AT as `"GGGGEEEE"`;
//! - DS, IS and the binary numbers (US, SS, UL, SL, UV, SV, FL, FD) as JSON numbers (a DS or IS
//!   text that is not a number stays a string; a non-finite float becomes `"NaN"`, `"Infinity"`,
//!   `"-Infinity"`);
//! - SQ as a list of item objects, at most [`MAX_SEQUENCE_DEPTH`] levels deep;
//! - bulk data is never inlined: encapsulated pixel data is not read at all, and an OB, OW, OD,
//!   OF, OL, OV or UN value, or a numeric value, longer than [`MAX_INLINE_BINARY_BYTES`] is left
//!   out, the attribute with it (LUT data, overlays, icons, private blobs). Shorter binary values
//!   are `"InlineBinary"` base64, as PS3.18 F.2.7 allows.
//!
//! The whole document is capped at [`MAX_METADATA_JSON_BYTES`]; a file whose metadata is larger
//! is that row's error, never a truncated document.

use std::fmt::Write as _;

use dicom_core::header::Header;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use crate::core::dicom::{check_structure, is_dicom};
use crate::core::error::{RowError, RowResult};
use crate::core::limits::Limits;

/// Binary and numeric values up to this many bytes are kept (`InlineBinary` / numbers); longer
/// ones are bulk data and left out with their attribute.
pub const MAX_INLINE_BINARY_BYTES: usize = 256;

/// Largest metadata document, in bytes of JSON (1 MiB): beyond it the row is an error.
pub const MAX_METADATA_JSON_BYTES: usize = 1 << 20;

/// Deepest nesting of sequences written (a deeper file is that row's error).
pub const MAX_SEQUENCE_DEPTH: usize = 16;

/// The DICOM JSON model of a DICOM Part 10 file held in memory, without bulk data (see the
/// module docs). `Ok(None)` when `data` is not a DICOM file (no `DICM` at byte 128): nothing to
/// describe, and no work beyond looking at those four bytes.
pub fn dicom_metadata_json(data: &[u8], limits: &Limits) -> RowResult<Option<String>> {
    if !is_dicom(data) {
        return Ok(None);
    }
    check_structure(data, limits)?;
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(data)
        .map_err(|e| RowError::new(format!("corrupt DICOM: {}", one_line(&e))))?;
    let mut json = Json::default();
    json.out.push('{');
    let mut first = true;
    for element in object.meta().to_element_iter() {
        if let Value::Primitive(value) = element.value() {
            json.attribute(&mut first, element.tag(), element.vr(), Some(value))?;
        }
    }
    json.dataset_body(&object, &mut first, 0)?;
    json.out.push('}');
    Ok(Some(json.out))
}

fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace(['\n', '\r'], " ")
}

#[derive(Default)]
struct Json {
    out: String,
}

fn too_large() -> RowError {
    RowError::new(format!(
        "DICOM metadata exceeds {} MiB as JSON",
        MAX_METADATA_JSON_BYTES >> 20
    ))
}

fn is_bulk_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB | VR::OW | VR::OD | VR::OF | VR::OL | VR::OV | VR::UN
    )
}

impl Json {
    fn check_size(&self) -> RowResult<()> {
        if self.out.len() > MAX_METADATA_JSON_BYTES {
            Err(too_large())
        } else {
            Ok(())
        }
    }

    /// The attributes of a data set (an item or the root), without the braces.
    fn dataset_body(
        &mut self,
        object: &InMemDicomObject,
        first: &mut bool,
        depth: usize,
    ) -> RowResult<()> {
        for element in object.iter() {
            let (tag, vr) = (element.tag(), element.vr());
            match element.value() {
                Value::Primitive(value) => self.attribute(first, tag, vr, Some(value))?,
                // Encapsulated pixel data (an icon in a sequence): bulk data, left out.
                Value::PixelSequence(_) => {}
                Value::Sequence(sequence) => {
                    if depth + 1 > MAX_SEQUENCE_DEPTH {
                        return Err(RowError::new(format!(
                            "DICOM sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels"
                        )));
                    }
                    self.key(first, tag, VR::SQ);
                    let items = sequence.items();
                    if !items.is_empty() {
                        self.out.push_str(",\"Value\":[");
                        for (i, item) in items.iter().enumerate() {
                            if i > 0 {
                                self.out.push(',');
                            }
                            self.out.push('{');
                            let mut item_first = true;
                            self.dataset_body(item, &mut item_first, depth + 1)?;
                            self.out.push('}');
                        }
                        self.out.push(']');
                    }
                    self.out.push('}');
                }
            }
            self.check_size()?;
        }
        Ok(())
    }

    fn key(&mut self, first: &mut bool, tag: Tag, vr: VR) {
        if !*first {
            self.out.push(',');
        }
        *first = false;
        let _ = write!(
            self.out,
            "\"{:04X}{:04X}\":{{\"vr\":\"{}\"",
            tag.0,
            tag.1,
            vr.to_string()
        );
    }

    /// One attribute `"GGGGEEEE":{...}`; nothing at all for bulk data.
    fn attribute(
        &mut self,
        first: &mut bool,
        tag: Tag,
        vr: VR,
        value: Option<&PrimitiveValue>,
    ) -> RowResult<()> {
        let value = value.filter(|v| !matches!(v, PrimitiveValue::Empty));
        if let Some(v) = value {
            let bytes = v.calculate_byte_len();
            let bulky = is_bulk_vr(vr) || is_binary_number(v);
            if bulky && bytes > MAX_INLINE_BINARY_BYTES {
                return Ok(());
            }
            // A long text can only make the document longer: refuse before copying it.
            if self.out.len().saturating_add(bytes) > MAX_METADATA_JSON_BYTES {
                return Err(too_large());
            }
        }
        self.key(first, tag, vr);
        if let Some(v) = value {
            self.value(vr, v);
        }
        self.out.push('}');
        self.check_size()
    }

    fn value(&mut self, vr: VR, value: &PrimitiveValue) {
        if is_bulk_vr(vr) {
            self.out.push_str(",\"InlineBinary\":\"");
            base64(&mut self.out, &binary_bytes(value));
            self.out.push('"');
            return;
        }
        self.out.push_str(",\"Value\":[");
        match (vr, value) {
            (VR::AT, PrimitiveValue::Tags(tags)) => {
                for (i, t) in tags.iter().enumerate() {
                    self.sep(i);
                    let _ = write!(self.out, "\"{:04X}{:04X}\"", t.0, t.1);
                }
            }
            (_, PrimitiveValue::U8(v)) => self.numbers(v.iter().map(|x| *x as i128)),
            (_, PrimitiveValue::I16(v)) => self.numbers(v.iter().map(|x| *x as i128)),
            (_, PrimitiveValue::U16(v)) => self.numbers(v.iter().map(|x| *x as i128)),
            (_, PrimitiveValue::I32(v)) => self.numbers(v.iter().map(|x| *x as i128)),
            (_, PrimitiveValue::U32(v)) => self.numbers(v.iter().map(|x| *x as i128)),
            (_, PrimitiveValue::I64(v)) => self.numbers(v.iter().map(|x| *x as i128)),
            (_, PrimitiveValue::U64(v)) => self.numbers(v.iter().map(|x| *x as i128)),
            (_, PrimitiveValue::F32(v)) => {
                for (i, x) in v.iter().enumerate() {
                    self.sep(i);
                    self.float(*x as f64, format!("{:?}", *x as f64));
                }
            }
            (_, PrimitiveValue::F64(v)) => {
                for (i, x) in v.iter().enumerate() {
                    self.sep(i);
                    self.float(*x, format!("{x:?}"));
                }
            }
            _ => {
                let texts = value.to_multi_str();
                for (i, text) in texts.iter().enumerate() {
                    self.sep(i);
                    self.text_value(vr, text);
                }
            }
        }
        self.out.push(']');
    }

    fn sep(&mut self, i: usize) {
        if i > 0 {
            self.out.push(',');
        }
    }

    fn numbers(&mut self, values: impl Iterator<Item = i128>) {
        for (i, v) in values.enumerate() {
            self.sep(i);
            // Beyond 2^53 a JSON reader may round: such 64-bit values are strings (PS3.18 F.2.3.1).
            if v.unsigned_abs() > (1u128 << 53) {
                let _ = write!(self.out, "\"{v}\"");
            } else {
                let _ = write!(self.out, "{v}");
            }
        }
    }

    fn float(&mut self, value: f64, text: String) {
        if value.is_nan() {
            self.out.push_str("\"NaN\"");
        } else if value.is_infinite() {
            self.out.push_str(if value > 0.0 {
                "\"Infinity\""
            } else {
                "\"-Infinity\""
            });
        } else {
            self.out.push_str(&text);
        }
    }

    fn text_value(&mut self, vr: VR, raw: &str) {
        let text = match vr {
            // Leading spaces are significant in these (PS3.5 6.2); trailing padding is not.
            VR::LT | VR::ST | VR::UT | VR::UR => raw.trim_end_matches(['\0', ' ']),
            _ => raw.trim_matches(['\0', ' ']),
        };
        match vr {
            VR::PN => self.person_name(text),
            VR::DS | VR::IS => {
                if text.is_empty() {
                    self.out.push_str("null");
                } else if is_json_number(text) {
                    self.out.push_str(text);
                } else {
                    match text.parse::<f64>() {
                        Ok(v) if v.is_finite() => {
                            let _ = write!(self.out, "{v:?}");
                        }
                        _ => string(&mut self.out, text),
                    }
                }
            }
            _ if text.is_empty() => self.out.push_str("null"),
            _ => string(&mut self.out, text),
        }
    }

    fn person_name(&mut self, text: &str) {
        if text.is_empty() {
            self.out.push_str("null");
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (group, name) in text
            .splitn(3, '=')
            .zip(["Alphabetic", "Ideographic", "Phonetic"])
        {
            let group = group.trim_end_matches(' ');
            if group.is_empty() {
                continue;
            }
            if !first {
                self.out.push(',');
            }
            first = false;
            let _ = write!(self.out, "\"{name}\":");
            string(&mut self.out, group);
        }
        self.out.push('}');
    }
}

fn is_binary_number(value: &PrimitiveValue) -> bool {
    matches!(
        value,
        PrimitiveValue::U8(_)
            | PrimitiveValue::I16(_)
            | PrimitiveValue::U16(_)
            | PrimitiveValue::I32(_)
            | PrimitiveValue::U32(_)
            | PrimitiveValue::I64(_)
            | PrimitiveValue::U64(_)
            | PrimitiveValue::F32(_)
            | PrimitiveValue::F64(_)
    )
}

/// The little-endian bytes of a binary value (OW, OF, ... are read as numbers by dicom-rs).
fn binary_bytes(value: &PrimitiveValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.calculate_byte_len());
    match value {
        PrimitiveValue::U8(v) => out.extend_from_slice(v),
        PrimitiveValue::I16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        PrimitiveValue::U16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        PrimitiveValue::I32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        PrimitiveValue::U32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        PrimitiveValue::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        PrimitiveValue::U64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        PrimitiveValue::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        PrimitiveValue::F64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        other => out.extend_from_slice(other.to_str().as_bytes()),
    }
    out
}

/// Whether `text` is a number in JSON's grammar (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`).
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'-' {
        i += 1;
    }
    let start = i;
    let n = digits(&mut i);
    if n == 0 || (n > 1 && b[start] == b'0') {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// `text` as a JSON string literal.
fn string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn base64(out: &mut String, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_follow_the_grammar() {
        for ok in ["0", "-1024", "0.5", "1.5E+02", "3e-7"] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in ["", "+5", "01", ".5", "5.", "1e", "-", "1,5", "NaN"] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    #[test]
    fn base64_pads_like_rfc_4648() {
        let encode = |b: &[u8]| {
            let mut s = String::new();
            base64(&mut s, b);
            s
        };
        assert_eq!(encode(b""), "");
        assert_eq!(encode(b"f"), "Zg==");
        assert_eq!(encode(b"fo"), "Zm8=");
        assert_eq!(encode(b"foo"), "Zm9v");
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        string(&mut s, "a\"b\\c\n\u{1}");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn not_dicom_is_none_and_a_long_length_is_refused() {
        assert_eq!(
            dicom_metadata_json(b"\xFF\xD8\xFF", &Limits::default()).unwrap(),
            None
        );
        let file = crate::core::dicom::file_declaring_4_gib();
        let err = dicom_metadata_json(&file, &Limits::default()).unwrap_err();
        assert!(err.0.contains("declares 4294967294 bytes"), "{}", err.0);
    }
}
