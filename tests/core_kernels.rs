//! Batch kernels on real images: Arrow columns in, record batches out, bad rows as errors,
//! the path sandbox, and ONNX Runtime scoring with the shipped model (values read from metadata).

mod common;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, LargeStringArray, StringViewArray};
use arrow::datatypes::{Float64Type, Int32Type};

use cxrlake::core::kernels::{
    analyze_batch, decode_batch, explain_batch, features_batch, predict_batch, preprocess_batch,
};
use cxrlake::core::{ImageColumn, KernelOptions, Outputs, PneumoniaModel, Sandbox};

use common::*;

fn options() -> KernelOptions {
    KernelOptions {
        threads: 2,
        ..KernelOptions::default()
    }
}

fn bad_inputs_dir() -> tempdir::TempDir {
    let dir = tempdir::TempDir::new();
    let good = std::fs::read(&fullres_images()[0]).unwrap();
    std::fs::write(dir.path().join("good.jpeg"), &good).unwrap();
    std::fs::write(dir.path().join("truncated.jpeg"), &good[..good.len() / 3]).unwrap();
    std::fs::write(dir.path().join("empty.jpeg"), b"").unwrap();
    std::fs::write(dir.path().join("notes.png"), b"not an image at all").unwrap();
    dir
}

#[test]
fn decode_batch_reports_one_error_per_bad_row() {
    let dir = bad_inputs_dir();
    let name = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let paths = [
        name("good.jpeg"),
        name("truncated.jpeg"),
        name("empty.jpeg"),
        name("notes.png"),
        name("missing.jpeg"),
        dir.path().to_string_lossy().into_owned(),
    ];
    let batch = decode_batch(&ImageColumn::from_paths(&paths), &options()).unwrap();
    let errors = batch.column_by_name("error").unwrap().as_string::<i32>();
    let width = batch
        .column_by_name("width")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert!(errors.is_null(0));
    assert!(width.value(0) > 0);
    assert_eq!(errors.value(1), "truncated JPEG");
    assert_eq!(errors.value(2), format!("empty image data: {}", paths[2]));
    assert_eq!(errors.value(3), "not an image (unknown format)");
    assert_eq!(errors.value(4), format!("file not found: {}", paths[4]));
    assert_eq!(errors.value(5), format!("not a regular file: {}", paths[5]));
    for row in 1..paths.len() {
        assert!(width.is_null(row), "row {row} must have NULL results");
    }
}

#[test]
fn every_arrow_layout_is_accepted() {
    let path = fullres_images()[0].to_string_lossy().into_owned();
    let bytes = std::fs::read(&path).unwrap();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(LargeStringArray::from(vec![Some(path.as_str()), None])),
        Arc::new(StringViewArray::from(vec![Some(path.as_str()), None])),
        Arc::new(BinaryArray::from(vec![Some(bytes.as_slice()), None])),
    ];
    for array in columns {
        let column = ImageColumn::new(&array).unwrap();
        let batch = decode_batch(&column, &options()).unwrap();
        let errors = batch.column_by_name("error").unwrap().as_string::<i32>();
        assert!(errors.is_null(0), "{:?}", array.data_type());
        assert_eq!(errors.value(1), "null input");
    }
    let wrong: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![1]));
    assert!(ImageColumn::new(&wrong).is_err());
}

#[test]
fn sandbox_refuses_paths_outside_the_roots() {
    let dir = bad_inputs_dir();
    let inside = dir.path().join("good.jpeg");
    let outside = fullres_images()[0].clone();
    // A readable file next to the sandbox root, reached with `..`.
    let sibling = dir.path().with_extension("outside.jpeg");
    std::fs::copy(&outside, &sibling).unwrap();
    let escape = dir.path().join("..").join(sibling.file_name().unwrap());
    #[cfg(unix)]
    std::os::unix::fs::symlink(&outside, dir.path().join("link.jpeg")).unwrap();
    let options = KernelOptions {
        sandbox: Sandbox::with_roots([dir.path()]).unwrap(),
        ..options()
    };
    let paths: Vec<String> = [inside, outside.clone(), dir.path().join("link.jpeg")]
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .chain([escape.to_string_lossy().into_owned()])
        .collect();
    let batch = decode_batch(&ImageColumn::from_paths(&paths), &options).unwrap();
    let errors = batch.column_by_name("error").unwrap().as_string::<i32>();
    assert!(errors.is_null(0));
    for (row, path) in paths.iter().enumerate().skip(1) {
        assert_eq!(errors.value(row), format!("outside sandbox roots: {path}"));
    }
    std::fs::remove_file(sibling).unwrap();
}

