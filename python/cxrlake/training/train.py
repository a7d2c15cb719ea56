"""Fine-tune EfficientNet-Lite0 on labelled chest X-rays, export ONNX, evaluate, ship.

``fit`` trains and writes, after every epoch, ``<run_dir>/checkpoint.pt`` and
``<run_dir>/model_fp32.onnx`` (so a usable model exists even if a run is cut short);
``finalize`` evaluates the exported files through onnxruntime on the validation split, tries int8,
picks the file to ship and writes ``<run_dir>/metrics.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrlake.medallion.metrics import binary_metrics, choose_threshold, roc_auc
from cxrlake.training import data as data_mod
from cxrlake.training import provenance
from cxrlake.training.config import MODEL_NAME, TrainConfig  # noqa: F401 (re-exported)
from cxrlake.training.export import (
    contract_metadata,
    export_onnx,
    onnx_predict,
    onnx_session,
    quantize_int8,
    set_metadata,
    torch_onnx_agreement,
)
from cxrlake.training.model import LITE_MEAN, LITE_STD, PneumoniaNet
from cxrlake.training.operating_point import calibrate_model_file, evaluate_threshold
from cxrlake.training.shift import shifted_logits

SHIPPED_FILE = "cxrlake_pneumonia.onnx"
#: Training films whose exact average replaces the BatchNorm running statistics after training.
BN_RECALIBRATION_IMAGES = 1024
#: The secondary check under simulated shifts scores every SHIFT_STRIDE-th validation film.
SHIFT_STRIDE = 3


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_split(cfg: TrainConfig) -> tuple[list, list]:
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


def heldout_metrics(val: list, prob: np.ndarray, threshold: float) -> dict:
    """Figures per held-out acquisition batch and over them (AUC mean and worst).

    ``val`` are validation records (their ``batch``; -1 for a patient split), ``prob`` their
    scores. Returns ``{"batches": [{batch, images, pneumonia, auc, sensitivity, specificity,
    accuracy}], "mean_auc", "worst_auc", "worst_batch"}``; a batch with a single class has AUC
    ``None`` and does not count.
    """
    labels = np.array([r.label for r in val], dtype=np.int64)
    batch_ids = np.array([r.batch for r in val])
    rows = []
    for b in sorted(set(batch_ids.tolist())):
        mask = batch_ids == b
        y, p = labels[mask], np.asarray(prob)[mask]
        both = 0 < y.sum() < len(y)
        m = binary_metrics(y, p, threshold) if both else {}
        rows.append(
            {
                "batch": int(b),
                "images": int(mask.sum()),
                "pneumonia": int(y.sum()),
                "auc": float(roc_auc(y, p)) if both else None,
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


def augment_batch(pixels: torch.Tensor, aug: dict, generator: torch.Generator) -> torch.Tensor:
    """Random affine (rotation, scale, translation) + brightness/contrast on uint8 [B, H, W].

    Returns float32 [B, 1, H, W] in 0..1 pixel units (before the contract normalisation).
    No horizontal flip: a chest film has a real left/right (heart, stomach bubble, side markers).
    """
    b = pixels.shape[0]
    x = pixels.float().div_(255.0).unsqueeze(1)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) * (high - low) + low

    angle = uniform(-aug["rotation_deg"], aug["rotation_deg"]) * math.pi / 180.0
    scale = uniform(*aug["scale"])
    tx, ty = (uniform(-aug["translate"], aug["translate"]) * 2 for _ in range(2))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    )  # [B, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = uniform(*aug["contrast"]).view(b, 1, 1, 1)
    brightness = uniform(-aug["brightness"], aug["brightness"]).view(b, 1, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)
    if aug.get("shift_p", 0.0) > 0.0:
        x = acquisition_shift(x, aug, generator)
    return x


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of [B, 1, H, W] with a per-image ``sigma`` [B] (pixels)."""
    radius = int(math.ceil(3.0 * float(sigma.max()))) or 1
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2.0 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, K]
    b = x.shape[0]
    # grouped convolution: one kernel per image
    xs = x.transpose(0, 1)  # [1, B, H, W]
    xs = F.pad(xs, (radius, radius, 0, 0), mode="replicate")
    xs = F.conv2d(xs, kernel.view(b, 1, 1, -1), groups=b)
    xs = F.pad(xs, (0, 0, radius, radius), mode="replicate")
    xs = F.conv2d(xs, kernel.view(b, 1, -1, 1), groups=b)
    return xs.transpose(0, 1)


