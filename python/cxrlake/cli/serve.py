"""``cxrlake serve`` and ``cxrlake promote``.

``serve`` answers the MLflow / Databricks Model Serving scoring protocol on HTTP
(`cxrlake.serving.server`); ``promote`` prints the champion/challenger comparison and moves
``@champion``. The inference log and the registry need the 'local' extra (delta-rs, DuckDB),
imported when a command uses them.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from cxrlake.cli.errors import EXIT_OK, CommandError, ContextError, UsageError
from cxrlake.cli.options import Subparsers, environment, port, positive_int, share
from cxrlake.exceptions import ModelError
from cxrlake.serving.batcher import BatcherOptions
from cxrlake.serving.models import Router, resolve_model_file
from cxrlake.serving.server import ScoringApp, ScoringServer, load_router, print_ready

if TYPE_CHECKING:
    from cxrlake.serving.inference_log import InferenceLog


def register(subparsers: Subparsers) -> None:
    """Add ``serve`` and ``promote`` to the main parser's subcommands."""
    _add_serve(subparsers)
    _add_promote(subparsers)


def _add_serve(subparsers: Subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve the model over HTTP (MLflow / Databricks Model Serving scoring protocol)",
        description='Answer POST /invocations with {"predictions": [...]} for base64 image '
        "bytes in the column 'content' (dataframe_split, dataframe_records or inputs), the "
        "values of `cxrlake predict`. Serves the shipped model, --model FILE, or --champion "
        "and --challenger with --challenger-share of the requests. GET /ping, /health and "
        "/version answer while the model loads (503 loading) and after (200). Concurrent "
        "requests are scored together (micro-batching). With --lakehouse every request is "
        "logged to gold.pneumonia_serving_payload (image bytes replaced by their sha256), and "
        "@champion / @challenger name the lakehouse's registry (cxrlake promote). Stop with "
        "Ctrl-C.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=port, default=8080, help="port (0: any free port)")
    serve.add_argument("--model", help="ONNX model file (default: the shipped model)")
    serve.add_argument(
        "--champion",
        help="champion model: ONNX file, @champion (lakehouse registry) or models:/NAME@ALIAS",
    )
    serve.add_argument("--challenger", help="challenger model (same forms as --champion)")
    serve.add_argument(
        "--challenger-share",
        type=share,
        default=None,
        help="share of requests for the challenger, 0..1 (default: 0.1 with a challenger)",
    )
    _add_serve_log_options(serve)
    _add_serve_limits(serve)
    serve.set_defaults(handler=_run_serve)


def _add_serve_log_options(serve: argparse.ArgumentParser) -> None:
    """``serve``'s lakehouse (the inference log, the @aliases) and accepted Host headers."""
    serve.add_argument(
        "--lakehouse",
        help="log every request to this lakehouse's inference table; resolves @aliases",
    )
    serve.add_argument(
        "--env", type=environment, default="dev", help="environment of the lakehouse"
    )
    serve.add_argument(
        "--endpoint-name", default="cxrlake-pneumonia", help="endpoint name in the log"
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="Host header to accept besides loopback names (repeatable; e.g. behind a proxy)",
    )
    serve.add_argument(
        "--log-flush-rows",
        type=positive_int,
        default=512,
        help="inference-log rows per Delta commit",
    )
    serve.add_argument(
        "--log-flush-seconds",
        type=float,
        default=2.0,
        help="longest wait before pending inference-log rows are committed",
    )


def _add_serve_limits(serve: argparse.ArgumentParser) -> None:
    """``serve``'s micro-batching and the limits past which it answers 503."""
    serve.add_argument("--threads", type=positive_int, help="core threads (default: every CPU)")
    serve.add_argument("--max-batch", type=positive_int, default=16, help="images per core call")
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        default=4.0,
        help="how long a batch waits for more requests (milliseconds)",
    )
    serve.add_argument(
        "--batch-workers",
        type=positive_int,
        default=2,
        help="batches scored at once per model (2: decoding of one overlaps the other's model run)",
    )
    serve.add_argument(
        "--max-queued-images",
        type=positive_int,
        default=256,
        help="images waiting per model before answering 503",
    )
    serve.add_argument(
        "--max-inflight",
        type=positive_int,
        default=64,
        help="requests read or scored at once before answering 503",
    )
    serve.add_argument(
        "--max-inflight-mib",
        type=positive_int,
        default=128,
        help="request bodies held at once, in MiB, before answering 503",
    )
    serve.add_argument(
        "--verbose", action="store_true", help="print an access log line per request"
    )


