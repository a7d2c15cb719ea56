//! The analyze kernel: size, statistics, quality, embedding, prediction and heatmap of each image
//! from one decode, one preprocessing and one forward pass.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use super::columns::{
    embedding_field, heatmap_field, HeatmapBuilder, PredictionBuilder, StatsBuilder,
};
use super::options::KernelOptions;
use super::pass::{run_pass, PassRequest};
use crate::core::error::CoreError;
use crate::core::input::ImageColumn;
use crate::core::model::{Outputs, PneumoniaModel};

/// Schema of [`analyze_batch`].
pub fn analyze_schema() -> Schema {
    let mut fields = vec![
        Field::new("width", DataType::Int32, true),
        Field::new("height", DataType::Int32, true),
        Field::new("mean_pixel_value", DataType::Float64, true),
        Field::new("std_pixel_value", DataType::Float64, true),
        Field::new("quality_score", DataType::Float64, true),
        embedding_field(),
    ];
    fields.extend(PredictionBuilder::fields());
    fields.push(heatmap_field());
    fields.push(Field::new("error", DataType::Utf8, true));
    Schema::new(fields)
}

/// Per image, from ONE decode (JPEG DCT-scaled exactly as [`super::predict_batch`] decodes, so
/// the probability equals `predict`'s), ONE preprocessing and ONE forward pass:
/// `width`, `height` (full-resolution upright pixels), `mean_pixel_value`, `std_pixel_value`,
/// `quality_score` (measured on the decoded image: for JPEGs larger than twice the model input
/// that is the DCT-scaled image, see docs/architecture.md), `embedding`, `probability`,
/// `predicted_label`, `label_name`, `model_name`, `model_version`, `ood_score`,
/// `out_of_distribution`, `ood_reason`, `heatmap` (NULL when the model has no heatmap output or
/// `heatmap` is false) and `error`.
pub fn analyze_batch(
    images: &ImageColumn,
    model: &PneumoniaModel,
    options: &KernelOptions,
    heatmap: bool,
) -> Result<RecordBatch, CoreError> {
    let request = PassRequest {
        statistics: true,
        outputs: Outputs {
            embedding: true,
            heatmap,
            ood_score: true,
        },
        picture: None,
    };
    let rows = run_pass(images, model, options, request)?;
    let n = rows.len();
    let mut stats = StatsBuilder::with_capacity(n);
    let mut prediction = PredictionBuilder::new(model.info(), n);
    let mut heatmaps = HeatmapBuilder::with_capacity(n);
    let mut error = StringBuilder::new();
    for row in &rows {
        match row {
            Ok(r) => {
                let q = r.quality.as_ref().expect("statistics were requested");
                stats.append(r.width, r.height, q, r.embedding.as_deref());
                prediction.append(Some(r.probability), Some(&r.ood));
                heatmaps.append(r.heatmap.as_ref());
                error.append_null();
            }
            Err(e) => {
                stats.append_null();
                prediction.append(None, None);
                heatmaps.append(None);
                error.append_value(&e.0);
            }
        }
    }
    let mut columns: Vec<ArrayRef> = stats.finish().into();
    columns.extend(prediction.finish());
    columns.push(heatmaps.finish());
    columns.push(Arc::new(error.finish()));
    Ok(
        RecordBatch::try_new(Arc::new(analyze_schema()), columns)
            .expect("columns match the schema"),
    )
}
