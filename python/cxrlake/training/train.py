"""Fine-tune EfficientNet-Lite0 on labelled chest X-rays, export ONNX, evaluate, ship.

``fit`` trains and writes, after every epoch, ``<run_dir>/checkpoint.pt`` and
``<run_dir>/model_fp32.onnx`` (so a usable model exists even if a run is cut short);
``finalize`` evaluates the exported files through onnxruntime on the validation split, tries int8,
picks the file to ship and writes ``<run_dir>/metrics.json`` (its steps:
`cxrlake.training.shipping`).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrlake.medallion.metrics import binary_metrics, choose_threshold
from cxrlake.training import data as data_mod
from cxrlake.training import provenance, shipping
from cxrlake.training.augment import augment_batch, mixup
from cxrlake.training.config import JsonObject, TrainConfig
from cxrlake.training.export import contract_metadata, export_onnx
from cxrlake.training.heldout import describe_batches, gather_candidates, heldout_metrics
from cxrlake.training.model import PneumoniaNet, predict_torch, to_model_input
from cxrlake.training.progress import log
from cxrlake.training.run_files import (
    Records,
    environment,
    load_checkpoint,
    save_split,
)

SHIPPED_FILE = "cxrlake_pneumonia.onnx"
#: Training films whose exact average replaces the BatchNorm running statistics after training.
BN_RECALIBRATION_IMAGES = 1024

#: ``{(path, size): uint8 [size, size]}``: films decoded once for several runs in one process.
PixelCache = dict[tuple[str, int], np.ndarray]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_split(cfg: TrainConfig) -> tuple[Records, Records]:
    """The (train, validation) records for ``cfg`` (optionally ``limit``-ed).

    ``cfg.split == "acquisition"`` (default): the latest acquisition batches are the validation
    (:func:`cxrlake.training.data.acquisition_split`; validation records carry their ``batch``);
    ``"patients"``: random patient groups (:func:`~cxrlake.training.data.patient_grouped_split`).
    """
    records = data_mod.list_labelled_images(cfg.data)
    if cfg.label_overrides:  # current labels: radiologist corrections (cxrlake.review.labels)
        records = [replace(r, label=cfg.label_overrides.get(r.path, r.label)) for r in records]
    if cfg.limit:
        rng = random.Random(cfg.seed)
        limited = []
        for label in range(len(data_mod.LABELS)):
            of_label = [r for r in records if r.label == label]
            rng.shuffle(of_label)
            limited.extend(sorted(of_label[: cfg.limit], key=lambda r: r.path))
        records = limited
    if cfg.split == "acquisition":
        return data_mod.acquisition_split(records, cfg.n_batches, cfg.held_out_batches)
    if cfg.split == "patients":
        return data_mod.patient_grouped_split(records, cfg.val_fraction, cfg.seed)
    raise ValueError(f"unknown split {cfg.split!r} (acquisition or patients)")


def _pixels(
    records: Sequence[data_mod.LabelledImage], cfg: TrainConfig, cache: PixelCache | None
) -> np.ndarray:
    """uint8 [N, size, size] of ``records``, decoded once per process when ``cache`` is given."""
    if cache is None:
        return data_mod.load_pixel_cache([r.path for r in records], cfg.size, cfg.threads)
    todo = [r.path for r in records if (r.path, cfg.size) not in cache]
    if todo:
        decoded = data_mod.load_pixel_cache(todo, cfg.size, cfg.threads)
        cache.update({(p, cfg.size): px for p, px in zip(todo, decoded, strict=True)})
    return np.stack([cache[(r.path, cfg.size)] for r in records])


@dataclass
class _Films:
    """The split of a run, decoded: training pixels and float labels, validation pixels and
    int labels."""

    train: Records
    val: Records
    train_px: np.ndarray
    train_y: np.ndarray
    val_px: np.ndarray
    val_y: np.ndarray

    def class_weight(self) -> dict[int, float]:
        """Each class contributes half of the loss (NORMAL is the minority class)."""
        n_pos = float(self.train_y.sum())
        n_neg = float(len(self.train_y) - n_pos)
        return {0: len(self.train_y) / (2 * n_neg), 1: len(self.train_y) / (2 * n_pos)}


def _load_films(cfg: TrainConfig, run_dir: Path, cache: PixelCache | None) -> _Films:
    """Split (saved as ``split.json``) and decode the films of ``cfg``."""
    train, val = load_split(cfg)
    save_split(run_dir, train, val)
    log(
        f"split ({cfg.split}): train {len(train)} ({sum(r.label for r in train)} pneumonia), "
        f"validation {len(val)} ({sum(r.label for r in val)} pneumonia); "
        f"patients train {len({r.patient for r in train})} / val {len({r.patient for r in val})}"
    )
    t0 = time.time()
    films = _Films(
        train=train,
        val=val,
        train_px=_pixels(train, cfg, cache),
        train_y=np.array([r.label for r in train], dtype=np.float32),
        val_px=_pixels(val, cfg, cache),
        val_y=np.array([r.label for r in val], dtype=np.int64),
    )
    n = len(films.train_px) + len(films.val_px)
    log(f"decoded {n} images at {cfg.size}px in {time.time() - t0:.0f}s")
    return films


def _train_step(
    net: PneumoniaNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    films: _Films,
    idx: np.ndarray,
    generator: torch.Generator,
) -> float:
    """One optimizer step on the films ``idx`` (augmented, class-weighted); returns the loss."""
    net.train()
    x = to_model_input(augment_batch(torch.from_numpy(films.train_px[idx]), cfg.augment, generator))
    y = torch.from_numpy(films.train_y[idx])
    class_weight = films.class_weight()
    weight = torch.where(y > 0.5, class_weight[1], class_weight[0])
    if cfg.mixup_alpha > 0.0:
        x, y, weight = mixup(x, y, weight, cfg.mixup_alpha, generator)
    if cfg.label_smoothing > 0.0:
        y = y * (1.0 - cfg.label_smoothing) + cfg.label_smoothing / 2.0
    logit, _ = net(x)
    loss = F.binary_cross_entropy_with_logits(logit, y, weight=weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.item())


def _evaluate(
    net: PneumoniaNet,
    cfg: TrainConfig,
    films: _Films,
    position: tuple[int, int, float],
    losses: list[float],
    segment_losses: list[float],
) -> tuple[JsonObject, np.ndarray, float, float]:
    """Score the validation at ``position`` (evaluation number, step, seconds of the training
    segment ``segment_losses``): (the history entry, the probabilities, the threshold, the
    model-selection score: the mean AUC over the held-out batches, the pooled AUC if none)."""
    evaluation, step, seconds = position
    val_prob = predict_torch(net, films.val_px)
    threshold = choose_threshold(films.val_y, val_prob, cfg.target_sensitivity)
    metrics = binary_metrics(films.val_y, val_prob, threshold)
    per_batch = heldout_metrics(films.val, val_prob, threshold)
    first = max(1, min(5, len(losses)))
    entry = {
        "epoch": evaluation,  # a pass when eval_every is unset
        "step": step,
        "train_loss": float(np.mean(segment_losses)),
        "first_batches_loss": float(np.mean(losses[:first])),
        "last_batches_loss": float(np.mean(losses[-first:])),
        "epoch_seconds": seconds,
        **{k: metrics[k] for k in ("auc", "sensitivity", "specificity", "threshold", "brier")},
        "batch_mean_auc": per_batch["mean_auc"],
        "batch_worst_auc": per_batch["worst_auc"],
    }
    score = per_batch["mean_auc"] if per_batch["mean_auc"] is not None else metrics["auc"]
    return entry, val_prob, threshold, score


def _keep_selected(
    net: PneumoniaNet,
    cfg: TrainConfig,
    run_dir: Path,
    history: list[JsonObject],
    selection: JsonObject,
) -> None:
    """Save the selected weights (``checkpoint.pt``) and their ONNX file (``model_fp32.onnx``)."""
    torch.save(
        {
            "state_dict": net.state_dict(),
            "config": asdict(cfg),
            "history": history,
            "selected_step": selection["step"],
        },
        run_dir / "checkpoint.pt",
    )
    meta = contract_metadata(
        name=cfg.model_name,
        version=cfg.model_version,
        threshold=selection["threshold"],
        size=cfg.size,
    )
    export_onnx(net.eval(), run_dir / "model_fp32.onnx", meta)


def _write_history(
    run_dir: Path, cfg: TrainConfig, history: list[JsonObject], best: JsonObject
) -> None:
    with open(run_dir / "history.json", "w") as handle:
        json.dump(
            {
                "config": asdict(cfg),
                "history": history,
                "selected_step": best["step"],
                "val_probabilities": best["probabilities"],
            },
            handle,
        )


def fit(cfg: TrainConfig, pixel_cache: PixelCache | None = None) -> Path:
    """Train per ``cfg``; returns the run directory (checkpoint, ONNX, history, split).

    ``cfg.steps`` optimizer steps (default ``epochs`` passes over the training split) under one
    one-cycle schedule; every ``cfg.eval_every`` steps (default: a pass) the model is scored on
    the validation split and the weights with the best mean per-batch AUC are kept
    (``checkpoint.pt``); ``cfg.patience`` evaluations without improvement stop the run.
    ``pixel_cache`` (``{(path, size): uint8 [size, size]}``) lets several runs in one process
    decode each film once.
    """
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    t0 = time.time()
    films = _load_films(cfg, run_dir, pixel_cache)
    net = PneumoniaNet(cfg.size, pretrained=cfg.pretrained, dropout=cfg.dropout)
    net.freeze_early(cfg.freeze_blocks)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(films.train_px) / cfg.batch_size)
    total_steps = cfg.steps or steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=cfg.lr,
        total_steps=total_steps,
        pct_start=cfg.warmup_fraction,
        anneal_strategy="cos",
    )
    history = _train_loop(net, optimizer, scheduler, cfg, films, run_dir, total_steps)
    # the checkpoint holds the selected weights with the full history
    saved = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    saved["history"] = history
    torch.save(saved, run_dir / "checkpoint.pt")
    log(f"training done in {time.time() - t0:.0f}s; selected step {saved['selected_step']}")
    return run_dir


def _train_loop(
    net: PneumoniaNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    films: _Films,
    run_dir: Path,
    total_steps: int,
) -> list[JsonObject]:
    """``total_steps`` steps, one shuffled pass after another, with an evaluation every
    ``cfg.eval_every`` steps (a pass when unset) and at the end; model selection and early
    stopping as `fit` says. Returns the evaluation history."""
    steps_per_epoch = math.ceil(len(films.train_px) / cfg.batch_size)
    eval_every = cfg.eval_every or steps_per_epoch
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[JsonObject] = []
    best: JsonObject | None = None
    order: np.ndarray = np.zeros(0, dtype=np.int64)
    t_segment, losses, segment_losses = time.time(), [], []
    for step in range(1, total_steps + 1):
        position = (step - 1) % steps_per_epoch
        if position == 0:
            order = torch.randperm(len(films.train_px), generator=generator).numpy()
        idx = np.sort(order[position * cfg.batch_size : (position + 1) * cfg.batch_size])
        loss = _train_step(net, optimizer, scheduler, cfg, films, idx, generator)
        losses.append(loss)
        segment_losses.append(loss)
        if step % 20 == 0 or step == total_steps:
            rate = (time.time() - t_segment) / len(segment_losses)
            log(
                f"step {step}/{total_steps} (epoch {(step - 1) // steps_per_epoch + 1}) "
                f"loss {np.mean(losses[-20:]):.4f} ({rate:.2f}s/step)"
            )
        if step % eval_every and step != total_steps:
            continue
        segment_seconds = time.time() - t_segment
        entry, val_prob, threshold, score = _evaluate(
            net,
            cfg,
            films,
            (len(history) + 1, step, segment_seconds),
            losses,
            segment_losses,
        )
        history.append(entry)
        log(f"evaluation at step {step} ({segment_seconds:.0f}s of training): {json.dumps(entry)}")
        if best is None or score > best["score"]:
            best = {"score": score, "step": step, "threshold": threshold}
            _keep_selected(net, cfg, run_dir, history, best)
            best["probabilities"] = [round(float(v), 7) for v in val_prob]
        _write_history(run_dir, cfg, history, best)
        since_best = sum(1 for h in history if h["step"] > best["step"])
        if cfg.patience is not None and since_best >= cfg.patience:
            log(f"early stop at step {step}: {since_best} evaluations without improvement")
            break
        t_segment, segment_losses = time.time(), []
    return history


def _score_files(
    cfg: TrainConfig, run_dir: Path, split: shipping.Validation, try_int8: bool, images: int
) -> tuple[dict[str, JsonObject], JsonObject]:
    """The validation figures of the fp32 file and (``try_int8``) of its int8 twin quantised on
    ``images`` training films; and the fp32 file's summary (final BN statistics)."""
    candidates: dict[str, JsonObject] = {}
    candidates["fp32"], prob = shipping.score_file("fp32", cfg, run_dir, split)
    after_bn = split.summary(prob, cfg.target_sensitivity)
    log(f"validation of the fp32 file (final BN statistics) {after_bn}")
    if try_int8:
        shipping.quantize_step(cfg, run_dir, split, images)
        candidates["int8"], _ = shipping.score_file("int8", cfg, run_dir, split)
    return candidates, after_bn