def _add_promote(subparsers: Subparsers) -> None:
    promote = subparsers.add_parser(
        "promote",
        help="show the champion/challenger comparison and move @champion",
        description="Compute gold.champion_challenger_comparison from the inference table, "
        "print it, then point @champion at MODEL (default: the current @challenger). "
        "Locally the aliases live in the lakehouse (models.model_aliases, model files copied "
        "into the lakehouse); with --registry-uri (databricks-uc, or an MLflow sqlite "
        "registry) the registered model's alias moves instead. --dry-run only prints.",
    )
    promote.add_argument("model", nargs="?", metavar="MODEL", help="ONNX model file")
    promote.add_argument(
        "--lakehouse", help="lakehouse with the inference table (required without --registry-uri)"
    )
    promote.add_argument(
        "--env", type=environment, default="dev", help="environment of the lakehouse"
    )
    promote.add_argument(
        "--alias", choices=("champion", "challenger"), default="champion", help="alias to move"
    )
    promote.add_argument(
        "--registry-uri", help="MLflow registry to move the alias in (e.g. databricks-uc)"
    )
    promote.add_argument("--model-name", help="registered model name (with --registry-uri)")
    promote.add_argument("--model-version", help="registered model version (with --registry-uri)")
    promote.add_argument(
        "--warehouse-id",
        help="with --registry-uri databricks-uc and no --lakehouse: SQL warehouse to read "
        "<catalog>.<gold>.champion_challenger_comparison through (the serving_comparison job "
        "writes it)",
    )
    promote.add_argument(
        "--gold-schema", default="gold", help="gold schema as deployed (dev_<user>_gold in dev)"
    )
    promote.add_argument("--dry-run", action="store_true", help="print the comparison only")
    promote.set_defaults(handler=_run_promote)


def _run_serve(args: argparse.Namespace) -> int:
    if args.model and (args.champion or args.challenger):
        raise UsageError("--model and --champion/--challenger exclude each other")
    if args.challenger_share is not None and not args.challenger:
        raise UsageError("--challenger-share needs --challenger")
    champion_file, challenger_file, challenger_share = _served_models(args)
    log = _inference_log(args) if args.lakehouse else None
    app = ScoringApp(
        set(args.allowed_host) | {args.host},
        log,
        args.max_inflight,
        verbose=args.verbose,
        max_inflight_bytes=args.max_inflight_mib * 1024 * 1024,
    )
    server = ScoringServer((args.host, args.port), app)
    print(
        f"cxrlake serve: listening on {server.url()} (loading the model)",
        file=sys.stderr,
        flush=True,
    )
    options: BatcherOptions = {
        "max_batch": args.max_batch,
        "max_wait_s": args.batch_wait_ms / 1000.0,
        "max_queued_images": args.max_queued_images,
        "threads": args.threads,
        "workers": args.batch_workers,
    }
    failure: list[BaseException] = []

    def load() -> Router:
        return load_router(champion_file, challenger_file, challenger_share, options)

    loader = threading.Thread(
        target=_load_and_announce, args=(load, server, failure), name="cxrlake-load", daemon=True
    )
    loader.start()
    try:
        _serve_until_stopped(server)
    finally:
        loader.join(timeout=60)
        if app.router is not None:
            app.router.close()
        if log is not None:
            log.close()
            print(
                f"cxrlake serve: inference log: {log.written} requests in {log.commits} "
                f"commits" + (f", {log.dropped} not written" if log.dropped else ""),
                file=sys.stderr,
            )
    if failure:
        raise ContextError("cannot load the model") from failure[0]
    return EXIT_OK


