"""What every cxrlake command module shares: exit codes, argument types, the one-line
error messages and progress on stderr.

Kept apart from `cxrlake.cli` (which builds the parser from the command modules) so that a
command module imports this and never the CLI that imports it: no import cycle.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import TextIO

from cxrlake.exceptions import (
    CxrlakeError,
    InvalidArgumentError,
    ModelError,
    RuntimeLibraryError,
)

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "Progress",
    "UsageError",
    "describe_error",
    "exit_code",
    "non_negative_int",
    "positive_int",
    "report_error",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_INTERRUPTED = 130


class CommandError(CxrlakeError):
    """A failure a command reports as one line; ``exit_code`` defaults to 1."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CommandError):
    """A command-line usage problem reported with exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


def positive_int(text: str) -> int:
    """argparse type for counts (threads, batch sizes): an int >= 1, with a clear message."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type for counts that may be zero (number of examples ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


# ------------------------------------------------------------------ progress
class Progress:
    """Progress of long work on stderr: a redrawn bar on a terminal, plain log lines otherwise
    (at most one every ``log_every`` seconds, plus the last), so job logs show it too."""

    def __init__(
        self, total: int, label: str, stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = self.stream.isatty()
        self.log_every = 10.0
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.tty:
            width = 30
            filled = int(width * self.done / self.total)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            now = time.monotonic()
            if self.done >= self.total or now - self._last >= self.log_every:
                self._last = now
                self.stream.write(f"{self.label}: {self.done}/{self.total}\n")
        self.stream.flush()


# ------------------------------------------------------------------ errors
def _one_line(text: str) -> str:
    """The first meaningful line of an error message (engines append context and hints)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


#: Optional packages and the pyproject extra that installs each (the wheel's runtime is only
#: pyarrow, numpy and onnxruntime).
_EXTRA_OF_MODULE = {
    "deltalake": "local",
    "duckdb": "local",
    "tqdm": "local",
    "torch": "train",
    "mlflow": "train",
    "onnx": "train",
    "pyspark": "spark",
}

#: The exit code of each error class (first match; `CommandError` carries its own, every other
#: error exits 1). The one place where exceptions become exit codes.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ModelError, EXIT_MODEL),
    (RuntimeLibraryError, EXIT_MODEL),
    (InvalidArgumentError, EXIT_USAGE),
)


def exit_code(error: BaseException) -> int:
    """The exit code for an exception escaping a command handler (see `EXIT_CODES`)."""
    if isinstance(error, CommandError):
        return error.exit_code
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_FAILURE


def _engine_errors() -> tuple[type[BaseException], ...]:
    """Error classes of the engines whose messages read well without the class name: DuckDB,
    delta-rs and Arrow, among those this process has imported (an engine that is not imported
    raised nothing)."""
    classes: list[type[BaseException]] = []
    if (duckdb := sys.modules.get("duckdb")) is not None:
        classes.append(duckdb.Error)
    if (delta := sys.modules.get("deltalake.exceptions")) is not None:
        classes.append(delta.DeltaError)
    if (arrow := sys.modules.get("pyarrow.lib")) is not None:
        classes.append(arrow.ArrowException)
    return tuple(classes)


def describe_error(error: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception escaping a command handler."""
    return _message(error), exit_code(error)


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    if isinstance(error, (CxrlakeError, OSError, *_engine_errors())):
        return _one_line(str(error)) or type(error).__name__
    if isinstance(error, ModuleNotFoundError) and error.name:
        extra = _EXTRA_OF_MODULE.get(error.name.split(".")[0])
        if extra:
            return (
                f"this command needs {error.name!r}, which the 'cxrlake[{extra}]' extra installs: "
                f"pip install 'cxrlake[{extra}]'"
            )
    text = _one_line(str(error))
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def _print_error(command: str, message: str) -> None:
    with contextlib.suppress(Exception):  # a closed or full stdout must not hide the message
        sys.stdout.flush()
    print(f"cxrlake {command}: error: {message}", file=sys.stderr)


def report_error(command: str, error: BaseException | str, exit_code: int | None = None) -> int:
    """Print ``cxrlake <command>: error: ...`` for an error a handler catches itself; return
    the exit code (the one `main` would use for that exception, unless given)."""
    if isinstance(error, BaseException):
        message, code = describe_error(error)
    else:
        message, code = _one_line(error), EXIT_FAILURE
    _print_error(command, message)
    return code if exit_code is None else exit_code
