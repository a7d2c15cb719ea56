"""Exit codes of the ``cxrlake`` commands and the one place an exception becomes a one-line
message and an exit code.

Handlers raise; `cxrlake.cli.main` hands whatever escapes to `describe_error` and prints
``cxrlake <command>: error: <message>``. The exit code depends on the error's class alone
(`EXIT_CODES`); every `CxrlakeError` subclass the modules raise goes through here.
"""

from __future__ import annotations

import contextlib
import sys

from cxrlake.exceptions import (
    CxrlakeError,
    InvalidArgumentError,
    ModelError,
    RuntimeLibraryError,
)

__all__ = [
    "EPILOG",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "ContextError",
    "UsageError",
    "describe_error",
    "exit_code",
    "print_error",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_INTERRUPTED = 130

#: The exit codes as every command's ``--help`` lists them.
EPILOG = """\
exit codes:
  0    success (predict: rows may still carry per-image errors)
  1    failure (message on stderr: missing input, lakehouse or SQL error, disk full ...)
  2    usage error (bad arguments or environment variables)
  3    model missing or invalid, or ONNX Runtime unavailable
  130  interrupted (Ctrl-C)
add --debug to see the full trace of a failure."""


class CommandError(CxrlakeError):
    """A failure a command reports as one line (exit code 1)."""


class UsageError(CommandError):
    """Arguments that cannot work together, or a missing one (exit code 2)."""


class ContextError(CommandError):
    """A failure told with what the command was doing, raised ``from`` the error that caused
    it: the message is ``<context>: <the cause's message>`` and the exit code the cause's
    (``raise ContextError("cannot load the model") from error``)."""


#: The exit code of each error class (first match; any other error exits 1). The one place
#: where exceptions become exit codes.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ModelError, EXIT_MODEL),
    (RuntimeLibraryError, EXIT_MODEL),
    (InvalidArgumentError, EXIT_USAGE),
    (UsageError, EXIT_USAGE),
)

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


def exit_code(error: BaseException) -> int:
    """The exit code for an exception escaping a command handler (see `EXIT_CODES`)."""
    if isinstance(error, ContextError) and error.__cause__ is not None:
        return exit_code(error.__cause__)
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_FAILURE


def describe_error(error: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception escaping a command handler."""
    return _message(error), exit_code(error)


def print_error(command: str, error: BaseException) -> int:
    """Print ``cxrlake <command>: error: <message>`` for ``error`` on stderr; return its exit
    code."""
    message, code = describe_error(error)
    with contextlib.suppress(Exception):  # a closed or full stdout must not hide the message
        sys.stdout.flush()
    print(f"cxrlake {command}: error: {message}", file=sys.stderr)
    return code


def _one_line(text: str) -> str:
    """The first meaningful line of an error message (engines append context and hints)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _engine_errors() -> tuple[type[BaseException], ...]:
    """Error classes of the engines whose messages read well without the class name: DuckDB,
    delta-rs and Arrow, among those this process has imported (an engine that is not imported
    raised nothing, and importing one here would slow every command down)."""
    classes: list[type[BaseException]] = []
    if (duckdb := sys.modules.get("duckdb")) is not None:
        classes.append(duckdb.Error)
    if (delta := sys.modules.get("deltalake.exceptions")) is not None:
        classes.append(delta.DeltaError)
    if (arrow := sys.modules.get("pyarrow.lib")) is not None:
        classes.append(arrow.ArrowException)
    return tuple(classes)


def _message(error: BaseException) -> str:
    if isinstance(error, ContextError) and error.__cause__ is not None:
        return f"{_one_line(str(error))}: {_message(error.__cause__)}"
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
