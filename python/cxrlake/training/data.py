"""Labelled chest X-ray listing, patient-grouped split and the contract preprocessing.

The folder layout is the Kaggle one: ``<root>/<NORMAL|PNEUMONIA>/*.jpeg``. Patients are read from
the file names (``personN_`` for PNEUMONIA, ``IM-NNNN`` / ``NORMAL2-IM-NNNN`` for NORMAL); files
with identical bytes are also kept together so an exact duplicate never straddles the split.

Two splits: :func:`patient_grouped_split` (random patients, the split of models <= 1.1.0) and
:func:`acquisition_split` (the default from 1.2.0): the file names also carry the acquisition
order (``IM-`` before ``NORMAL2-IM-``, rising image numbers; rising ``personN`` numbers), and
whole batches of the latest films are held out, as a later acquisition would arrive.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cxrlake.provenance import patient_id

LABELS: tuple[str, str] = ("NORMAL", "PNEUMONIA")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class LabelledImage:
    """One labelled file: ``path``, ``label`` (0 = NORMAL, 1 = PNEUMONIA), ``patient`` id."""

    path: str
    label: int
    patient: str
    batch: int = -1  # acquisition batch of a held-out validation film (acquisition_split)


def list_labelled_images(root: str | os.PathLike[str]) -> list[LabelledImage]:
    """Every image under ``root/NORMAL`` and ``root/PNEUMONIA``, sorted by path.

    Raises ``FileNotFoundError`` when neither class folder exists.
    """
    root = Path(root)
    records: list[LabelledImage] = []
    for label, name in enumerate(LABELS):
        folder = root / name
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                records.append(LabelledImage(str(entry), label, patient_id(entry.name)))
    if not records:
        raise FileNotFoundError(f"no NORMAL/PNEUMONIA images under {root}")
    return records


def _file_digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def split_groups(records: Sequence[LabelledImage]) -> list[int]:
    """Group index per record: records sharing a patient or identical bytes share a group."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(_file_digest, (r.path for r in records)))
    for i, record in enumerate(records):
        for key in (f"patient:{record.label}:{record.patient}", f"sha256:{digests[i]}"):
            j = first_seen.setdefault(key, i)
            parent[find(i)] = find(j)
    roots = [find(i) for i in range(len(records))]
    ids = {root: n for n, root in enumerate(sorted(set(roots)))}
    return [ids[r] for r in roots]


