//! The explain kernel: each image's class-activation map (upright, as the model saw the image)
//! and, on request, an overlay PNG of the image with the map and a colour scale.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, Float64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;

use super::columns::{heatmap_field, HeatmapBuilder, PredictionBuilder};
use super::options::KernelOptions;
use super::overlay::{heatmap_scale, render_png, OVERLAY_SIDE_RANGE};
use super::pass::{run_pass, PassRequest};
use crate::core::error::{CoreError, RowError, RowResult};
use crate::core::input::ImageColumn;
use crate::core::model::{Outputs, PneumoniaModel};

/// Schema of [`explain_batch`].
pub fn explain_schema() -> Schema {
    Schema::new(vec![
        heatmap_field(),
        Field::new("heatmap_scale", DataType::Float64, true),
        Field::new("probability", DataType::Float64, true),
        Field::new("predicted_label", DataType::Int32, true),
        Field::new("overlay", DataType::Binary, true),
        Field::new("model_name", DataType::Utf8, true),
        Field::new("model_version", DataType::Utf8, true),
        Field::new("ood_score", DataType::Float64, true),
        Field::new("out_of_distribution", DataType::Boolean, true),
        Field::new("ood_reason", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
    ])
}

/// Per image: `heatmap` (`struct<rows, cols, values>`: the model's class-activation map, row-major
/// from the top-left of the upright image; `head_bias + mean(values)` is the logit),
/// `heatmap_scale` (the largest `|value|`, the ends of the overlay's colour scale), `probability`,
/// `predicted_label`, `overlay` (PNG, when `overlay_side` is given: the upright image with its
/// longer side `overlay_side` pixels, the upsampled map over it and a colour scale to its right;
/// else NULL), `model_name`, `model_version`, `ood_score`, `out_of_distribution`, `ood_reason`, `error`.
///
/// Fails when the model has no `heatmap` output or `overlay_side` is out of range.
pub fn explain_batch(
    images: &ImageColumn,
    model: &PneumoniaModel,
    options: &KernelOptions,
    overlay_side: Option<u32>,
) -> Result<RecordBatch, CoreError> {
    let info = model.info();
    if !info.has_heatmap {
        return Err(CoreError::Model(format!(
            "model {} has no heatmap output; explain needs a model exported with one \
             (see the ONNX model contract in docs/architecture.md)",
            info.path.display()
        )));
    }
    if let Some(side) = overlay_side {
        if !OVERLAY_SIDE_RANGE.contains(&side) {
            return Err(CoreError::InvalidArgument(format!(
                "overlay_size must be {}..={} pixels, got {side}",
                OVERLAY_SIDE_RANGE.start(),
                OVERLAY_SIDE_RANGE.end()
            )));
        }
    }
    let request = PassRequest {
        statistics: false,
        outputs: Outputs {
            embedding: false,
            heatmap: true,
            ood_score: true,
        },
        picture: overlay_side,
    };
    let mut rows = run_pass(images, model, options, request)?;
    // Overlays are rendered after the pass, in parallel; a failed rendering fails its row.
    let overlays: Vec<Option<RowResult<Vec<u8>>>> = options.pool()?.install(|| {
        rows.par_iter_mut()
            .map(|row| {
                let row = row.as_mut().ok()?;
                let picture = row.picture.take()?;
                let heatmap = row.heatmap.as_ref()?;
                Some(render_png(&picture, heatmap).map_err(RowError::new))
            })
            .collect()
    });

    let n = rows.len();
    let mut heatmaps = HeatmapBuilder::with_capacity(n);
    let mut scale = Float64Builder::with_capacity(n);
    let mut prediction = PredictionBuilder::new(info, n);
    let mut overlay = BinaryBuilder::new();
    let mut error = StringBuilder::new();
    for (row, png) in rows.iter().zip(overlays) {
        let result = match (row, png) {
            (Ok(_), Some(Err(e))) => Err(e),
            (Ok(r), png) => match &r.heatmap {
                Some(h) => Ok((r, h, png.and_then(Result::ok))),
                None => Err(RowError::new("model returned no heatmap")),
            },
            (Err(e), _) => Err(e.clone()),
        };
        match result {
            Ok((r, h, png)) => {
                heatmaps.append(Some(h));
                scale.append_value(heatmap_scale(h) as f64);
                prediction.append(Some(r.probability), Some(&r.ood));
                match png {
                    Some(bytes) => overlay.append_value(bytes),
                    None => overlay.append_null(),
                }
                error.append_null();
            }
            Err(e) => {
                heatmaps.append(None);
                scale.append_null();
                prediction.append(None, None);
                overlay.append_null();
                error.append_value(&e.0);
            }
        }
    }
    let [probability, label, _label_name, model_name, model_version, ood_score, ood_flag, ood_reason] =
        prediction.finish();
    let columns: Vec<ArrayRef> = vec![
        heatmaps.finish(),
        Arc::new(scale.finish()),
        probability,
        label,
        Arc::new(overlay.finish()),
        model_name,
        model_version,
        ood_score,
        ood_flag,
        ood_reason,
        Arc::new(error.finish()),
    ];
    Ok(
        RecordBatch::try_new(Arc::new(explain_schema()), columns)
            .expect("columns match the schema"),
    )
}
