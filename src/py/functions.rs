//! The functions of `cxrlake._internal`: pyarrow in, pyarrow/numpy out, heavy work without the GIL.

use std::path::PathBuf;

use arrow::array::{make_array, Array, ArrayData, StringArray};
use arrow_pyarrow::{FromPyArrow, ToPyArrow};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::core::kernels::{
    analyze_batch, decode_batch, dicom_metadata_batch, explain_batch, features_batch,
    predict_batch, preprocess_batch,
};
use crate::core::kernels::{overlay, Heatmap};
use crate::core::{
    init_runtime as core_init_runtime, CoreError, GrayImage, ImageColumn, KernelOptions,
    PneumoniaModel,
};
use crate::py::error::to_py_err;

fn image_column(images: &Bound<'_, PyAny>) -> PyResult<ImageColumn> {
    let data = ArrayData::from_pyarrow_bound(images)?;
    ImageColumn::new(&make_array(data)).map_err(to_py_err)
}

fn options(
    threads: Option<usize>,
    roots: Option<Vec<String>>,
    max_pixels: Option<u64>,
    max_file_bytes: Option<u64>,
) -> PyResult<KernelOptions> {
    KernelOptions::resolve(threads, roots.as_deref(), max_pixels, max_file_bytes).map_err(to_py_err)
}

/// Loads ONNX Runtime from `library` (else env ORT_DYLIB_PATH), once per process.
#[pyfunction]
#[pyo3(signature = (library=None))]
pub fn init_runtime(py: Python<'_>, library: Option<PathBuf>) -> PyResult<()> {
    py.detach(|| core_init_runtime(library.as_deref()).map(|_| ()))
        .map_err(to_py_err)
}

/// Loads (or fetches from the cache) the model at `path` and returns its metadata as a dict.
#[pyfunction]
#[pyo3(signature = (path, threads=None))]
pub fn model_info<'py>(
    py: Python<'py>,
    path: PathBuf,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let threads = crate::core::threads::resolve_threads(threads).map_err(to_py_err)?;
    let model = py
        .detach(|| PneumoniaModel::load(&path, threads))
        .map_err(to_py_err)?;
    let info = model.info();
    let prep = &info.preprocessing;
    let dict = PyDict::new(py);
    dict.set_item("path", info.path.to_string_lossy().into_owned())?;
    dict.set_item("name", &info.name)?;
    dict.set_item("version", &info.version)?;
    dict.set_item("threshold", info.threshold)?;
    dict.set_item("labels", (&info.labels[0], &info.labels[1]))?;
    dict.set_item("input_shape", (prep.channels, prep.height, prep.width))?;
    dict.set_item("mean", prep.mean.clone())?;
    dict.set_item("std", prep.std.clone())?;
    dict.set_item("embedding_dim", info.embedding_dim)?;
    dict.set_item("has_heatmap", info.has_heatmap)?;
    dict.set_item("head_bias", info.head_bias)?;
    dict.set_item("ood_threshold", info.ood_threshold)?;
    dict.set_item("drift_reference", info.drift_reference.as_deref())?;
    Ok(dict)
}

/// Decodes images to grayscale; returns a pyarrow RecordBatch (width, height, pixels, error).
#[pyfunction]
#[pyo3(signature = (images, *, threads=None, roots=None, max_pixels=None, max_file_bytes=None))]
pub fn decode<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    threads: Option<usize>,
    roots: Option<Vec<String>>,
    max_pixels: Option<u64>,
    max_file_bytes: Option<u64>,
) -> PyResult<Bound<'py, PyAny>> {
    let column = image_column(images)?;
    let options = options(threads, roots, max_pixels, max_file_bytes)?;
    let batch = py
        .detach(|| decode_batch(&column, &options))
        .map_err(to_py_err)?;
    batch.to_pyarrow(py)
}

/// DICOM metadata as DICOM JSON text, bulk data left out; returns a pyarrow RecordBatch
/// (metadata, error). Rows that are not DICOM get NULL in both columns.
#[pyfunction]
#[pyo3(signature = (images, *, threads=None, roots=None, max_pixels=None, max_file_bytes=None))]
pub fn dicom_metadata<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    threads: Option<usize>,
    roots: Option<Vec<String>>,
    max_pixels: Option<u64>,
    max_file_bytes: Option<u64>,
) -> PyResult<Bound<'py, PyAny>> {
    let column = image_column(images)?;
    let options = options(threads, roots, max_pixels, max_file_bytes)?;
    let batch = py
        .detach(|| dicom_metadata_batch(&column, &options))
        .map_err(to_py_err)?;
    batch.to_pyarrow(py)
}

/// Model input tensors `[N, C, H, W]` (float32 numpy array) and per-row errors (pyarrow strings).
#[pyfunction]
#[pyo3(signature = (images, model_path, *, threads=None, roots=None, max_pixels=None, max_file_bytes=None))]
#[allow(clippy::too_many_arguments)]
pub fn preprocess<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    model_path: PathBuf,
    threads: Option<usize>,
    roots: Option<Vec<String>>,
    max_pixels: Option<u64>,
    max_file_bytes: Option<u64>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let column = image_column(images)?;
    let options = options(threads, roots, max_pixels, max_file_bytes)?;
    let n = column.len();
    let (tensors, errors, shape) = py
        .detach(|| {
            let model = PneumoniaModel::load(&model_path, options.threads)?;
            let prep = model.info().preprocessing.clone();
            let (tensors, errors) = preprocess_batch(&column, &prep, &options)?;
            Ok((
                tensors,
                errors,
                [n, prep.channels, prep.height as usize, prep.width as usize],
            ))
        })
        .map_err(to_py_err)?;
    let array = PyArray1::from_vec(py, tensors).reshape(shape)?;
    let errors = StringArray::from(errors).into_data().to_pyarrow(py)?;
    Ok((array.into_any(), errors))
}

