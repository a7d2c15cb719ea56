"""``cxrlake calibrate``: the command of the site calibration (`cxrlake.calibration`).

A refusal (one class, too few films, contradicting labels, development films) exits 1 with
``cxrlake calibrate: error: refused: <why>``.
"""

from __future__ import annotations

import argparse
import json
import sys

from cxrlake.calibration_service import DEFAULT_HALF_WIDTH, DEFAULT_MIN_PER_CLASS, CalibrationError
from cxrlake.cli.errors import ContextError, UsageError
from cxrlake.cli.options import Subparsers, positive_int


def register(subparsers: Subparsers) -> None:
    """Add ``calibrate`` to the main parser's subcommands."""
    p = subparsers.add_parser(
        "calibrate",
        help="pick a site's operating point from its own labelled films (stored per site)",
        description="Score the site's labelled films in bronze, choose the highest threshold "
        "whose sensitivity reaches the target, report sensitivity and specificity with 95% "
        "Wilson intervals, and store a new version in gold.site_thresholds. Refuses on a single "
        "class, too few films, contradicting labels or films from the model's development set "
        "(exit code 1).",
    )
    p.add_argument("--lakehouse", required=True, help="root folder of the Delta tables")
    p.add_argument("--env", default="dev", help="environment (default: dev)")
    p.add_argument("--site", required=True, help="site id (letters, digits, _ - .)")
    p.add_argument(
        "--target-sensitivity", type=float, default=0.95, help="default 0.95 (in [0.5, 1))"
    )
    p.add_argument(
        "--split",
        action="append",
        default=None,
        metavar="NAME",
        help="only films of this dataset_split (repeatable; default: every labelled film)",
    )
    p.add_argument(
        "--labels",
        choices=("folder", "verdicts"),
        default="folder",
        help="folder labels from bronze (default) or the radiologists' current labels",
    )
    p.add_argument(
        "--min-per-class",
        type=positive_int,
        default=DEFAULT_MIN_PER_CLASS,
        help=f"refuse below this many films of a class (default {DEFAULT_MIN_PER_CLASS})",
    )
    p.add_argument(
        "--half-width",
        type=float,
        default=DEFAULT_HALF_WIDTH,
        help="interval half width for the 'films needed' estimate (default 0.025)",
    )
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped model)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--dry-run", action="store_true", help="report only, store nothing")
    p.add_argument(
        "--include-development-films",
        action="store_true",
        help="keep films from the model's development set (refused by default) and report "
        "the figures under a warning that they measure fit, not the site",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_calibrate_command)


def _calibrate_command(args: argparse.Namespace) -> int:
    from cxrlake.calibration import calibrate_site  # needs the 'local' extra (deltalake)

    try:
        result = calibrate_site(
            args.lakehouse,
            args.site,
            env=args.env,
            model=args.model,
            target_sensitivity=args.target_sensitivity,
            splits=args.split,
            label_source=args.labels,
            min_per_class=args.min_per_class,
            half_width=args.half_width,
            threads=args.threads,
            dry_run=args.dry_run,
            include_development_films=args.include_development_films,
        )
    except CalibrationError as error:  # the films cannot support a threshold (exit code 1)
        raise ContextError("refused") from error
    except ValueError as error:  # an option out of range (--half-width, --env)
        raise UsageError(str(error)) from error
    if args.json and result.development_films:
        print(f"cxrlake calibrate: {result.report().splitlines()[0]}", file=sys.stderr)
    print(json.dumps(result.to_json()) if args.json else result.report())
    return 0
