"""Binary classification metrics and the decision-threshold rule.

Threshold rule (documented in MODEL_CARD.md): among all thresholds whose validation sensitivity
is >= ``target_sensitivity``, take the one with the highest specificity (ties: the highest
threshold). Missing a pneumonia costs more than a false alarm.
"""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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
    ``predicted = score >= threshold``.
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
