"""``cxrlake review``: start the review web app on a local lakehouse."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from cxrlake.cli_support import CommandError, UsageError


def register(subparsers: Any) -> None:
    """Add ``review`` to the main parser's subparsers."""
    from cxrlake.lakehouse.cli import _common

    p = subparsers.add_parser(
        "review",
        help="start the radiologist review web app on a local lakehouse",
        description="Serve the worklist and case viewer; verdicts go to "
        "gold.prediction_feedback and the label history to silver.label_history.",
    )
    _common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    p.add_argument("--reviewer", help="reviewer id recorded with each verdict (default: OS user)")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    p.set_defaults(handler=_review)
    train = getattr(subparsers, "choices", {}).get("train")
    if train is not None:
        _add_labels_from(train)


def _add_labels_from(train: argparse.ArgumentParser) -> None:
    """``cxrlake train --labels-from LAKEHOUSE``: train on the current labels (folder labels
    with the radiologists' corrections from silver.label_history) and say how many differ. The
    corrected labels reach the training run as ``args.label_overrides`` (path -> label)."""
    train.add_argument(
        "--labels-from",
        metavar="LAKEHOUSE",
        help="train on the current labels: folder labels with the radiologists' corrections "
        "from LAKEHOUSE's silver.label_history (cxrlake review); prints how many differ",
    )
    for key in ("handler", "func"):
        inner = train.get_default(key)
        if inner is not None:
            train.set_defaults(**{key: _with_current_labels(inner)})


def _with_current_labels(inner: Any) -> Any:
    def run(args: argparse.Namespace) -> Any:
        if getattr(args, "labels_from", None):
            from pathlib import Path

            from cxrlake.review.labels import label_overrides

            if not args.data:
                raise UsageError("--labels-from needs --data")
            overrides, total = label_overrides(Path(args.data).resolve(), args.labels_from)
            print(
                f"cxrlake train: current labels from {args.labels_from}: "
                f"{len(overrides)} of {total} differ from the folder labels",
                flush=True,
            )
            args.label_overrides = overrides
        return inner(args)

    return run


def _review(args: argparse.Namespace) -> int:
    from cxrlake.review.server import make_server
    from cxrlake.review.store import LocalStore
    from cxrlake.review.tables import ReviewError, validate_reviewer

    try:
        reviewer = validate_reviewer(args.reviewer or getpass.getuser())
    except (ReviewError, KeyError, OSError) as e:
        raise UsageError(f"no reviewer id ({e}); pass --reviewer") from e
    store = LocalStore(args.lakehouse, args.env)
    added = store.sync_history()
    try:
        server = make_server(store, args.host, args.port, reviewer, verbose=args.verbose)
    except OSError as e:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {e}") from e
    if added:
        print(f"label history: {added} row(s) added", flush=True)
    print(f"cxrlake review: serving {store.lh.catalog} for {reviewer} at {server.url}", flush=True)
    if server.listens_everywhere:
        print(
            f"cxrlake review: warning: listening on every interface ({args.host}): anyone who can "
            f"reach this machine on port {server.server_address[1]} sees the images and records "
            f"verdicts as {reviewer}; use --host 127.0.0.1 unless that is meant",
            file=sys.stderr,
            flush=True,
        )
    print("press Ctrl+C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
