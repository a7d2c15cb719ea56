//! Fuzz target: DICOM Part 10 files through the metadata kernel's path (structure pre-scan,
//! dicom-rs parsing up to the pixel data, the DICOM JSON writer). The input is the file after its
//! 128-byte preamble and `DICM` prefix, which the target adds, so every input takes the DICOM
//! path. Beyond "no crash": the document is valid JSON (an object), within the size cap, and
//! holds no pixel data; a failure is a one-line row error.
//! Seeds: the decode_dicom corpus (fuzz/run.sh passes it as a second corpus directory).
#![no_main]

use cxrlake::core::dicom_json::{dicom_metadata_json, MAX_METADATA_JSON_BYTES};
use libfuzzer_sys::fuzz_target;

mod checks;

fuzz_target!(|data: &[u8]| {
    let mut file = vec![0u8; 128];
    file.extend_from_slice(b"DICM");
    file.extend_from_slice(data);
    match dicom_metadata_json(&file, &checks::fuzz_limits()) {
        Ok(Some(json)) => {
            // The check that stops the writer runs after each attribute, so one attribute (at
            // most the file's size, 1 MiB here, escaped up to 6x) may pass the cap.
            assert!(json.len() <= MAX_METADATA_JSON_BYTES + 6 * (1 << 20) + 64);
            assert!(!json.contains("\"7FE00010\""), "pixel data in the metadata");
            let end = value(json.as_bytes(), 0).unwrap_or_else(|| panic!("invalid JSON: {json}"));
            assert_eq!(end, json.len(), "trailing bytes after the JSON object");
            assert!(json.starts_with('{'));
        }
        Ok(None) => panic!("a DICM file must be described or refused"),
        Err(e) => checks::check_row_error(&e.0),
    }
});

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// End of the JSON value starting at `i` (RFC 8259 grammar), or None when it is not one.
fn value(b: &[u8], i: usize) -> Option<usize> {
    let i = ws(b, i);
    match *b.get(i)? {
        b'{' => {
            let mut i = ws(b, i + 1);
            if b.get(i) == Some(&b'}') {
                return Some(i + 1);
            }
            loop {
                i = string(b, ws(b, i))?;
                i = ws(b, i);
                if b.get(i) != Some(&b':') {
                    return None;
                }
                i = ws(b, value(b, i + 1)?);
                match b.get(i)? {
                    b',' => i += 1,
                    b'}' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b'[' => {
            let mut i = ws(b, i + 1);
            if b.get(i) == Some(&b']') {
                return Some(i + 1);
            }
            loop {
                i = ws(b, value(b, i)?);
                match b.get(i)? {
                    b',' => i += 1,
                    b']' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b'"' => string(b, i),
        b't' => b[i..].starts_with(b"true").then_some(i + 4),
        b'f' => b[i..].starts_with(b"false").then_some(i + 5),
        b'n' => b[i..].starts_with(b"null").then_some(i + 4),
        _ => number(b, i),
    }
}

fn string(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    i += 1;
    loop {
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let hex = b.get(i + 2..i + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
}

fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let start = i;
    let n = digits(&mut i);
    if n == 0 || (n > 1 && b[start] == b'0') {
        return None;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return None;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return None;
        }
    }
    Some(i)
}
