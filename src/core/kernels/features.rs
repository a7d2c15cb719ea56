//! The features kernel: full-resolution size, pixel statistics, quality score and the embedding.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;

use super::columns::{embedding_field, StatsBuilder};
use super::options::{guarded, KernelOptions};
use super::schedule::{infer_and_scatter, pipelined};
use crate::core::decode::decode_gray;
use crate::core::error::{CoreError, RowError, RowResult};
use crate::core::input::ImageColumn;
use crate::core::model::{Outputs, PneumoniaModel};
use crate::core::preprocess::Preprocessing;
use crate::core::quality::{measure_quality, ImageQuality};

/// Schema of [`features_batch`].
pub fn features_schema() -> Schema {
    Schema::new(vec![
        Field::new("width", DataType::Int32, true),
        Field::new("height", DataType::Int32, true),
        Field::new("mean_pixel_value", DataType::Float64, true),
        Field::new("std_pixel_value", DataType::Float64, true),
        Field::new("quality_score", DataType::Float64, true),
        embedding_field(),
        Field::new("error", DataType::Utf8, true),
    ])
}

/// Size and statistics of one image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FeatureRow {
    pub width: u32,
    pub height: u32,
    pub quality: ImageQuality,
}

/// Per image: full-resolution `width`, `height` (pixels), `mean_pixel_value` and
/// `std_pixel_value` (0..255 gray levels), `quality_score` (0..1, see [`crate::core::quality`]),
/// and the model's `embedding` when `model` is given and has one (else NULL), plus `error`.
pub fn features_batch(
    images: &ImageColumn,
    model: Option<&PneumoniaModel>,
    options: &KernelOptions,
) -> Result<RecordBatch, CoreError> {
    let pool = options.pool()?;
    let n = images.len();
    let embedding_model = model.filter(|m| m.info().embedding_dim.is_some());
    let prep = embedding_model.map(|m| &m.info().preprocessing);
    let len = prep.map_or(0, |p| p.tensor_len());
    let mut rows: Vec<RowResult<FeatureRow>> = (0..n)
        .map(|_| Err(RowError::new("not processed")))
        .collect();
    let mut embeddings: Vec<Option<Vec<f64>>> = vec![None; n];
    let chunk = if embedding_model.is_some() {
        options.inference_batch
    } else {
        n.max(1)
    };

    pipelined(
        n,
        chunk,
        &pool,
        |range| {
            let mut tensors = vec![0f32; range.len() * len];
            let results: Vec<RowResult<FeatureRow>> = if let Some(prep) = prep {
                tensors
                    .par_chunks_mut(len)
                    .zip(range.clone().into_par_iter())
                    .map(|(out, i)| guarded(|| feature_row(images, i, options, Some((prep, out)))))
                    .collect()
            } else {
                range
                    .clone()
                    .into_par_iter()
                    .map(|i| guarded(|| feature_row(images, i, options, None)))
                    .collect()
            };
            (tensors, results)
        },
        |range, (mut tensors, results)| {
            let mut errors: Vec<Option<RowError>> =
                results.iter().map(|r| r.as_ref().err().cloned()).collect();
            if let Some(model) = embedding_model {
                let want = Outputs {
                    embedding: true,
                    ..Outputs::PROBABILITY
                };
                infer_and_scatter(
                    model,
                    &mut tensors,
                    &mut errors,
                    len,
                    want,
                    |offset, out| {
                        embeddings[range.start + offset] =
                            out.embedding.map(|e| e.iter().map(|&v| v as f64).collect());
                    },
                );
            }
            for (offset, (result, error)) in results.into_iter().zip(errors).enumerate() {
                rows[range.start + offset] = match error {
                    Some(e) => Err(e),
                    None => result,
                };
            }
        },
    );

    let mut stats = StatsBuilder::with_capacity(n);
    let mut error = StringBuilder::new();
    for (row, emb) in rows.into_iter().zip(embeddings) {
        match row {
            Ok(r) => {
                stats.append(r.width, r.height, &r.quality, emb.as_deref());
                error.append_null();
            }
            Err(e) => {
                stats.append_null();
                error.append_value(&e.0);
            }
        }
    }
    let mut columns: Vec<ArrayRef> = stats.finish().into();
    columns.push(Arc::new(error.finish()));
    Ok(RecordBatch::try_new(Arc::new(features_schema()), columns)
        .expect("columns match the schema"))
}

fn feature_row(
    images: &ImageColumn,
    i: usize,
    options: &KernelOptions,
    tensor: Option<(&Preprocessing, &mut [f32])>,
) -> RowResult<FeatureRow> {
    let data = images.load(i, &options.limits, &options.sandbox)?;
    let decoded = decode_gray(&data, &options.limits, None)?;
    let quality = measure_quality(&decoded.image);
    if let Some((prep, out)) = tensor {
        let resized = prep.resize(&decoded.image);
        prep.normalise_into(&resized, out);
    }
    Ok(FeatureRow {
        width: decoded.full_width,
        height: decoded.full_height,
        quality,
    })
}
