//! Batch kernels: a column of images in, one Arrow record batch (or tensor) out.
//!
//! Every kernel maps a bad row to NULL results plus an `error` string and carries on; only invalid
//! arguments and unusable models fail the call. Rows run in parallel on the rayon pool; a panic in
//! one row becomes that row's error. Inference is pipelined: while ONNX Runtime scores chunk k on
//! the calling thread, the pool decodes chunk k+1.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Float64Builder, Int32Builder, ListBuilder, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;
use rayon::ThreadPool;

use crate::core::decode::{decode_gray, Decoded};
use crate::core::error::{CoreError, RowError, RowResult};
use crate::core::input::ImageColumn;
use crate::core::limits::Limits;
use crate::core::model::PneumoniaModel;
use crate::core::preprocess::Preprocessing;
use crate::core::quality::{measure_quality, ImageQuality};
use crate::core::sandbox::Sandbox;
use crate::core::threads::{resolve_threads, thread_pool};

/// Default number of images per ONNX Runtime run.
pub const DEFAULT_INFERENCE_BATCH: usize = 16;

/// Settings shared by every kernel call.
#[derive(Debug, Clone)]
pub struct KernelOptions {
    /// Worker threads for decoding (and intra-op threads of ONNX Runtime).
    pub threads: usize,
    /// Size limits checked before allocation.
    pub limits: Limits,
    /// Where file paths may be read from.
    pub sandbox: Sandbox,
    /// Images per inference run.
    pub inference_batch: usize,
}

impl KernelOptions {
    /// Options from explicit values, falling back to the environment (see [`resolve_threads`],
    /// [`Limits::resolve`], [`Sandbox::resolve`]); `CXRLAKE_INFERENCE_BATCH` sets the batch size.
    pub fn resolve(
        threads: Option<usize>,
        roots: Option<&[String]>,
        max_pixels: Option<u64>,
        max_file_bytes: Option<u64>,
    ) -> Result<Self, CoreError> {
        let inference_batch = match std::env::var("CXRLAKE_INFERENCE_BATCH") {
            Ok(text) if !text.trim().is_empty() => match text.trim().parse::<usize>() {
                Ok(n) if (1..=4096).contains(&n) => n,
                _ => {
                    return Err(CoreError::InvalidArgument(format!(
                        "environment variable CXRLAKE_INFERENCE_BATCH={text:?} must be 1..4096"
                    )))
                }
            },
            _ => DEFAULT_INFERENCE_BATCH,
        };
        Ok(Self {
            threads: resolve_threads(threads)?,
            limits: Limits::resolve(max_pixels, max_file_bytes)?,
            sandbox: Sandbox::resolve(roots)?,
            inference_batch,
        })
    }

    fn pool(&self) -> Result<Arc<ThreadPool>, CoreError> {
        thread_pool(self.threads)
    }
}

impl Default for KernelOptions {
    fn default() -> Self {
        Self {
            threads: resolve_threads(None).unwrap_or(1),
            limits: Limits::default(),
            sandbox: Sandbox::allow_all(),
            inference_batch: DEFAULT_INFERENCE_BATCH,
        }
    }
}

/// Runs `f`, turning a panic into a row error so one bad row cannot abort the batch.
fn guarded<T>(f: impl FnOnce() -> RowResult<T>) -> RowResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(RowError::new(format!("internal error: {detail}")))
    })
}

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
    let errors = pool.install(|| {
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
        errors.into_iter().map(|e| e.map(|e| e.0)).collect(),
    ))
}

/// Fills `tensors` (`rows.len()` tensors) in parallel; returns each row's error. Runs on the
/// current rayon pool.
fn preprocess_rows(
    images: &ImageColumn,
    rows: Range<usize>,
    preprocessing: &Preprocessing,
    options: &KernelOptions,
    tensors: &mut [f32],
) -> Vec<Option<RowError>> {
    let len = preprocessing.tensor_len();
    tensors
        .par_chunks_mut(len)
        .zip(rows.into_par_iter())
        .map(|(out, i)| {
            let result = guarded(|| {
                let data = images.load(i, &options.limits, &options.sandbox)?;
                preprocessing.encoded_into(&data, &options.limits, out)
            });
            match result {
                Ok(()) => None,
                Err(e) => {
                    out.fill(0.0);
                    Some(e)
                }
            }
        })
        .collect()
}

