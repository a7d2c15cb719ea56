"""Candidate recipes trained back to back with one step budget and compared on held-out batches.

``python -m cxrlake.training.candidates --data DIR --runs train_runs/candidates --queue FILE``
trains each recipe named in ``FILE`` (one name a line, re-read after every run so names can be
appended while it works; a line ``END`` stops it; see :data:`cxrlake.training.config.RECIPES`)
in its own run directory ``<runs>/<name>``, scores it on the batch-held-out validation and writes
``<runs>/<name>/candidate.json`` (copied to ``--figures``). One process, films decoded once per
input size; a run whose ``candidate.json`` exists is skipped. ``finalize`` puts every
``candidate.json`` next to the shipped run into the model card's candidates table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cxrlake.medallion.metrics import binary_metrics, choose_threshold, roc_auc
from cxrlake.training import data as data_mod
from cxrlake.training.config import JsonObject, recipe_config
from cxrlake.training.heldout import heldout_metrics
from cxrlake.training.model import predict_torch
from cxrlake.training.progress import log
from cxrlake.training.run_files import environment, load_checkpoint, load_saved_split
from cxrlake.training.shift import shifted_inputs
from cxrlake.training.train import PixelCache, fit

#: Secondary check per candidate: the simulated conditions of a kind no recipe's augmentation
#: produces, on every twelfth validation film (the shipped model gets all conditions on every film
#: in ``finalize``). Kept small: 2 shared CPU cores.
CANDIDATE_SHIFTS = ("gain 1.25", "equalised histogram", "JPEG q30")
SHIFT_STRIDE = 12


def evaluate_candidate(run_dir: str | Path, pixel_cache: PixelCache | None = None) -> JsonObject:
    """Figures of a trained run on its held-out batches (torch, the selected weights).

    The same scoring as the run's own evaluations (no BatchNorm recalibration: ``finalize``
    applies it to the shipped candidate only and records both figures), plus the secondary
    check under :data:`CANDIDATE_SHIFTS`.
    """
    run_dir = Path(run_dir)
    t0 = time.time()
    net, cfg, history = load_checkpoint(run_dir)
    torch.set_num_threads(cfg.threads)
    _, val = load_saved_split(run_dir)
    cache = pixel_cache if pixel_cache is not None else {}
    todo = [r.path for r in val if (r.path, cfg.size) not in cache]
    if todo:
        decoded = data_mod.load_pixel_cache(todo, cfg.size, cfg.threads)
        cache.update({(p, cfg.size): px for p, px in zip(todo, decoded, strict=True)})
    val_px = np.stack([cache[(r.path, cfg.size)] for r in val])
    val_y = np.array([r.label for r in val], dtype=np.int64)
    saved = json.loads((run_dir / "history.json").read_text())
    selected = next(h for h in history if h["step"] == saved.get("selected_step"))
    if "val_probabilities" in saved:  # the selected evaluation's scores, as fit computed them
        prob = np.asarray(saved["val_probabilities"], dtype=np.float32)
    else:
        prob = predict_torch(net, val_px)
    threshold = choose_threshold(val_y, prob, cfg.target_sensitivity)
    pooled = binary_metrics(val_y, prob, threshold)
    per_batch = heldout_metrics(val, prob, threshold)
    sub = np.arange(0, len(val), SHIFT_STRIDE)
    shifted: dict[str, float] = {}
    net.eval()
    for name in CANDIDATE_SHIFTS:
        x = torch.from_numpy(shifted_inputs(val_px[sub], name))
        with torch.no_grad():
            logits = torch.cat([net(x[i : i + 64])[0] for i in range(0, len(x), 64)])
        auc = roc_auc(val_y[sub], logits.numpy())
        shifted[name] = float("nan") if auc is None else auc
    return {
        "recipe": cfg.recipe,
        "config": asdict(cfg),
        "steps": cfg.steps,
        "selected_step": selected["step"],
        "train_seconds": float(sum(h["epoch_seconds"] for h in history)),
        "evaluate_seconds": time.time() - t0,
        "history": history,
        "batch_mean_auc": per_batch["mean_auc"],
        "batch_worst_auc": per_batch["worst_auc"],
        "worst_batch": per_batch["worst_batch"],
        "batches": per_batch["batches"],
        "pooled": {
            k: pooled[k] for k in ("auc", "sensitivity", "specificity", "accuracy", "brier")
        },
        "threshold": threshold,
        "threshold_rule": f"sensitivity >= {cfg.target_sensitivity} on the held-out batches "
        "(pooled), best specificity",
        "shifted_auc": shifted,
        "shifted_mean_auc": float(np.mean(list(shifted.values()))),
        "shifted_films": int(len(sub)),
        "environment": environment(),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m cxrlake.training.candidates`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m cxrlake.training.candidates")
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", required=True, help="one run directory per recipe under this")
    parser.add_argument("--queue", required=True, help="file with one recipe name a line")
    parser.add_argument("--steps", type=int, default=None, help="step budget (default: config)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figures", default=None, help="also copy candidate.json here")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    cache: PixelCache = {}
    while True:
        names = [n.strip() for n in Path(args.queue).read_text().splitlines()]
        todo = [n for n in names if n and not (runs / n / "candidate.json").is_file()]
        if not todo and "END" in names:
            return 0
        if not todo:  # waiting for names to be appended (a line END finishes)
            time.sleep(15)
            continue
        name = todo[0]
        if name == "END":
            return 0
        run_dir = runs / name
        cfg = recipe_config(
            name, str(Path(args.data).resolve()), str(run_dir), args.steps, threads=args.threads
        )
        log(f"candidate {name}: {cfg.steps} steps at {cfg.size}px")
        fit(cfg, pixel_cache=cache)
        figures = evaluate_candidate(run_dir, cache)
        (run_dir / "candidate.json").write_text(json.dumps(figures, indent=2))
        if args.figures:
            Path(args.figures).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / "candidate.json", Path(args.figures) / f"{name}.json")
        log(
            f"candidate {name}: held-out batches AUC mean {figures['batch_mean_auc']:.4f} "
            f"worst {figures['batch_worst_auc']:.4f}; pooled {json.dumps(figures['pooled'])}"
        )


if __name__ == "__main__":
    sys.exit(main())
