"""The steps of `cxrlake.training.train.finalize`, in order: decode the validation films once,
recalibrate BatchNorm (kept only if it does not lower the held-out AUC), export the final fp32
file, score it and its int8 twin through onnxruntime, choose and ship one, set its operating
point (temperature from the simulated shifts, threshold from the held-out batches), and the
validation figures of the shipped file."""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cxrlake.medallion.metrics import binary_metrics, choose_threshold, roc_auc
from cxrlake.training import data as data_mod
from cxrlake.training.config import JsonObject, TrainConfig
from cxrlake.training.export import (
    contract_metadata,
    export_onnx,
    onnx_predict,
    onnx_session,
    quantize_int8,
    set_metadata,
    torch_onnx_agreement,
)
from cxrlake.training.heldout import heldout_metrics
from cxrlake.training.model import LITE_MEAN, LITE_STD, PneumoniaNet, predict_torch, to_model_input
from cxrlake.training.operating_point import calibrate_model_file, evaluate_threshold
from cxrlake.training.progress import log
from cxrlake.training.run_files import Records, load_saved_split
from cxrlake.training.shift import shifted_logits

#: The secondary check under simulated shifts scores every SHIFT_STRIDE-th validation film.
SHIFT_STRIDE = 3
#: Target sensitivities of the card's operating-point table.
OPERATING_TARGETS = (0.90, 0.95, 0.97, 0.98, 0.99)
_SUMMARY_KEYS = ("auc", "sensitivity", "specificity", "brier", "threshold")


@dataclass
class Validation:
    """A run's split with its validation films decoded once: uint8 ``pixels`` [N, size, size],
    contract ``inputs`` float32 [N, 3, size, size] and ``labels`` int64 [N]."""

    train: Records
    val: Records
    pixels: np.ndarray
    inputs: np.ndarray
    labels: np.ndarray

    def summary(self, prob: np.ndarray, target_sensitivity: float) -> JsonObject:
        """AUC, sensitivity, specificity, Brier and threshold of ``prob`` (threshold rule:
        best specificity with sensitivity >= ``target_sensitivity``)."""
        threshold = choose_threshold(self.labels, prob, target_sensitivity)
        m = binary_metrics(self.labels, prob, threshold)
        return {k: m[k] for k in _SUMMARY_KEYS}


@dataclass
class ShiftedScores:
    """The chosen file's head logits on every ``films``-th validation film under each
    simulated shift (`cxrlake.training.shift`), with those films' ``labels``."""

    films: np.ndarray
    labels: np.ndarray
    logits: dict[str, np.ndarray]


def load_validation(run_dir: Path, cfg: TrainConfig) -> Validation:
    """The run's saved split and its validation films at the run's input size."""
    train, val = load_saved_split(run_dir)
    val_px = data_mod.load_pixel_cache([r.path for r in val], cfg.size, cfg.threads)
    return Validation(
        train=train,
        val=val,
        pixels=val_px,
        inputs=data_mod.normalise(val_px, LITE_MEAN, LITE_STD),
        labels=np.array([r.label for r in val], dtype=np.int64),
    )


@torch.no_grad()
def recalibrate_batchnorm(
    net: PneumoniaNet, pixels: np.ndarray, batch_size: int = 64, seed: int = 0
) -> int:
    """Recompute the running statistics of the trainable BatchNorm layers ("precise BN").

    During fine-tuning the running mean/variance trail the weights (momentum 0.01 in the
    TF-converted backbone), so eval-mode outputs can drift from train-mode ones. This replaces
    them by the exact average over ``pixels`` (uint8 [N, H, W], no augmentation) for the final
    weights. Frozen layers keep their ImageNet statistics. Returns the number of images used.
    """
    layers = [
        m
        for m in net.modules()
        if isinstance(m, torch.nn.BatchNorm2d) and all(p.requires_grad for p in m.parameters())
    ]
    if net.frozen_blocks:
        frozen = {
            id(m)
            for block in [net.backbone._bn0, *net.backbone._blocks[: net.frozen_blocks]]
            for m in block.modules()
        }
        layers = [m for m in layers if id(m) not in frozen]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    net.train()
    order = np.random.default_rng(seed).permutation(len(pixels))
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start : start + batch_size])
        x01 = torch.from_numpy(pixels[idx]).float().div_(255.0).unsqueeze(1)
        net(to_model_input(x01))
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    net.eval()
    return len(order)


