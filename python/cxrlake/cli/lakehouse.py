"""The commands on a local lakehouse: ``pipeline run``, ``sql``, ``report`` and ``maintain``.

Each declares its options here and sets ``handler`` (args -> exit code); handlers raise on
failure and `cxrlake.cli.main` prints the one-line message and picks the exit code. The
lakehouse modules need the 'local' extra (delta-rs, DuckDB), so handlers import them when run:
``cxrlake predict`` and ``--help`` work without it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

from cxrlake.cli.errors import CommandError, UsageError, print_error
from cxrlake.cli.options import (
    Subparsers,
    add_lakehouse_options,
    non_negative_int,
    positive_int,
)
from cxrlake.files import select_images, write_text_atomically

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa


def register(subparsers: Subparsers) -> None:
    """Add ``pipeline``, ``sql``, ``report`` and ``maintain`` to the main parser's subcommands."""
    _add_pipeline(subparsers)
    _add_sql(subparsers)
    _add_report(subparsers)
    _add_maintain(subparsers)


def _add_pipeline(subparsers: Subparsers) -> None:
    pipeline = subparsers.add_parser(
        "pipeline",
        help="local bronze -> silver -> gold pipeline on Delta tables",
        description="The local medallion pipeline on Delta tables (see `pipeline run --help`).",
    )
    pipeline_sub = pipeline.add_subparsers(
        dest="pipeline_command", required=True, metavar="COMMAND"
    )
    run = pipeline_sub.add_parser(
        "run",
        help="ingest image folders and update every table (incremental, idempotent)",
        description="Ingest image folders into bronze, decode into silver, score into gold. "
        "Re-running only processes new or changed files; a killed run is resumed by the next. "
        "Fails without creating anything when a source holds no image file.",
    )
    run.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="DIR",
        help="image folder (repeatable); labels from NORMAL/PNEUMONIA parent folders",
    )
    add_lakehouse_options(run)
    run.add_argument(
        "--sample-per-label",
        type=positive_int,
        metavar="N",
        help="ingest a deterministic sample of at most N images per (split, label) "
        "(default: every image)",
    )
    run.add_argument("--model", help="ONNX model path (default: the shipped model)")
    run.add_argument(
        "--site",
        help="decide labels with this site's threshold from gold.site_thresholds "
        "(cxrlake calibrate; the model's own threshold when none is stored)",
    )
    run.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    run.add_argument(
        "--commit-rows",
        type=positive_int,
        default=None,
        help="rows a stage holds for a table before committing them (default: 1024)",
    )
    run.add_argument("--threads", type=positive_int, help="Rust core threads (default: every CPU)")
    run.add_argument("--no-progress", action="store_true", help="hide progress output")
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    run.set_defaults(handler=_pipeline_run)


def _add_sql(subparsers: Subparsers) -> None:
    sql = subparsers.add_parser(
        "sql",
        help="query the lakehouse with SQL (DuckDB; the Databricks table and function names)",
        description="Run SQL over the lakehouse: a query argument, -f FILE, standard input, "
        "or, with none of these on a terminal, an interactive shell. Several statements "
        "separated by ';' run in order and each result is printed. Tables: "
        "healthcare_catalog_<env>.<schema>.<table> or <schema>.<table>; SHOW TABLES lists "
        "them. Functions: predict(path) (a STRUCT as on Spark), features(path), "
        "quality_score(path), image_error(path), and *_bytes twins for BLOB input. File "
        "access from SQL is off; the functions read only the sandbox roots. Write results "
        "to a file with --out.",
    )
    add_lakehouse_options(sql)
    sql.add_argument(
        "--format", choices=("table", "csv", "json", "jsonl"), default="table", help="output"
    )
    sql.add_argument("--model", help="ONNX model for predict() (default: the shipped model)")
    sql.add_argument(
        "--allowed-root",
        action="append",
        metavar="DIR",
        help="folder the SQL functions may read images from (repeatable; default: env "
        "CXRLAKE_ALLOWED_ROOTS, else the lakehouse and the pipeline's source folders)",
    )
    sql.add_argument(
        "-f", "--file", metavar="FILE", help="read the SQL from FILE ('-': standard input)"
    )
    sql.add_argument(
        "--out", metavar="FILE", help="write the results to FILE instead of standard output"
    )
    sql.add_argument("query", nargs="?", help="SQL statement(s), separated by ';'")
    sql.set_defaults(handler=_sql)


