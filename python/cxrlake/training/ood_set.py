"""The fixed out-of-distribution evaluation set, made deterministically (no download, no RNG
state beyond the seeds written here).

Non-chest inputs (the flag should catch >= 95 % of them), each item ``(name, bytes or path)``:

- ``photographs``: the photographs installed packages ship (matplotlib's ``grace_hopper.jpg``
  and ``Minduka_Present_Blue_Pack.png``, scikit-learn's ``china.jpg`` and ``flower.jpg``), each
  whole and as four quadrant crops and a centre crop;
- ``drawings``: PIL-drawn scenes (shapes, lines, text, a bar chart) on seeded layouts;
- ``ct_mr_us_dicom``: CT, MR, ultrasound and nuclear-medicine DICOM files of pydicom's test files
  and pydicom-data (flagged by their Modality);
- ``ct_mr_us_pixels``: the same images' pixels as PNG, header stripped (flagged by the score
  alone);
- ``dicom_other_modality``: a chest film (pydicom-data ``RG1_J2KI``, its header patched in
  place) whose header says Modality MG, and one whose header says ViewPosition LL;
- ``synthetic``: uniform and Gaussian noise, salt and pepper, flat grey, black, white, a
  gradient, a checkerboard, rings.

Shifted chest films (measured, no goal), made from validation films: inverted, rotated 90
degrees, upside down, centre crop 50 %, lateral-like (one half of the film stretched to full
width: one lung field, no mediastinum in the middle), heavy Gaussian noise (sigma 60 grey levels).

Sources that are not installed (matplotlib, scikit-learn, pydicom, pydicom-data) are left out
and the counts say so; the test suite checks all of them are there.
"""

from __future__ import annotations

import importlib.util
import io
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

import cxrlake

SHIFT_FILMS = 40
"""Validation films each shift is applied to."""

CT_MR_US = (
    "CT_small.dcm",
    "693_UNCR.dcm",
    "eCT_Supplemental.dcm",
    "MR_small.dcm",
    "emri_small.dcm",
    "MR2_UNCR.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "US1_UNCR.dcm",
    "ExplVR_BigEnd.dcm",
    "examples_rgb_color.dcm",
    "examples_ybr_color.dcm",
    "JPEG-LL.dcm",
    "JPEG2000_UNC.dcm",
)
CHEST_DICOM = "RG1_J2KI.dcm"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


def photograph_files() -> list[Path]:
    """The photographs found among the installed packages."""
    found = [
        _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
        _package_file("matplotlib", "mpl-data", "sample_data", "Minduka_Present_Blue_Pack.png"),
        _package_file("sklearn", "datasets", "images", "china.jpg"),
        _package_file("sklearn", "datasets", "images", "flower.jpg"),
    ]
    return [p for p in found if p is not None]


def dicom_file(name: str) -> Path | None:
    """A DICOM test file of pydicom's wheel or pydicom-data."""
    pydicom = _package_file("pydicom", "data", "test_files", name)
    return pydicom or _package_file("data_store", "data", name)


