"""What explanations cost: ``explain`` vs ``predict`` on paths, and the heatmap inside ``analyze``.

One process, one run, the same images and model for every variant, ratios printed at the end:

(a) ``cxrlake.predict`` on paths;
(b) ``cxrlake.explain`` on paths (maps only) and (b') with 256-pixel overlay PNGs;
(c) ``cxrlake.analyze`` on paths with ``heatmap=True`` and (c') ``heatmap=False``: the heatmap's
    share of the pipeline's image pass.

Each variant runs ``--rounds`` times interleaved after one warm-up call; the best round counts
(the machine is shared and noisy). It also prints how far ``analyze``'s statistics (measured on the
DCT-scaled decode) are from ``features``' full-resolution ones, over the same images.

    python benches/explain_vs_predict.py --images ../shared/data/chest_xray_fullres
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import cxrlake


def image_paths(root: Path) -> list[str]:
    found = [p for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")]
    return sorted(str(p) for p in found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    paths = image_paths(args.images)
    model = cxrlake.Model(args.model)
    common = {"model": model, "threads": args.threads}
    variants: dict[str, Callable[[], object]] = {
        "predict": lambda: cxrlake.predict(paths, **common),
        "explain": lambda: cxrlake.explain(paths, **common),
        "explain+overlay256": lambda: cxrlake.explain(paths, **common, overlay_size=256),
        "analyze heatmap=True": lambda: cxrlake.analyze(paths, **common, heatmap=True),
        "analyze heatmap=False": lambda: cxrlake.analyze(paths, **common, heatmap=False),
    }
    for run in variants.values():
        run()  # warm-up: session creation, page cache
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)

    n = len(paths)
    print(f"{n} images, model {model.name} {model.version}, best of {args.rounds} rounds")
    for name, seconds in best.items():
        print(f"  {name:24s} {seconds:7.3f} s  {n / seconds:7.1f} images/s")
    ratios = {
        "explain / predict (time)": best["explain"] / best["predict"],
        "explain+overlay256 / predict (time)": best["explain+overlay256"] / best["predict"],
        "analyze heatmap cost (True/False - 1)": best["analyze heatmap=True"]
        / best["analyze heatmap=False"]
        - 1.0,
    }
    for name, value in ratios.items():
        print(f"  {name:40s} {value:+.3f}" if "cost" in name else f"  {name:40s} {value:.2f}x")

    analyzed = cxrlake.analyze(paths, **common, heatmap=False).to_pydict()
    full = cxrlake.features(paths, embedding=False, threads=args.threads).to_pydict()
    differences = {}
    for column in ("mean_pixel_value", "std_pixel_value", "quality_score"):
        a = np.array(analyzed[column], np.float64)
        f = np.array(full[column], np.float64)
        d = np.abs(a - f)
        differences[column] = {"mean_abs": float(d.mean()), "max_abs": float(d.max())}
        print(f"  analyze vs features {column:18s} mean |d| {d.mean():.4f}  max |d| {d.max():.4f}")
    if args.json:
        args.json.write_text(
            json.dumps({"images": n, "seconds": best, "ratios": ratios, "statistics": differences})
        )


if __name__ == "__main__":
    main()
