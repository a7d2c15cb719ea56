"""Figures on the held-out acquisition batches: per batch and over them, what each batch holds,
and the recipe candidates scored there (``candidate.json`` of sibling runs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrlake.medallion.metrics import binary_metrics, roc_auc
from cxrlake.training import data as data_mod
from cxrlake.training.config import JsonObject


def heldout_metrics(
    val: Sequence[data_mod.LabelledImage], prob: np.ndarray, threshold: float
) -> JsonObject:
    """Figures per held-out acquisition batch and over them (AUC mean and worst).

    ``val`` are validation records (their ``batch``; -1 for a patient split), ``prob`` their
    scores. Returns ``{"batches": [{batch, images, pneumonia, auc, sensitivity, specificity,
    accuracy}], "mean_auc", "worst_auc", "worst_batch"}``; a batch with a single class has AUC
    ``None`` and does not count.
    """
    labels = np.array([r.label for r in val], dtype=np.int64)
    batch_ids = np.array([r.batch for r in val])
    rows: list[JsonObject] = []
    for b in sorted(set(batch_ids.tolist())):
        mask = batch_ids == b
        y, p = labels[mask], np.asarray(prob)[mask]
        both = 0 < y.sum() < len(y)
        m = binary_metrics(y, p, threshold) if both else {}
        auc = roc_auc(y, p) if both else None
        rows.append(
            {
                "batch": int(b),
                "images": int(mask.sum()),
                "pneumonia": int(y.sum()),
                "auc": None if auc is None else float(auc),
                "sensitivity": float(np.mean(p[y == 1] >= threshold)) if y.sum() else None,
                "specificity": float(np.mean(p[y == 0] < threshold)) if (y == 0).sum() else None,
                "accuracy": m.get("accuracy"),
            }
        )
    aucs = [r["auc"] for r in rows if r["auc"] is not None]
    worst = min(rows, key=lambda r: r["auc"] if r["auc"] is not None else 2.0)
    return {
        "batches": rows,
        "mean_auc": float(np.mean(aucs)) if aucs else None,
        "worst_auc": float(np.min(aucs)) if aucs else None,
        "worst_batch": worst["batch"],
    }


def describe_batches(val: Sequence[data_mod.LabelledImage]) -> list[JsonObject]:
    """Per held-out batch: its films' first and last names per class (acquisition order)."""
    rows = []
    for b in sorted({r.batch for r in val}):
        row: JsonObject = {"batch": b}
        for label, name in enumerate(data_mod.LABELS):
            names = [Path(r.path).name for r in val if r.batch == b and r.label == label]
            keyed = sorted(names, key=lambda n: data_mod.acquisition_key(n) or (-1, 0, 0))
            row[name] = {
                "films": len(names),
                "first": keyed[0] if keyed else None,
                "last": keyed[-1] if keyed else None,
            }
        rows.append(row)
    return rows


def gather_candidates(run_dir: Path) -> list[JsonObject]:
    """The ``candidate.json`` figures of ``run_dir`` and its sibling runs (recipe comparison)."""
    rows = []
    for path in sorted(Path(run_dir).resolve().parent.glob("*/candidate.json")):
        figures = json.loads(path.read_text())
        figures.pop("history", None)
        rows.append(figures)
    return rows
