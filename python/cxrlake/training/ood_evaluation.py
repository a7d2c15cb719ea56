"""What the core's one forward pass says about a set of inputs (`embed`), and the flag rates of
a model with ``ood_score`` (`evaluate`): on the validation films, the fixed non-chest set and
the shifted chest films of `cxrlake.training.ood_set`. `cxrlake.training.ood` fits the
reference on the first and writes these rates to ``ood.json``."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import cxrlake
from cxrlake.training import ood_set
from cxrlake.training.config import JsonObject
from cxrlake.training.data import LabelledImage
from cxrlake.training.progress import log_ood as log

ModelFile = str | os.PathLike[str]


@dataclass
class Outputs:
    """The core's outputs per input: ``embedding`` float64 [N, D] (NaN rows on error),
    ``probability``, ``quality``, ``ood_score`` float64 [N] (NaN when absent), the flag, its
    reason and the error."""

    embedding: np.ndarray
    probability: np.ndarray
    quality: np.ndarray
    ood_score: np.ndarray
    flagged: list[bool | None]
    reason: list[str | None]
    error: list[str | None]


def embed(
    model_path: ModelFile, images: Sequence[str | bytes], threads: int | None = None
) -> Outputs:
    """The core's one-pass outputs (`cxrlake.analyze`, no heatmap) for ``images`` (paths or
    encoded bytes)."""
    batch = cxrlake.analyze(list(images), model=str(model_path), threads=threads, heatmap=False)
    names = batch.schema.names
    emb = batch.column("embedding").to_pylist()
    dim = next((len(e) for e in emb if e is not None), 0)
    matrix = np.array([e if e is not None else [np.nan] * dim for e in emb], dtype=np.float64)

    def floats(name: str) -> np.ndarray:
        if name not in names:
            return np.full(len(emb), np.nan)
        return np.array(
            [np.nan if v is None else v for v in batch.column(name).to_pylist()], dtype=float
        )

    def column(name: str) -> list[object]:
        return batch.column(name).to_pylist() if name in names else [None] * len(emb)

    return Outputs(
        embedding=matrix,
        probability=floats("probability"),
        quality=floats("quality_score"),
        ood_score=floats("ood_score"),
        flagged=[None if v is None else bool(v) for v in column("out_of_distribution")],
        reason=[None if v is None else str(v) for v in column("ood_reason")],
        error=[None if v is None else str(v) for v in batch.column("error").to_pylist()],
    )


def _rate(flags: Sequence[bool | None]) -> float | None:
    values = [bool(f) for f in flags if f is not None]
    return round(sum(values) / len(values), 4) if values else None


def evaluate(
    model_path: ModelFile,
    validation: Sequence[LabelledImage],
    threads: int | None = None,
    limit: int | None = None,
) -> JsonObject:
    """Flag rates of ``model_path``: on the ``validation`` films (in distribution, never used
    by the fit), on each group of the fixed non-chest set and on the shifted chest films (made
    from validation films) of :mod:`cxrlake.training.ood_set`."""
    paths = [r.path for r in validation][: limit or None]
    started = time.time()
    val = embed(model_path, paths, threads)
    groups: dict[str, JsonObject] = {}
    for name, items in ood_set.non_chest_inputs().items():
        groups[name] = _group(model_path, items, threads)
    shifted: dict[str, JsonObject] = {}
    for name, films in ood_set.shifted_chest_films(paths[: ood_set.SHIFT_FILMS]).items():
        shifted[name] = _group(model_path, films, threads)
    non_chest = [f for g in groups.values() for f in g["flags"]]
    result: JsonObject = {
        "validation": {
            "films": len(paths),
            "flag_rate": _rate(val.flagged),
            "median_score": round(float(np.nanmedian(val.ood_score)), 4),
        },
        "non_chest": {
            "inputs": len(non_chest),
            "flag_rate": _rate(non_chest),
            "groups": {
                k: {kk: v[kk] for kk in ("inputs", "flag_rate", "median_score", "by")}
                for k, v in groups.items()
            },
        },
        "shifted_chest": {
            k: {kk: v[kk] for kk in ("inputs", "flag_rate", "median_score")}
            for k, v in shifted.items()
        },
        "seconds": round(time.time() - started, 1),
    }
    log(
        f"validation flagged {result['validation']['flag_rate']}, non-chest flagged "
        f"{result['non_chest']['flag_rate']} of {len(non_chest)}"
    )
    return result


def _group(
    model_path: ModelFile, items: Sequence[tuple[str, str | bytes]], threads: int | None
) -> JsonObject:
    """Flag rate, median score and what flagged (the DICOM header or the score) of ``items``
    (name, path or bytes)."""
    out = embed(model_path, [i for _, i in items], threads)
    flags = [f if e is None else None for f, e in zip(out.flagged, out.error, strict=True)]
    by_header = sum(1 for r in out.reason if r and ("DICOM" in r or "lateral" in r))
    return {
        "inputs": len(items),
        "flags": flags,
        "flag_rate": _rate(flags),
        "median_score": round(float(np.nanmedian(out.ood_score)), 4)
        if np.isfinite(out.ood_score).any()
        else None,
        "by": "DICOM header" if by_header else "score",
        "names": [n for n, _ in items],
    }