def acquisition_shift(x: torch.Tensor, aug: dict, generator: torch.Generator) -> torch.Tensor:
    """Simulated change of site: gamma, resolution path, blur or edge enhancement, noise.

    ``x`` is [B, 1, H, W] in 0..1; each transform hits a random ``aug["shift_p"]`` of the batch.
    The same function (with a fixed generator) builds the shifted validation sets of the card.
    """
    b, _, h, w = x.shape
    p = aug["shift_p"]

    def pick() -> torch.Tensor:
        return (torch.rand(b, generator=generator) < p).view(b, 1, 1, 1)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) * (high - low) + low

    gamma = uniform(*aug["gamma"]).view(b, 1, 1, 1)
    x = torch.where(pick(), x.clamp(1e-4, 1.0) ** gamma, x)
    scale = float(uniform(*aug["lowres"])[0])
    small = F.interpolate(x, size=(max(8, int(h * scale)), max(8, int(w * scale))), mode="area")
    x = torch.where(pick(), F.interpolate(small, size=(h, w), mode="bilinear"), x)
    blurred = _gaussian_blur(x, uniform(*aug["blur"]))
    choice = torch.rand(b, generator=generator).view(b, 1, 1, 1)
    amount = uniform(*aug["sharpen"]).view(b, 1, 1, 1)
    sharpened = (x + amount * (x - blurred)).clamp(0.0, 1.0)
    x = torch.where(choice < p / 2, blurred, torch.where(choice > 1 - p / 2, sharpened, x))
    sigma = uniform(*aug["noise"]).view(b, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator) * sigma
    return torch.where(pick(), (x + noise).clamp(0.0, 1.0), x)


def to_model_input(x01: torch.Tensor, mean: float = LITE_MEAN, std: float = LITE_STD):
    """0..1 pixels [B, 1, H, W] -> contract input [B, 3, H, W]."""
    return ((x01 - mean) / std).expand(-1, 3, -1, -1).contiguous()


