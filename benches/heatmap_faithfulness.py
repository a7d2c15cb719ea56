"""Is the heatmap faithful? A deletion test over the full-resolution images.

For each image: compute its class-activation map with ``cxrlake.explain``; occlude (fill with the
image's mean gray level) the image region under the map's hottest cell (largest value: the
strongest push towards PNEUMONIA) and, separately, under one other cell drawn at random (fixed
seed); re-score the original and both occluded copies with ``cxrlake.predict``. A faithful map
makes the probability drop more when the hottest cell is hidden than when a random one is.

The model stretches the whole upright image to its input, so cell (i, j) of a ``rows x cols``
map covers rows ``i*H/rows .. (i+1)*H/rows`` and columns ``j*W/cols .. (j+1)*W/cols`` of the
upright image, whatever its aspect ratio. Images are scored as PNG at a longer side of 640 pixels
(the original, the hot-occluded and the random-occluded copy alike), so the three differ only by
the occlusion.

    python benches/heatmap_faithfulness.py --images ../shared/data/chest_xray_fullres [--json out]
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

import cxrlake

LONGER_SIDE = 640


def upright_gray(path: str) -> np.ndarray:
    with Image.open(path) as image:
        gray = ImageOps.exif_transpose(image).convert("L")
    scale = LONGER_SIDE / max(gray.size)
    size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
    return np.asarray(gray.resize(size, Image.Resampling.BILINEAR))


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def occluded(pixels: np.ndarray, cell: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    (i, j), (rows, cols) = cell, grid
    height, width = pixels.shape
    out = pixels.copy()
    top, bottom = i * height // rows, (i + 1) * height // rows
    left, right = j * width // cols, (j + 1) * width // cols
    out[top:bottom, left:right] = int(round(float(pixels.mean())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    model = cxrlake.Model(args.model)
    rng = np.random.default_rng(args.seed)
    paths = sorted(
        str(p) for p in args.images.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")
    )
    originals = [upright_gray(p) for p in paths]
    maps = cxrlake.explain([png_bytes(x) for x in originals], model).to_pylist()
    variants: list[bytes] = []
    used: list[int] = []
    for k, (pixels, row) in enumerate(zip(originals, maps, strict=True)):
        if row["error"] is not None:
            continue
        heatmap = row["heatmap"]
        grid = (heatmap["rows"], heatmap["cols"])
        values = np.asarray(heatmap["values"]).reshape(grid)
        hot = np.unravel_index(int(values.argmax()), grid)
        others = [c for c in np.ndindex(*grid) if c != hot]
        random_cell = others[rng.integers(len(others))]
        variants += [
            png_bytes(occluded(pixels, hot, grid)),
            png_bytes(occluded(pixels, random_cell, grid)),
        ]
        used.append(k)
    scores = cxrlake.predict(variants, model).column("probability").to_numpy(zero_copy_only=False)
    base = np.array([maps[k]["probability"] for k in used])
    labels = np.array([maps[k]["predicted_label"] for k in used])
    drop_hot = base - scores[0::2]
    drop_random = base - scores[1::2]
    # The same drops in logit units: most probabilities sit near 0 or 1, where the sigmoid hides
    # how far the evidence moved.
    eps = 1e-7

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, eps, 1 - eps)
        return np.log(p / (1 - p))

    logit_drop_hot = logit(base) - logit(scores[0::2])
    logit_drop_random = logit(base) - logit(scores[1::2])
    grid = (maps[used[0]]["heatmap"]["rows"], maps[used[0]]["heatmap"]["cols"])

    def summary(mask: np.ndarray) -> dict[str, float]:
        return {
            "images": int(mask.sum()),
            "mean_drop_hottest": float(drop_hot[mask].mean()),
            "mean_drop_random": float(drop_random[mask].mean()),
            "difference": float(drop_hot[mask].mean() - drop_random[mask].mean()),
            "share_hottest_drops_more": float((drop_hot[mask] > drop_random[mask]).mean()),
            "mean_logit_drop_hottest": float(logit_drop_hot[mask].mean()),
            "mean_logit_drop_random": float(logit_drop_random[mask].mean()),
            "share_hottest_logit_drops_more": float(
                (logit_drop_hot[mask] > logit_drop_random[mask]).mean()
            ),
        }

    result = {
        "model": f"{model.name} {model.version}",
        "grid": list(grid),
        "cell_pixels_at_input": [model.input_shape[1] // grid[0], model.input_shape[2] // grid[1]],
        "all": summary(np.ones(len(used), bool)),
        "predicted_pneumonia": summary(labels == 1),
        "predicted_normal": summary(labels == 0),
    }
    print(
        f"{len(used)} images, {model.name} {model.version}, map {grid[0]}x{grid[1]} cells "
        f"({result['cell_pixels_at_input'][0]} px at the {model.input_shape[1]} px input)"
    )
    for name in ("all", "predicted_pneumonia", "predicted_normal"):
        s = result[name]
        print(
            f"  {name:20s} n={s['images']:3d}  drop hottest {s['mean_drop_hottest']:+.4f}  "
            f"random {s['mean_drop_random']:+.4f}  difference {s['difference']:+.4f}  "
            f"hottest drops more in {s['share_hottest_drops_more']:.0%}"
        )
        print(
            f"  {'':20s} logit drop hottest {s['mean_logit_drop_hottest']:+.3f}  "
            f"random {s['mean_logit_drop_random']:+.3f}  "
            f"hottest drops more in {s['share_hottest_logit_drops_more']:.0%}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
