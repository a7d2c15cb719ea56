"""Two revisions of cxrlake side by side in one run: pipeline, `cxrlake predict`, peak RSS.

Each revision is a Python interpreter with that revision's cxrlake installed (e.g. this checkout's
``.venv/bin/python`` and a venv holding a wheel built from an older commit). The rounds interleave
the revisions (A, B, A, B, ...) so that both see the same machine; the best round counts. Printed:
per revision the pipeline's and predict's wall time and peak RSS on ``--images``, and each figure
of the later revision as a ratio of the earlier one's (throughput: > 1 is faster; RSS: < 1 is
smaller).

    python benches/revisions.py --images ../shared/data/chest_xray_fullres \\
        --before /tmp/basevenv/bin/python --after .venv/bin/python [--rounds 3]

Peak RSS is the child's ``ru_maxrss`` from ``wait4`` (one process, not its children).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Best:
    """The best (smallest) wall time and peak RSS seen for one command of one revision."""

    seconds: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)

    def add(self, seconds: float, rss_mib: float) -> None:
        self.seconds.append(seconds)
        self.rss_mib.append(rss_mib)


def run_measured(argv: list[str]) -> tuple[float, float]:
    """Run a process to completion; its wall seconds and peak RSS in MiB (fails loudly)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            sys.exit(f"{' '.join(argv)} failed ({code}):\n{err.read()[-2000:].decode()}")
    return elapsed, usage.ru_maxrss / 1024.0


def one_round(python: str, images: Path, work: Path) -> tuple[tuple[float, float], ...]:
    cli = [python, "-m", "cxrlake.cli"]
    lakehouse = work / "lakehouse"
    pipe = run_measured(
        [*cli, "pipeline", "run", "--source", str(images), "--lakehouse", str(lakehouse)]
        + ["--no-progress"]
    )
    predict = run_measured([*cli, "predict", str(images)])
    return pipe, predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--before", required=True, help="python of the earlier revision")
    parser.add_argument("--after", required=True, help="python of the later revision")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per revision")
    args = parser.parse_args()
    images = args.images.resolve()
    n = sum(1 for p in images.rglob("*") if p.is_file() and not p.name.startswith("."))
    revisions = {"before": args.before, "after": args.after}
    results = {name: {"pipeline": Best(), "predict": Best()} for name in revisions}
    for _ in range(args.rounds):
        for name, python in revisions.items():
            with tempfile.TemporaryDirectory(prefix="cxrlake-revisions-") as tmp:
                pipe, predict = one_round(python, images, Path(tmp))
            results[name]["pipeline"].add(*pipe)
            results[name]["predict"].add(*predict)
    print(f"images: {n} files under {images}; best of {args.rounds} interleaved rounds")
    print(f"{'revision':8s} {'command':9s} {'img/s':>8s} {'peak RSS MiB':>13s}")
    for name in revisions:
        for command, best in results[name].items():
            rate = n / min(best.seconds)
            print(f"{name:8s} {command:9s} {rate:8.1f} {min(best.rss_mib):13.1f}")
    print()
    for command in ("pipeline", "predict"):
        before, after = results["before"][command], results["after"][command]
        speed = min(before.seconds) / min(after.seconds)
        rss = min(after.rss_mib) / min(before.rss_mib)
        print(f"{command:9s} after/before: throughput {speed:.3f}x, peak RSS {rss:.3f}x")
    pipe, pred = results["after"]["pipeline"], results["after"]["predict"]
    print(
        "after: pipeline throughput / predict throughput "
        f"{min(pred.seconds) / min(pipe.seconds):.2f}x"
    )


if __name__ == "__main__":
    main()
