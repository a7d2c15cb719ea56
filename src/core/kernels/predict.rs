//! The predict kernel (probability and label) and the preprocess kernel (its model inputs).

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;

use super::columns::PredictionBuilder;
use super::options::{guarded, KernelOptions};
use super::schedule::{infer_and_scatter, pipelined};
use crate::core::error::{CoreError, RowError};
use crate::core::image::Acquisition;
use crate::core::input::ImageColumn;
use crate::core::model::{Outputs, PneumoniaModel};
use crate::core::ood::{blank_input, ood_flag};
use crate::core::preprocess::Preprocessing;

/// The model input tensors of every image (`[N, C, H, W]` row-major, zeros for failed rows) and
/// the per-row errors (`None` when fine), exactly as [`predict_batch`] feeds them to the model.
pub fn preprocess_batch(
    images: &ImageColumn,
    preprocessing: &Preprocessing,
    options: &KernelOptions,
) -> Result<(Vec<f32>, Vec<Option<String>>), CoreError> {
    let pool = options.pool()?;
    let len = preprocessing.tensor_len();
    let mut tensors = vec![0f32; images.len() * len];
    let results = pool.install(|| {
        preprocess_rows(
            images,
            0..images.len(),
            preprocessing,
            options,
            &mut tensors,
        )
    });
    Ok((
        tensors,
        results.into_iter().map(|r| r.err().map(|e| e.0)).collect(),
    ))
}

/// Fills `tensors` (`rows.len()` tensors) in parallel; returns each row's result: its DICOM
/// acquisition attributes (`None` for JPEG/PNG) or its error. Runs on the current rayon pool.
fn preprocess_rows(
    images: &ImageColumn,
    rows: Range<usize>,
    preprocessing: &Preprocessing,
    options: &KernelOptions,
    tensors: &mut [f32],
) -> Vec<Result<Option<Acquisition>, RowError>> {
    let len = preprocessing.tensor_len();
    tensors
        .par_chunks_mut(len)
        .zip(rows.into_par_iter())
        .map(|(out, i)| {
            let result = guarded(|| {
                let data = images.load(i, &options.limits, &options.sandbox)?;
                preprocessing.encoded_into(&data, &options.limits, out)
            });
            if result.is_err() {
                out.fill(0.0);
            }
            result
        })
        .collect()
}

/// Schema of [`predict_batch`].
pub fn predict_schema() -> Schema {
    let mut fields: Vec<Field> = PredictionBuilder::fields().into();
    fields.push(Field::new("error", DataType::Utf8, true));
    Schema::new(fields)
}

/// Scores every image: `probability` of pneumonia (0..1), `predicted_label` (1 when
/// probability >= the model threshold), `label_name`, `model_name`, `model_version`,
/// `ood_score`, `out_of_distribution`, `ood_reason` (see [`crate::core::ood`]), `error`.
/// Model name and version are filled on every row, including failed ones.
pub fn predict_batch(
    images: &ImageColumn,
    model: &PneumoniaModel,
    options: &KernelOptions,
) -> Result<RecordBatch, CoreError> {
    let pool = options.pool()?;
    let info = model.info();
    let prep = &info.preprocessing;
    let len = prep.tensor_len();
    let n = images.len();
    let mut probability: Vec<Option<f64>> = vec![None; n];
    let mut ood_scores: Vec<Option<f64>> = vec![None; n];
    let mut acquisitions: Vec<Option<Acquisition>> = vec![None; n];
    let mut errors: Vec<Option<RowError>> = vec![None; n];
    let mut blank: Vec<bool> = vec![false; n];

    pipelined(
        n,
        options.inference_batch,
        &pool,
        |rows| {
            let mut tensors = vec![0f32; rows.len() * len];
            let row_errors = preprocess_rows(images, rows, prep, options, &mut tensors);
            (tensors, row_errors)
        },
        |rows, (mut tensors, results)| {
            let mut row_errors: Vec<Option<RowError>> = Vec::with_capacity(results.len());
            for (offset, result) in results.into_iter().enumerate() {
                match result {
                    Ok(acquisition) => {
                        acquisitions[rows.start + offset] = acquisition;
                        row_errors.push(None);
                    }
                    Err(e) => row_errors.push(Some(e)),
                }
            }
            for (offset, tensor) in tensors.chunks(len).enumerate() {
                blank[rows.start + offset] = blank_input(tensor);
            }
            infer_and_scatter(
                model,
                &mut tensors,
                &mut row_errors,
                len,
                Outputs::PREDICTION,
                |offset, output| {
                    probability[rows.start + offset] = Some(output.probability);
                    ood_scores[rows.start + offset] = output.ood_score;
                },
            );
            for (offset, error) in row_errors.into_iter().enumerate() {
                errors[rows.start + offset] = error;
            }
        },
    );

    let mut prediction = PredictionBuilder::new(info, n);
    let mut error = StringBuilder::new();
    for ((((p, e), score), acquisition), blank) in probability
        .into_iter()
        .zip(&errors)
        .zip(ood_scores)
        .zip(&acquisitions)
        .zip(blank)
    {
        match e {
            None if p.is_some() => {
                let flag =
                    ood_flag(score, info.ood_threshold, acquisition.as_ref()).with_blank(blank);
                prediction.append(p, Some(&flag));
                error.append_null();
            }
            _ => {
                prediction.append(None, None);
                error.append_value(e.as_ref().map_or("no prediction", |e| e.0.as_str()));
            }
        }
    }
    let mut columns: Vec<ArrayRef> = prediction.finish().into();
    columns.push(Arc::new(error.finish()));
    Ok(
        RecordBatch::try_new(Arc::new(predict_schema()), columns)
            .expect("columns match the schema"),
    )
}
