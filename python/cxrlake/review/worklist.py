"""The worklist and the agreement figures, computed from plain rows (any engine).

``predictions``: one dict per current gold prediction with at least prediction_id, image_id,
predicted_label, prediction_probability, true_label (folder label), model_name, model_version,
dataset_split, quality_score and threshold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cxrlake.review import tables
from cxrlake.review.tables import LABEL_NAMES, latest_verdicts, need_score

LABEL_FILTERS = ("NORMAL", "PNEUMONIA", "UNLABELLED")


def build_worklist(
    predictions: Iterable[Mapping[str, Any]],
    feedback: Iterable[Mapping[str, Any]],
    current: Mapping[str, Mapping[str, Any]],
    reviewer: str,
    *,
    split: str | None = None,
    label: str | None = None,
    model_version: str | None = None,
    reviewed: str | None = None,
) -> dict[str, Any]:
    """Items ordered by `tables.need_score` (then image_id), filtered, with progress.

    ``label``: folder label NORMAL / PNEUMONIA / UNLABELLED. ``reviewed``: ``yes`` / ``no``
    (any reviewer's verdict), ``mine`` / ``not-mine`` (this reviewer's). Progress counts the
    filtered items (before the reviewed filter) and all items.
    """
    preds = [dict(p) for p in predictions]
    latest = latest_verdicts(feedback)
    by_prediction: dict[str, list[dict]] = {}
    for (pid, _), row in latest.items():
        by_prediction.setdefault(pid, []).append(row)
    options = {
        "split": sorted({p["dataset_split"] for p in preds if p.get("dataset_split")}),
        "label": list(LABEL_FILTERS),
        "model_version": sorted({p["model_version"] for p in preds if p.get("model_version")}),
    }
    items = []
    for p in preds:
        folder = tables.label_name_of(p.get("true_label")) or "UNLABELLED"
        if split and p.get("dataset_split") != split:
            continue
        if label and folder != label:
            continue
        if model_version and p.get("model_version") != model_version:
            continue
        verdicts = by_prediction.get(p["prediction_id"], [])
        mine = next((v for v in verdicts if v["radiologist_id"] == reviewer), None)
        score, reasons = need_score(p)
        cur = current.get(p["image_id"])
        items.append(
            {
                "prediction_id": p["prediction_id"],
                "image_id": p["image_id"],
                "dataset_split": p.get("dataset_split"),
                "folder_label": folder,
                "current_label": cur["label_name"] if cur else None,
                "current_label_source": cur["source"] if cur else None,
                "predicted_label": tables.label_name_of(p.get("predicted_label")),
                "probability": p.get("prediction_probability"),
                "threshold": p.get("threshold"),
                "model_name": p.get("model_name"),
                "model_version": p.get("model_version"),
                "quality_score": p.get("quality_score"),
                "has_heatmap": p.get("heatmap") is not None,
                "need": round(score, 4),
                "reasons": reasons,
                "verdicts": len(verdicts),
                "my_verdict": mine["feedback_type"] if mine else None,
            }
        )
    total = len(items)
    done = sum(1 for i in items if i["verdicts"])
    mine_done = sum(1 for i in items if i["my_verdict"])
    keep = {
        None: lambda i: True,
        "": lambda i: True,
        "yes": lambda i: i["verdicts"] > 0,
        "no": lambda i: i["verdicts"] == 0,
        "mine": lambda i: i["my_verdict"] is not None,
        "not-mine": lambda i: i["my_verdict"] is None,
    }.get(reviewed)
    if keep is None:
        raise tables.ReviewError("reviewed must be one of yes, no, mine, not-mine")
    items = [i for i in items if keep(i)]
    items.sort(key=lambda i: (-i["need"], i["image_id"], i["model_version"] or ""))
    return {
        "items": items,
        "progress": {"reviewed": done, "reviewed_by_me": mine_done, "total": total},
        "options": options,
    }


def cohen_kappa(a: list[int], b: list[int]) -> float | None:
    """Cohen's kappa of two raters over binary labels; None when undefined (no items, or chance
    agreement of 1)."""
    n = len(a)
    if n == 0:
        return None
    observed = sum(1 for x, y in zip(a, b, strict=True) if x == y) / n
    pa1 = sum(a) / n
    pb1 = sum(b) / n
    expected = pa1 * pb1 + (1 - pa1) * (1 - pb1)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def agreement_metrics(
    predictions: Iterable[Mapping[str, Any]],
    feedback: Iterable[Mapping[str, Any]],
    current: Mapping[str, Mapping[str, Any]],
    evaluated_at: Any,
) -> list[dict[str, Any]]:
    """``gold.review_agreement`` rows: one per (model_name, model_version) with verdicts.

    Over the latest verdict per (prediction, reviewer): agreement rate = decisive verdicts whose
    label equals the model's / decisive verdicts; Cohen's kappa of the model's label against the
    radiologist's; accuracy of the model against the current labels (folder labels with
    corrections applied) over its labelled predictions; per-reviewer counts of agree, disagree,
    uncertain and of verdicts that differ from the current label.
    """
    preds = {p["prediction_id"]: dict(p) for p in predictions}
    latest = [v for v in latest_verdicts(feedback).values() if v["prediction_id"] in preds]
    groups: dict[tuple[str, str], list[dict]] = {}
    for v in latest:
        p = preds[v["prediction_id"]]
        groups.setdefault((p["model_name"], p["model_version"]), []).append(v)
    rows = []
    for (name, version), verdicts in sorted(groups.items()):
        model_labels, reader_labels = [], []
        per_reviewer: dict[str, dict[str, int]] = {}
        for v in verdicts:
            p = preds[v["prediction_id"]]
            counts = per_reviewer.setdefault(
                v["radiologist_id"],
                {"agree": 0, "disagree": 0, "uncertain": 0, "differs_from_current_label": 0},
            )
            counts[v["feedback_type"]] += 1
            cur = current.get(p["image_id"])
            if v["correct_label"] in LABEL_NAMES:
                model_labels.append(int(p["predicted_label"]))
                reader_labels.append(LABEL_NAMES.index(v["correct_label"]))
                if cur is not None and cur["label_name"] != v["correct_label"]:
                    counts["differs_from_current_label"] += 1
        agree = sum(1 for x, y in zip(model_labels, reader_labels, strict=True) if x == y)
        model_preds = [
            p
            for p in preds.values()
            if (p["model_name"], p["model_version"])
            == (
                name,
                version,
            )
        ]
        labelled = [p for p in model_preds if p["image_id"] in current]
        correct = sum(
            1 for p in labelled if current[p["image_id"]]["label"] == p["predicted_label"]
        )
        corrected = sum(
            1
            for p in model_preds
            if p["image_id"] in current and current[p["image_id"]]["source"] != tables.FOLDER_SOURCE
        )
        fingerprint = hashlib.sha256(
            "\n".join(sorted(v["feedback_id"] for v in verdicts)).encode()
        ).hexdigest()
        rows.append(
            {
                "evaluation_id": hashlib.sha256(
                    "\x1f".join((name, version, fingerprint)).encode()
                ).hexdigest()[:32],
                "model_name": name,
                "model_version": version,
                "reviewed_predictions": len({v["prediction_id"] for v in verdicts}),
                "verdicts": len(verdicts),
                "agreement_rate": agree / len(model_labels) if model_labels else None,
                "cohen_kappa": cohen_kappa(model_labels, reader_labels),
                "accuracy_current_labels": correct / len(labelled) if labelled else None,
                "labels_corrected": corrected,
                "per_reviewer": json.dumps(per_reviewer, sort_keys=True),
                "evaluated_at": evaluated_at,
                "feedback_fingerprint": fingerprint,
            }
        )
    return rows