def _add_report(subparsers: Subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="write the self-contained HTML report",
        description="Write one HTML file (no external assets) with class balance, quality, "
        "model performance, calibration, quarantine and the data attribution. Example "
        "thumbnails of patient images are included only with --thumbnails.",
    )
    add_lakehouse_options(report)
    report.add_argument("--out", default="report.html", help="output file")
    report.add_argument(
        "--examples",
        type=non_negative_int,
        default=8,
        help="example predictions to list (0 = none)",
    )
    report.add_argument(
        "--thumbnails",
        action="store_true",
        help="embed downscaled example images (patient images: keep the file internal)",
    )
    report.add_argument(
        "--attribution",
        action="append",
        metavar="FILE",
        help="text or HTML file with the data set's attribution (repeatable; default: "
        "ATTRIBUTION files in or above the source folders)",
    )
    report.set_defaults(handler=_report)


def _add_maintain(subparsers: Subparsers) -> None:
    maintain = subparsers.add_parser(
        "maintain",
        help="OPTIMIZE (compact), Z-order on image_id and VACUUM every table",
        description="Compact small files, Z-order on image_id and VACUUM files older than the "
        "retention, under the lakehouse lock. --dry-run changes nothing and lists the files "
        "VACUUM would delete and the tables OPTIMIZE would rewrite.",
    )
    add_lakehouse_options(maintain)
    maintain.add_argument(
        "--retention-hours",
        type=int,
        default=168,
        help="VACUUM retention in hours, at least 168",
    )
    maintain.add_argument(
        "--dry-run", action="store_true", help="change nothing; list what would be removed"
    )
    maintain.add_argument("--no-zorder", action="store_true", help="compact only")
    maintain.set_defaults(handler=_maintain)