def _scores_before_recalibration(net: PneumoniaNet, run_dir: Path, split: Validation) -> np.ndarray:
    """The validation scores of the selected weights, before BN recalibration: the selected
    evaluation of fit (``history.json``) when it holds them, else scored again."""
    saved_history = json.loads((run_dir / "history.json").read_text())
    if len(saved_history.get("val_probabilities") or []) == len(split.val):
        return np.asarray(saved_history["val_probabilities"], dtype=np.float32)
    return predict_torch(net, split.pixels)


def batchnorm_step(
    net: PneumoniaNet,
    cfg: TrainConfig,
    run_dir: Path,
    split: Validation,
    images: int,
    keep: bool | None,
) -> JsonObject:
    """Recalibrate BatchNorm on ``images`` training films and keep it always (``keep`` True),
    never (False) or only if it does not lower the mean AUC over the held-out batches (None).

    ``net`` ends with the kept statistics. Returns the ``bn_recalibration`` figures of
    ``metrics.json`` but ``validation_after`` (``images``, ``kept``,
    ``recalibrated_batch_mean_auc``, ``validation_before``).
    """
    before_prob = _scores_before_recalibration(net, run_dir, split)
    before_bn = split.summary(before_prob, cfg.target_sensitivity)
    before_bn["batch_mean_auc"] = heldout_metrics(split.val, before_prob, 0.5)["mean_auc"]
    trained_state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = random.Random(cfg.seed)
    bn_images = rng.sample(split.train, min(images, len(split.train)))
    bn_px = data_mod.load_pixel_cache([r.path for r in bn_images], cfg.size, cfg.threads)
    recalibrate_batchnorm(net, bn_px, seed=cfg.seed)
    log(f"validation (torch) before BN recalibration {before_bn}")
    # Keep the recalibrated statistics only if they do not lower the mean AUC over the held-out
    # batches (the running statistics of training can suit later films better than the exact
    # average over training films): a selection on the validation, like the model selection.
    probe = run_dir / "model_fp32_bn_probe.onnx"
    export_onnx(
        net,
        probe,
        contract_metadata(
            name=cfg.model_name, version=cfg.model_version, threshold=0.5, size=cfg.size
        ),
    )
    probe_prob, _ = onnx_predict(onnx_session(probe, cfg.threads), split.inputs)
    probe.unlink()
    recalibrated_auc = heldout_metrics(split.val, probe_prob, 0.5)["mean_auc"]
    kept = (
        keep
        if keep is not None
        else recalibrated_auc is None or recalibrated_auc >= before_bn["batch_mean_auc"]
    )
    if not kept:
        net.load_state_dict(trained_state)
        net.eval()
    log(
        f"BN recalibration: held-out mean AUC {before_bn['batch_mean_auc']} -> "
        f"{recalibrated_auc}: {'kept' if kept else 'reverted to the trained statistics'}"
    )
    return {
        "images": len(bn_images),
        "kept": kept,
        "recalibrated_batch_mean_auc": recalibrated_auc,
        "validation_before": before_bn,
    }


def export_final(
    net: PneumoniaNet,
    cfg: TrainConfig,
    history: Sequence[JsonObject],
    run_dir: Path,
    split: Validation,
    threshold: float,
) -> dict[str, float]:
    """Save ``checkpoint_final.pt`` and export ``model_fp32.onnx`` with ``threshold``; returns
    the torch vs onnxruntime differences on 64 validation films."""
    torch.save(
        {"state_dict": net.state_dict(), "config": asdict(cfg), "history": history},
        run_dir / "checkpoint_final.pt",
    )
    fp32 = run_dir / "model_fp32.onnx"
    meta = contract_metadata(
        name=cfg.model_name, version=cfg.model_version, threshold=threshold, size=cfg.size
    )
    export_onnx(net, fp32, meta)
    agreement = torch_onnx_agreement(net, fp32, split.inputs[:64])
    log(f"torch vs onnxruntime (64 validation images): {agreement}")
    return agreement


