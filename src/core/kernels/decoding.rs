//! The decode kernel: full-resolution upright 8-bit grayscale pixels.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, Int32Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;

use super::options::{guarded, KernelOptions};
use crate::core::decode::decode_gray;
use crate::core::error::{CoreError, RowResult};
use crate::core::image::Decoded;
use crate::core::input::ImageColumn;

/// Schema of [`decode_batch`]: `width int32, height int32, pixels binary, error string`.
pub fn decode_schema() -> Schema {
    Schema::new(vec![
        Field::new("width", DataType::Int32, true),
        Field::new("height", DataType::Int32, true),
        Field::new("pixels", DataType::Binary, true),
        Field::new("error", DataType::Utf8, true),
    ])
}

/// Decodes every image to full-resolution upright 8-bit grayscale.
///
/// Returns `width`, `height` (pixels), `pixels` (row-major, `width * height` bytes) and `error`.
pub fn decode_batch(
    images: &ImageColumn,
    options: &KernelOptions,
) -> Result<RecordBatch, CoreError> {
    let pool = options.pool()?;
    let rows: Vec<RowResult<Decoded>> = pool.install(|| {
        (0..images.len())
            .into_par_iter()
            .map(|i| {
                guarded(|| {
                    let data = images.load(i, &options.limits, &options.sandbox)?;
                    decode_gray(&data, &options.limits, None)
                })
            })
            .collect()
    });
    let total: usize = rows
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|d| d.image.pixels.len())
        .sum();
    if total > i32::MAX as usize {
        return Err(CoreError::InvalidArgument(format!(
            "decoded pixels of this batch total {total} bytes, over the 2 GiB an Arrow binary \
             column holds; pass fewer images per call"
        )));
    }
    let mut width = Int32Builder::with_capacity(rows.len());
    let mut height = Int32Builder::with_capacity(rows.len());
    let mut pixels = BinaryBuilder::with_capacity(rows.len(), total);
    let mut error = StringBuilder::new();
    for row in &rows {
        match row {
            Ok(decoded) => {
                width.append_value(decoded.image.width as i32);
                height.append_value(decoded.image.height as i32);
                pixels.append_value(&decoded.image.pixels);
                error.append_null();
            }
            Err(e) => {
                width.append_null();
                height.append_null();
                pixels.append_null();
                error.append_value(&e.0);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(width.finish()),
        Arc::new(height.finish()),
        Arc::new(pixels.finish()),
        Arc::new(error.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::new(decode_schema()), columns).expect("columns match the schema"))
}
