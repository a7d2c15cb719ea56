//! Fuzz target: the Arrow batch kernels (`decode_batch`, `features_batch`, `preprocess_batch`)
//! on columns of every accepted type, with nulls, empty values, sliced arrays, broken and bomb
//! images, and file paths (relative, `..`, absolute, FIFO, symlinks) under a sandbox root.
//!
//! Input layout (seeds: fuzz/make_corpus.py, arrow_batch/): one header byte, then rows separated
//! by `\0CXR\0`; a row that is exactly `\0NULL\0` is a NULL. Header bits:
//! 0-2 column type (binary, large_binary, binary_view, utf8, large_utf8, utf8_view; 6-7 = binary),
//! 3-4 kernel (decode, features, preprocess, all three), 5 threads (1 or 2), 6 slice off row 0.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, LargeBinaryArray, LargeStringArray,
    RecordBatch, StringArray, StringViewArray,
};
use cxrlake::core::kernels::{decode_batch, features_batch, preprocess_batch, KernelOptions};
use cxrlake::core::{ImageColumn, Sandbox};
use libfuzzer_sys::fuzz_target;

mod checks;

const ROW_SEPARATOR: &[u8] = b"\0CXR\0";
const NULL_ROW: &[u8] = b"\0NULL\0";

/// The sandbox root of path columns: a few real files, a FIFO with no writer, a directory and
/// symlinks pointing in and out of the root. Created once per fuzzing process.
fn sandbox_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("cxrlake-fuzz-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).expect("create fuzz sandbox");
        std::fs::write(base.join("outside.png"), tiny_png()).expect("write outside file");
        std::fs::write(root.join("a.png"), tiny_png()).expect("write a.png");
        std::fs::write(root.join("sub/b.png"), tiny_png()).expect("write b.png");
        std::fs::write(root.join("empty.jpeg"), b"").expect("write empty file");
        let fifo = std::ffi::CString::new(root.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path. EEXIST on reuse is fine.
        unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) };
        let _ = std::os::unix::fs::symlink(base.join("outside.png"), root.join("out_link.png"));
        let _ = std::os::unix::fs::symlink(root.join("a.png"), root.join("sub/in_link.png"));
        let _ = std::os::unix::fs::symlink("/etc", root.join("etc"));
        root.canonicalize().expect("canonical fuzz root")
    })
}

/// A 2x2 8-bit grayscale PNG (pixels 16, 128, 255, 64).
fn tiny_png() -> &'static [u8] {
    &[
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00, 0x00, 0x00, 0x00, 0x57,
        0xdd, 0x52, 0xf8, 0x00, 0x00, 0x00, 0x0e, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x10,
        0x68, 0x60, 0xf8, 0xef, 0x00, 0x00, 0x04, 0x94, 0x01, 0xd0, 0x84, 0x76, 0x96, 0x78, 0x00,
        0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ]
}

fn split_rows(data: &[u8]) -> Vec<Option<&[u8]>> {
    let mut rows = Vec::new();
    let mut rest = data;
    loop {
        let end = rest
            .windows(ROW_SEPARATOR.len())
            .position(|w| w == ROW_SEPARATOR);
        let row = &rest[..end.unwrap_or(rest.len())];
        rows.push((row != NULL_ROW).then_some(row));
        match end {
            Some(end) => rest = &rest[end + ROW_SEPARATOR.len()..],
            None => return rows,
        }
    }
}

/// Paths relative to the sandbox root (absolute ones kept as they are).
fn as_path(row: &[u8], root: &Path) -> String {
    let text = String::from_utf8_lossy(row).replace('\0', "");
    if text.starts_with('/') {
        text
    } else {
        format!("{}/{}", root.display(), text)
    }
}

fn build_column(kind: u8, rows: &[Option<&[u8]>]) -> ArrayRef {
    let root = sandbox_root();
    let paths: Vec<Option<String>> = rows.iter().map(|r| r.map(|r| as_path(r, root))).collect();
    let paths = paths.iter().map(|p| p.as_deref());
    match kind {
        1 => Arc::new(rows.iter().copied().collect::<LargeBinaryArray>()),
        2 => Arc::new(rows.iter().copied().collect::<BinaryViewArray>()),
        3 => Arc::new(paths.collect::<StringArray>()),
        4 => Arc::new(paths.collect::<LargeStringArray>()),
        5 => Arc::new(paths.collect::<StringViewArray>()),
        _ => Arc::new(rows.iter().copied().collect::<BinaryArray>()),
    }
}

