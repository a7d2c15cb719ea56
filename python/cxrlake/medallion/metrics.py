"""Binary classification metrics: one module for training, both engines and the report.

- `roc_auc`: area under the ROC curve, None when only one class is present.
- `choose_threshold`, `binary_metrics`: the decision-threshold rule and the full metric set used
  by training and the model card.
- `agreement_metrics`, `cohen_kappa`: model-radiologist agreement (``gold.review_agreement``).
- `model_performance`: the ``gold.model_performance`` rows of a set of predictions, one per
  (model, version, labelled split), with a deterministic ``evaluation_id``. Both engines call it on
  the rows the evaluation rule (`cxrlake.medallion.rules.EVALUATION_INPUT`) selects.

Threshold rule (documented in MODEL_CARD.md): among all thresholds whose validation sensitivity
is >= ``target_sensitivity``, take the one with the highest specificity (ties: the highest
threshold). Missing a pneumonia costs more than a false alarm.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxrlake.columns import Row
from cxrlake.medallion import schemas
from cxrlake.medallion.identity import to_utc, utc_now


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula, ties averaged.

    ``labels``: 0/1 or bool (1 = positive); ``scores``: higher means more positive.
    None when ``labels`` holds a single class (the area is undefined).
    """
    y_true = np.asarray(labels).astype(bool)
    score = np.asarray(scores, dtype=np.float64)
    n_pos = int(y_true.sum())
    n_neg = int(y_true.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(score.size, dtype=np.float64)
    sorted_scores = score[order]
    # average ranks over ties (1-based)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def choose_threshold(
    labels: np.ndarray, scores: np.ndarray, target_sensitivity: float = 0.95
) -> float:
    """Highest threshold keeping sensitivity >= ``target_sensitivity`` (= best specificity).

    With ``predicted = score >= threshold``, raising the threshold can only lower sensitivity and
    raise specificity, so the rule is the largest positive score whose inclusion still reaches the
    target. The result is lowered to the midpoint with the next smaller score so that tiny
    numeric differences (e.g. int8 vs fp32, Rust vs PIL resize) do not flip the boundary case.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.sort(scores[labels])[::-1]
    if len(pos) == 0:
        raise ValueError("threshold rule needs positive examples")
    needed = int(np.ceil(target_sensitivity * len(pos) - 1e-9))
    needed = min(max(needed, 1), len(pos))
    threshold = pos[needed - 1]
    below = scores[scores < threshold]
    if len(below):
        threshold = (threshold + below.max()) / 2.0
    return float(threshold)


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, calibration_bins: int = 10
) -> dict:
    """Accuracy, precision, sensitivity, specificity, F1, AUC, Brier, confusion, calibration.

    ``labels`` are 0/1 (1 = PNEUMONIA), ``scores`` probabilities in [0, 1];
    ``predicted = score >= threshold``. Ratios with a zero denominator are NaN; ``auc`` is None
    when only one class is present.
    """
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    pred = (s >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())

    def ratio(a: int, b: int) -> float:
        return float(a / b) if b else float("nan")

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    edges = np.linspace(0.0, 1.0, calibration_bins + 1)
    bins = []
    for k in range(calibration_bins):
        upper = s <= edges[k + 1] if k == calibration_bins - 1 else s < edges[k + 1]
        inside = (s >= edges[k]) & upper
        if inside.any():
            bins.append(
                {
                    "lower": float(edges[k]),
                    "upper": float(edges[k + 1]),
                    "count": int(inside.sum()),
                    "mean_probability": float(s[inside].mean()),
                    "observed_rate": float(y[inside].mean()),
                }
            )
    ece = sum(b["count"] * abs(b["mean_probability"] - b["observed_rate"]) for b in bins) / len(s)
    return {
        "n": int(len(y)),
        "n_pneumonia": int(y.sum()),
        "n_normal": int((1 - y).sum()),
        "threshold": float(threshold),
        "accuracy": ratio(tp + tn, len(y)),
        "precision": precision,
        "sensitivity": recall,
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "auc": roc_auc(y, s),
        "brier": float(np.mean((s - y) ** 2)),
        "ece": float(ece),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "calibration": bins,
    }


def predictions_fingerprint(prediction_ids: Sequence[str]) -> str:
    """sha256 over the sorted prediction ids of one split: changes iff the prediction set does."""
    h = hashlib.sha256()
    for pid in sorted(prediction_ids):
        h.update(pid.encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()


def evaluation_id(
    model_name: str,
    model_version: str,
    split: str,
    fingerprint: str,
    threshold: float | None = None,
) -> str:
    """Deterministic evaluation id of one (model, split, prediction set, decision threshold):
    the same predictions re-decided at another threshold (a site's) are evaluated again, so the
    newest metrics are always those of the labels the predictions carry."""
    decided = "" if threshold is None else repr(float(threshold))
    key = "\x1f".join((model_name, model_version, split, fingerprint, decided))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def model_performance(
    predictions: pa.RecordBatch | pa.Table,
    threshold: float | None = None,
    evaluated_at: dt.datetime | None = None,
) -> pa.RecordBatch:
    """Metrics per (model_name, model_version, dataset_split) over labelled predictions.

    ``predictions``: rows with at least ``prediction_id``, ``model_name``, ``model_version``,
    ``dataset_split``, ``true_label``, ``predicted_label``, ``prediction_probability``; unlabelled
    rows (NULL ``true_label``) are ignored, and a split with no labelled row gives no row.
    ``confusion_matrix`` is JSON ``{"labels": ["NORMAL", "PNEUMONIA"], "matrix": [[tn, fp],
    [fn, tp]], "tn": .., "fp": .., "fn": .., "tp": ..}`` (rows = true label, columns = predicted).
    Precision, recall and F1 are for the positive class PNEUMONIA (0 when undefined).
    ``threshold`` is recorded as given (the model's decision threshold). ``flagged_samples``:
    how many of the evaluated films were flagged out of distribution (they are included in the
    metrics; NULL when ``predictions`` has no ``out_of_distribution`` column).
    """
    evaluated_at = to_utc(evaluated_at) or utc_now()
    table = pa.table(predictions) if isinstance(predictions, pa.RecordBatch) else predictions
    table = table.filter(pc.is_valid(table.column("true_label")))
    rows = []
    if table.num_rows:
        groups = table.group_by(["model_name", "model_version", "dataset_split"]).aggregate([])
        for key in groups.to_pylist():
            mask = pc.and_(
                pc.and_(
                    pc.equal(table.column("model_name"), key["model_name"]),
                    pc.equal(table.column("model_version"), key["model_version"]),
                ),
                pc.equal(table.column("dataset_split"), key["dataset_split"]),
            )
            rows.append(
                _evaluation_row(
                    table.filter(mask),
                    key["model_name"],
                    key["model_version"],
                    key["dataset_split"],
                    threshold,
                    evaluated_at,
                )
            )
    rows.sort(key=lambda r: (r["model_name"], r["model_version"], r["dataset_split"]))
    return pa.RecordBatch.from_pylist(rows, schema=schemas.GOLD_PERFORMANCE)


def _evaluation_row(
    part: pa.Table,
    model_name: str,
    model_version: str,
    split: str,
    threshold: float | None,
    evaluated_at: dt.datetime,
) -> dict[str, object]:
    """The ``gold.model_performance`` row of one (model, version, split)'s labelled predictions."""
    y = np.asarray(part.column("true_label").to_numpy(zero_copy_only=False)) == 1
    yhat = np.asarray(part.column("predicted_label").to_numpy(zero_copy_only=False)) == 1
    prob = part.column("prediction_probability").to_numpy(zero_copy_only=False)
    tp = int(np.sum(y & yhat))
    tn = int(np.sum(~y & ~yhat))
    fp = int(np.sum(~y & yhat))
    fn = int(np.sum(y & ~yhat))
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    fingerprint = predictions_fingerprint(part.column("prediction_id").to_pylist())
    flagged = (
        int(pc.sum(pc.fill_null(part.column("out_of_distribution"), False)).as_py() or 0)
        if "out_of_distribution" in part.column_names
        else None
    )
    matrix = {"matrix": [[tn, fp], [fn, tp]], "tn": tn, "fp": fp, "fn": fn, "tp": tp}
    return {
        "evaluation_id": evaluation_id(model_name, model_version, split, fingerprint, threshold),
        "model_name": model_name,
        "model_version": model_version,
        "dataset_split": split,
        "accuracy": _safe_div(tp + tn, y.size),
        "precision": precision,
        "recall": recall,
        "f1_score": _safe_div(2 * precision * recall, precision + recall),
        "auc_roc": roc_auc(y, prob),
        "confusion_matrix": json.dumps({"labels": list(schemas.LABEL_NAMES), **matrix}),
        "total_samples": int(y.size),
        "evaluated_at": evaluated_at,
        "evaluation_date": evaluated_at.date(),
        "threshold": threshold,
        "predictions_fingerprint": fingerprint,
        "flagged_samples": flagged,
    }


# ---------------------------------------------------------------- model-radiologist agreement
# Over the review tables (gold.prediction_feedback, silver.label_history; schemas in
# `cxrlake.review.tables`). Rows of ``gold.review_agreement``; the review app computes them
# locally and on Databricks with this one function.


def cohen_kappa(a: Sequence[int], b: Sequence[int]) -> float | None:
    """Cohen's kappa of two raters over binary labels; None when undefined (no items, or a
    chance agreement of 1)."""
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


def latest_verdicts(feedback: Sequence[Row]) -> dict[tuple[str, str], Row]:
    """The verdict that counts per (prediction_id, radiologist_id): the latest one (by
    feedback_timestamp, then feedback_id)."""
    latest: dict[tuple[str, str], Row] = {}
    for row in sorted(feedback, key=lambda r: (r["feedback_timestamp"], r["feedback_id"])):
        latest[(row["prediction_id"], row["radiologist_id"])] = dict(row)
    return latest


def agreement_metrics(
    predictions: Sequence[Row],
    feedback: Sequence[Row],
    current: dict[str, Row],
    evaluated_at: dt.datetime,
) -> list[Row]:
    """``gold.review_agreement`` rows: one per (model_name, model_version) with verdicts.

    ``predictions``: current gold rows (prediction_id, image_id, predicted_label, model_name,
    model_version); ``feedback``: gold.prediction_feedback rows; ``current``: image_id -> the
    current silver.label_history row (label, label_name, source). Over the latest verdict per
    (prediction, reviewer): agreement rate = decisive verdicts (agree / disagree) whose label is
    the model's / decisive verdicts; Cohen's kappa of model vs radiologist labels; accuracy of the
    model against the current labels (folder labels with corrections applied); images whose
    current label comes from a radiologist; per-reviewer counts (agree, disagree, uncertain,
    differs_from_current_label). ``evaluation_id`` is deterministic per (model, verdict set).
    """
    names = list(schemas.LABEL_NAMES)
    preds = {p["prediction_id"]: p for p in predictions}
    latest = [v for v in latest_verdicts(feedback).values() if v["prediction_id"] in preds]
    groups: dict[tuple[str, str], list[Row]] = {}
    for v in latest:
        p = preds[v["prediction_id"]]
        groups.setdefault((p["model_name"], p["model_version"]), []).append(v)
    rows = []
    for (name, version), verdicts in sorted(groups.items()):
        model_labels: list[int] = []
        reader_labels: list[int] = []
        per_reviewer: dict[str, dict[str, int]] = {}
        for v in verdicts:
            p = preds[v["prediction_id"]]
            counts = per_reviewer.setdefault(
                v["radiologist_id"],
                {"agree": 0, "disagree": 0, "uncertain": 0, "differs_from_current_label": 0},
            )
            counts[v["feedback_type"]] += 1
            if v.get("correct_label") in names:
                model_labels.append(int(p["predicted_label"]))
                reader_labels.append(names.index(v["correct_label"]))
                cur = current.get(p["image_id"])
                if cur is not None and cur["label_name"] != v["correct_label"]:
                    counts["differs_from_current_label"] += 1
        agree = sum(1 for x, y in zip(model_labels, reader_labels, strict=True) if x == y)
        own = [
            p for p in preds.values() if (p["model_name"], p["model_version"]) == (name, version)
        ]
        labelled = [p for p in own if p["image_id"] in current]
        correct = sum(
            1 for p in labelled if current[p["image_id"]]["label"] == p["predicted_label"]
        )
        corrected = sum(1 for p in labelled if current[p["image_id"]]["source"] != "folder")
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