/// Chunk boundaries for a pipeline over `0..n` with steady chunk size `chunk`.
///
/// Chunks ramp up (2, 4, 8, ... `chunk`) and back down at the end: the first decode and the last
/// inference cannot overlap anything, so they are kept small.
pub fn chunk_schedule(n: usize, chunk: usize) -> Vec<Range<usize>> {
    let chunk = chunk.max(1);
    let mut ramp = Vec::new();
    let mut size = 2.min(chunk);
    while size < chunk {
        ramp.push(size);
        size *= 2;
    }
    let ramp_total: usize = ramp.iter().sum();
    let mut sizes: Vec<usize> = Vec::new();
    if n <= 2 * ramp_total + chunk {
        // Too few rows for a steady state: split evenly into chunks of at most chunk / 2.
        let piece = (chunk / 2).max(1);
        let mut left = n;
        while left > 0 {
            let take = piece.min(left);
            sizes.push(take);
            left -= take;
        }
    } else {
        sizes.extend(&ramp);
        let middle = n - 2 * ramp_total;
        let full = middle / chunk;
        sizes.extend(std::iter::repeat_n(chunk, full));
        if !middle.is_multiple_of(chunk) {
            sizes.push(middle % chunk);
        }
        sizes.extend(ramp.iter().rev());
    }
    let mut start = 0;
    sizes
        .into_iter()
        .map(|size| {
            let range = start..start + size;
            start += size;
            range
        })
        .collect()
}

/// Runs `produce` for each chunk of [`chunk_schedule`] on `pool` while `consume` handles the
/// previous chunk on the calling thread (at most one finished chunk waits between them).
fn pipelined<P: Send>(
    n: usize,
    chunk: usize,
    pool: &ThreadPool,
    produce: impl Fn(Range<usize>) -> P + Sync,
    mut consume: impl FnMut(Range<usize>, P),
) {
    let (sender, receiver) = sync_channel::<(Range<usize>, P)>(1);
    std::thread::scope(|scope| {
        let produce = &produce;
        scope.spawn(move || {
            for range in chunk_schedule(n, chunk) {
                let product = pool.install(|| produce(range.clone()));
                if sender.send((range, product)).is_err() {
                    break;
                }
            }
        });
        for (range, product) in receiver {
            consume(range, product);
        }
    });
}

/// Moves the tensors of rows without error to the front of `tensors`; returns their row offsets.
fn compact_ok_rows(tensors: &mut [f32], errors: &[Option<RowError>], len: usize) -> Vec<usize> {
    let mut ok = Vec::with_capacity(errors.len());
    for (row, error) in errors.iter().enumerate() {
        if error.is_none() {
            let dst = ok.len();
            if dst != row {
                tensors.copy_within(row * len..(row + 1) * len, dst * len);
            }
            ok.push(row);
        }
    }
    ok
}

