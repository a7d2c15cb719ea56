"""cxrlake.decode and cxrlake.preprocess against PIL on real and generated images.

Tolerances (stated once, used below):
- full-resolution decode vs PIL ``ImageOps.exif_transpose(Image.open(p)).convert("L")``:
  mean absolute difference <= 0.5 gray levels, and no pixel off by more than 2
  (libjpeg-turbo is the decoder on both sides; colour JPEGs go through luma rounding);
- preprocess (DCT-scaled decoding + antialiased bilinear resize) vs PIL full decode +
  ``resize(BILINEAR)``: mean absolute difference <= 1.5 gray levels per image.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageOps

import cxrlake
from cxrlake.exceptions import InvalidArgumentError

FULL_MEAN_TOL = 0.5
FULL_MAX_TOL = 2
RESIZE_MEAN_TOL = 1.5


def pil_gray(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("L"))


def decoded_arrays(batch: pa.RecordBatch) -> list[np.ndarray | None]:
    out = []
    for w, h, px in zip(
        batch.column("width").to_pylist(),
        batch.column("height").to_pylist(),
        batch.column("pixels").to_pylist(),
        strict=True,
    ):
        out.append(None if px is None else np.frombuffer(px, np.uint8).reshape(h, w))
    return out


def assert_close_to_pil(ours: np.ndarray, reference: np.ndarray, label: str) -> None:
    assert ours.shape == reference.shape, label
    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    assert diff.mean() <= FULL_MEAN_TOL, (label, diff.mean())
    assert diff.max() <= FULL_MAX_TOL, (label, diff.max())


def test_decode_matches_pil_on_every_fullres_image(fullres_paths):
    batch = cxrlake.decode(fullres_paths, threads=2)
    assert batch.schema.names == ["width", "height", "pixels", "error"]
    assert batch.column("error").null_count == len(fullres_paths)
    for path, ours in zip(fullres_paths, decoded_arrays(batch), strict=True):
        assert_close_to_pil(ours, pil_gray(Path(path).read_bytes()), path)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def xray(fullres_paths) -> Image.Image:
    """A real radiograph, downsized to keep generated variants small."""
    with Image.open(fullres_paths[0]) as image:
        return image.convert("L").resize((301, 247), Image.BILINEAR)


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def generated_variants(xray: Image.Image) -> dict[str, bytes]:
    rgb = Image.merge("RGB", (xray, xray.point(lambda v: 255 - v), xray.transpose(0)))
    variants = {
        "jpeg gray baseline": encode(xray, "JPEG", quality=90),
        "jpeg gray progressive": encode(xray, "JPEG", quality=90, progressive=True),
        "jpeg rgb 4:2:0": encode(rgb, "JPEG", quality=90),
        "jpeg rgb progressive 4:4:4": encode(
            rgb, "JPEG", quality=95, progressive=True, subsampling=0
        ),
        "jpeg cmyk": encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "png gray 8-bit": encode(xray, "PNG"),
        "png rgb": encode(rgb, "PNG"),
        "png rgba": encode(rgb.convert("RGBA"), "PNG"),
        "png gray+alpha": encode(xray.convert("LA"), "PNG"),
        "png palette": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "png 1-bit": encode(xray.convert("1"), "PNG"),
    }
    for orientation in range(1, 9):
        variants[f"jpeg exif orientation {orientation}"] = encode(
            xray, "JPEG", quality=90, exif=exif_with_orientation(orientation)
        )
        variants[f"png exif orientation {orientation}"] = encode(
            xray, "PNG", exif=exif_with_orientation(orientation)
        )
    return variants


def test_generated_formats_match_pil(xray):
    variants = generated_variants(xray)
    batch = cxrlake.decode(list(variants.values()))
    errors = batch.column("error").to_pylist()
    for (label, data), ours, error in zip(
        variants.items(), decoded_arrays(batch), errors, strict=True
    ):
        assert error is None, (label, error)
        assert_close_to_pil(ours, pil_gray(data), label)


def test_exif_orientation_rotates_the_image(xray):
    upright = cxrlake.decode([encode(xray, "JPEG", quality=90)])
    rotated = cxrlake.decode([encode(xray, "JPEG", quality=90, exif=exif_with_orientation(6))])
    assert (upright.column("width")[0].as_py(), upright.column("height")[0].as_py()) == (301, 247)
    assert (rotated.column("width")[0].as_py(), rotated.column("height")[0].as_py()) == (247, 301)


def test_sixteen_bit_png_keeps_the_high_byte():
    # PIL would clip I;16 to 255; cxrlake scales 16 -> 8 bits (documented in decode.rs).
    values = np.array([[0, 256, 4096, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    (ours,) = decoded_arrays(cxrlake.decode([data]))
    assert ours.tolist() == [[0, 1, 16, 255]]


def test_preprocess_matches_pil_resize_on_fullres_images(fullres_paths, shipped_model_path):
    model = cxrlake.Model(shipped_model_path)
    channels, height, width = model.input_shape
    tensors, errors = cxrlake.preprocess(fullres_paths, model=model, threads=2)
    assert tensors.shape == (len(fullres_paths), channels, height, width)
    assert tensors.dtype == np.float32
    assert errors.null_count == len(fullres_paths)
    mean = np.asarray(model.mean, np.float32).reshape(channels, 1, 1)
    std = np.asarray(model.std, np.float32).reshape(channels, 1, 1)
    for path, tensor in zip(fullres_paths, tensors, strict=True):
        with Image.open(path) as image:
            reference = ImageOps.exif_transpose(image).convert("L")
            reference = np.asarray(reference.resize((width, height), Image.BILINEAR), np.float32)
        pixels = (tensor * std + mean) * 255.0
        # Every channel holds the same gray image.
        assert np.allclose(pixels, pixels[:1], atol=1e-3)
        assert np.abs(pixels[0] - reference).mean() <= RESIZE_MEAN_TOL, path


def test_preprocess_zeroes_failed_rows(fullres_paths, tiny_model_path):
    images = [Path(fullres_paths[0]).read_bytes(), b"garbage"]
    tensors, errors = cxrlake.preprocess(images, model=tiny_model_path)
    assert errors.to_pylist() == [None, "not an image (unknown format)"]
    assert np.count_nonzero(tensors[1]) == 0
    assert np.count_nonzero(tensors[0]) > 0


@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string(), pa.string_view()], ids=str)
def test_every_path_layout_is_accepted(fullres_paths, arrow_type):
    array = pa.array(fullres_paths[:3] + [None], type=arrow_type)
    batch = cxrlake.decode(array)
    assert batch.column("error").to_pylist() == [None, None, None, "null input"]


@pytest.mark.parametrize("arrow_type", [pa.binary(), pa.large_binary(), pa.binary_view()], ids=str)
def test_every_bytes_layout_is_accepted(fullres_paths, arrow_type):
    blobs = [Path(p).read_bytes() for p in fullres_paths[:2]]
    by_bytes = cxrlake.decode(pa.array(blobs, type=arrow_type))
    by_path = cxrlake.decode(fullres_paths[:2])
    assert by_bytes.column("pixels").equals(by_path.column("pixels"))


def test_chunked_arrays_and_pathlike_are_accepted(fullres_paths):
    from pathlib import Path

    chunked = pa.chunked_array([fullres_paths[:1], fullres_paths[1:3]])
    assert cxrlake.decode(chunked).num_rows == 3
    assert cxrlake.decode([Path(p) for p in fullres_paths[:2]]).column("error").null_count == 2
    assert cxrlake.decode([]).num_rows == 0


@pytest.mark.parametrize(
    "images",
    [
        pa.array([1, 2, 3]),
        "/a/single/path.jpeg",
        [b"bytes", "and a path"],
        [3.5],
        42,
    ],
    ids=["int-array", "bare-string", "mixed", "float-list", "int"],
)
def test_invalid_image_arguments_raise(images):
    with pytest.raises(InvalidArgumentError):
        cxrlake.decode(images)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_invalid_thread_counts_raise(fullres_paths, threads):
    with pytest.raises(InvalidArgumentError):
        cxrlake.decode(fullres_paths[:1], threads=threads)