def patient_grouped_split(
    records: Sequence[LabelledImage], val_fraction: float = 0.18, seed: int = 42
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Split into (train, validation) with no group on both sides, stratified by label.

    Per label, groups are shuffled with ``seed`` and moved to validation until it holds
    ``val_fraction`` of that label's images. A group's label is its majority label.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    groups = split_groups(records)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    rng = random.Random(seed)
    val_groups: set[int] = set()
    for label in range(len(LABELS)):
        label_groups = sorted(
            g
            for g, idx in members.items()
            if round(sum(records[i].label for i in idx) / len(idx)) == label
        )
        rng.shuffle(label_groups)
        target = val_fraction * sum(len(members[g]) for g in label_groups)
        taken = 0
        for g in label_groups:
            if taken >= target:
                break
            val_groups.add(g)
            taken += len(members[g])
    train = [r for r, g in zip(records, groups, strict=True) if g not in val_groups]
    val = [r for r, g in zip(records, groups, strict=True) if g in val_groups]
    return train, val


_ACQUISITION_PATTERNS = (
    (re.compile(r"^IM-(\d+)-(\d+)"), 0),
    (re.compile(r"^NORMAL2-IM-(\d+)-(\d+)"), 1),
    (re.compile(r"^person(\d+)_(?:bacteria|virus)_(\d+)"), 0),
)


def acquisition_key(file_name: str) -> tuple[int, int, int] | None:
    """Acquisition order of a Kaggle file name: (scheme, patient number, image number).

    NORMAL: the ``IM-NNNN`` scheme comes before ``NORMAL2-IM-NNNN`` (scheme 0, then 1), each
    numbered upwards. PNEUMONIA: ``personN_bacteria_K`` / ``personN_virus_K`` share one patient
    numbering (a patient may have both kinds) and K rises with N. ``None`` for other names.
    """
    for pattern, scheme in _ACQUISITION_PATTERNS:
        match = pattern.match(file_name)
        if match:
            return scheme, int(match.group(1)), int(match.group(2))
    return None


def acquisition_batches(records: Sequence[LabelledImage], n_batches: int = 12) -> list[int]:
    """Acquisition batch ``0 .. n_batches - 1`` per record (``n_batches - 1`` = the latest films).

    Per class, the groups of :func:`split_groups` (a patient, merged with files of identical
    bytes) are ordered by their earliest film's :func:`acquisition_key` and cut into
    ``n_batches`` runs of about equal image counts; a group's class is its majority label and a
    whole group gets one batch, so no patient or duplicate is in two batches. Files without a
    known name scheme sort first (they are never held out as "later" films).
    """
    if n_batches < 2:
        raise ValueError(f"n_batches must be >= 2, got {n_batches}")
    groups = split_groups(records)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    batch_of_group: dict[int, int] = {}
    for label in range(len(LABELS)):
        label_groups = [
            g
            for g, idx in members.items()
            if round(sum(records[i].label for i in idx) / len(idx)) == label
        ]

        def order(g: int) -> tuple[int, tuple[int, int, int]]:
            keys = [acquisition_key(Path(records[i].path).name) for i in members[g]]
            known = [k for k in keys if k is not None]
            return (1, min(known)) if known else (0, (0, 0, 0))

        label_groups.sort(key=order)
        total = sum(len(members[g]) for g in label_groups)
        seen = 0
        for g in label_groups:
            # the batch of the group's middle image in this class's acquisition order
            middle = seen + len(members[g]) / 2.0
            batch_of_group[g] = min(n_batches - 1, int(middle / total * n_batches))
            seen += len(members[g])
    return [batch_of_group[g] for g in groups]


def acquisition_split(
    records: Sequence[LabelledImage], n_batches: int = 12, held_out: int = 3
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(train, validation): the latest ``held_out`` of ``n_batches`` acquisition batches held out.

    The validation records carry their ``batch``; both classes have films in every batch, so
    each held-out batch has its own AUC, sensitivity and specificity. Deterministic (no seed).
    """
    if not 1 <= held_out < n_batches:
        raise ValueError(f"held_out must be in [1, {n_batches - 1}], got {held_out}")
    batches = acquisition_batches(records, n_batches)
    first_held = n_batches - held_out
    train = [r for r, b in zip(records, batches, strict=True) if b < first_held]
    val = [replace(r, batch=b) for r, b in zip(records, batches, strict=True) if b >= first_held]
    return train, val


def load_grayscale(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Decode, apply EXIF orientation, 8-bit grayscale, bilinear resize: uint8 ``[size, size]``.

    Exactly steps 1-2 of the ONNX model contract in docs/architecture.md.
    """
    from PIL import Image, ImageOps  # training only: the lakehouse needs none of PIL

    with Image.open(path) as image:
        gray = ImageOps.exif_transpose(image).convert("L")
        return np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def load_pixel_cache(paths: Sequence[str], size: int, workers: int = 2) -> np.ndarray:
    """Every image of ``paths`` decoded with :func:`load_grayscale`: uint8 ``[N, size, size]``."""
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, pixels in enumerate(pool.map(lambda p: load_grayscale(p, size), paths)):
            out[i] = pixels
    return out


def normalise(pixels: np.ndarray, mean: float, std: float, channels: int = 3) -> np.ndarray:
    """Step 3 of the contract: uint8 ``[N, H, W]`` -> float32 ``[N, C, H, W]``, (x/255-mean)/std."""
    x = (pixels.astype(np.float32) / 255.0 - mean) / std
    return np.repeat(x[:, None, :, :], channels, axis=1)
