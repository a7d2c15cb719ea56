"""Argument types and options that several ``cxrlake`` commands declare the same way.

Each type raises `argparse.ArgumentTypeError` with a message that says what was expected, so
argparse reports it as a usage error (exit code 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

from cxrlake.medallion.schemas import validate_env

#: The object ``add_subparsers`` returns; each command module adds its commands to it.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: What a command runs: the parsed arguments in, the exit code out (failures raise).
Handler: TypeAlias = Callable[[argparse.Namespace], int]


def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts (threads, batch sizes): an int >= 1, with a clear message."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type for counts that may be zero (number of examples ...)."""
    return _int_at_least(text, 0, "an integer >= 0")


def share(text: str) -> float:
    """argparse type for a share of requests: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number between 0 and 1, got {text!r}"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return value


def port(text: str) -> int:
    """argparse type for a TCP port: 0..65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {value}")
    return value


def environment(text: str) -> str:
    """argparse type for ``--env``: a name the catalog's table names accept (`validate_env`)."""
    try:
        return validate_env(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_lakehouse_options(parser: argparse.ArgumentParser) -> None:
    """``--lakehouse`` (required) and ``--env``, as the commands on a local lakehouse take them."""
    parser.add_argument(
        "--lakehouse",
        required=True,
        help="root folder of the Delta tables (<lakehouse>/healthcare_catalog_<env>/...)",
    )
    parser.add_argument("--env", type=environment, default="dev", help="environment")