def _served_models(args: argparse.Namespace) -> tuple[str | None, str | None, float]:
    """The champion's and the challenger's ONNX files (None: the shipped model; no challenger)
    and the challenger's share of the requests. Without a model option, the lakehouse
    registry's @champion and @challenger when it has them."""
    champion = args.model or args.champion
    challenger = args.challenger
    if champion is None and challenger is None and args.lakehouse:
        from cxrlake.serving.registry import LocalRegistry  # needs the 'local' extra

        registry = LocalRegistry(args.lakehouse, args.env)
        champion = "@champion" if registry.get("champion") else None
        challenger = "@challenger" if registry.get("challenger") else None
    if args.challenger_share is not None:
        challenger_share = float(args.challenger_share)
    else:
        challenger_share = 0.1 if challenger else 0.0
    try:
        champion_file = resolve_model_file(champion, args.lakehouse, args.env)
        challenger_file = (
            resolve_model_file(challenger, args.lakehouse, args.env) if challenger else None
        )
    except ValueError as e:  # a model file or alias that is not there: as predict, exit 3
        raise ModelError(str(e)) from None
    return champion_file, challenger_file, challenger_share


def _inference_log(args: argparse.Namespace) -> InferenceLog:
    from cxrlake.serving.inference_log import InferenceLog  # needs the 'local' extra

    return InferenceLog(
        args.lakehouse,
        args.env,
        args.endpoint_name,
        flush_rows=args.log_flush_rows,
        flush_seconds=args.log_flush_seconds,
    )


def _load_and_announce(
    load: Callable[[], Router], server: ScoringServer, failure: list[BaseException]
) -> None:
    """In the loader thread: load the models and mark the app ready, or record the failure
    (the main thread raises it) and stop the server."""
    app = server.app
    try:
        router = load()
    except BaseException as e:  # reported by the main thread
        failure.append(e)
        app.failed(str(e))
        server.shutdown()
        return
    app.ready(router)
    print_ready(server, router)


def _serve_until_stopped(server: ScoringServer) -> None:
    """Serve until Ctrl-C, SIGTERM (docker stop, kill: stops like Ctrl-C, so the log is
    written first) or a failed load; then close the listening socket."""
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        previous = signal.signal(
            signal.SIGTERM,
            lambda *_: threading.Thread(target=server.shutdown, daemon=True).start(),
        )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        server.server_close()


def _run_promote(args: argparse.Namespace) -> int:
    from cxrlake.serving.registry import (  # needs the 'local' extra (delta-rs, DuckDB)
        LocalRegistry,
        comparison_table_name,
        compute_comparison,
        format_comparison,
        read_databricks_comparison,
        set_mlflow_alias,
    )

    if args.registry_uri and not (args.model_name and args.model_version):
        raise UsageError("--registry-uri needs --model-name and --model-version")
    if args.lakehouse:
        table = compute_comparison(args.lakehouse, args.env)
    elif args.registry_uri and args.warehouse_id:
        try:
            name = comparison_table_name(args.model_name, args.gold_schema)
        except ValueError as e:
            raise UsageError(str(e)) from None
        table = read_databricks_comparison(name, args.warehouse_id)
    else:
        raise UsageError(
            "pass --lakehouse (local), or --registry-uri with --warehouse-id (Databricks): "
            "the comparison is printed before the alias moves"
        )
    print(format_comparison(table))
    if args.registry_uri:
        if args.dry_run:
            return EXIT_OK
        set_mlflow_alias(args.model_name, args.alias, args.model_version, args.registry_uri)
        print(f"{args.model_name}@{args.alias} -> version {args.model_version}")
        return EXIT_OK
    registry = LocalRegistry(args.lakehouse, args.env)
    model = args.model
    if model is None:
        if args.alias == "challenger":
            raise UsageError("name the MODEL file to make the challenger")
        entry = registry.get("challenger")
        if entry is None:
            raise CommandError("no @challenger in the lakehouse registry: name the MODEL file")
        model = entry["model_path"]
    if args.dry_run:
        return EXIT_OK
    row, written = registry.set(args.alias, model)
    change = f"(was v{row['previous_model_version']})" if row["previous_model_version"] else ""
    state = "" if written else " (unchanged)"
    print(f"@{args.alias} -> {row['model_name']} v{row['model_version']} {change}".rstrip() + state)
    return EXIT_OK
