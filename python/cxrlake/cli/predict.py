"""``cxrlake predict`` and ``cxrlake explain``: score chest X-ray files and folders.

Both stream one JSON line (or CSV row) per image to stdout as each chunk is scored, report
progress and a summary on stderr, and raise when a named path is missing or no image went
through (`cxrlake.cli.main` turns that into the message and exit code).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

import cxrlake
from cxrlake.cli.errors import EXIT_OK, CommandError, UsageError
from cxrlake.cli.options import Subparsers, positive_int
from cxrlake.exceptions import ModelError
from cxrlake.files import FileSelection, select_images, skip_summary
from cxrlake.heatmap import hottest_region, refine

#: Images scored per call to the Rust kernel (bounds memory; output streams after each chunk).
PREDICT_CHUNK = 256

#: Images explained per call to the Rust kernel (their overlay PNGs are held until written).
EXPLAIN_CHUNK = 32


def register(subparsers: Subparsers) -> None:
    """Add ``predict`` and ``explain`` to the main parser's subcommands."""
    _add_predict(subparsers)
    _add_explain(subparsers)


# ------------------------------------------------------------------ predict


def json_line(record: Mapping[str, object]) -> str:
    """One strict JSON line: NaN and infinities become null (json.dumps would print ``NaN``,
    which strict JSON parsers reject)."""

    def finite(value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(record), allow_nan=False) + "\n"


def _add_predict(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="score chest X-ray images for pneumonia",
        description=(
            "Score JPEG/PNG/DICOM chest X-rays for pneumonia and print one record per image with "
            "path, probability, predicted_label (0/1), label_name, ood_score, "
            "out_of_distribution and ood_reason (the film is unlike the training films: still "
            "scored, but the score means little) and error (null when fine). "
            "Folders are searched recursively for .jpeg/.jpg/.png/.dcm/.dicom files (others are "
            "skipped and counted); files named explicitly are always scored. A summary "
            "'scored N, M errors, K skipped' and progress go to stderr. Exits 1 when a named "
            "path does not exist or no image could be scored."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--model", help="ONNX model file (default: the model shipped in the package)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="worker threads (default: CXRLAKE_NUM_THREADS, else the number of CPUs)",
    )
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="output format")
    parser.add_argument(
        "--no-progress", action="store_true", help="do not report progress on stderr"
    )
    parser.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    model = cxrlake.Model(args.model)
    selection = select_images(args.paths)
    paths = selection.images
    fields = [
        "path",
        "probability",
        "predicted_label",
        "label_name",
        "ood_score",
        "out_of_distribution",
        "ood_reason",
        "error",
    ]
    out = sys.stdout
    writer = csv.DictWriter(out, fieldnames=fields) if args.format == "csv" else None
    if writer is not None:
        writer.writeheader()
    progress = Progress(len(paths), "cxrlake predict", enabled=not args.no_progress)
    scored = errors = 0
    for start in range(0, len(paths), PREDICT_CHUNK):
        chunk = paths[start : start + PREDICT_CHUNK]
        batch = cxrlake.predict(chunk, model=model, threads=args.threads)
        columns = {name: batch.column(name).to_pylist() for name in fields[1:]}
        for i, path in enumerate(chunk):
            record = {"path": _shown(path), **{name: columns[name][i] for name in fields[1:]}}
            if record["error"] is None:
                scored += 1
            else:
                errors += 1
            if writer is not None:
                writer.writerow({k: "" if v is None else v for k, v in record.items()})
            else:
                out.write(json_line(record))
        out.flush()
        progress.update(len(chunk))
    return _summarise(selection, args.paths, scored, errors, "scored")


def _summarise(
    selection: FileSelection, inputs: list[str], done: int, errors: int, verb: str
) -> int:
    """Print ``<verb> N, M errors, K skipped`` (and what was skipped) on stderr; raise when a
    named path is missing or no image went through. Shared by ``predict`` and ``explain``."""
    skipped = len(selection.skipped)
    print(f"{verb} {done}, {errors} errors, {skipped} skipped", file=sys.stderr)
    if skipped:
        print(skip_summary(selection.skipped), file=sys.stderr)
    if selection.missing:
        shown = ", ".join(selection.missing[:3]) + (", ..." if len(selection.missing) > 3 else "")
        raise CommandError(f"not found: {shown}")
    if done == 0:
        if not selection.images:
            raise CommandError(f"no images found in {', '.join(inputs)}")
        raise CommandError(f"no image could be {verb} (see the error column)")
    return EXIT_OK


