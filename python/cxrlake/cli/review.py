"""``cxrlake review``: start the review web app on a local lakehouse."""

from __future__ import annotations

import argparse
import getpass
import sys

from cxrlake.cli.errors import CommandError, UsageError
from cxrlake.cli.options import Subparsers, add_lakehouse_options
from cxrlake.review.server import make_server
from cxrlake.review.tables import ReviewError, validate_reviewer


def register(subparsers: Subparsers) -> None:
    """Add ``review`` to the main parser's subcommands."""
    p = subparsers.add_parser(
        "review",
        help="start the radiologist review web app on a local lakehouse",
        description="Serve the worklist and case viewer; verdicts go to "
        "gold.prediction_feedback and the label history to silver.label_history.",
    )
    add_lakehouse_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    p.add_argument("--reviewer", help="reviewer id recorded with each verdict (default: OS user)")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    p.set_defaults(handler=_review)


def _review(args: argparse.Namespace) -> int:
    from cxrlake.review.store import LocalStore  # needs the 'local' extra

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
