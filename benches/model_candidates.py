"""Model candidates priced: ranking under simulated acquisition shift against speed and size.

For each candidate ONNX file (and the two-pass variants built from them: test-time augmentation
and a two-model ensemble), one process and one run:

- AUC on the shifted validation (`cxrlake.training.shift`: the patient-grouped validation split
  under every named acquisition condition); mean and worst over the conditions, and unshifted;
- ``cxrlake.predict`` throughput end to end (decode, resize, inference) on the full-resolution
  films, the single-pass files interleaved over ``--rounds`` rounds (best round counts, the
  machine is shared); a k-pass variant is measured as k passes of ``cxrlake.predict``;
- file size, and the number of distinct probabilities the file gives the full-resolution films.

    python benches/model_candidates.py --data ../shared/data/chest_xray/train \\
        --fullres ../shared/data/chest_xray_fullres --candidate former=old.onnx \\
        --candidate shift160-int8=new.onnx --tta shift160-int8 \\
        --ensemble former,shift160-int8 --shipped shift160-int8 --json price.json

``--merge RUN_DIR/metrics.json`` adds the result as ``price`` (rendered by the model card).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import cxrlake
from cxrlake.medallion.metrics import roc_auc
from cxrlake.training.operating_point import validation_pixels
from cxrlake.training.shift import OUTSIDE_AUGMENTATION, SHIFTS, model_logits, shifted_inputs


def zoom_view(inputs: np.ndarray, crop: float = 0.92) -> np.ndarray:
    """The test-time view: the central ``crop`` of the film resized back to the input size."""
    x = torch.from_numpy(inputs)
    h, w = x.shape[2:]
    dh, dw = int(round(h * (1 - crop) / 2)), int(round(w * (1 - crop) / 2))
    inner = x[:, :, dh : h - dh, dw : w - dw]
    return F.interpolate(inner, size=(h, w), mode="bilinear", align_corners=False).numpy()


def predict_rate(paths: list[str], models: list[cxrlake.Model], rounds: int) -> float:
    """Best images/s over ``rounds`` of ``cxrlake.predict`` with each of ``models`` in turn."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for model in models:
            cxrlake.predict(paths, model=model)
        best = min(best, time.perf_counter() - start)
    return len(paths) / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="training folder (validation split)")
    parser.add_argument("--fullres", required=True, help="full-resolution films (speed)")
    parser.add_argument("--candidate", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--note", action="append", default=[], metavar="NAME=TEXT")
    parser.add_argument(
        "--speed-only",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also time this file and count its distinct probabilities (no shifted AUC)",
    )
    parser.add_argument("--tta", action="append", default=[], metavar="NAME")
    parser.add_argument("--ensemble", action="append", default=[], metavar="NAME,NAME")
    parser.add_argument("--shipped", required=True, help="name of the shipped candidate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--logits-npz",
        action="append",
        default=[],
        metavar="NAME=NPZ",
        help="saved shifted logits of a candidate (one array per condition name)",
    )
    parser.add_argument(
        "--auc-from",
        default=None,
        help="an earlier result JSON: reuse its shifted AUCs of same-named candidates (speed is "
        "always measured in this run)",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--merge", default=None, help="metrics.json to add the result to")
    args = parser.parse_args()

    files = dict(item.split("=", 1) for item in args.candidate)
    notes = dict(item.split("=", 1) for item in args.note)
    size = int(cxrlake.Model(next(iter(files.values()))).input_shape[1])
    pixels, labels = validation_pixels(args.data, size)
    paths = sorted(
        str(p) for p in Path(args.fullres).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg")
    )
    speed_only = dict(item.split("=", 1) for item in args.speed_only)
    models = {name: cxrlake.Model(path) for name, path in {**files, **speed_only}.items()}

    def summary(name: str, aucs: dict[str, float], rate: float, size_mb: float, note: str):
        values = list(aucs.values())
        print(
            f"{name}: shift-mean AUC {np.mean(values):.4f} worst {min(values):.4f} "
            f"unshifted {aucs['none']:.4f} {rate:.0f} img/s {size_mb:.1f} MB",
            flush=True,
        )
        return {
            "name": name,
            "shifted_mean_auc": float(np.mean(values)),
            "shifted_worst_auc": float(min(values)),
            "worst_shift": min(aucs, key=aucs.get),
            "unshifted_auc": aucs["none"],
            "outside_augmentation_auc": float(np.mean([aucs[n] for n in OUTSIDE_AUGMENTATION])),
            "per_shift_auc": aucs,
            "images_per_second": rate,
            "size_mb": size_mb,
            "note": note,
        }

    # Speed first, interleaved, before the long AUC scoring heats nothing else up.
    rates = {name: 0.0 for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            rates[name] = max(rates[name], predict_rate(paths, [model], 1))
    pair_rates = {
        pair: predict_rate(paths, [models[n] for n in pair.split(",")], args.rounds)
        for pair in args.ensemble
    }
    distinct = {
        name: len(set(cxrlake.predict(paths, model=m).column("probability").to_pylist()))
        for name, m in models.items()
    }

    candidates = []
    logits_cache: dict[str, dict[str, np.ndarray]] = {}
    earlier = {}
    if args.auc_from:
        earlier = {
            c["name"]: c["per_shift_auc"]
            for c in json.loads(Path(args.auc_from).read_text())["candidates"]
        }
    for item in args.logits_npz:
        name, path = item.split("=", 1)
        saved = np.load(path)
        logits_cache[name] = {n: saved[n] for n in SHIFTS}
    needs_logits = set(args.tta) | {n for pair in args.ensemble for n in pair.split(",")}
    needs_logits -= set(logits_cache)
    for name, path in files.items():
        if name in earlier and name not in needs_logits:
            aucs = earlier[name]
        else:
            per = {n: model_logits(path, shifted_inputs(pixels, n)) for n in SHIFTS}
            logits_cache[name] = per
            aucs = {n: roc_auc(labels, z) for n, z in per.items()}
        size_mb = Path(path).stat().st_size / 1e6
        candidates.append(summary(name, aucs, rates[name], size_mb, notes.get(name, "")))
    for name in args.tta:
        path = files[name]
        aucs = {}
        for n in SHIFTS:
            x = shifted_inputs(pixels, n)
            aucs[n] = roc_auc(
                labels, (logits_cache[name][n] + model_logits(path, zoom_view(x))) / 2
            )
        size_mb = Path(path).stat().st_size / 1e6
        candidates.append(
            summary(
                f"{name} + test-time zoom view (2 passes)",
                aucs,
                rates[name] / 2.0,
                size_mb,
                "mean logit of the film and its central 92 % zoomed back; speed: half of one "
                "pass (not implemented in the Rust core)",
            )
        )
    for pair in args.ensemble:
        names = pair.split(",")
        aucs = {
            n: roc_auc(labels, np.mean([logits_cache[m][n] for m in names], axis=0)) for n in SHIFTS
        }
        size_mb = sum(Path(files[m]).stat().st_size for m in names) / 1e6
        candidates.append(
            summary(
                f"ensemble {' + '.join(names)}",
                aucs,
                pair_rates[pair],
                size_mb,
                "mean logit of the two files; speed: both files through cxrlake.predict",
            )
        )
    result = {
        "conditions": len(SHIFTS),
        "films": int(len(labels)),
        "shipped": args.shipped,
        "distinct_fullres": (
            f"{distinct[args.shipped]} of {len(paths)} (shipped file); "
            + ", ".join(f"{n}: {d}" for n, d in distinct.items() if n != args.shipped)
        ),
        "command": "python benches/model_candidates.py (see the run's price.json)",
        "candidates": candidates,
        "fullres_images": len(paths),
        "speed_only": [
            {"name": name, "images_per_second": rates[name], "distinct_fullres": distinct[name]}
            for name in speed_only
        ],
    }
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    if args.merge:
        metrics = json.loads(Path(args.merge).read_text())
        metrics["price"] = result
        Path(args.merge).write_text(json.dumps(metrics, indent=2))
    print(text if not args.json else f"written {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
