"""Side-by-side throughput: cxrlake vs the Python baseline a Databricks user writes today.

One process, one run, every variant on the same images and model, ratios printed at the end:

(a) baseline: PIL open -> grayscale -> resize -> numpy -> onnxruntime InferenceSession, in batches
    (the pandas-UDF inference pattern); (a') the same with PIL ``draft`` (DCT-scaled JPEG decoding)
(b) ``cxrlake.predict`` on bytes and on paths (decode of the next chunk overlaps inference)
(c) I: inference alone on pre-made tensors (onnxruntime, same threads)
(d) D: ``cxrlake.preprocess`` alone (decode + resize + normalise)
(e) when the model has an ``ood_score`` output: ``cxrlake.predict(paths)`` with the same model
    stripped of it (`cxrlake.training.ood.strip_ood`), i.e. the cost of the out-of-distribution
    flag (same forward pass, a few more graph nodes and three columns)

and the limit ``1 / (1/I + 1/D)``: the end-to-end throughput if decoding and inference shared the
cores with zero overhead. Each variant runs ``--rounds`` times interleaved; the best round counts
(the machine is shared and noisy).

    python benches/side_by_side.py --images ../shared/data/chest_xray_fullres [--model M.onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

import cxrlake


def image_paths(root: Path) -> list[str]:
    found = [p for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")]
    return sorted(str(p) for p in found)


def ort_session(model_path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def baseline(
    paths: list[str],
    session: ort.InferenceSession,
    model: cxrlake.Model,
    batch: int,
    draft: bool,
) -> np.ndarray:
    """PIL + numpy + onnxruntime, as a pandas UDF does it: preprocess a batch, then run it."""
    channels, height, width = model.input_shape
    mean = np.asarray(model.mean, np.float32).reshape(1, channels, 1, 1)
    std = np.asarray(model.std, np.float32).reshape(1, channels, 1, 1)
    out = []
    for start in range(0, len(paths), batch):
        arrays = []
        for path in paths[start : start + batch]:
            with Image.open(path) as image:
                if draft:
                    image.draft("L", (2 * width, 2 * height))
                image = ImageOps.exif_transpose(image).convert("L")
                image = image.resize((width, height), Image.BILINEAR)
                arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
        x = np.repeat(np.stack(arrays)[:, None], channels, axis=1)
        x = (x - mean) / std
        (probability,) = session.run(["probability"], {"input": x.astype(np.float32)})
        out.append(probability.reshape(-1))
    return np.concatenate(out)


def inference_only(session: ort.InferenceSession, tensors: np.ndarray, batch: int) -> np.ndarray:
    out = []
    for start in range(0, len(tensors), batch):
        (probability,) = session.run(["probability"], {"input": tensors[start : start + batch]})
        out.append(probability.reshape(-1))
    return np.concatenate(out)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, type=Path, help="directory of JPEG/PNG images")
    parser.add_argument("--model", default=None, help="ONNX model (default: the shipped model)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="threads (default: CPUs)"
    )
    parser.add_argument("--batch", type=int, default=16, help="images per inference run (baseline)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; best counts")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    paths = image_paths(args.images)
    if not paths:
        print(f"no images under {args.images}", file=sys.stderr)
        return 2
    model = cxrlake.Model(args.model)
    blobs = [Path(p).read_bytes() for p in paths]
    session = ort_session(model.path, args.threads)
    n = len(paths)
    print(
        f"{n} images from {args.images}; model {model.name} {model.version} "
        f"input {model.input_shape}; {args.threads} threads; onnxruntime {ort.__version__}"
    )

    # Warm up every path once on a few images (session creation, thread pools, page cache).
    tensors, errors = cxrlake.preprocess(paths, model=model, threads=args.threads)
    if errors.null_count != len(errors):
        print(f"preprocess errors: {errors}", file=sys.stderr)
        return 1
    cxrlake.predict(paths[:8], model=model, threads=args.threads)
    baseline(paths[:4], session, model, args.batch, draft=False)
    inference_only(session, tensors[:8], args.batch)

    without_ood = None
    if model.has_ood_score:
        import tempfile

        import onnx

        from cxrlake.training.ood import strip_ood

        folder = tempfile.mkdtemp(prefix="cxrlake-bench-")
        stripped = os.path.join(folder, "without_ood.onnx")
        onnx.save(strip_ood(onnx.load(model.path)), stripped)
        without_ood = cxrlake.Model(stripped)
        cxrlake.predict(paths[:8], model=without_ood, threads=args.threads)

    variants: dict[str, Callable[[], object]] = {
        "PIL + onnxruntime (baseline)": lambda: baseline(
            paths, session, model, args.batch, draft=False
        ),
        "PIL draft + onnxruntime": lambda: baseline(paths, session, model, args.batch, draft=True),
        "cxrlake.predict(bytes)": lambda: cxrlake.predict(blobs, model=model, threads=args.threads),
        "cxrlake.predict(paths)": lambda: cxrlake.predict(paths, model=model, threads=args.threads),
        "I: inference alone (onnxruntime)": lambda: inference_only(session, tensors, args.batch),
        "D: cxrlake.preprocess(paths)": lambda: cxrlake.preprocess(
            paths, model=model, threads=args.threads
        ),
        "PIL decode+resize alone (1 thread)": lambda: [
            ImageOps.exif_transpose(Image.open(p))
            .convert("L")
            .resize(model.input_shape[:0:-1], Image.BILINEAR)
            for p in paths
        ],
    }
    if without_ood is not None:
        # right after predict(paths), so the two run back to back in every round
        ordered = {}
        for name, fn in variants.items():
            ordered[name] = fn
            if name == "cxrlake.predict(paths)":
                ordered["cxrlake.predict(paths) without OOD output"] = lambda: cxrlake.predict(
                    paths, model=without_ood, threads=args.threads
                )
        variants = ordered
    best: dict[str, float] = {}
    for _ in range(max(1, args.rounds)):
        for name, fn in variants.items():
            seconds = timed(fn)
            best[name] = max(best.get(name, 0.0), n / seconds)

    # Same tensors, same model: cxrlake's ONNX Runtime run must agree with Python onnxruntime.
    ours = np.asarray(cxrlake.predict(paths, model=model).column("probability"), dtype=np.float64)
    reference = inference_only(session, tensors, args.batch).astype(np.float64)
    agreement = float(np.max(np.abs(ours - reference)))

    throughput_i = best["I: inference alone (onnxruntime)"]
    throughput_d = best["D: cxrlake.preprocess(paths)"]
    limit = 1.0 / (1.0 / throughput_i + 1.0 / throughput_d)
    e2e = best["cxrlake.predict(paths)"]
    base = best["PIL + onnxruntime (baseline)"]
    print()
    print(f"{'variant':40s} {'img/s':>8s}")
    for name, value in best.items():
        print(f"{name:40s} {value:8.1f}")
    print(f"{'limit 1/(1/I + 1/D)':40s} {limit:8.1f}")
    print()
    ratios = {
        "predict(paths) / limit": e2e / limit,
        "predict(paths) / PIL+onnxruntime": e2e / base,
        "predict(paths) / PIL draft+onnxruntime": e2e / best["PIL draft + onnxruntime"],
        "predict(bytes) / limit": best["cxrlake.predict(bytes)"] / limit,
        "D / PIL decode+resize (1 thread)": throughput_d
        / best["PIL decode+resize alone (1 thread)"],
    }
    if without_ood is not None:
        # time with / time without: 1.03 = the OOD output adds 3 % to predict's time
        ratios["predict time with OOD / without"] = (
            best["cxrlake.predict(paths) without OOD output"] / e2e
        )
    for name, value in ratios.items():
        print(f"{name:40s} {value:8.3f}x")
    print(f"max |p_cxrlake - p_onnxruntime| on the same tensors: {agreement:.2e}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "images": n,
                    "threads": args.threads,
                    "model": model.name,
                    "throughput": best,
                    "limit": limit,
                    "ratios": ratios,
                    "max_abs_probability_diff": agreement,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