@torch.no_grad()
def predict_torch(net: PneumoniaNet, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """P(PNEUMONIA) of uint8 [N, H, W] images through the torch model (eval mode)."""
    net.eval()
    out = []
    for start in range(0, len(pixels), batch_size):
        x01 = torch.from_numpy(pixels[start : start + batch_size]).float().div_(255.0)
        logit, _ = net(to_model_input(x01.unsqueeze(1)))
        out.append(torch.sigmoid(logit).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _save_split(run_dir: Path, train, val) -> None:
    with open(run_dir / "split.json", "w") as handle:
        json.dump(
            {
                "train": [[r.path, r.label, r.patient] for r in train],
                "validation": [[r.path, r.label, r.patient, r.batch] for r in val],
            },
            handle,
        )


def load_saved_split(run_dir: str | os.PathLike[str]) -> tuple[list, list]:
    """The (train, validation) records a run saved in ``split.json`` (with their batches)."""
    with open(Path(run_dir) / "split.json") as handle:
        saved = json.load(handle)
    make = data_mod.LabelledImage
    return (
        [make(p, int(lab), pat) for p, lab, pat in saved["train"]],
        [make(row[0], int(row[1]), row[2], *map(int, row[3:])) for row in saved["validation"]],
    )


def _mixup(x, y, weight, alpha: float, generator: torch.Generator):
    """Mix each image with a random partner: x, soft targets and loss weights by Beta(a, a)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    # torch.distributions draws from the global generator (seeded by seed_everything)
    perm = torch.randperm(x.shape[0], generator=generator)
    lam = max(lam, 1.0 - lam)  # the original image dominates: its label stays the majority
    return (
        lam * x + (1.0 - lam) * x[perm],
        lam * y + (1.0 - lam) * y[perm],
        lam * weight + (1.0 - lam) * weight[perm],
    )


def fit(cfg: TrainConfig, pixel_cache: dict | None = None) -> Path:
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
    train, val = load_split(cfg)
    _save_split(run_dir, train, val)
    log(
        f"split ({cfg.split}): train {len(train)} ({sum(r.label for r in train)} pneumonia), "
        f"validation {len(val)} ({sum(r.label for r in val)} pneumonia); "
        f"patients train {len({r.patient for r in train})} / val {len({r.patient for r in val})}"
    )
    t0 = time.time()

    def pixels_of(records) -> np.ndarray:
        if pixel_cache is None:
            return data_mod.load_pixel_cache([r.path for r in records], cfg.size, cfg.threads)
        todo = [r.path for r in records if (r.path, cfg.size) not in pixel_cache]
        if todo:
            decoded = data_mod.load_pixel_cache(todo, cfg.size, cfg.threads)
            pixel_cache.update({(p, cfg.size): px for p, px in zip(todo, decoded, strict=True)})
        return np.stack([pixel_cache[(r.path, cfg.size)] for r in records])

    train_px = pixels_of(train)
    val_px = pixels_of(val)
    train_y = np.array([r.label for r in train], dtype=np.float32)
    val_y = np.array([r.label for r in val], dtype=np.int64)
    log(f"decoded {len(train_px) + len(val_px)} images at {cfg.size}px in {time.time() - t0:.0f}s")

    # Class weights: each class contributes half of the loss (NORMAL is the minority class).
    n_pos = float(train_y.sum())
    n_neg = float(len(train_y) - n_pos)
    class_weight = {0: len(train_y) / (2 * n_neg), 1: len(train_y) / (2 * n_pos)}

    net = PneumoniaNet(cfg.size, pretrained=cfg.pretrained, dropout=cfg.dropout)
    net.freeze_early(cfg.freeze_blocks)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_px) / cfg.batch_size)
    total_steps = cfg.steps or steps_per_epoch * cfg.epochs
    eval_every = cfg.eval_every or steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=cfg.lr,
        total_steps=total_steps,
        pct_start=cfg.warmup_fraction,
        anneal_strategy="cos",
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    best: dict | None = None
    order: np.ndarray = np.zeros(0, dtype=np.int64)
    t_segment, losses, segment_losses = time.time(), [], []
    for step in range(1, total_steps + 1):
        position = (step - 1) % steps_per_epoch
        if position == 0:
            order = torch.randperm(len(train_px), generator=generator).numpy()
        net.train()
        idx = np.sort(order[position * cfg.batch_size : (position + 1) * cfg.batch_size])
        x = to_model_input(augment_batch(torch.from_numpy(train_px[idx]), cfg.augment, generator))
        y = torch.from_numpy(train_y[idx])
        weight = torch.where(y > 0.5, class_weight[1], class_weight[0])
        if cfg.mixup_alpha > 0.0:
            x, y, weight = _mixup(x, y, weight, cfg.mixup_alpha, generator)
        if cfg.label_smoothing > 0.0:
            y = y * (1.0 - cfg.label_smoothing) + cfg.label_smoothing / 2.0
        logit, _ = net(x)
        loss = F.binary_cross_entropy_with_logits(logit, y, weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        segment_losses.append(loss.item())
        if step % 20 == 0 or step == total_steps:
            rate = (time.time() - t_segment) / len(segment_losses)
            log(
                f"step {step}/{total_steps} (epoch {(step - 1) // steps_per_epoch + 1}) "
                f"loss {np.mean(losses[-20:]):.4f} ({rate:.2f}s/step)"
            )
        if step % eval_every and step != total_steps:
            continue
        segment_seconds = time.time() - t_segment
        val_prob = predict_torch(net, val_px)
        threshold = choose_threshold(val_y, val_prob, cfg.target_sensitivity)
        metrics = binary_metrics(val_y, val_prob, threshold)
        per_batch = heldout_metrics(val, val_prob, threshold)
        entry = {
            "epoch": len(history) + 1,  # evaluation number (a pass when eval_every is unset)
            "step": step,
            "train_loss": float(np.mean(segment_losses)),
            "first_batches_loss": float(np.mean(losses[: max(1, min(5, len(losses)))])),
            "last_batches_loss": float(np.mean(losses[-max(1, min(5, len(losses))) :])),
            "epoch_seconds": segment_seconds,
            **{k: metrics[k] for k in ("auc", "sensitivity", "specificity", "threshold", "brier")},
            "batch_mean_auc": per_batch["mean_auc"],
            "batch_worst_auc": per_batch["worst_auc"],
        }
        history.append(entry)
        log(f"evaluation at step {step} ({segment_seconds:.0f}s of training): {json.dumps(entry)}")
        # Model selection: the best mean AUC over the held-out batches (pooled AUC if none).
        score = per_batch["mean_auc"] if per_batch["mean_auc"] is not None else metrics["auc"]
        if best is None or score > best["score"]:
            best = {"score": score, "step": step, "threshold": threshold}
            torch.save(
                {
                    "state_dict": net.state_dict(),
                    "config": asdict(cfg),
                    "history": history,
                    "selected_step": step,
                },
                run_dir / "checkpoint.pt",
            )
            meta = contract_metadata(
                name=cfg.model_name, version=cfg.model_version, threshold=threshold, size=cfg.size
            )
            export_onnx(net.eval(), run_dir / "model_fp32.onnx", meta)
            best["probabilities"] = [round(float(v), 7) for v in val_prob]
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
        since_best = sum(1 for h in history if h["step"] > best["step"])
        if cfg.patience is not None and since_best >= cfg.patience:
            log(f"early stop at step {step}: {since_best} evaluations without improvement")
            break
        t_segment, segment_losses = time.time(), []
    # the checkpoint holds the selected weights with the full history
    saved = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    saved["history"] = history
    torch.save(saved, run_dir / "checkpoint.pt")
    log(f"training done in {time.time() - t0:.0f}s; selected step {best['step']}")
    return run_dir


def load_checkpoint(
    run_dir: str | os.PathLike[str], final: bool = False
) -> tuple[PneumoniaNet, TrainConfig, list]:
    """The trained network (eval mode), its config and its per-epoch history.

    ``final=True`` loads the finalized weights (BN recalibrated) that the shipped ONNX holds.
    """
    name = "checkpoint_final.pt" if final else "checkpoint.pt"
    saved = torch.load(Path(run_dir) / name, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**saved["config"])
    net = PneumoniaNet(cfg.size, pretrained=False, dropout=cfg.dropout)
    net.freeze_early(cfg.freeze_blocks)
    net.load_state_dict(saved["state_dict"])
    return net.eval(), cfg, saved["history"]


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


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def describe_batches(val: list) -> list[dict]:
    """Per held-out batch: its films' first and last names per class (acquisition order)."""
    rows = []
    for b in sorted({r.batch for r in val}):
        row: dict = {"batch": b}
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


def gather_candidates(run_dir: Path) -> list[dict]:
    """The ``candidate.json`` figures of ``run_dir`` and its sibling runs (recipe comparison)."""
    rows = []
    for path in sorted(Path(run_dir).resolve().parent.glob("*/candidate.json")):
        figures = json.loads(path.read_text())
        figures.pop("history", None)
        rows.append(figures)
    return rows


def finalize(
    run_dir: str | os.PathLike[str],
    ship_to: str | os.PathLike[str] | None = None,
    try_int8: bool = True,
    calibration_images: int = 200,
    bn_recalibration_images: int = BN_RECALIBRATION_IMAGES,
    target_sensitivity: float | None = None,
    keep_bn: bool | None = None,
) -> dict:
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
    train, val = load_saved_split(run_dir)
    val_px = data_mod.load_pixel_cache([r.path for r in val], cfg.size, cfg.threads)
    val_x = data_mod.normalise(val_px, LITE_MEAN, LITE_STD)
    val_y = np.array([r.label for r in val], dtype=np.int64)

    def summary_of(prob: np.ndarray) -> dict:
        m = binary_metrics(val_y, prob, choose_threshold(val_y, prob, cfg.target_sensitivity))
        return {k: m[k] for k in ("auc", "sensitivity", "specificity", "brier", "threshold")}

    saved_history = json.loads((run_dir / "history.json").read_text())
    if len(saved_history.get("val_probabilities") or []) == len(val):
        # the selected evaluation of fit: these weights, before BN recalibration (no re-scoring)
        before_prob = np.asarray(saved_history["val_probabilities"], dtype=np.float32)
    else:
        before_prob = predict_torch(net, val_px)
    before_bn = summary_of(before_prob)
    before_bn["batch_mean_auc"] = heldout_metrics(val, before_prob, 0.5)["mean_auc"]
    trained_state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = random.Random(cfg.seed)
    bn_images = rng.sample(train, min(bn_recalibration_images, len(train)))
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
    probe_prob, _ = onnx_predict(onnx_session(probe, cfg.threads), val_x)
    probe.unlink()
    recalibrated_auc = heldout_metrics(val, probe_prob, 0.5)["mean_auc"]
    bn_kept = (
        keep_bn
        if keep_bn is not None
        else recalibrated_auc is None or recalibrated_auc >= before_bn["batch_mean_auc"]
    )
    if not bn_kept:
        net.load_state_dict(trained_state)
        net.eval()
    log(
        f"BN recalibration: held-out mean AUC {before_bn['batch_mean_auc']} -> "
        f"{recalibrated_auc}: {'kept' if bn_kept else 'reverted to the trained statistics'}"
    )
    torch.save(
        {"state_dict": net.state_dict(), "config": asdict(cfg), "history": history},
        run_dir / "checkpoint_final.pt",
    )
    fp32 = run_dir / "model_fp32.onnx"
    meta = contract_metadata(
        name=cfg.model_name,
        version=cfg.model_version,
        threshold=before_bn["threshold"],
        size=cfg.size,
    )
    export_onnx(net, fp32, meta)
    agreement = torch_onnx_agreement(net, fp32, val_x[:64])
    log(f"torch vs onnxruntime (64 validation images): {agreement}")

    candidates: dict[str, dict] = {}
    for kind in ("fp32", "int8"):
        path = run_dir / f"model_{kind}.onnx"
        if kind == "int8":
            if not try_int8:
                break
            rng = random.Random(cfg.seed)
            calib = [r.path for r in rng.sample(train, min(calibration_images, len(train)))]
            log(f"quantising to int8 with {len(calib)} calibration images")
            quantize_int8(fp32, path, calib, cfg.size)
        prob, _ = onnx_predict(onnx_session(path, cfg.threads), val_x)
        if kind == "fp32":  # the recalibrated weights, scored through onnxruntime
            after_bn = summary_of(prob)
            log(f"validation of the fp32 file (final BN statistics) {after_bn}")
        threshold = choose_threshold(val_y, prob, cfg.target_sensitivity)
        set_metadata(path, {"cxrlake.threshold": f"{threshold:.6f}"})
        metrics = binary_metrics(val_y, prob, threshold)
        metrics["file_bytes"] = path.stat().st_size
        metrics["ms_per_image_2_threads"] = _ort_latency_ms(path, cfg.size)
        candidates[kind] = metrics
        log(
            f"{kind}: AUC {metrics['auc']:.4f} sens {metrics['sensitivity']:.4f} "
            f"spec {metrics['specificity']:.4f} thr {threshold:.4f} "
            f"{metrics['file_bytes'] / 1e6:.1f} MB {metrics['ms_per_image_2_threads']:.2f} ms/img"
        )

    chosen = "fp32"
    if "int8" in candidates:
        i8, f32 = candidates["int8"], candidates["fp32"]
        if i8["auc"] >= f32["auc"] - 0.005 and i8["sensitivity"] >= cfg.target_sensitivity:
            chosen = "int8"
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
    # The default operating point: temperature and threshold from the shifted validation.
    log("scoring the validation split under the simulated acquisition shifts")
    # (the chosen file only, every SHIFT_STRIDE-th validation film: 2 shared cores)
    shift_films = np.arange(0, len(val), SHIFT_STRIDE)
    chosen_logits = shifted_logits(
        run_dir / f"model_{chosen}.onnx", val_px[shift_films], threads=cfg.threads
    )
    shift_y = val_y[shift_films]
    aucs = [roc_auc(shift_y, z) for z in chosen_logits.values()]
    candidates[chosen]["shifted_mean_auc"] = float(np.mean(aucs))
    candidates[chosen]["shifted_worst_auc"] = float(np.min(aucs))
    operating = calibrate_model_file(shipped, chosen_logits, shift_y)
    shipped_prob, _ = onnx_predict(onnx_session(shipped, cfg.threads), val_x)
    # The default threshold: best specificity with sensitivity >= the target on the validation
    # (the held-out acquisition batches, pooled), on the calibrated probability.
    threshold = choose_threshold(val_y, shipped_prob, cfg.target_sensitivity)
    held_out = cfg.split == "acquisition"
    rule = f"sensitivity >= {cfg.target_sensitivity} with the best specificity on the " + (
        f"{cfg.held_out_batches} latest acquisition batches held out (pooled)"
        if held_out
        else "patient-grouped validation"
    )
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
            **evaluate_threshold(chosen_logits, shift_y, threshold_logit),
        },
    )
    for row in operating["per_shift"]:  # at the shipped threshold
        z = np.asarray(chosen_logits[row["shift"]], dtype=np.float64) / temperature
        m = binary_metrics(shift_y, 1.0 / (1.0 + np.exp(-z)), threshold)
        row.update({k: m[k] for k in ("sensitivity", "specificity", "accuracy", "ece")})
    log(
        f"temperature {operating['temperature']:.3f}, threshold {threshold:.4f} ({rule}); "
        f"shift-mean AUC {operating['mean_auc']:.4f}, worst {operating['worst_auc']:.4f}"
    )
    validation = binary_metrics(val_y, shipped_prob, threshold)
    validation["distinct_probabilities"] = int(len(np.unique(shipped_prob)))
    validation["file_bytes"] = shipped.stat().st_size
    validation["ms_per_image_2_threads"] = candidates[chosen]["ms_per_image_2_threads"]
    operating_points = []
    for target in (0.90, 0.95, 0.97, 0.98, 0.99):
        t = choose_threshold(val_y, shipped_prob, target)
        m = binary_metrics(val_y, shipped_prob, t)
        # the same threshold on the raw logits scored under the shifts
        shifted = evaluate_threshold(
            chosen_logits, shift_y, operating["temperature"] * math.log(t / (1.0 - t))
        )
        operating_points.append(
            {
                "target_sensitivity": target,
                "threshold": t,
                "sensitivity": m["sensitivity"],
                "specificity": m["specificity"],
                "shifted_mean_sensitivity": shifted["mean_sensitivity"],
                "shifted_mean_specificity": shifted["mean_specificity"],
            }
        )
    summary = {
        "config": asdict(cfg),
        "history": history,
        "held_out_batches": heldout_metrics(val, shipped_prob, threshold),
        "shift_films": int(len(shift_films)),
        "acquisition_batches": describe_batches(val),
        "recipe_candidates": gather_candidates(run_dir),
        "split": {
            "train_images": len(train),
            "train_pneumonia": sum(r.label for r in train),
            "train_patients": len({(r.label, r.patient) for r in train}),
            "validation_images": len(val),
            "validation_pneumonia": sum(r.label for r in val),
            "validation_patients": len({(r.label, r.patient) for r in val}),
        },
        "torch_vs_onnxruntime": agreement,
        "bn_recalibration": {
            "images": len(bn_images),
            "kept": bn_kept,
            "recalibrated_batch_mean_auc": recalibrated_auc,
            "validation_before": before_bn,
            "validation_after": after_bn,
        },
        "candidates": candidates,
        "calibration_images": calibration_images,
        "shipped": chosen,
        "validation": validation,
        "operating_points": operating_points,
        "operating_point": operating,
        "environment": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": np.__version__,
            "onnxruntime": _onnxruntime_version(),
            "platform": platform.platform(),
        },
    }
    with open(run_dir / "metrics.json", "w") as handle:
        json.dump(summary, handle, indent=2)
    # Which films this model was developed on (figures on them are no evaluation).
    development = run_dir / provenance.FILE_NAME
    provenance.write_development_films([*train, *val], development)
    if ship_to is not None:
        Path(ship_to).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped, Path(ship_to) / SHIPPED_FILE)
        shutil.copyfile(development, Path(ship_to) / provenance.FILE_NAME)
        log(f"shipped {chosen} model to {Path(ship_to) / SHIPPED_FILE}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m cxrlake.training.train``: same options as ``cxrlake train``."""
    from cxrlake.training.cli import build_parser, run

    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
