//! The DICOM metadata kernel: the DICOM JSON model of each DICOM file, without bulk data.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;

use super::options::{guarded, KernelOptions};
use crate::core::dicom::is_dicom;
use crate::core::dicom_json::dicom_metadata_json;
use crate::core::error::{CoreError, RowError, RowResult};
use crate::core::input::{ImageColumn, ImageRef};

/// Schema of [`dicom_metadata_batch`]: `metadata string, error string`.
pub fn dicom_metadata_schema() -> Schema {
    Schema::new(vec![
        Field::new("metadata", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
    ])
}

/// The metadata of every DICOM row as DICOM JSON (PS3.18 F.2) text, bulk data left out (see
/// [`crate::core::dicom_json`]).
///
/// Rows that are not DICOM (JPEG, PNG, anything without `DICM` at byte 128) get NULL metadata
/// and NULL error; for byte rows that costs a look at four bytes. Path rows are read through
/// the sandbox first. A DICOM row that cannot be described gets NULL metadata and the error.
pub fn dicom_metadata_batch(
    images: &ImageColumn,
    options: &KernelOptions,
) -> Result<RecordBatch, CoreError> {
    let pool = options.pool()?;
    let rows: Vec<RowResult<Option<String>>> = pool.install(|| {
        (0..images.len())
            .into_par_iter()
            .map(|i| {
                guarded(|| match images.get(i) {
                    ImageRef::Null => Err(RowError::new("null input")),
                    ImageRef::Bytes(bytes) if !is_dicom(bytes) => Ok(None),
                    _ => {
                        let data = images.load(i, &options.limits, &options.sandbox)?;
                        dicom_metadata_json(&data, &options.limits)
                    }
                })
            })
            .collect()
    });
    let total: usize = rows
        .iter()
        .filter_map(|r| r.as_ref().ok().and_then(|m| m.as_ref()))
        .map(|m| m.len())
        .sum();
    if total > i32::MAX as usize {
        return Err(CoreError::InvalidArgument(format!(
            "DICOM metadata of this batch totals {total} bytes, over the 2 GiB an Arrow string \
             column holds; pass fewer images per call"
        )));
    }
    let mut metadata = StringBuilder::with_capacity(rows.len(), total);
    let mut error = StringBuilder::new();
    for row in &rows {
        match row {
            Ok(Some(json)) => {
                metadata.append_value(json);
                error.append_null();
            }
            Ok(None) => {
                metadata.append_null();
                error.append_null();
            }
            Err(e) => {
                metadata.append_null();
                error.append_value(&e.0);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![Arc::new(metadata.finish()), Arc::new(error.finish())];
    Ok(
        RecordBatch::try_new(Arc::new(dicom_metadata_schema()), columns)
            .expect("columns match the schema"),
    )
}