#[test]
fn predict_matches_inference_on_preprocessed_tensors() {
    init_runtime();
    let model = PneumoniaModel::load(&shipped_model(), 2).unwrap();
    let info = model.info().clone();
    let paths: Vec<String> = fullres_images()
        .iter()
        .take(40)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let column = ImageColumn::from_paths(&paths);
    let batch = predict_batch(&column, &model, &options()).unwrap();
    let (tensors, errors) = preprocess_batch(&column, &info.preprocessing, &options()).unwrap();
    assert!(errors.iter().all(Option::is_none));
    let reference = model
        .infer(&tensors, paths.len(), Outputs::PROBABILITY)
        .unwrap()
        .probabilities;

    let probability = batch
        .column_by_name("probability")
        .unwrap()
        .as_primitive::<Float64Type>();
    let label = batch
        .column_by_name("predicted_label")
        .unwrap()
        .as_primitive::<Int32Type>();
    let label_name = batch
        .column_by_name("label_name")
        .unwrap()
        .as_string::<i32>();
    let model_name = batch
        .column_by_name("model_name")
        .unwrap()
        .as_string::<i32>();
    for (i, &expected_p) in reference.iter().enumerate() {
        let p = probability.value(i);
        assert!((0.0..=1.0).contains(&p));
        assert!(
            (p - expected_p as f64).abs() < 1e-6,
            "row {i}: {p} vs {}",
            expected_p
        );
        let expected = (p >= info.threshold) as i32;
        assert_eq!(label.value(i), expected);
        assert_eq!(label_name.value(i), info.labels[expected as usize]);
        assert_eq!(model_name.value(i), info.name);
    }
}

#[test]
fn predict_keeps_going_past_bad_rows() {
    init_runtime();
    let model = PneumoniaModel::load(&shipped_model(), 2).unwrap();
    let good = std::fs::read(&fullres_images()[1]).unwrap();
    let images: Vec<Vec<u8>> = vec![
        good.clone(),
        good[..good.len() / 2].to_vec(),
        b"GIF89a not really".to_vec(),
        good,
    ];
    let batch = predict_batch(&ImageColumn::from_bytes(&images), &model, &options()).unwrap();
    let probability = batch
        .column_by_name("probability")
        .unwrap()
        .as_primitive::<Float64Type>();
    let errors = batch.column_by_name("error").unwrap().as_string::<i32>();
    assert!(errors.is_null(0) && errors.is_null(3));
    assert_eq!(errors.value(1), "truncated JPEG");
    assert!(errors.value(2).starts_with("unsupported image format: GIF"));
    assert!(probability.is_null(1) && probability.is_null(2));
    assert_eq!(probability.value(0), probability.value(3));
}

#[test]
fn features_report_full_resolution_statistics_and_embeddings() {
    init_runtime();
    let model = PneumoniaModel::load(&shipped_model(), 2).unwrap();
    let paths: Vec<String> = fullres_images()
        .iter()
        .take(6)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let column = ImageColumn::from_paths(&paths);
    let with = features_batch(&column, Some(&model), &options()).unwrap();
    let without = features_batch(&column, None, &options()).unwrap();
    let decoded = decode_batch(&column, &options()).unwrap();
    let pixels = decoded.column_by_name("pixels").unwrap().as_binary::<i32>();
    let mean = with
        .column_by_name("mean_pixel_value")
        .unwrap()
        .as_primitive::<Float64Type>();
    let quality = with
        .column_by_name("quality_score")
        .unwrap()
        .as_primitive::<Float64Type>();
    let width = with
        .column_by_name("width")
        .unwrap()
        .as_primitive::<Int32Type>();
    let embedding = with.column_by_name("embedding").unwrap().as_list::<i32>();
    for i in 0..paths.len() {
        let px = pixels.value(i);
        let expected = px.iter().map(|&v| v as f64).sum::<f64>() / px.len() as f64;
        assert!((mean.value(i) - expected).abs() < 1e-9);
        assert!((0.0..=1.0).contains(&quality.value(i)));
        assert_eq!(
            width.value(i),
            decoded
                .column_by_name("width")
                .unwrap()
                .as_primitive::<Int32Type>()
                .value(i)
        );
        match model.info().embedding_dim {
            Some(dim) => assert_eq!(embedding.value(i).len(), dim),
            None => assert!(embedding.is_null(i)),
        }
    }
    assert_eq!(
        without.column_by_name("embedding").unwrap().null_count(),
        paths.len()
    );
    assert_eq!(
        without
            .column_by_name("quality_score")
            .unwrap()
            .as_primitive::<Float64Type>()
            .values(),
        quality.values()
    );
}

