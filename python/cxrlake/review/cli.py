"""``cxrlake review``: start the review web app on a local lakehouse."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any


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


def _review(args: argparse.Namespace) -> int:
    from cxrlake.review.server import make_server
    from cxrlake.review.store import LocalStore
    from cxrlake.review.tables import ReviewError, validate_reviewer

    try:
        reviewer = validate_reviewer(args.reviewer or getpass.getuser())
    except (ReviewError, KeyError, OSError) as e:
        print(f"cxrlake review: no reviewer id ({e}); pass --reviewer", file=sys.stderr)
        return 2
    try:
        store = LocalStore(args.lakehouse, args.env)
    except FileNotFoundError as e:
        print(f"cxrlake review: {e}", file=sys.stderr)
        return 1
    added = store.sync_history()
    try:
        server = make_server(store, args.host, args.port, reviewer, verbose=args.verbose)
    except OSError as e:
        print(f"cxrlake review: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    if added:
        print(f"label history: {added} row(s) added", flush=True)
    print(f"cxrlake review: serving {store.lh.catalog} for {reviewer} at {server.url}", flush=True)
    print("press Ctrl+C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
