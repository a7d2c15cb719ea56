"""Binary classification metrics: one module for training, both engines and the report.

- `roc_auc`: area under the ROC curve, None when only one class is present.
- `choose_threshold`, `binary_metrics`: the decision-threshold rule and the full metric set used
  by training and the model card.
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


def evaluation_id(model_name: str, model_version: str, split: str, fingerprint: str) -> str:
    """Deterministic evaluation id of one (model, split, prediction set)."""
    key = "\x1f".join((model_name, model_version, split, fingerprint))
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
    ``threshold`` is recorded as given (the model's decision threshold).
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
            part = table.filter(mask)
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
            rows.append(
                {
                    "evaluation_id": evaluation_id(
                        key["model_name"], key["model_version"], key["dataset_split"], fingerprint
                    ),
                    "model_name": key["model_name"],
                    "model_version": key["model_version"],
                    "dataset_split": key["dataset_split"],
                    "accuracy": _safe_div(tp + tn, y.size),
                    "precision": precision,
                    "recall": recall,
                    "f1_score": _safe_div(2 * precision * recall, precision + recall),
                    "auc_roc": roc_auc(y, prob),
                    "confusion_matrix": json.dumps(
                        {
                            "labels": list(schemas.LABEL_NAMES),
                            "matrix": [[tn, fp], [fn, tp]],
                            "tn": tn,
                            "fp": fp,
                            "fn": fn,
                            "tp": tp,
                        }
                    ),
                    "total_samples": int(y.size),
                    "evaluated_at": evaluated_at,
                    "evaluation_date": evaluated_at.date(),
                    "threshold": threshold,
                    "predictions_fingerprint": fingerprint,
                }
            )
    rows.sort(key=lambda r: (r["model_name"], r["model_version"], r["dataset_split"]))
    return pa.RecordBatch.from_pylist(rows, schema=schemas.GOLD_PERFORMANCE)
