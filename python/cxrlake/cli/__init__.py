"""The ``cxrlake`` command line.

One module per command group declares its commands and their options with
``register(subparsers)`` (`COMMANDS` names the module of each command; `COMMAND_MODULES` is the
order ``cxrlake --help`` lists them). A command line that names a command imports only that
command's module, so ``cxrlake predict`` does not pay at start-up for the web servers, the
lakehouse or training; help and an unknown command import them all.
Handlers take the parsed arguments and return an exit code, or raise: `main` is the one place
that turns an exception into a one-line message ``cxrlake <command>: error: ...`` and an exit
code (`cxrlake.cli.errors`). Every command gets ``--version``, ``--debug`` (show the trace of a
failure) and, for options with a default, ``(default: ...)`` in its help.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import cxrlake
from cxrlake.cli.errors import EPILOG, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, print_error
from cxrlake.cli.options import Handler

__all__ = ["build_parser", "main"]

#: Each command and the module of `cxrlake.cli` that declares it.
COMMANDS: dict[str, str] = {
    "predict": "predict",
    "explain": "predict",
    "pipeline": "lakehouse",
    "sql": "lakehouse",
    "report": "lakehouse",
    "maintain": "lakehouse",
    "train": "train",
    "calibrate": "calibrate",
    "review": "review",
    "serve": "serve",
    "promote": "serve",
}

#: The command modules, in the order of ``cxrlake --help``: predict and explain; pipeline, sql,
#: report and maintain; train; calibrate; review; serve and promote.
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))


def _version() -> str:
    try:
        return version("cxrlake")
    except PackageNotFoundError:  # a source checkout without metadata
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


def _modules_for(argv: Sequence[str] | None) -> tuple[str, ...]:
    """The command modules a command line needs: the named command's, or all of them (help, no
    command or an unknown one). The top-level options take no value, so the first word that is
    not an option is the command."""
    word = next((a for a in argv or () if not a.startswith("-")), None)
    if word is not None and word in COMMANDS:
        return (COMMANDS[word],)
    return COMMAND_MODULES


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser: with ``argv``, only the command it names; else every command."""
    parser = argparse.ArgumentParser(
        prog="cxrlake",
        description="Chest X-ray lakehouse: decode, score and curate chest radiographs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _modules_for(argv):
        importlib.import_module(f"cxrlake.cli.{name}").register(subparsers)
    _finish(parser, _version(), top=True)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    """``predict``, ``pipeline run`` ...: the words the user typed to pick the handler."""
    words = [args.command] if getattr(args, "command", None) else []
    words += [v for k, v in sorted(vars(args).items()) if k.endswith("_command") and v]
    return " ".join(str(w) for w in words)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cxrlake`` console script; returns the exit code."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    command = _command_name(args)
    try:
        return handler(args)
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
        if getattr(args, "debug", False):
            traceback.print_exc()
        return print_error(command, error)