/// Image features; returns a pyarrow RecordBatch (see docs/architecture.md).
#[pyfunction]
#[pyo3(signature = (images, model_path=None, *, threads=None, roots=None, max_pixels=None, max_file_bytes=None))]
#[allow(clippy::too_many_arguments)]
pub fn features<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    model_path: Option<PathBuf>,
    threads: Option<usize>,
    roots: Option<Vec<String>>,
    max_pixels: Option<u64>,
    max_file_bytes: Option<u64>,
) -> PyResult<Bound<'py, PyAny>> {
    let column = image_column(images)?;
    let options = options(threads, roots, max_pixels, max_file_bytes)?;
    let batch = py
        .detach(|| {
            let model = match &model_path {
                Some(path) => Some(PneumoniaModel::load(path, options.threads)?),
                None => None,
            };
            features_batch(&column, model.as_deref(), &options)
        })
        .map_err(to_py_err)?;
    batch.to_pyarrow(py)
}

/// Pneumonia predictions; returns a pyarrow RecordBatch (see docs/architecture.md).
#[pyfunction]
#[pyo3(signature = (images, model_path, *, threads=None, roots=None, max_pixels=None, max_file_bytes=None))]
#[allow(clippy::too_many_arguments)]
pub fn predict<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    model_path: PathBuf,
    threads: Option<usize>,
    roots: Option<Vec<String>>,
    max_pixels: Option<u64>,
    max_file_bytes: Option<u64>,
) -> PyResult<Bound<'py, PyAny>> {
    let column = image_column(images)?;
    let options = options(threads, roots, max_pixels, max_file_bytes)?;
    let batch = py
        .detach(|| {
            let model = PneumoniaModel::load(&model_path, options.threads)?;
            predict_batch(&column, &model, &options)
        })
        .map_err(to_py_err)?;
    batch.to_pyarrow(py)
}

/// Statistics, embedding, prediction and heatmap from one decode and one forward pass; returns a
/// pyarrow RecordBatch (see docs/architecture.md).
#[pyfunction]
#[pyo3(signature = (images, model_path, *, threads=None, roots=None, max_pixels=None, max_file_bytes=None, heatmap=true))]
#[allow(clippy::too_many_arguments)]
pub fn analyze<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    model_path: PathBuf,
    threads: Option<usize>,
    roots: Option<Vec<String>>,
    max_pixels: Option<u64>,
    max_file_bytes: Option<u64>,
    heatmap: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let column = image_column(images)?;
    let options = options(threads, roots, max_pixels, max_file_bytes)?;
    let batch = py
        .detach(|| {
            let model = PneumoniaModel::load(&model_path, options.threads)?;
            analyze_batch(&column, &model, &options, heatmap)
        })
        .map_err(to_py_err)?;
    batch.to_pyarrow(py)
}

/// Class-activation maps and, with `overlay_size`, overlay PNGs; returns a pyarrow RecordBatch.
#[pyfunction]
#[pyo3(signature = (images, model_path, *, threads=None, roots=None, max_pixels=None, max_file_bytes=None, overlay_size=None))]
#[allow(clippy::too_many_arguments)]
pub fn explain<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    model_path: PathBuf,
    threads: Option<usize>,
    roots: Option<Vec<String>>,
    max_pixels: Option<u64>,
    max_file_bytes: Option<u64>,
    overlay_size: Option<u32>,
) -> PyResult<Bound<'py, PyAny>> {
    let column = image_column(images)?;
    let options = options(threads, roots, max_pixels, max_file_bytes)?;
    let batch = py
        .detach(|| {
            let model = PneumoniaModel::load(&model_path, options.threads)?;
            explain_batch(&column, &model, &options, overlay_size)
        })
        .map_err(to_py_err)?;
    batch.to_pyarrow(py)
}

/// Overlay PNG of an upright 8-bit grayscale image (`pixels`, row-major) and a stored heatmap.
#[pyfunction]
#[pyo3(signature = (pixels, width, height, rows, cols, values, size))]
#[allow(clippy::too_many_arguments)]
pub fn overlay_png<'py>(
    py: Python<'py>,
    pixels: &[u8],
    width: u32,
    height: u32,
    rows: usize,
    cols: usize,
    values: Vec<f32>,
    size: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    if pixels.len() != width as usize * height as usize {
        return Err(to_py_err(CoreError::InvalidArgument(format!(
            "{} pixels for a {width}x{height} image",
            pixels.len()
        ))));
    }
    let image = GrayImage {
        width,
        height,
        pixels: pixels.to_vec(),
    };
    let heatmap = Heatmap { rows, cols, values };
    let png = py
        .detach(|| overlay::overlay_png(&image, &heatmap, size))
        .map_err(|e| to_py_err(CoreError::InvalidArgument(e)))?;
    Ok(PyBytes::new(py, &png))
}

/// Number of worker threads a call with `threads` would use (argument, env, CPU count).
#[pyfunction]
#[pyo3(signature = (threads=None))]
pub fn resolve_threads(threads: Option<usize>) -> PyResult<usize> {
    crate::core::threads::resolve_threads(threads).map_err(to_py_err)
}