def _shown(path: str) -> str:
    """A path for output: a file name that is not UTF-8 gets \\xNN escapes (as `ls -b`)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# ------------------------------------------------------------------ explain


def _add_explain(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="write a heatmap overlay PNG and the map of each chest X-ray",
        description=(
            "For each JPEG/PNG/DICOM chest X-ray: the film with the model's class-activation "
            "map over it (red where the map pushes towards PNEUMONIA, blue towards NORMAL, "
            "transparent where it is weak, a colour scale at the right) written to "
            "DIR/<name>.png, and one JSON line (on stdout and in DIR/explain.jsonl) with path, "
            "overlay, probability, predicted_label, label_name, heatmap (the map upsampled and "
            "smoothed: rows, cols, values), model_heatmap (the model's own cells), "
            "hottest_region (box as fractions of width and height) and error. Files and "
            "folders are taken as by `cxrlake predict` (same filter, same summary on stderr)."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the overlays (created if missing)"
    )
    parser.add_argument(
        "--size", type=positive_int, default=512, help="overlay's longer side in pixels (16..4096)"
    )
    parser.add_argument(
        "--model", help="ONNX model file (default: the model shipped in the package)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="worker threads (default: CXRLAKE_NUM_THREADS, else the number of CPUs)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="do not report progress on stderr"
    )
    parser.set_defaults(handler=_run_explain)


def _overlay_name(path: str, taken: set[str]) -> str:
    """``<stem>.png``, or ``<stem>-2.png`` ... when another film of the run has that name."""
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    stem = "".join(c if c.isprintable() and c not in "/\\" else "_" for c in _shown(stem))
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return name


def _run_explain(args: argparse.Namespace) -> int:
    if not 16 <= args.size <= 4096:
        raise UsageError(f"--size must be 16..4096 pixels, got {args.size}")
    model = cxrlake.Model(args.model)
    if not model.has_heatmap:
        raise ModelError(f"model {model.path} has no heatmap output: nothing to explain")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CommandError(f"--out {args.out}: not a directory")
    os.makedirs(args.out, exist_ok=True)
    selection = select_images(args.paths)
    paths = selection.images
    progress = Progress(len(paths), "cxrlake explain", enabled=not args.no_progress)
    taken: set[str] = set()
    done = errors = 0
    lines_path = os.path.join(args.out, "explain.jsonl")
    with open(lines_path + ".tmp", "w", encoding="utf-8") as lines:
        for start in range(0, len(paths), EXPLAIN_CHUNK):
            chunk = paths[start : start + EXPLAIN_CHUNK]
            batch = cxrlake.explain(
                chunk, model=model, threads=args.threads, overlay_size=args.size
            ).to_pylist()
            for path, row in zip(chunk, batch, strict=True):
                record: dict[str, object] = {"path": _shown(path), "overlay": None}
                if row["error"] is None:
                    name = _overlay_name(path, taken)
                    target = os.path.join(args.out, name)
                    with open(target + ".tmp", "wb") as f:
                        f.write(row["overlay"])
                    os.replace(target + ".tmp", target)
                    record["overlay"] = target
                    done += 1
                else:
                    errors += 1
                fine = refine(row["heatmap"])
                record |= {
                    "probability": row["probability"],
                    "predicted_label": row["predicted_label"],
                    "label_name": None
                    if row["predicted_label"] is None
                    else model.labels[row["predicted_label"]],
                    "heatmap": fine,
                    "model_heatmap": row["heatmap"],
                    "hottest_region": None if fine is None else hottest_region(fine),
                    "model_name": row["model_name"],
                    "model_version": row["model_version"],
                    "error": row["error"],
                }
                line = json_line(record)
                sys.stdout.write(line)
                lines.write(line)
            sys.stdout.flush()
            progress.update(len(chunk))
    os.replace(lines_path + ".tmp", lines_path)
    return _summarise(selection, args.paths, done, errors, "explained")


# ------------------------------------------------------------------ progress
class Progress:
    """Progress of long work on stderr: a redrawn bar on a terminal, plain log lines otherwise
    (at most one every ``log_every`` seconds, plus the last), so job logs show it too."""

    def __init__(
        self, total: int, label: str, stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = self.stream.isatty()
        self.log_every = 10.0
        self._last = 0.0

    def update(self, n: int) -> None:
        """Count ``n`` more items done and redraw (or log) the progress."""
        self.done += n
        if not self.enabled:
            return
        if self.tty:
            width = 30
            filled = int(width * self.done / self.total)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            now = time.monotonic()
            if self.done >= self.total or now - self._last >= self.log_every:
                self._last = now
                self.stream.write(f"{self.label}: {self.done}/{self.total}\n")
        self.stream.flush()