def _ort_latency_ms(path: Path, size: int, batch: int = 32, repeats: int = 5) -> float:
    """Median wall time (ms per image) of onnxruntime on 2 threads for one [batch] input."""
    session = onnx_session(path, threads=2)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    session.run(None, {"input": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000.0 / batch)


def score_file(
    kind: str, cfg: TrainConfig, run_dir: Path, split: Validation
) -> tuple[JsonObject, np.ndarray]:
    """Validation figures of ``model_<kind>.onnx`` at its own threshold (written into the file),
    its size and speed; and its validation probabilities."""
    path = run_dir / f"model_{kind}.onnx"
    prob, _ = onnx_predict(onnx_session(path, cfg.threads), split.inputs)
    threshold = choose_threshold(split.labels, prob, cfg.target_sensitivity)
    set_metadata(path, {"cxrlake.threshold": f"{threshold:.6f}"})
    metrics = binary_metrics(split.labels, prob, threshold)
    metrics["file_bytes"] = path.stat().st_size
    metrics["ms_per_image_2_threads"] = _ort_latency_ms(path, cfg.size)
    log(
        f"{kind}: AUC {metrics['auc']:.4f} sens {metrics['sensitivity']:.4f} "
        f"spec {metrics['specificity']:.4f} thr {threshold:.4f} "
        f"{metrics['file_bytes'] / 1e6:.1f} MB {metrics['ms_per_image_2_threads']:.2f} ms/img"
    )
    return metrics, prob


def quantize_step(cfg: TrainConfig, run_dir: Path, split: Validation, images: int) -> None:
    """``model_int8.onnx`` from ``model_fp32.onnx``, calibrated on ``images`` training films."""
    rng = random.Random(cfg.seed)
    calib = [r.path for r in rng.sample(split.train, min(images, len(split.train)))]
    log(f"quantising to int8 with {len(calib)} calibration images")
    quantize_int8(run_dir / "model_fp32.onnx", run_dir / "model_int8.onnx", calib, cfg.size)


def choose_file(candidates: dict[str, JsonObject], target_sensitivity: float) -> str:
    """int8 when its AUC is within 0.005 of fp32 and its sensitivity meets the target."""
    if "int8" in candidates:
        i8, f32 = candidates["int8"], candidates["fp32"]
        if i8["auc"] >= f32["auc"] - 0.005 and i8["sensitivity"] >= target_sensitivity:
            return "int8"
    return "fp32"


def ship_file(run_dir: Path, chosen: str) -> Path:
    """``model.onnx``: a copy of the chosen file with its quantisation, run and data licence."""
    shipped = run_dir / "model.onnx"
    shutil.copyfile(run_dir / f"model_{chosen}.onnx", shipped)
    set_metadata(
        shipped,
        {
            "cxrlake.quantization": chosen,
            "cxrlake.training_run": run_dir.name,
            "cxrlake.license_data": "CC BY 4.0, Kermany et al., doi:10.17632/rscbjbr9sj.2",
        },
    )
    return shipped


def score_shifted(path: Path, cfg: TrainConfig, split: Validation) -> ShiftedScores:
    """Head logits of ``path`` on every `SHIFT_STRIDE`-th validation film under every shift."""
    log("scoring the validation split under the simulated acquisition shifts")
    # (the chosen file only, every SHIFT_STRIDE-th validation film: 2 shared cores)
    films = np.arange(0, len(split.val), SHIFT_STRIDE)
    logits = shifted_logits(path, split.pixels[films], threads=cfg.threads)
    return ShiftedScores(films=films, labels=split.labels[films], logits=logits)


def threshold_rule(cfg: TrainConfig) -> str:
    """The shipped threshold's rule, as the metadata ``cxrlake.threshold_rule`` states it."""
    return f"sensitivity >= {cfg.target_sensitivity} with the best specificity on the " + (
        f"{cfg.held_out_batches} latest acquisition batches held out (pooled)"
        if cfg.split == "acquisition"
        else "patient-grouped validation"
    )


def set_operating_point(
    shipped: Path, cfg: TrainConfig, split: Validation, shifted: ShiftedScores
) -> tuple[JsonObject, np.ndarray]:
    """Fold the temperature fitted on the shifts into ``shipped`` and set its threshold: the
    best specificity with sensitivity >= the target on the validation (the held-out acquisition
    batches, pooled), on the calibrated probability. Returns the ``operating_point`` figures and
    the shipped file's validation probabilities."""
    operating = calibrate_model_file(shipped, shifted.logits, shifted.labels)
    shipped_prob, _ = onnx_predict(onnx_session(shipped, cfg.threads), split.inputs)
    threshold = choose_threshold(split.labels, shipped_prob, cfg.target_sensitivity)
    rule = threshold_rule(cfg)
    set_metadata(shipped, {"cxrlake.threshold": f"{threshold:.6f}", "cxrlake.threshold_rule": rule})
    operating["shift_averaged_threshold"] = operating["threshold"]
    operating["threshold"] = threshold
    operating["threshold_rule"] = rule
    temperature = operating["temperature"]
    threshold_logit = temperature * math.log(threshold / (1.0 - threshold))
    operating["rules"].insert(
        0,
        {
            "rule": f"sensitivity >= {cfg.target_sensitivity} on the held-out batches (shipped)",
            "threshold": threshold,
            **evaluate_threshold(shifted.logits, shifted.labels, threshold_logit),
        },
    )
    for row in operating["per_shift"]:  # at the shipped threshold
        z = np.asarray(shifted.logits[row["shift"]], dtype=np.float64) / temperature
        m = binary_metrics(shifted.labels, 1.0 / (1.0 + np.exp(-z)), threshold)
        row.update({k: m[k] for k in ("sensitivity", "specificity", "accuracy", "ece")})
    log(
        f"temperature {operating['temperature']:.3f}, threshold {threshold:.4f} ({rule}); "
        f"shift-mean AUC {operating['mean_auc']:.4f}, worst {operating['worst_auc']:.4f}"
    )
    return operating, shipped_prob


def operating_points(
    split: Validation, shipped_prob: np.ndarray, shifted: ShiftedScores, temperature: float
) -> list[JsonObject]:
    """The threshold for each of `OPERATING_TARGETS` on the validation, with its figures there
    and under the shifts."""
    points = []
    for target in OPERATING_TARGETS:
        t = choose_threshold(split.labels, shipped_prob, target)
        m = binary_metrics(split.labels, shipped_prob, t)
        # the same threshold on the raw logits scored under the shifts
        under_shift = evaluate_threshold(
            shifted.logits, shifted.labels, temperature * math.log(t / (1.0 - t))
        )
        points.append(
            {
                "target_sensitivity": target,
                "threshold": t,
                "sensitivity": m["sensitivity"],
                "specificity": m["specificity"],
                "shifted_mean_sensitivity": under_shift["mean_sensitivity"],
                "shifted_mean_specificity": under_shift["mean_specificity"],
            }
        )
    return points


def split_figures(split: Validation) -> JsonObject:
    """Films, PNEUMONIA films and patients on each side of the split."""
    train, val = split.train, split.val
    return {
        "train_images": len(train),
        "train_pneumonia": sum(r.label for r in train),
        "train_patients": len({(r.label, r.patient) for r in train}),
        "validation_images": len(val),
        "validation_pneumonia": sum(r.label for r in val),
        "validation_patients": len({(r.label, r.patient) for r in val}),
    }


def shifted_auc(shifted: ShiftedScores) -> tuple[float, float]:
    """Mean and worst AUC over the shifts."""
    # every condition holds both classes (the same films), so each has an AUC
    scored = (roc_auc(shifted.labels, z) for z in shifted.logits.values())
    aucs = [a for a in scored if a is not None]
    return float(np.mean(aucs)), float(np.min(aucs))


def shipped_validation(
    split: Validation,
    shipped_prob: np.ndarray,
    threshold: float,
    shipped: Path,
    chosen: JsonObject,
) -> JsonObject:
    """The shipped file's validation figures at the shipped threshold, its count of distinct
    probabilities, its size and (from its ``chosen`` candidate figures) its speed."""
    validation = binary_metrics(split.labels, shipped_prob, threshold)
    validation["distinct_probabilities"] = int(len(np.unique(shipped_prob)))
    validation["file_bytes"] = shipped.stat().st_size
    validation["ms_per_image_2_threads"] = chosen["ms_per_image_2_threads"]
    return validation