def _write_run(
    run_dir: Path,
    summary: JsonObject,
    split: shipping.Validation,
    ship_to: str | os.PathLike[str] | None,
) -> None:
    """``metrics.json`` and the development films list into ``run_dir``; with ``ship_to``, the
    shipped file and that list there too."""
    with open(run_dir / "metrics.json", "w") as handle:
        json.dump(summary, handle, indent=2)
    # Which films this model was developed on (figures on them are no evaluation).
    development = run_dir / provenance.FILE_NAME
    provenance.write_development_films([*split.train, *split.val], development)
    if ship_to is not None:
        Path(ship_to).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "model.onnx", Path(ship_to) / SHIPPED_FILE)
        shutil.copyfile(development, Path(ship_to) / provenance.FILE_NAME)
        log(f"shipped {summary['shipped']} model to {Path(ship_to) / SHIPPED_FILE}")


def finalize(
    run_dir: str | os.PathLike[str],
    ship_to: str | os.PathLike[str] | None = None,
    try_int8: bool = True,
    calibration_images: int = 200,
    bn_recalibration_images: int = BN_RECALIBRATION_IMAGES,
    target_sensitivity: float | None = None,
    keep_bn: bool | None = None,
) -> JsonObject:
    """Recalibrate BN, export, evaluate the ONNX file(s) on validation, pick the one to ship.

    Writes ``metrics.json`` and ``model.onnx`` (the chosen file, threshold re-chosen on its own
    validation scores) into ``run_dir``; copies it to ``ship_to/cxrlake_pneumonia.onnx`` if given.
    int8 is chosen only if its AUC is within 0.005 of fp32 and its sensitivity is >= the target.
    ``target_sensitivity`` overrides the run's threshold rule target (recorded in metrics.json).
    ``keep_bn``: keep the BatchNorm recalibration always (True), never (False) or only if it does
    not lower the mean AUC over the held-out batches (None).
    """
    run_dir = Path(run_dir)
    net, cfg, history = load_checkpoint(run_dir)
    if target_sensitivity is not None:
        cfg.target_sensitivity = target_sensitivity
    torch.set_num_threads(cfg.threads)
    split = shipping.load_validation(run_dir, cfg)
    bn = shipping.batchnorm_step(net, cfg, run_dir, split, bn_recalibration_images, keep_bn)
    before_threshold = bn["validation_before"]["threshold"]
    agreement = shipping.export_final(net, cfg, history, run_dir, split, before_threshold)
    candidates, bn["validation_after"] = _score_files(
        cfg, run_dir, split, try_int8, calibration_images
    )
    chosen = shipping.choose_file(candidates, cfg.target_sensitivity)
    shipped = shipping.ship_file(run_dir, chosen)
    # The default operating point: temperature from the shifted validation, threshold from the
    # held-out batches.
    shifted = shipping.score_shifted(run_dir / f"model_{chosen}.onnx", cfg, split)
    mean_auc, worst_auc = shipping.shifted_auc(shifted)
    candidates[chosen]["shifted_mean_auc"] = mean_auc
    candidates[chosen]["shifted_worst_auc"] = worst_auc
    operating, shipped_prob = shipping.set_operating_point(shipped, cfg, split, shifted)
    threshold = operating["threshold"]
    summary = {
        "config": asdict(cfg),
        "history": history,
        "held_out_batches": heldout_metrics(split.val, shipped_prob, threshold),
        "shift_films": int(len(shifted.films)),
        "acquisition_batches": describe_batches(split.val),
        "recipe_candidates": gather_candidates(run_dir),
        "split": shipping.split_figures(split),
        "torch_vs_onnxruntime": agreement,
        "bn_recalibration": bn,
        "candidates": candidates,
        "calibration_images": calibration_images,
        "shipped": chosen,
        "validation": shipping.shipped_validation(
            split, shipped_prob, threshold, shipped, candidates[chosen]
        ),
        "operating_points": shipping.operating_points(
            split, shipped_prob, shifted, operating["temperature"]
        ),
        "operating_point": operating,
        "environment": environment(),
    }
    _write_run(run_dir, summary, split, ship_to)
    return summary
