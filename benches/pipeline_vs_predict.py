"""The local pipeline next to `cxrlake predict`, both as whole processes, one run side by side.

Throughput (default): ``cxrlake pipeline run`` on a folder into a fresh lakehouse, then
``cxrlake predict`` on the same folder; prints both wall-clock times and the pipeline's throughput
as a ratio of predict's (1.0 = as fast; the pipeline also hashes, stores and validates).

Memory (``--rss``): peak resident set size of a fresh pipeline run over a deterministic sample of
``--sample`` images and over the whole tree; prints both peaks and the growth. Peak memory follows
the largest images that share one batch, so the sample holds the ``--heavy`` largest files (the
200 full-resolution ones in ../shared/data) plus every k-th other file: the growth then measures
what scales with the number of images, not which batch happens to be the heaviest.

    python benches/pipeline_vs_predict.py --images ../shared/data/chest_xray_fullres
    nice python benches/pipeline_vs_predict.py --rss --images ../shared/data --sample 500

Peak RSS is the child's ``ru_maxrss`` from ``wait4``, so each figure covers one process only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "cxrlake.cli"]


def run_measured(argv: list[str]) -> tuple[float, float, str]:
    """Run a process to completion; return (wall seconds, its peak RSS in MiB, its stdout)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
        # drain stdout without reaping the child, then wait4 for its own resource usage
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err.read()[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024.0, out


def pipeline(source: Path, lakehouse: Path) -> tuple[float, float, str]:
    run = ["pipeline", "run", "--source", str(source), "--lakehouse", str(lakehouse)]
    return run_measured([*CLI, *run, "--no-progress"])


def throughput(images: Path, work: Path) -> None:
    n = sum(1 for p in images.rglob("*") if p.is_file())
    t_pipe, rss_pipe, summary = pipeline(images, work / "lakehouse")
    t_pred, rss_pred, _ = run_measured([*CLI, "predict", str(images)])
    print(summary)
    print(f"images: {n} files under {images}")
    print(f"cxrlake pipeline run (fresh lakehouse): {t_pipe:6.2f} s  peak RSS {rss_pipe:7.1f} MiB")
    print(f"cxrlake predict:                        {t_pred:6.2f} s  peak RSS {rss_pred:7.1f} MiB")
    print(f"pipeline throughput / predict throughput: {t_pred / t_pipe:.2f}x")


def memory(images: Path, work: Path, sample: int, heavy: int) -> None:
    files = sorted(p for p in images.rglob("*") if p.is_file() and not p.name.startswith("."))
    # the heaviest batches in both runs (peak RSS follows the largest images in one batch, not
    # the image count): the `heavy` largest files, then every k-th of the others
    by_size = sorted(files, key=lambda p: (-p.stat().st_size, p))
    chosen = by_size[:heavy]
    rest = sorted(by_size[heavy:])
    step = max(1, len(rest) // max(1, sample - heavy))
    chosen += rest[::step][: max(0, sample - heavy)]
    subset = work / "sample"
    for p in chosen:
        target = subset / p.relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
    n_small = sum(1 for p in subset.rglob("*") if p.is_file())
    t_small, rss_small, _ = pipeline(subset, work / "lh-sample")
    t_all, rss_all, summary = pipeline(images, work / "lh-all")
    print(summary)
    print(f"{n_small:>5} images: {t_small:7.1f} s  peak RSS {rss_small:7.1f} MiB")
    print(f"{len(files):>5} images: {t_all:7.1f} s  peak RSS {rss_all:7.1f} MiB")
    print(f"peak RSS growth: {100.0 * (rss_all / rss_small - 1.0):+.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--rss", action="store_true", help="measure peak RSS (sample vs all)")
    parser.add_argument("--sample", type=int, default=500, help="images in the small RSS run")
    parser.add_argument(
        "--heavy", type=int, default=200, help="largest files always in the small RSS run"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxrlake-bench-") as tmp:
        if args.rss:
            memory(args.images.resolve(), Path(tmp), args.sample, args.heavy)
        else:
            throughput(args.images.resolve(), Path(tmp))


if __name__ == "__main__":
    main()
