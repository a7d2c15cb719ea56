"""Occlusion test of the heatmap grid the reader sees (`cxrlake.heatmap.refine`) against the
model's own cells, on positive films.

For each film (``--films`` PNEUMONIA films, sorted by name): its class-activation map from
``cxrlake.explain``; then, for each grid,

- *coarse*: the model's map (5x5 cells at 160 px); the region is ``--scale`` x ``--scale``
  cells placed on the cells;
- *shipped*: the map upsampled 4x and smoothed (20x20); the region is a window of the same size
  (``4 * scale`` fine cells a side), placed where the refined map's mean is largest
  (`hottest_region`), at any fine-cell offset;

the film is scored with the hottest region hidden (``--fill blur``: the blurred film there,
``mean``: its mean gray level), and with ``--draws`` regions of the same size drawn at random
(uniform positions on the same grid, fixed seed; the mean of their drops counts). A map that points
at the evidence makes P(pneumonia) drop more when its hottest region is hidden. Drops are reported
in probability and in logit units (most positive films sit near P = 1, where the sigmoid hides how
far the evidence moved), with a 95% interval of the mean paired difference. Films are upright 8-bit
gray at a longer side of 640 pixels and scored as PNG, the original and every occluded copy alike.

    python benches/heatmap_occlusion.py --images ../shared/data/chest_xray_fullres/PNEUMONIA \
        --films 60 [--fill blur|mean] [--scale 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# the film loading of the one-cell deletion test (same folder: run as a script from benches/)
from heatmap_faithfulness import png_bytes, upright_gray
from PIL import Image

import cxrlake
from cxrlake.heatmap import REFINE_FACTOR, hottest_region, refine


def occluded(
    pixels: np.ndarray,
    window: tuple[int, int, int],
    grid: tuple[int, int],
    fill: str,
    blurred: np.ndarray | None = None,
) -> bytes:
    """``pixels`` with the window (top-left cell row, col, side in cells) of a ``grid`` over the
    whole film hidden, as PNG: ``fill`` ``mean`` paints the film's mean gray level (which adds an
    opacity where the lung is dark), ``blur`` puts the strongly blurred film there (the local
    structure goes, the brightness stays)."""
    (r, c, side), (rows, cols) = window, grid
    height, width = pixels.shape
    out = pixels.copy()
    top, bottom = r * height // rows, (r + side) * height // rows
    left, right = c * width // cols, (c + side) * width // cols
    if fill == "blur":
        out[top:bottom, left:right] = blurred[top:bottom, left:right]
    else:
        out[top:bottom, left:right] = int(round(float(pixels.mean())))
    return png_bytes(out)


def blurred_copy(pixels: np.ndarray) -> np.ndarray:
    from PIL import ImageFilter

    radius = max(pixels.shape) / 20  # a quarter of a 5x5 cell
    image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, type=Path, help="folder of positive films")
    parser.add_argument("--films", type=int, default=60)
    parser.add_argument("--draws", type=int, default=8, help="random regions per film and grid")
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fill", choices=("mean", "blur"), default="blur")
    parser.add_argument(
        "--scale",
        type=int,
        default=2,
        help="region side in coarse cells (2, the shipped hottest region: 64 px at the 160 px "
        "input; 1: one cell of the model's 5x5 map)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    model = cxrlake.Model(args.model)
    rng = np.random.default_rng(args.seed)
    paths = sorted(
        str(p) for p in args.images.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")
    )[: args.films]
    films = [upright_gray(p) for p in paths]
    maps = cxrlake.explain([png_bytes(x) for x in films], model).to_pylist()
    variants: list[bytes] = []
    plan: list[tuple[int, str, str]] = []  # (film, grid, hottest | random)
    for k, (pixels, row) in enumerate(zip(films, maps, strict=True)):
        if row["error"] is not None:
            continue
        coarse = row["heatmap"]
        soft = blurred_copy(pixels) if args.fill == "blur" else None
        grids = {
            "coarse": (coarse, args.scale),
            "shipped": (refine(coarse), REFINE_FACTOR * args.scale),
        }
        for name, (grid_map, side) in grids.items():
            shape = (grid_map["rows"], grid_map["cols"])
            hot = hottest_region(grid_map, side)
            variants.append(
                occluded(pixels, (hot["row"], hot["col"], side), shape, args.fill, soft)
            )
            plan.append((k, name, "hottest"))
            for _ in range(args.draws):
                r = int(rng.integers(shape[0] - side + 1))
                c = int(rng.integers(shape[1] - side + 1))
                variants.append(occluded(pixels, (r, c, side), shape, args.fill, soft))
                plan.append((k, name, "random"))
    scores = cxrlake.predict(variants, model).column("probability").to_numpy(zero_copy_only=False)
    base = {k: maps[k]["probability"] for k, _, _ in plan}

    def logit(p: float) -> float:
        p = min(max(p, 1e-7), 1 - 1e-7)
        return float(np.log(p / (1 - p)))

    drops: dict[tuple[str, str], dict[int, list[float]]] = {}
    logit_drops: dict[tuple[str, str], dict[int, list[float]]] = {}
    for (k, grid, kind), p in zip(plan, scores, strict=True):
        drops.setdefault((grid, kind), {}).setdefault(k, []).append(base[k] - p)
        logit_drops.setdefault((grid, kind), {}).setdefault(k, []).append(logit(base[k]) - logit(p))
    result: dict = {
        "model": f"{model.name} {model.version}",
        "films": len(base),
        "draws": args.draws,
        "seed": args.seed,
        "fill": args.fill,
        "region_side_coarse_cells": args.scale,
        "mean_probability": float(np.mean(list(base.values()))),
    }
    print(
        f"{len(base)} films, {model.name} {model.version}, mean P {result['mean_probability']:.3f}"
    )
    for grid in ("coarse", "shipped"):
        hot = np.array([v[0] for _, v in sorted(drops[(grid, "hottest")].items())])
        rnd = np.array([np.mean(v) for _, v in sorted(drops[(grid, "random")].items())])
        diff = hot - rnd
        # 95% interval of the mean paired difference (normal approximation)
        half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
        lhot = np.array([v[0] for _, v in sorted(logit_drops[(grid, "hottest")].items())])
        lrnd = np.array([np.mean(v) for _, v in sorted(logit_drops[(grid, "random")].items())])
        ldiff = lhot - lrnd
        lhalf = 1.96 * ldiff.std(ddof=1) / np.sqrt(len(ldiff))
        result[grid] = {
            "mean_drop_hottest": float(hot.mean()),
            "mean_drop_random": float(rnd.mean()),
            "difference": float(diff.mean()),
            "difference_ci95": [float(diff.mean() - half), float(diff.mean() + half)],
            "share_hottest_drops_more": float((diff > 0).mean()),
            "mean_logit_drop_hottest": float(lhot.mean()),
            "mean_logit_drop_random": float(lrnd.mean()),
            "logit_difference": float(ldiff.mean()),
            "logit_difference_ci95": [float(ldiff.mean() - lhalf), float(ldiff.mean() + lhalf)],
            "share_hottest_logit_drops_more": float((ldiff > 0).mean()),
        }
        s = result[grid]
        print(
            f"  {grid:8s} drop hottest {s['mean_drop_hottest']:+.4f}  random "
            f"{s['mean_drop_random']:+.4f}  difference {s['difference']:+.4f} "
            f"(95% CI {s['difference_ci95'][0]:+.4f}..{s['difference_ci95'][1]:+.4f})  "
            f"hottest drops more in {s['share_hottest_drops_more']:.0%}"
        )
        print(
            f"  {'':8s} logit drop hottest {s['mean_logit_drop_hottest']:+.3f}  random "
            f"{s['mean_logit_drop_random']:+.3f}  difference {s['logit_difference']:+.3f} "
            f"(95% CI {s['logit_difference_ci95'][0]:+.3f}..{s['logit_difference_ci95'][1]:+.3f})"
            f"  hottest drops more in {s['share_hottest_logit_drops_more']:.0%}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