/// Row `i` of a path column was read: it must resolve inside the sandbox root.
fn check_inside_root(column: &ArrayRef, i: usize) {
    let path = match column.data_type() {
        arrow::datatypes::DataType::Utf8 => column.as_string::<i32>().value(i).to_string(),
        arrow::datatypes::DataType::LargeUtf8 => column.as_string::<i64>().value(i).to_string(),
        arrow::datatypes::DataType::Utf8View => column.as_string_view().value(i).to_string(),
        _ => return,
    };
    let canonical = Path::new(&path)
        .canonicalize()
        .unwrap_or_else(|e| panic!("row {i} ({path}) succeeded but cannot be resolved: {e}"));
    assert!(
        canonical.starts_with(sandbox_root()),
        "row {i} read {path} -> {} outside the sandbox root",
        canonical.display()
    );
}

/// One output row per input row; `error` is set exactly when the results are NULL.
fn check_batch(batch: &RecordBatch, column: &ArrayRef, value_column: &str) {
    assert_eq!(batch.num_rows(), column.len());
    let error = batch.column_by_name("error").expect("error column");
    let value = batch.column_by_name(value_column).expect("value column");
    for i in 0..batch.num_rows() {
        if column.is_null(i) {
            assert_eq!(error.as_string::<i32>().value(i), "null input");
        }
        if error.is_valid(i) {
            checks::check_row_error(error.as_string::<i32>().value(i));
            assert!(value.is_null(i), "row {i} has both a value and an error");
        } else {
            assert!(
                value.is_valid(i),
                "row {i} has neither a value nor an error"
            );
            check_inside_root(column, i);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&header, body)) = data.split_first() else {
        return;
    };
    let rows = split_rows(body);
    let mut column = build_column(header & 0b111, &rows);
    if header & 0b100_0000 != 0 && !column.is_empty() {
        column = column.slice(1, column.len() - 1);
    }
    let images = ImageColumn::new(&column).expect("every generated type is accepted");
    assert_eq!(images.len(), column.len());
    let options = KernelOptions {
        threads: if header & 0b10_0000 != 0 { 2 } else { 1 },
        limits: checks::fuzz_limits(),
        sandbox: Sandbox::with_roots([sandbox_root()]).expect("fuzz root exists"),
        inference_batch: 4,
    };
    let kernel = (header >> 3) & 0b11;
    if kernel == 0 || kernel == 3 {
        let batch = decode_batch(&images, &options).expect("decode_batch never fails a batch");
        check_batch(&batch, &column, "pixels");
        let width = batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int32Type>();
        let height = batch
            .column(1)
            .as_primitive::<arrow::datatypes::Int32Type>();
        let pixels = batch.column(2).as_binary::<i32>();
        for i in 0..batch.num_rows() {
            if pixels.is_valid(i) {
                let expected = width.value(i) as usize * height.value(i) as usize;
                assert_eq!(pixels.value(i).len(), expected, "row {i} pixel count");
            }
        }
    }
    if kernel == 1 || kernel == 3 {
        let batch = features_batch(&images, None, &options).expect("features never fail a batch");
        check_batch(&batch, &column, "quality_score");
        let score = batch
            .column(4)
            .as_primitive::<arrow::datatypes::Float64Type>();
        for i in 0..batch.num_rows() {
            if score.is_valid(i) {
                assert!(
                    (0.0..=1.0).contains(&score.value(i)),
                    "quality_score {}",
                    score.value(i)
                );
            }
        }
    }
    if kernel == 2 || kernel == 3 {
        let prep = checks::fuzz_preprocessing();
        let (tensors, errors) =
            preprocess_batch(&images, &prep, &options).expect("preprocess never fails a batch");
        assert_eq!(tensors.len(), column.len() * prep.tensor_len());
        assert_eq!(errors.len(), column.len());
        for (i, (tensor, error)) in tensors.chunks(prep.tensor_len()).zip(&errors).enumerate() {
            match error {
                Some(message) => {
                    checks::check_row_error(message);
                    assert!(
                        tensor.iter().all(|&x| x == 0.0),
                        "failed row {i} is not zeros"
                    );
                }
                None => {
                    assert!(tensor.iter().all(|x| x.is_finite()), "row {i} not finite");
                    check_inside_root(&column, i);
                }
            }
        }
    }
});
