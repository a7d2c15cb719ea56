"""Lakehouse subcommands of the ``cxrlake`` CLI: ``pipeline run``, ``sql``, ``report``
and ``maintain``.

`register` adds them to the main parser's subparsers; each sets ``handler`` (args -> exit code).
Exit codes: 0 success, 1 failure (message on stderr: missing lakehouse, SQL error ...), 2 bad
arguments, 3 model missing or invalid / ONNX Runtime unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from cxrlake.cli import positive_int as _positive_int


def _env(text: str) -> str:
    from cxrlake.lakehouse.schemas import validate_env

    try:
        return validate_env(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lakehouse",
        required=True,
        help="root folder of the Delta tables (<lakehouse>/healthcare_catalog_<env>/...)",
    )
    p.add_argument("--env", type=_env, default="dev", help="environment (default: dev)")


def register(subparsers: Any) -> None:
    """Add ``pipeline``, ``sql``, ``report`` and ``maintain`` to an argparse subparsers object."""
    pipeline = subparsers.add_parser(
        "pipeline", help="local bronze -> silver -> gold pipeline on Delta tables"
    )
    pipeline_sub = pipeline.add_subparsers(dest="pipeline_command", required=True)
    run = pipeline_sub.add_parser(
        "run",
        help="ingest image folders and update every table (incremental, idempotent)",
        description="Ingest image folders into bronze, decode into silver, score into gold. "
        "Re-running only processes new or changed files; a killed run is resumed by the next.",
    )
    run.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="DIR",
        help="image folder (repeatable); labels from NORMAL/PNEUMONIA parent folders",
    )
    _common(run)
    run.add_argument(
        "--sample-per-label",
        type=_positive_int,
        metavar="N",
        help="ingest a deterministic sample of at most N images per (split, label)",
    )
    run.add_argument("--model", help="ONNX model path (default: the shipped model)")
    run.add_argument(
        "--site",
        help="decide labels with this site's threshold from gold.site_thresholds "
        "(cxrlake calibrate; the model's own threshold when none is stored)",
    )
    run.add_argument(
        "--batch-size", type=_positive_int, default=64, help="images per batch (default 64)"
    )
    run.add_argument("--threads", type=_positive_int, help="Rust core threads (default: all)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    run.set_defaults(handler=_pipeline_run)

    sql = subparsers.add_parser(
        "sql",
        help="query the lakehouse with DuckDB (predict(), quality_score() ... available)",
        description="Tables are views named <schema>.<table>, e.g. gold.pneumonia_predictions. "
        "SQL functions: predict(path), predict_label(path), quality_score(path), "
        "image_error(path).",
    )
    _common(sql)
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.add_argument("--model", help="ONNX model for predict() (default: the shipped model)")
    sql.add_argument(
        "--allowed-root",
        action="append",
        metavar="DIR",
        help="folder predict(path) may read from (repeatable; default: env "
        "CXRLAKE_ALLOWED_ROOTS, else the lakehouse and the pipeline's source folders)",
    )
    sql.add_argument("query", help="one SQL statement")
    sql.set_defaults(handler=_sql)

    report = subparsers.add_parser("report", help="write the self-contained HTML report")
    _common(report)
    report.add_argument("--out", default="report.html", help="output file (default report.html)")
    report.add_argument(
        "--examples", type=int, default=8, help="example images to show (default 8)"
    )
    report.set_defaults(handler=_report)

    maintain = subparsers.add_parser(
        "maintain", help="OPTIMIZE (compact), Z-order on image_id and VACUUM every table"
    )
    _common(maintain)
    maintain.add_argument(
        "--retention-hours",
        type=int,
        default=168,
        help="VACUUM retention in hours, at least 168 (default 168)",
    )
    maintain.add_argument(
        "--dry-run", action="store_true", help="only list files VACUUM would delete"
    )
    maintain.add_argument("--no-zorder", action="store_true", help="compact only")
    maintain.set_defaults(handler=_maintain)


EXIT_FAILURE = 1
EXIT_MODEL = 3


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"cxrlake: error: {message}", file=sys.stderr)
    return code


def _model_errors() -> tuple[type[Exception], ...]:
    from cxrlake.exceptions import ModelError, RuntimeLibraryError

    return (ModelError, RuntimeLibraryError)


def _pipeline_run(args: argparse.Namespace) -> int:
    from cxrlake.lakehouse.pipeline import run_pipeline

    for source in args.source:
        if not os.path.isdir(source):
            return _fail(f"--source {source}: not a directory")
    try:
        summary = run_pipeline(
            args.source,
            args.lakehouse,
            args.env,
            sample_per_label=args.sample_per_label,
            model=args.model,
            batch_size=args.batch_size,
            threads=args.threads,
            progress=False if args.no_progress else None,
            site=args.site,
        )
    except _model_errors() as e:
        return _fail(str(e), EXIT_MODEL)
    if args.json:
        print(json.dumps(summary.to_dict(), default=str, indent=2))
    else:
        print(summary.format())
    return 0


def _sql(args: argparse.Namespace) -> int:
    import duckdb

    from cxrlake.lakehouse.sql import format_result, query

    try:
        result = query(args.lakehouse, args.query, args.env, args.model, args.allowed_root)
    except (duckdb.Error, FileNotFoundError) as e:
        return _fail(str(e))
    except _model_errors() as e:
        return _fail(str(e), EXIT_MODEL)
    print(format_result(result, args.format))
    return 0


def _report(args: argparse.Namespace) -> int:
    from cxrlake.lakehouse.report import write_report

    try:
        path = write_report(args.lakehouse, args.out, args.env, args.examples)
    except FileNotFoundError as e:
        return _fail(str(e))
    print(f"report written to {os.path.abspath(path)}")
    return 0


def _maintain(args: argparse.Namespace) -> int:
    from cxrlake.lakehouse.maintain import format_results, maintain

    try:
        results = maintain(
            args.lakehouse,
            args.env,
            retention_hours=args.retention_hours,
            dry_run=args.dry_run,
            zorder=not args.no_zorder,
        )
    except ValueError as e:
        return _fail(str(e))
    print(format_results(results))
    return 0
