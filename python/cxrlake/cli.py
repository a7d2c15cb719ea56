"""The ``cxrlake`` command line.

``cxrlake predict`` lives here; other modules add their subcommands through a
``register(subparsers)`` function (see ``SUBCOMMAND_MODULES``).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "iter_image_paths"]

#: Modules that contribute subcommands with ``register(subparsers)``; skipped only when absent.
SUBCOMMAND_MODULES = [
    "cxrlake.lakehouse.cli",
    "cxrlake.training.cli",
    "cxrlake.calibration",
    "cxrlake.review.cli",
]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_MODEL = 3
#: Images scored per call to the Rust kernel (bounds memory; output streams after each chunk).
PREDICT_CHUNK = 256

EPILOG = """\
exit codes:
  0  the command ran (rows may still carry per-image errors)
  2  usage error (bad arguments)
  3  model missing or invalid, or ONNX Runtime unavailable
"""


class UsageError(Exception):
    """A command-line usage problem reported with exit code 2."""


def iter_image_paths(inputs: Sequence[str]) -> Iterator[str]:
    """Files named explicitly (any extension) and, for directories, every .jpeg/.jpg/.png below
    them (recursive, sorted, case-insensitive suffix). Missing paths are yielded as given so the
    kernel reports ``file not found``."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [
                p
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink())
            ]
            for p in sorted(found):
                yield str(p)
        else:
            yield item


def positive_int(text: str) -> int:
    """argparse type for counts (threads, batch sizes): an int >= 1, with a clear message."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="score chest X-ray images for pneumonia",
        description=(
            "Score JPEG/PNG chest X-rays for pneumonia and print one record per image with "
            "path, probability, predicted_label (0/1), label_name and error (null when fine). "
            "Directories are searched recursively for .jpeg/.jpg/.png files; files named "
            "explicitly are always scored."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    parser.add_argument("--model", help="ONNX model file (default: the model shipped in the wheel)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="worker threads (default: CXRLAKE_NUM_THREADS or CPUs)",
    )
    parser.add_argument(
        "--format", choices=["jsonl", "csv"], default="jsonl", help="output format (default jsonl)"
    )
    parser.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    import cxrlake
    from cxrlake.exceptions import ModelError, RuntimeLibraryError

    try:
        model = cxrlake.Model(args.model)
    except (ModelError, RuntimeLibraryError) as error:
        print(f"cxrlake predict: {error}", file=sys.stderr)
        return EXIT_MODEL
    paths = list(iter_image_paths(args.paths))
    fields = ["path", "probability", "predicted_label", "label_name", "error"]
    out = sys.stdout
    writer = csv.DictWriter(out, fieldnames=fields) if args.format == "csv" else None
    if writer is not None:
        writer.writeheader()
    for start in range(0, len(paths), PREDICT_CHUNK):
        chunk = paths[start : start + PREDICT_CHUNK]
        batch = cxrlake.predict(chunk, model=model, threads=args.threads)
        columns = {name: batch.column(name).to_pylist() for name in fields[1:]}
        for i, path in enumerate(chunk):
            record = {"path": path, **{name: columns[name][i] for name in fields[1:]}}
            if writer is not None:
                writer.writerow({k: "" if v is None else v for k, v in record.items()})
            else:
                out.write(json.dumps(record) + "\n")
        out.flush()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with ``predict`` and every registered module's subcommands."""
    parser = argparse.ArgumentParser(
        prog="cxrlake",
        description="Chest X-ray lakehouse: decode, score and curate chest radiographs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_predict(subparsers)
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cxrlake`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(handler(args) or 0)
    except UsageError as error:
        print(f"cxrlake {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