/// Schema of [`predict_batch`].
pub fn predict_schema() -> Schema {
    Schema::new(vec![
        Field::new("probability", DataType::Float64, true),
        Field::new("predicted_label", DataType::Int32, true),
        Field::new("label_name", DataType::Utf8, true),
        Field::new("model_name", DataType::Utf8, true),
        Field::new("model_version", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
    ])
}

/// Scores every image: `probability` of pneumonia (0..1), `predicted_label` (1 when
/// probability >= the model threshold), `label_name`, `model_name`, `model_version`, `error`.
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
    let mut errors: Vec<Option<String>> = vec![None; n];

    pipelined(
        n,
        options.inference_batch,
        &pool,
        |rows| {
            let mut tensors = vec![0f32; rows.len() * len];
            let row_errors = preprocess_rows(images, rows, prep, options, &mut tensors);
            (tensors, row_errors)
        },
        |rows, (mut tensors, row_errors)| {
            let ok = compact_ok_rows(&mut tensors, &row_errors, len);
            for (offset, error) in row_errors.into_iter().enumerate() {
                errors[rows.start + offset] = error.map(|e| e.0);
            }
            if ok.is_empty() {
                return;
            }
            match model.infer(&tensors[..ok.len() * len], ok.len(), false) {
                Ok(output) => {
                    for (k, &offset) in ok.iter().enumerate() {
                        let p = output.probabilities[k] as f64;
                        if p.is_finite() {
                            probability[rows.start + offset] = Some(p);
                        } else {
                            errors[rows.start + offset] =
                                Some("model returned a non-finite probability".into());
                        }
                    }
                }
                Err(message) => {
                    for &offset in &ok {
                        errors[rows.start + offset] = Some(message.clone());
                    }
                }
            }
        },
    );

    let mut p_col = Float64Builder::with_capacity(n);
    let mut label = Int32Builder::with_capacity(n);
    let mut label_name = StringBuilder::new();
    let mut model_name = StringBuilder::new();
    let mut model_version = StringBuilder::new();
    let mut error = StringBuilder::new();
    for (p, e) in probability.iter().zip(&errors) {
        model_name.append_value(&info.name);
        model_version.append_value(&info.version);
        match (p, e) {
            (Some(p), None) => {
                let positive = *p >= info.threshold;
                p_col.append_value(*p);
                label.append_value(positive as i32);
                label_name.append_value(&info.labels[positive as usize]);
                error.append_null();
            }
            (_, e) => {
                p_col.append_null();
                label.append_null();
                label_name.append_null();
                error.append_value(e.as_deref().unwrap_or("no prediction"));
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(p_col.finish()),
        Arc::new(label.finish()),
        Arc::new(label_name.finish()),
        Arc::new(model_name.finish()),
        Arc::new(model_version.finish()),
        Arc::new(error.finish()),
    ];
    Ok(
        RecordBatch::try_new(Arc::new(predict_schema()), columns)
            .expect("columns match the schema"),
    )
}

/// Schema of [`features_batch`].
pub fn features_schema() -> Schema {
    Schema::new(vec![
        Field::new("width", DataType::Int32, true),
        Field::new("height", DataType::Int32, true),
        Field::new("mean_pixel_value", DataType::Float64, true),
        Field::new("std_pixel_value", DataType::Float64, true),
        Field::new("quality_score", DataType::Float64, true),
        Field::new(
            "embedding",
            DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
            true,
        ),
        Field::new("error", DataType::Utf8, true),
    ])
}

struct FeatureRow {
    width: u32,
    height: u32,
    quality: ImageQuality,
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
    let mut rows: Vec<Option<RowResult<FeatureRow>>> = (0..n).map(|_| None).collect();
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
            let errors: Vec<Option<RowError>> =
                results.iter().map(|r| r.as_ref().err().cloned()).collect();
            let mut results: Vec<RowResult<FeatureRow>> = results;
            if let Some(model) = embedding_model {
                let ok = compact_ok_rows(&mut tensors, &errors, len);
                if !ok.is_empty() {
                    match model.infer(&tensors[..ok.len() * len], ok.len(), true) {
                        Ok(output) => {
                            let values = output.embeddings.unwrap_or_default();
                            let dim = values.len() / ok.len();
                            for (k, &offset) in ok.iter().enumerate() {
                                embeddings[range.start + offset] = Some(
                                    values[k * dim..(k + 1) * dim]
                                        .iter()
                                        .map(|&v| v as f64)
                                        .collect(),
                                );
                            }
                        }
                        Err(message) => {
                            for &offset in &ok {
                                results[offset] = Err(RowError::new(message.clone()));
                            }
                        }
                    }
                }
            }
            for (offset, result) in results.into_iter().enumerate() {
                rows[range.start + offset] = Some(result);
            }
        },
    );

    let mut width = Int32Builder::with_capacity(n);
    let mut height = Int32Builder::with_capacity(n);
    let mut mean = Float64Builder::with_capacity(n);
    let mut std = Float64Builder::with_capacity(n);
    let mut quality = Float64Builder::with_capacity(n);
    let mut embedding = ListBuilder::new(Float64Builder::new());
    let mut error = StringBuilder::new();
    for (row, emb) in rows.into_iter().zip(embeddings) {
        match row.unwrap_or_else(|| Err(RowError::new("not processed"))) {
            Ok(r) => {
                width.append_value(r.width as i32);
                height.append_value(r.height as i32);
                mean.append_value(r.quality.mean);
                std.append_value(r.quality.std);
                quality.append_value(r.quality.score);
                match emb {
                    Some(values) => {
                        embedding.values().append_slice(&values);
                        embedding.append(true);
                    }
                    None => embedding.append(false),
                }
                error.append_null();
            }
            Err(e) => {
                width.append_null();
                height.append_null();
                mean.append_null();
                std.append_null();
                quality.append_null();
                embedding.append(false);
                error.append_value(&e.0);
            }
        }
    }
    let embedding = embedding.finish();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(width.finish()),
        Arc::new(height.finish()),
        Arc::new(mean.finish()),
        Arc::new(std.finish()),
        Arc::new(quality.finish()),
        Arc::new(embedding),
        Arc::new(error.finish()),
    ];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_schedule_covers_every_row_once() {
        for n in [0usize, 1, 2, 3, 7, 16, 31, 32, 33, 100, 200, 1000] {
            for chunk in [1usize, 2, 5, 16, 32] {
                let ranges = chunk_schedule(n, chunk);
                let mut next = 0;
                for r in &ranges {
                    assert_eq!(r.start, next, "n={n} chunk={chunk} {ranges:?}");
                    assert!(
                        !r.is_empty() && r.len() <= chunk,
                        "n={n} chunk={chunk} {ranges:?}"
                    );
                    next = r.end;
                }
                assert_eq!(next, n, "n={n} chunk={chunk}");
            }
        }
    }

    #[test]
    fn chunk_schedule_ramps_up_and_down() {
        let sizes: Vec<usize> = chunk_schedule(200, 16).iter().map(|r| r.len()).collect();
        assert_eq!(&sizes[..3], &[2, 4, 8]);
        assert_eq!(&sizes[sizes.len() - 3..], &[8, 4, 2]);
        assert!(sizes.iter().filter(|&&s| s == 16).count() >= 9);
    }
}