def _existing_lakehouse(path: str) -> None:
    """Refuse a ``--lakehouse`` that is a file (before anything is created under it)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CommandError(f"--lakehouse {path}: not a directory")


def _pipeline_run(args: argparse.Namespace) -> int:
    from cxrlake.lakehouse.pipeline import run_pipeline  # needs the 'local' extra

    _existing_lakehouse(args.lakehouse)
    for source in args.source:
        if not os.path.isdir(source):
            raise CommandError(f"--source {source}: not a directory")
        if not select_images([source]).images:
            raise CommandError(f"--source {source}: no image files found (see `predict --help`)")
    summary = run_pipeline(
        args.source,
        args.lakehouse,
        args.env,
        sample_per_label=args.sample_per_label,
        model=args.model,
        batch_size=args.batch_size,
        **({} if args.commit_rows is None else {"commit_rows": args.commit_rows}),
        threads=args.threads,
        progress=False if args.no_progress else None,
        site=args.site,
    )
    if args.json:
        print(json.dumps(summary.to_dict(), default=str, indent=2))
    else:
        print(summary.format())
    return 0


def _read_sql(args: argparse.Namespace) -> str | None:
    """The SQL text from the argument, -f FILE or standard input; None for the shell."""
    if args.query is not None and args.file is not None:
        raise UsageError("give the SQL either as an argument or with -f, not both")
    if args.file == "-":
        return sys.stdin.read()
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise CommandError(f"-f {args.file}: {e.strerror or e}") from None
    if args.query is not None:
        return str(args.query)
    if not sys.stdin.isatty():
        return sys.stdin.read()
    return None


def _sql(args: argparse.Namespace) -> int:
    from cxrlake.lakehouse.sql import connect  # needs the 'local' extra

    _existing_lakehouse(args.lakehouse)
    text = _read_sql(args)
    if text is not None and not text.strip():
        raise UsageError("no SQL given")
    con = connect(args.lakehouse, args.env, args.model, roots=args.allowed_root)
    try:
        if text is None:
            return _shell(con, args)
        if args.out:
            buffer = io.StringIO()
            _print_results(con, text, args.format, buffer)
            write_text_atomically(args.out, buffer.getvalue())
        else:
            _print_results(con, text, args.format, sys.stdout)
    finally:
        con.close()
    return 0


def _print_results(con: duckdb.DuckDBPyConnection, text: str, fmt: str, out: TextIO) -> None:
    from cxrlake.lakehouse.sql import (  # needs the 'local' extra
        SANDBOX_HINT,
        format_result,
        mentions_sandbox_refusal,
        run_script,
    )

    hinted = False
    first = True
    for _, result in _results(run_script(con, text)):
        if result is None:
            continue
        if not first and fmt == "table":
            out.write("\n")
        first = False
        out.write(format_result(result, fmt) + "\n")
        out.flush()
        if not hinted and mentions_sandbox_refusal(result):
            print(SANDBOX_HINT, file=sys.stderr)
            hinted = True


FILE_ACCESS_HINT = (
    "SQL cannot read or write files here: images are read by predict(path), image_error(path) "
    "... through the sandbox, and --out FILE writes the results"
)


def _results(
    statements: Iterator[tuple[str, pa.Table | None]],
) -> Iterator[tuple[str, pa.Table | None]]:
    """The statements' results; DuckDB's refusal of file access (its `PermissionException`:
    the connection has file access off) gets a hint on what to do."""
    import duckdb  # the 'local' extra: `_sql` has connected with it

    try:
        yield from statements
    except duckdb.PermissionException as error:
        first = str(error).splitlines()[0]
        raise CommandError(f"{first} ({FILE_ACCESS_HINT})") from error


def _shell(con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> int:
    """A small interactive shell: statements end with ';', .quit or Ctrl-D leaves. A failing
    statement prints its one-line error (as `cxrlake.cli.main` would) and the shell goes on."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input(), where the platform has it
    print(
        f"cxrlake sql on {os.path.abspath(args.lakehouse)} (env {args.env}). End statements "
        "with ';'. .tables lists the tables, .quit leaves.",
        file=sys.stderr,
    )
    buffer: list[str] = []
    while True:
        try:
            line = input("cxrlake> " if not buffer else "     ...> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            buffer = []
            continue
        stripped = line.strip()
        if not buffer and stripped in (".quit", ".exit", "exit", "quit"):
            return 0
        if not buffer and stripped == ".tables":
            line, stripped = "SHOW TABLES;", "SHOW TABLES;"
        buffer.append(line)
        if not stripped.endswith(";"):
            continue
        text, buffer = "\n".join(buffer), []
        try:
            _print_results(con, text, args.format, sys.stdout)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
        except Exception as error:
            print_error("sql", error)


def _report(args: argparse.Namespace) -> int:
    from cxrlake.lakehouse.report import write_report  # needs the 'local' extra

    _existing_lakehouse(args.lakehouse)
    path = write_report(
        args.lakehouse,
        args.out,
        args.env,
        args.examples,
        thumbnails=args.thumbnails,
        attribution_files=args.attribution,
    )
    print(f"report written to {os.path.abspath(path)}")
    return 0


def _maintain(args: argparse.Namespace) -> int:
    from cxrlake.lakehouse.maintain import format_results, maintain  # needs the 'local' extra

    _existing_lakehouse(args.lakehouse)
    try:
        results = maintain(
            args.lakehouse,
            args.env,
            retention_hours=args.retention_hours,
            dry_run=args.dry_run,
            zorder=not args.no_zorder,
        )
    except ValueError as e:  # a retention below the minimum
        raise CommandError(str(e)) from None
    print(format_results(results))
    return 0
