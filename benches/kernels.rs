//! Criterion benches of the core kernels on real full-resolution chest X-rays:
//! JPEG decode (full and DCT-scaled), resize, preprocess, quality features, batch decode, and with
//! the shipped model: predict, analyze with and without the heatmap, explain, overlay rendering.
//!
//! `make bench-rust` (sets CXRLAKE_SHARED_DATA and ORT_DYLIB_PATH).

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use cxrlake::core::decode::decode_gray;
use cxrlake::core::kernels::overlay::render_png;
use cxrlake::core::kernels::{
    analyze_batch, decode_batch, explain_batch, predict_batch, preprocess_batch, Heatmap,
};
use cxrlake::core::limits::Limits;
use cxrlake::core::preprocess::Preprocessing;
use cxrlake::core::quality::measure_quality;
use cxrlake::core::resize::resize_gray;
use cxrlake::core::{init_runtime, ImageColumn, KernelOptions, PneumoniaModel};

/// A few real images of different sizes (small, median, large), read into memory.
fn sample_images() -> Vec<(String, Vec<u8>)> {
    let root = std::env::var_os("CXRLAKE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
        .join("chest_xray_fullres/NORMAL");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let picks = [0, paths.len() / 2, paths.len() - 1];
    picks
        .iter()
        .map(|&i| {
            let data = std::fs::read(&paths[i]).unwrap();
            let decoded = decode_gray(&data, &Limits::default(), None).unwrap();
            let label = format!("{}x{}", decoded.full_width, decoded.full_height);
            (label, data)
        })
        .collect()
}

fn preprocessing() -> Preprocessing {
    Preprocessing::new(224, 224, 3, vec![0.5], vec![0.5]).unwrap()
}

fn single_image(c: &mut Criterion) {
    let limits = Limits::default();
    let prep = preprocessing();
    let mut group = c.benchmark_group("image");
    for (label, data) in sample_images() {
        let full = decode_gray(&data, &limits, None).unwrap().image;
        group.bench_with_input(BenchmarkId::new("decode_full", &label), &data, |b, data| {
            b.iter(|| decode_gray(black_box(data), &limits, None).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("decode_dct_224", &label),
            &data,
            |b, data| b.iter(|| decode_gray(black_box(data), &limits, Some((224, 224))).unwrap()),
        );
        group.bench_with_input(
            BenchmarkId::new("resize_full_to_224", &label),
            &full,
            |b, img| b.iter(|| resize_gray(black_box(img), 224, 224)),
        );
        group.bench_with_input(
            BenchmarkId::new("preprocess_224", &label),
            &data,
            |b, data| {
                let mut out = vec![0f32; prep.tensor_len()];
                b.iter(|| {
                    prep.encoded_into(black_box(data), &limits, &mut out)
                        .unwrap()
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("quality", &label), &full, |b, img| {
            b.iter(|| measure_quality(black_box(img)))
        });
    }
    group.finish();
}

fn batches(c: &mut Criterion) {
    let images: Vec<Vec<u8>> = sample_images().into_iter().map(|(_, d)| d).collect();
    let batch: Vec<Vec<u8>> = images.iter().cycle().take(24).cloned().collect();
    let column = ImageColumn::from_bytes(&batch);
    let prep = preprocessing();
    let mut group = c.benchmark_group("batch24");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.sample_size(10);
    for threads in [1usize, 2] {
        let options = KernelOptions {
            threads,
            ..KernelOptions::default()
        };
        group.bench_function(BenchmarkId::new("decode_batch", threads), |b| {
            b.iter(|| decode_batch(black_box(&column), &options).unwrap())
        });
        group.bench_function(BenchmarkId::new("preprocess_batch", threads), |b| {
            b.iter(|| preprocess_batch(black_box(&column), &prep, &options).unwrap())
        });
    }
    group.finish();
}

fn model_kernels(c: &mut Criterion) {
    init_runtime(None).expect("set ORT_DYLIB_PATH (make bench-rust does)");
    let model_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cxrlake/models/cxrlake_pneumonia.onnx");
    let model = PneumoniaModel::load(&model_path, 2).unwrap();
    let images: Vec<Vec<u8>> = sample_images().into_iter().map(|(_, d)| d).collect();
    let batch: Vec<Vec<u8>> = images.iter().cycle().take(24).cloned().collect();
    let column = ImageColumn::from_bytes(&batch);
    let options = KernelOptions {
        threads: 2,
        ..KernelOptions::default()
    };
    let mut group = c.benchmark_group("model24");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.sample_size(10);
    group.bench_function("predict", |b| {
        b.iter(|| predict_batch(black_box(&column), &model, &options).unwrap())
    });
    for heatmap in [false, true] {
        group.bench_function(BenchmarkId::new("analyze_heatmap", heatmap), |b| {
            b.iter(|| analyze_batch(black_box(&column), &model, &options, heatmap).unwrap())
        });
    }
    group.bench_function("explain", |b| {
        b.iter(|| explain_batch(black_box(&column), &model, &options, None).unwrap())
    });
    group.bench_function("explain_overlay256", |b| {
        b.iter(|| explain_batch(black_box(&column), &model, &options, Some(256)).unwrap())
    });
    group.finish();

    let picture = decode_gray(&images[1], &Limits::default(), Some((128, 128)))
        .unwrap()
        .image;
    let picture = cxrlake::core::GrayImage {
        width: 256,
        height: 256,
        pixels: resize_gray(&picture, 256, 256),
    };
    let heatmap = Heatmap {
        rows: 5,
        cols: 5,
        values: (0..25).map(|v| v as f32 - 12.0).collect(),
    };
    c.bench_function("overlay/render_png_256", |b| {
        b.iter(|| render_png(black_box(&picture), &heatmap).unwrap())
    });
}

criterion_group!(benches, single_image, batches, model_kernels);
criterion_main!(benches);
