"""The ``cxrlake`` command line.

``cxrlake predict`` lives here; other modules add their subcommands through a
``register(subparsers)`` function (see ``SUBCOMMAND_MODULES``). Handlers take the parsed
arguments and return an exit code, or raise: `main` is the one place that turns an exception into
a one-line message ``cxrlake <command>: error: ...`` and an exit code (see ``EPILOG``).
Every command gets ``--version``, ``--debug`` (show the trace of a failure) and, for options
with a default, ``(default: ...)`` in its help.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from cxrlake.cli_support import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Progress,
    _print_error,
    describe_error,
    positive_int,
)

__all__ = ["CommandError", "main", "build_parser", "positive_int"]

#: Modules that contribute subcommands with ``register(subparsers)``; skipped only when absent.
SUBCOMMAND_MODULES = [
    "cxrlake.lakehouse.cli",
    "cxrlake.training.cli",
    "cxrlake.calibration_cli",
    "cxrlake.review.cli",
    "cxrlake.serving.cli",
]

#: Images scored per call to the Rust kernel (bounds memory; output streams after each chunk).
PREDICT_CHUNK = 256

EPILOG = """\
exit codes:
  0    success (predict: rows may still carry per-image errors)
  1    failure (message on stderr: missing input, lakehouse or SQL error, disk full ...)
  2    usage error (bad arguments or environment variables)
  3    model missing or invalid, or ONNX Runtime unavailable
  130  interrupted (Ctrl-C)
add --debug to see the full trace of a failure."""


# ------------------------------------------------------------------ predict


def json_line(record: dict) -> str:
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


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
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
    import cxrlake
    from cxrlake.files import select_images

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


def _summarise(selection: Any, inputs: list[str], done: int, errors: int, verb: str) -> int:
    """Print ``<verb> N, M errors, K skipped`` (and what was skipped) on stderr; raise when a
    named path is missing or no image went through. Shared by ``predict`` and ``explain``."""
    from cxrlake.files import skip_summary

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
#: Images explained per call to the Rust kernel (their overlay PNGs are held until written).
EXPLAIN_CHUNK = 32


def _add_explain(subparsers: argparse._SubParsersAction) -> None:
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
    import cxrlake
    from cxrlake.files import select_images
    from cxrlake.heatmap import hottest_region, refine

    if not 16 <= args.size <= 4096:
        raise CommandError(f"--size must be 16..4096 pixels, got {args.size}", EXIT_USAGE)
    model = cxrlake.Model(args.model)
    if not model.has_heatmap:
        raise CommandError(f"model {model.path} has no heatmap output: nothing to explain", 3)
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
                record: dict[str, Any] = {"path": _shown(path), "overlay": None}
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


# ------------------------------------------------------------------ parser
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("cxrlake")
    except Exception:  # a source checkout without metadata
        import cxrlake

        return str(cxrlake.__version__)


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps one-line descriptions; keeps text that has its own line breaks (the epilog)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _finish(parser: argparse.ArgumentParser, version: str, top: bool = False) -> None:
    """Give ``parser`` and its subcommands the shared options, epilog and help defaults."""
    parser.formatter_class = _HelpFormatter
    if parser.epilog is None:
        parser.epilog = EPILOG
    options = {s for action in parser._actions for s in action.option_strings}
    if "--version" not in options:
        parser.add_argument(
            "--version", action="version", version=f"cxrlake {version}", help="print the version"
        )
    if "--debug" not in options:
        parser.add_argument(
            "--debug",
            action="store_true",
            # Only the top level sets the default: a subcommand's default would override it.
            default=False if top else argparse.SUPPRESS,
            help="show the full trace when a command fails",
        )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _finish(sub, version)
            continue
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            continue
        action.help = (
            f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"
        )


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with ``predict`` and every registered module's subcommands."""
    parser = argparse.ArgumentParser(
        prog="cxrlake",
        description="Chest X-ray lakehouse: decode, score and curate chest radiographs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_predict(subparsers)
    _add_explain(subparsers)
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        module.register(subparsers)
    _finish(parser, _version(), top=True)
    return parser


# ------------------------------------------------------------------ errors
def _command_name(args: argparse.Namespace) -> str:
    """``predict``, ``pipeline run`` ...: the words the user typed to pick the handler."""
    words = [args.command] if getattr(args, "command", None) else []
    words += [v for k, v in sorted(vars(args).items()) if k.endswith("_command") and v]
    return " ".join(str(w) for w in words)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cxrlake`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    command = _command_name(args)
    try:
        return int(handler(args) or 0)
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"\ncxrlake {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # the one place failures become messages
        message, code = describe_error(error)
        if getattr(args, "debug", False):
            traceback.print_exc()
        _print_error(command, message)
        return code


if __name__ == "__main__":
    sys.exit(main())
