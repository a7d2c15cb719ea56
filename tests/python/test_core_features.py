"""cxrlake.features: full-resolution statistics, the quality score, embeddings."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageFilter, ImageOps

import cxrlake

FEATURE_COLUMNS = [
    "width",
    "height",
    "mean_pixel_value",
    "std_pixel_value",
    "quality_score",
    "embedding",
    "error",
]


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def test_statistics_match_numpy_on_pil_pixels(fullres_paths):
    paths = fullres_paths[::10]
    batch = cxrlake.features(paths, embedding=False)
    assert batch.schema.names == FEATURE_COLUMNS
    rows = batch.to_pylist()
    for path, row in zip(paths, rows, strict=True):
        with Image.open(path) as image:
            pixels = np.asarray(ImageOps.exif_transpose(image).convert("L"), np.float64)
        assert (row["width"], row["height"]) == (pixels.shape[1], pixels.shape[0])
        assert row["mean_pixel_value"] == pytest.approx(pixels.mean(), abs=0.5)
        assert row["std_pixel_value"] == pytest.approx(pixels.std(), abs=0.5)
        assert 0.0 <= row["quality_score"] <= 1.0
        assert row["embedding"] is None and row["error"] is None


def test_quality_score_drops_for_degraded_images(fullres_paths):
    with Image.open(fullres_paths[3]) as image:
        xray = image.convert("L")
    degraded = {
        "original": xray,
        "heavily blurred": xray.filter(ImageFilter.GaussianBlur(12)),
        "underexposed": xray.point(lambda v: v // 8),
        "washed out": xray.point(lambda v: 235 + v // 13),
        "blank": Image.new("L", xray.size, 0),
    }
    scores = dict(
        zip(
            degraded,
            cxrlake.features([jpeg(im) for im in degraded.values()], embedding=False)
            .column("quality_score")
            .to_pylist(),
            strict=True,
        )
    )
    assert scores["original"] > 0.5, scores
    for name in ("heavily blurred", "underexposed", "washed out"):
        assert scores[name] < scores["original"] - 0.1, (name, scores)
    assert scores["blank"] == 0.0


def test_embeddings_match_onnxruntime(fullres_paths, tiny_model_path):
    paths = fullres_paths[:6]
    model = cxrlake.Model(tiny_model_path)
    assert model.has_embedding
    batch = cxrlake.features(paths, model=model)
    embeddings = batch.column("embedding").to_pylist()
    assert all(len(e) == model.embedding_dim for e in embeddings)
    # Features decode at full resolution (no DCT scaling), so compare against a full-resolution
    # PIL resize normalised with the model's metadata.
    channels, height, width = model.input_shape
    tensors = []
    for path in paths:
        with Image.open(path) as image:
            gray = ImageOps.exif_transpose(image).convert("L")
            gray = gray.resize((width, height), Image.BILINEAR)
        x = np.asarray(gray, np.float32) / 255.0
        x = (x - np.float32(model.mean[0])) / np.float32(model.std[0])
        tensors.append(np.repeat(x[None], channels, axis=0))
    session = ort.InferenceSession(tiny_model_path, providers=["CPUExecutionProvider"])
    (reference,) = session.run(["embedding"], {"input": np.stack(tensors)})
    np.testing.assert_allclose(np.asarray(embeddings), reference, atol=2e-3)


def test_features_report_errors_per_row(fullres_paths, tiny_model_path):
    batch = cxrlake.features([fullres_paths[0], "/does/not/exist.png"], model=tiny_model_path)
    rows = batch.to_pylist()
    assert rows[0]["error"] is None and rows[0]["embedding"] is not None
    assert rows[1] == {
        **{name: None for name in FEATURE_COLUMNS},
        "error": "file not found: /does/not/exist.png",
    }