def _photographs() -> list[tuple[str, bytes]]:
    items = []
    for path in photograph_files():
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
        h, w = rgb.shape[:2]
        crops = {
            "whole": rgb,
            "top_left": rgb[: h // 2, : w // 2],
            "top_right": rgb[: h // 2, w // 2 :],
            "bottom_left": rgb[h // 2 :, : w // 2],
            "bottom_right": rgb[h // 2 :, w // 2 :],
            "centre": rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4],
        }
        items += [(f"{path.stem}:{k}", _png(v)) for k, v in crops.items()]
    return items


def _drawings(count: int = 12) -> list[tuple[str, bytes]]:
    items = []
    for seed in range(count):
        rng = np.random.default_rng(1000 + seed)
        background = tuple(int(v) for v in rng.integers(150, 256, 3))
        image = Image.new("RGB", (320, 320), background)
        draw = ImageDraw.Draw(image)
        if seed % 4 == 3:  # a bar chart
            for i, height in enumerate(rng.integers(30, 280, 8)):
                colour = tuple(int(v) for v in rng.integers(0, 200, 3))
                draw.rectangle([20 + i * 36, 300 - int(height), 44 + i * 36, 300], fill=colour)
            draw.line([10, 300, 310, 300], fill=(0, 0, 0), width=2)
        else:
            for _ in range(int(rng.integers(4, 12))):
                x0, y0, x1, y1 = (
                    int(v) for v in np.sort(rng.integers(0, 320, 4).reshape(2, 2), 0).ravel()
                )
                colour = tuple(int(v) for v in rng.integers(0, 256, 3))
                shape = int(rng.integers(0, 3))
                box = [x0, y0, max(x1, x0 + 5), max(y1, y0 + 5)]
                if shape == 0:
                    draw.ellipse(box, fill=colour, outline=(0, 0, 0))
                elif shape == 1:
                    draw.rectangle(box, outline=colour, width=4)
                else:
                    draw.line(box, fill=colour, width=6)
            draw.text((20, 20), f"drawing {seed}", fill=(0, 0, 0))
        items.append((f"drawing_{seed}", _png(np.asarray(image))))
    return items


def _synthetic() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(7)
    size = 256
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - size / 2, y - size / 2)
    images = {
        "uniform_noise": rng.integers(0, 256, (size, size)),
        "gaussian_noise": np.clip(rng.normal(128, 50, (size, size)), 0, 255),
        "salt_and_pepper": rng.choice([0, 255], (size, size)),
        "colour_noise": rng.integers(0, 256, (size, size, 3)),
        "flat_grey": np.full((size, size), 128),
        "black": np.zeros((size, size)),
        "white": np.full((size, size), 255),
        "gradient": np.tile(np.linspace(0, 255, size), (size, 1)),
        "checkerboard": ((x // 32 + y // 32) % 2) * 255,
        "rings": (np.sin(r / 6) * 127 + 128),
    }
    return [(k, _png(v.astype(np.uint8))) for k, v in images.items()]


def _dicoms() -> tuple[list[tuple[str, str]], list[tuple[str, bytes]]]:
    files = [(n, dicom_file(n)) for n in CT_MR_US]
    present = [(n, str(p)) for n, p in files if p is not None]
    decoded = cxrlake.decode([p for _, p in present])
    pixels = []
    for (name, _), w, h, px in zip(
        present,
        decoded.column("width").to_pylist(),
        decoded.column("height").to_pylist(),
        decoded.column("pixels").to_pylist(),
        strict=True,
    ):
        if px is not None:
            pixels.append((f"{name}:pixels", _png(np.frombuffer(px, np.uint8).reshape(h, w))))
    return present, pixels


def _with_attribute(data: bytes, group: int, element: int, value: bytes) -> bytes:
    """``data`` (explicit-VR little-endian DICOM) with the CS attribute (group, element) set to
    ``value`` of the same even length (a byte patch: no DICOM library needed)."""
    tag = struct.pack("<HH", group, element) + b"CS"
    at = data.index(tag, 132)
    length = struct.unpack("<H", data[at + 6 : at + 8])[0]
    if length != len(value):
        raise ValueError(f"({group:04X},{element:04X}) holds {length} bytes, not {len(value)}")
    return data[: at + 8] + value + data[at + 8 + length :]


def _relabelled_chest() -> list[tuple[str, bytes]]:
    """A chest film (Modality CR, ViewPosition PA) whose header says Modality MG, and one whose
    header says ViewPosition LL."""
    path = dicom_file(CHEST_DICOM)
    if path is None:
        return []
    data = path.read_bytes()
    return [
        (f"{CHEST_DICOM}:Modality=MG", _with_attribute(data, 0x0008, 0x0060, b"MG")),
        (f"{CHEST_DICOM}:ViewPosition=LL", _with_attribute(data, 0x0018, 0x5101, b"LL")),
    ]


def non_chest_inputs() -> dict[str, Sequence[tuple[str, str | bytes]]]:
    """The non-chest groups (see the module docs)."""
    dicoms, pixels = _dicoms()
    return {
        "photographs": _photographs(),
        "drawings": _drawings(),
        "ct_mr_us_dicom": dicoms,
        "ct_mr_us_pixels": pixels,
        "dicom_other_modality": _relabelled_chest(),
        "synthetic": _synthetic(),
    }


def shifted_chest_films(paths: list[str]) -> dict[str, list[tuple[str, bytes]]]:
    """Each shift applied to each of ``paths`` (chest films), as PNG bytes."""
    rng = np.random.default_rng(11)
    out: dict[str, list[tuple[str, bytes]]] = {
        k: []
        for k in ("inverted", "rotated_90", "upside_down", "crop_50", "lateral_like", "noise_60")
    }
    for path in paths:
        with Image.open(path) as image:
            gray = np.asarray(ImageOps.exif_transpose(image).convert("L"))
        h, w = gray.shape
        name = Path(path).name
        half = gray[:, : w // 2]
        lateral = np.asarray(Image.fromarray(half).resize((w, h), Image.Resampling.BILINEAR))
        noisy = np.clip(gray + rng.normal(0, 60, gray.shape), 0, 255).astype(np.uint8)
        shifted = {
            "inverted": 255 - gray,
            "rotated_90": np.rot90(gray),
            "upside_down": gray[::-1],
            "crop_50": gray[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4],
            "lateral_like": lateral,
            "noise_60": noisy,
        }
        for k, v in shifted.items():
            out[k].append((f"{name}:{k}", _png(np.ascontiguousarray(v))))
    return out
