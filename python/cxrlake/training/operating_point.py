"""The default operating point: calibration and a threshold rule that survives a change of site.

Everything here works on validation logits scored under the named acquisition shifts of
:mod:`cxrlake.training.shift` (``{shift name: logits [N]}`` plus the labels), never on test data.
From model 1.2.0 the shipped threshold is no longer this module's rule but the best specificity
with sensitivity >= 0.95 on the held-out later acquisition batches
(:func:`cxrlake.training.train.finalize`); the temperature and the analysis below stay as the
secondary check under simulated shifts.

- Calibration: one temperature ``T`` (``p = sigmoid(logit / T)``) fitted by maximum likelihood on
  the validation films pooled over every shift. It keeps the ranking and the 0.5 point, and is
  folded into the head of the ONNX file (:func:`cxrlake.training.export.apply_temperature`), so
  the shipped probability is the calibrated one.
- Threshold rule ("shift-averaged balanced accuracy"): the logit threshold maximising the mean,
  over the shifts, of (sensitivity + specificity) / 2, taken at the middle of the set of maximising
  thresholds. A rule tuned on the in-distribution split alone lands anywhere in the wide gap
  between the classes (validation AUC ~0.999); averaging over shifts closes the gap from both
  sides, and taking the middle of the optimum keeps either metric away from an edge.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping

import numpy as np

from cxrlake.medallion.metrics import binary_metrics, roc_auc
from cxrlake.training import data as data_mod
from cxrlake.training.config import JsonObject
from cxrlake.training.export import apply_temperature, read_metadata, set_metadata
from cxrlake.training.shift import shifted_logits

#: A threshold rule: logits per shift and labels -> a threshold on the raw logit.
Rule = Callable[[Mapping[str, np.ndarray], np.ndarray], float]

#: Logit thresholds searched by the rules (probability 0.00034 .. 0.99995).
LOGIT_GRID = np.linspace(-8.0, 10.0, 3601)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Numerically stable logistic function."""
    e = np.exp(-np.abs(np.asarray(z, dtype=np.float64)))
    return np.where(np.asarray(z) >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    # log(1 + exp(-z)) for positives, log(1 + exp(z)) for negatives.
    signed = np.where(labels, -z, z)
    return float(np.mean(np.logaddexp(0.0, signed)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood of ``sigmoid(logits / T)``.

    Golden-section search over log T in [log 0.25, log 20] (the NLL is unimodal in T).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    lo, hi = math.log(0.25), math.log(20.0)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(logits, labels, math.exp(a)), _nll(logits, labels, math.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2.0)


def _rates(logits: Mapping[str, np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sensitivity, specificity) per shift and grid threshold: two ``[S, T]`` arrays."""
    y = np.asarray(labels).astype(bool)
    sens, spec = [], []
    for z in logits.values():
        pos, neg = np.sort(z[y]), np.sort(z[~y])
        # predicted positive = logit >= threshold
        sens.append(1.0 - np.searchsorted(pos, LOGIT_GRID, side="left") / len(pos))
        spec.append(np.searchsorted(neg, LOGIT_GRID, side="left") / len(neg))
    return np.array(sens), np.array(spec)


def _middle_of_maximum(score: np.ndarray) -> float:
    best = np.flatnonzero(score >= score.max() - 1e-12)
    return float(LOGIT_GRID[best].mean())


def shift_averaged_balanced_threshold(
    logits: Mapping[str, np.ndarray], labels: np.ndarray
) -> float:
    """The default rule: logit threshold maximising the shift-mean of balanced accuracy."""
    sens, spec = _rates(logits, labels)
    return _middle_of_maximum(((sens + spec) / 2.0).mean(axis=0))


def in_distribution_sensitivity_threshold(
    logits: Mapping[str, np.ndarray], labels: np.ndarray, target: float = 0.98
) -> float:
    """The former rule: highest threshold with sensitivity >= ``target`` on ``none`` only."""
    sens, _ = _rates({"none": logits["none"]}, labels)
    return float(LOGIT_GRID[np.flatnonzero(sens[0] >= target).max()])


def worst_shift_sensitivity_threshold(
    logits: Mapping[str, np.ndarray], labels: np.ndarray, target: float = 0.95
) -> float:
    """Highest threshold keeping sensitivity >= ``target`` under every shift."""
    sens, _ = _rates(logits, labels)
    ok = np.flatnonzero(sens.min(axis=0) >= target)
    return float(LOGIT_GRID[ok.max()]) if len(ok) else float(LOGIT_GRID[0])


def worst_shift_balanced_threshold(logits: Mapping[str, np.ndarray], labels: np.ndarray) -> float:
    """Logit threshold maximising the worst shift's balanced accuracy (minimax)."""
    sens, spec = _rates(logits, labels)
    return _middle_of_maximum(((sens + spec) / 2.0).min(axis=0))


RULES: dict[str, Rule] = {
    "shift-averaged balanced accuracy (1.1.0 rule)": shift_averaged_balanced_threshold,
    "worst-shift balanced accuracy": worst_shift_balanced_threshold,
    "sensitivity >= 0.95 under the worst shift": worst_shift_sensitivity_threshold,
    "sensitivity >= 0.98 on unshifted validation (former)": in_distribution_sensitivity_threshold,
}


def evaluate_threshold(
    logits: Mapping[str, np.ndarray], labels: np.ndarray, threshold_logit: float
) -> dict:
    """Sensitivity and specificity at ``threshold_logit``: unshifted, mean and worst over shifts."""
    y = np.asarray(labels).astype(bool)
    per = {
        name: (float((z[y] >= threshold_logit).mean()), float((z[~y] < threshold_logit).mean()))
        for name, z in logits.items()
    }
    sens = np.array([s for s, _ in per.values()])
    spec = np.array([s for _, s in per.values()])
    names = list(per)
    return {
        "threshold_logit": float(threshold_logit),
        "unshifted_sensitivity": per["none"][0],
        "unshifted_specificity": per["none"][1],
        "mean_sensitivity": float(sens.mean()),
        "mean_specificity": float(spec.mean()),
        "worst_sensitivity": float(sens.min()),
        "worst_sensitivity_shift": names[int(sens.argmin())],
        "worst_specificity": float(spec.min()),
        "worst_specificity_shift": names[int(spec.argmin())],
    }


def leave_one_shift_out(
    logits: Mapping[str, np.ndarray], labels: np.ndarray, rule: Rule
) -> list[JsonObject]:
    """For each shift: the rule chosen without it, evaluated on it (a site the rule never saw)."""
    y = np.asarray(labels).astype(bool)
    rows = []
    for held in logits:
        threshold = rule({k: v for k, v in logits.items() if k != held}, labels)
        z = logits[held]
        rows.append(
            {
                "shift": held,
                "threshold_logit": threshold,
                "sensitivity": float((z[y] >= threshold).mean()),
                "specificity": float((z[~y] < threshold).mean()),
            }
        )
    return rows


def operating_point_analysis(logits: Mapping[str, np.ndarray], labels: np.ndarray) -> JsonObject:
    """Calibration, threshold rules, per-shift table and leave-one-shift-out check.

    ``logits`` are the raw (uncalibrated) head logits per shift. Every threshold reported is in
    the calibrated probability ``sigmoid(logit / temperature)``, which the shipped file outputs.
    """
    y = np.asarray(labels).astype(int)
    pooled = np.concatenate(list(logits.values()))
    pooled_y = np.tile(y, len(logits))
    temperature = fit_temperature(pooled, pooled_y)
    threshold_logit = shift_averaged_balanced_threshold(logits, y)

    def prob(z: np.ndarray | float, t: float) -> np.ndarray:
        return sigmoid(np.asarray(z) / t)

    threshold = float(prob(threshold_logit, temperature))
    calibration = {}
    for label, t in (("before", 1.0), ("after", temperature)):
        unshifted = binary_metrics(y, prob(logits["none"], t), threshold)
        shifted = binary_metrics(pooled_y, prob(pooled, t), threshold)
        calibration[label] = {
            "unshifted_ece": unshifted["ece"],
            "unshifted_brier": unshifted["brier"],
            "shifted_ece": shifted["ece"],
            "shifted_brier": shifted["brier"],
            "shifted_bins": shifted["calibration"],
        }
    per_shift = []
    base = logits["none"]
    for name, z in logits.items():
        m = binary_metrics(y, prob(z, temperature), threshold)
        per_shift.append(
            {
                "shift": name,
                "auc": roc_auc(y, z),
                **{k: m[k] for k in ("sensitivity", "specificity", "accuracy", "ece")},
                # how far the condition moves each class (median calibrated logit)
                "normal_logit_change": float(np.median(z[y == 0] - base[y == 0]) / temperature),
                "pneumonia_logit_change": float(np.median(z[y == 1] - base[y == 1]) / temperature),
            }
        )
    rules = []
    for name, rule in RULES.items():
        t = rule(logits, y)
        at = evaluate_threshold(logits, y, t)
        rules.append({"rule": name, "threshold": float(prob(t, temperature)), **at})
    loso = leave_one_shift_out(logits, y, shift_averaged_balanced_threshold)
    for row in loso:
        row["threshold"] = float(prob(row.pop("threshold_logit"), temperature))
    aucs = [row["auc"] for row in per_shift]
    return {
        "temperature": temperature,
        "threshold": threshold,
        "threshold_logit": threshold_logit,
        "rule": "shift-averaged balanced accuracy",
        "shifts": list(logits),
        "mean_auc": float(np.mean(aucs)),
        "worst_auc": float(np.min(aucs)),
        "calibration": calibration,
        "per_shift": per_shift,
        "rules": rules,
        "leave_one_shift_out": loso,
    }


def calibrate_model_file(
    path: str | os.PathLike[str], logits: Mapping[str, np.ndarray], labels: np.ndarray
) -> JsonObject:
    """Analyse ``logits`` (of the file ``path``), then fold the temperature and write the threshold.

    ``path`` is changed in place: calibrated head, ``cxrlake.threshold`` (calibrated probability)
    and ``cxrlake.threshold_rule``. Returns the analysis of :func:`operating_point_analysis`.
    """
    analysis = operating_point_analysis(logits, labels)
    apply_temperature(path, analysis["temperature"])
    set_metadata(
        path,
        {
            "cxrlake.threshold": f"{analysis['threshold']:.6f}",
            "cxrlake.threshold_rule": "shift-averaged balanced accuracy (validation, "
            f"{len(analysis['shifts'])} simulated acquisition conditions)",
        },
    )
    return analysis


def validation_pixels(
    data: str, size: int, val_fraction: float = 0.18, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 ``[N, size, size]``, labels ``[N]``) of the patient-grouped validation split."""
    records = data_mod.list_labelled_images(data)
    _, val = data_mod.patient_grouped_split(records, val_fraction, seed)
    pixels = data_mod.load_pixel_cache([r.path for r in val], size)
    return pixels, np.array([r.label for r in val], dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    """``python -m cxrlake.training.operating_point``: calibrate and set the threshold of a file.

    For a model whose run directory is gone (``cxrlake train --finalize-only`` does the same for
    a run). Prints the analysis as JSON and writes it to ``--json``.
    """
    parser = argparse.ArgumentParser(prog="python -m cxrlake.training.operating_point")
    parser.add_argument("model", help="ONNX file with the heatmap output (changed in place)")
    parser.add_argument("--data", required=True, help="training folder (NORMAL/, PNEUMONIA/)")
    parser.add_argument("--val-fraction", type=float, default=0.18)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", default=None, help="write the analysis here")
    args = parser.parse_args(argv)
    meta = read_metadata(args.model)
    if float(meta.get("cxrlake.temperature", "1.0")) != 1.0:
        # a second temperature would compound the first: refuse, as the ood tool does
        print(
            f"{parser.prog}: error: {args.model}: already calibrated (cxrlake.temperature is set)",
            file=sys.stderr,
        )
        return 1
    pixels, labels = validation_pixels(
        args.data, int(meta["cxrlake.input_height"]), args.val_fraction, args.seed
    )
    analysis = calibrate_model_file(args.model, shifted_logits(args.model, pixels), labels)
    text = json.dumps(analysis, indent=2)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