/// A temporary directory removed on drop (no extra crate needed).
mod tempdir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "cxrlake-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path.canonicalize().unwrap())
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn analyze_scores_like_predict_with_embedding_and_exact_heatmap_from_one_pass() {
    init_runtime();
    let model = PneumoniaModel::load(&shipped_model(), 2).unwrap();
    let info = model.info();
    let dir = bad_inputs_dir();
    let mut paths: Vec<String> = fullres_images()
        .iter()
        .step_by(25)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    paths.push(
        dir.path()
            .join("truncated.jpeg")
            .to_string_lossy()
            .into_owned(),
    );
    let column = ImageColumn::from_paths(&paths);
    let analyzed = analyze_batch(&column, &model, &options(), true).unwrap();
    let predicted = predict_batch(&column, &model, &options()).unwrap();
    for name in ["probability", "predicted_label", "label_name", "error"] {
        assert_eq!(
            analyzed.column_by_name(name).unwrap().to_data(),
            predicted.column_by_name(name).unwrap().to_data(),
            "{name}"
        );
    }
    let probability = analyzed
        .column_by_name("probability")
        .unwrap()
        .as_primitive::<Float64Type>();
    let embedding = analyzed
        .column_by_name("embedding")
        .unwrap()
        .as_list::<i32>();
    let heatmap = analyzed.column_by_name("heatmap").unwrap().as_struct();
    let rows = heatmap
        .column_by_name("rows")
        .unwrap()
        .as_primitive::<Int32Type>();
    let values = heatmap.column_by_name("values").unwrap().as_list::<i32>();
    let last = paths.len() - 1;
    assert!(heatmap.is_null(last) && embedding.is_null(last) && probability.is_null(last));
    assert!(info.has_heatmap, "the shipped model has a heatmap output");
    let bias = info
        .head_bias
        .expect("the shipped model records cxrlake.head_bias");
    for row in 0..last {
        assert_eq!(embedding.value(row).len(), info.embedding_dim.unwrap());
        assert_eq!(rows.value(row), 5);
        let grid = values.value(row);
        let grid = grid.as_primitive::<arrow::datatypes::Float32Type>();
        let mean = grid.values().iter().map(|&v| v as f64).sum::<f64>() / grid.len() as f64;
        let p = probability.value(row);
        if p > 1e-5 && p < 1.0 - 1e-5 {
            let logit = (p / (1.0 - p)).ln();
            assert!(
                (bias + mean - logit).abs() < 0.02,
                "row {row}: {bias} + {mean} vs {logit}"
            );
        }
    }
    let without = analyze_batch(&column, &model, &options(), false).unwrap();
    assert_eq!(
        without.column_by_name("heatmap").unwrap().null_count(),
        paths.len()
    );
}

#[test]
fn explain_returns_maps_and_png_overlays() {
    init_runtime();
    let model = PneumoniaModel::load(&shipped_model(), 2).unwrap();
    let path = fullres_images()[0].to_string_lossy().into_owned();
    let column = ImageColumn::from_paths(std::slice::from_ref(&path));
    let batch = explain_batch(&column, &model, &options(), Some(128)).unwrap();
    let overlay = batch.column_by_name("overlay").unwrap().as_binary::<i32>();
    let png = overlay.value(0);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let decoded = cxrlake::core::decode_gray(png, &Default::default(), None).unwrap();
    assert!(decoded.image.width > 128 && decoded.image.height <= 128);
    let err = explain_batch(&column, &model, &options(), Some(5)).unwrap_err();
    assert!(err.to_string().contains("overlay_size"), "{err}");
}
